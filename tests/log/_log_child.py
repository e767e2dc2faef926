"""Child processes for the crash, map-growth and disk-full tests (not a test module).

Run as ``python _log_child.py MODE ARGS...``. Every line a child prints is one JSON
object, flushed at once, so the parent can tell what was acknowledged before it killed
the child: a batch is acknowledged only after ``LogDir.write`` returned.
"""

from __future__ import annotations

import json
import random
import resource
import signal
import struct
import sys

from kvlog.batch import BatchBuilder, decode
from kvlog.codecs import Codec
from kvlog.errors import StorageError
from kvlog.lmdb_store import LogDir
from kvlog.types import TopicPartition

MAIN = TopicPartition("crash", 0)
MIRROR = TopicPartition("crash", 1)  # same sequence numbers, written in the same txn
ACKS_TABLE = "acks"
MAX_BATCHES = 100_000  # every loop has a bound
SEQ = struct.Struct(">Q")


def emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def value_for(seq: int, index: int, size: int, rng: random.Random) -> bytes:
    head = f"{seq}:{index}:".encode()
    return head + rng.randbytes(max(0, size - len(head)))


def seq_batch(seq: int, count: int, size: int, codec: Codec, rng: random.Random) -> bytes:
    builder = BatchBuilder(codec)
    for i in range(count):
        builder.append(value_for(seq, i, size, rng), key=SEQ.pack(seq), timestamp_ms=seq)
    return builder.build()


def seq_of(batch: bytes, base: int) -> int:
    """The sequence number a batch was written with (every record carries it)."""
    seqs = {int(r.value.split(b":", 1)[0]) for r in decode(batch, base)}
    assert len(seqs) == 1, seqs
    return seqs.pop()


def next_seq(store: LogDir) -> int:
    with store.reader() as r:
        state = r.offsets(MAIN)
        if state.log_end_offset == state.log_start_offset:
            return 0
        last = r.read(MAIN, state.log_end_offset - 1, 1)
    base, batch = last[-1]
    return seq_of(batch, base) + 1


def writer(path: str, seed: int) -> None:
    """Append sequence-numbered batches forever; report each one once it is durable."""
    rng = random.Random(seed)
    store = LogDir(path, map_size=64 << 10)
    for tp in (MAIN, MIRROR):
        store.create_partition(tp)
    seq = next_seq(store)
    emit(ready=seq)
    for _ in range(MAX_BATCHES):
        count = rng.randint(1, 12)
        size = rng.choice([0, 16, 200, 1000, 4000])
        main = seq_batch(seq, count, size, rng.choice(list(Codec)), rng)
        mirror = seq_batch(seq, 1, 8, Codec.NONE, rng)
        trim = seq % 7 == 0  # retention-like deletes on the mirror, crashed mid-way too

        def fn(w, main=main, mirror=mirror, seq=seq, trim=trim):
            [base] = w.append(MAIN, [main])
            [mirror_base] = w.append(MIRROR, [mirror])
            w.put(ACKS_TABLE, SEQ.pack(seq), SEQ.pack(base))
            if trim:
                w.delete_before(MIRROR, mirror_base - 20)
            return base

        base = store.write(fn)
        emit(seq=seq, base=base, count=count)
        seq += 1


def grow(path: str, batches: int, size: int) -> None:
    """Open a tiny map and append enough incompressible data to grow it many times."""
    rng = random.Random(batches)
    store = LogDir(path, map_size=32 << 10)
    store.create_partition(MAIN)
    start = store.env.info()["map_size"]
    bases = []
    for i in range(batches):
        batch = seq_batch(1000 + i, 1, size, Codec.NONE, rng)
        bases.append(store.write(lambda w, b=batch: w.append(MAIN, [b]))[0])
    emit(bases=bases, start_map=start, map_size=store.env.info()["map_size"])
    store.close()


def disk_full(path: str, limit: int, seed: int) -> None:
    """Append under RLIMIT_FSIZE until the log dir is full; report what happened."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of dying
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    rng = random.Random(seed)
    store = LogDir(path, map_size=64 << 10)
    store.create_partition(MAIN)
    for seq in range(MAX_BATCHES):
        batch = seq_batch(seq, rng.randint(1, 4), rng.choice([100, 3000, 9000]), Codec.NONE, rng)
        with store.reader() as r:
            before = r.offsets(MAIN)
        try:
            [base] = store.write(lambda w, b=batch: w.append(MAIN, [b]))
        except StorageError as exc:
            with store.reader() as r:
                after = r.offsets(MAIN)
            try:
                store.write(lambda w, b=batch: w.append(MAIN, [b]))
                again = "accepted"
            except StorageError as exc2:
                again = str(exc2)
            emit(error=str(exc), before=list(before), after=list(after), again=again)
            store.close()
            return
        emit(seq=seq, base=base, size=len(batch))
    emit(error=None)


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "writer":
        writer(args[0], int(args[1]))
    elif mode == "grow":
        grow(args[0], int(args[1]), int(args[2]))
    elif mode == "disk-full":
        disk_full(args[0], int(args[1]), int(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
