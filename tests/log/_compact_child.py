"""Child process for the compaction crash test (not a test module).

``python _compact_child.py PATH SEED``: one thread appends batches of keyed records to one
partition of a log dir and prints each batch once ``LogDir.write`` returned (it is then
acknowledged); the main thread compacts the partition over and over (a tiny offset map,
so passes are many and short, and a small I/O buffer, so each pass is many write
transactions), printing when each compaction finished. Every line is one JSON object,
flushed at once.
"""

from __future__ import annotations

import json
import random
import sys
import threading

from kvlog import batch as batch_format
from kvlog import kafka_batch
from kvlog.cleaner import Cleaner, TopicInfo
from kvlog.codecs import Codec
from kvlog.lmdb_store import LogDir
from kvlog.types import TopicPartition

TP = TopicPartition("crash-table", 0)
KEYS = 40
MAX_BATCHES = 1_000_000  # every loop has a bound
INFO = TopicInfo(
    "crash-table-id",
    {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": 0.0, "delete.retention.ms": 1 << 40},
)
_print_lock = threading.Lock()


def emit(**fields: object) -> None:
    with _print_lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def key_of(n: int) -> bytes:
    return b"key-%d" % n


def value_of(offset: int) -> bytes:
    return b"value-at-%d" % offset


def appender(store: LogDir, rng: random.Random) -> None:
    for _ in range(MAX_BATCHES):
        with store.reader() as r:
            leo = r.offsets(TP).log_end_offset
        count = rng.randint(1, 20)
        keys = [key_of(rng.randrange(KEYS)) for _ in range(count)]
        # A null value now and then: tombstones (kept: delete.retention.ms is huge).
        values = [None if rng.random() < 0.05 else value_of(leo + i) for i in range(count)]
        codec = rng.choice(list(Codec))
        common = dict(first_timestamp=leo, max_timestamp=leo, codec=codec)
        if rng.random() < 0.5:
            batch = kafka_batch.encode(None, 0, keys, values, **common)
        else:
            batch = batch_format.encode(0, keys, values, **common)

        def fn(w, batch=batch):
            return w.append(TP, [batch])[0]

        base = store.write(fn)
        emit(base=base, keys=[k.decode() for k in keys], tombstones=[v is None for v in values])


def main() -> None:
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    store = LogDir(path, map_size=64 << 10)
    store.create_partition(TP)
    emit(ready=True)
    threading.Thread(target=appender, args=(store, random.Random(seed + 1)), daemon=True).start()
    now = [0]

    def clock() -> int:
        now[0] += 1
        return now[0]

    for _ in range(MAX_BATCHES):
        cleaner = Cleaner(
            store,
            lambda _topic: INFO,
            dedupe_buffer_bytes=24 * rng.choice([8, 32, 256]),
            io_buffer_bytes=rng.choice([1, 4096, 65536]),
            clock=clock,
        )
        for result in cleaner.run({TP.topic}):
            emit(compacted=result.last.records_removed, passes=result.last.passes)


if __name__ == "__main__":
    main()
