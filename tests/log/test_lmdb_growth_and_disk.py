"""The LMDB store at its limits: map growth (in one process and across two), a full
disk, read-only log dirs and a log dir written by a newer kvlog."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from logtest_util import all_batches, check_partition, check_store, make_batch

from kvlog.batch import build_batch, decode
from kvlog.codecs import Codec
from kvlog.errors import StorageError
from kvlog.lmdb_store import LogDir
from kvlog.types import PartitionOffsets, TopicPartition

CHILD = Path(__file__).with_name("_log_child.py")
MAIN = TopicPartition("crash", 0)  # the partition _log_child.py writes
TP = TopicPartition("grow", 0)
TP1 = TopicPartition("grow", 1)


def run_child(*args: object, timeout_s: float = 60) -> list[dict[str, Any]]:
    try:
        done = subprocess.run(
            [sys.executable, str(CHILD), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as exc:  # run() killed it
        pytest.fail(f"child {args[0]} did not finish in {timeout_s}s: {exc.stderr!r}")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def incompressible(rng: random.Random, size: int, tag: int) -> bytes:
    return build_batch([(str(tag).encode(), rng.randbytes(size))])


def test_map_grows_from_32_kib_to_many_megabytes(tmp_path):
    rng = random.Random(7)
    store = LogDir(tmp_path / "d", map_size=32 << 10)
    try:
        store.create_partition(TP)
        store.create_partition(TP1)
        first_map = store.env.info()["map_size"]
        expected: list[tuple[int, bytes]] = []
        for i in range(120):
            batch = incompressible(rng, rng.choice([100, 5_000, 60_000]), i)
            expected.extend(
                zip(store.write(lambda w, b=batch: w.append(TP, [b])), [batch], strict=True)
            )
        # One transaction far larger than the map at that moment: fn is re-run after
        # growing, and must still append exactly once.
        runs = []
        big = [incompressible(rng, 400_000, 1000 + i) for i in range(6)]

        def fn(w):
            runs.append(1)
            w.put("x", b"marker", b"1")
            return w.append(TP, big) + w.append(TP1, big[:1])

        bases = store.write(fn)
        expected.extend(zip(bases[:-1], big, strict=True))
        final_map = store.env.info()["map_size"]
        assert final_map >= 8 * first_map and final_map > 3 << 20, (first_map, final_map)
        assert len(runs) > 1, "the large transaction did not need a bigger map"
        assert all_batches(store, TP) == expected
        assert all_batches(store, TP1) == [(0, big[0])]
        assert store.disk_usage() >= sum(len(b) for _, b in expected)
        check_store(store)
        store.close()

        store = LogDir(tmp_path / "d", map_size=32 << 10)  # reopening: a small map is fine
        assert all_batches(store, TP) == expected
        with store.reader() as r:
            assert r.get("x", b"marker") == b"1"
        check_store(store)
    finally:
        store.close()


def test_another_process_grows_the_map_under_an_open_log_dir(tmp_path):
    path = tmp_path / "shared"
    store = LogDir(path, map_size=32 << 10)
    try:
        store.create_partition(MAIN)
        mine = make_batch(3, tag="before")
        store.write(lambda w: w.append(MAIN, [mine]))
        map_before = store.env.info()["map_size"]

        [report] = run_child("grow", path, 60, 60_000)  # ~3.6 MB while this one stays open
        assert report["map_size"] > 16 * map_before

        # Reading first: the snapshot is past our map, so LMDB says MapResizedError and
        # the store must adopt the new size instead of failing.
        with store.reader() as r:
            state = r.offsets(MAIN)
            got = r.read(MAIN, 0, 1 << 62)
        assert store.env.info()["map_size"] >= report["map_size"]
        assert state.log_end_offset == 3 + 60
        assert [b for b, _ in got] == [0, *report["bases"]]
        assert got[0][1] == mine
        for base, batch in got[1:]:
            assert len(decode(batch, base)) == 1
        # ... and writing.
        after = make_batch(2, tag="after")
        assert store.write(lambda w: w.append(MAIN, [after])) == [63]
        check_partition(store, MAIN)
    finally:
        store.close()
    with LogDir(path, map_size=32 << 10) as again:
        assert all_batches(again, MAIN)[-1] == (63, after)


# LMDB writes a commit's pages with pwritev. When the limit falls inside one call the
# write is short and LMDB reports EIO, not EFBIG; a real full disk does the same. Both
# paths must say "full". (Which one a limit hits depends on page layout: several.)
@pytest.mark.parametrize(
    ("limit", "seed"),
    [(512 << 10, 3), (512 << 10, 1), ((512 << 10) + 3001, 2), (700_001, 11)],
    ids=["aligned-a", "aligned-b", "unaligned-a", "unaligned-b"],
)
def test_a_full_disk_refuses_writes_and_loses_nothing(tmp_path, limit, seed):
    path = tmp_path / "logdir"
    lines = run_child("disk-full", path, limit, seed)
    *acks, failure = lines
    assert acks, "the limit left no room for a single batch"
    assert failure["error"] is not None, "the log dir never filled up"
    message = failure["error"]
    assert f"log dir {path} is full" in message, message
    assert "nothing was written" in message, message
    assert f"log dir {path} is full" in failure["again"], failure["again"]
    # In the child, the failed write changed nothing.
    assert failure["after"] == failure["before"]

    with LogDir(path, map_size=64 << 10) as store:  # the parent has no file-size limit
        state = check_partition(store, MAIN)
        last = acks[-1]
        assert list(state) == failure["before"]
        assert state.log_end_offset == batch_end_of(store, last["base"])
        assert state.size_bytes == sum(a["size"] for a in acks)
        stored = all_batches(store, MAIN)
        assert [b for b, _ in stored] == [a["base"] for a in acks]
        for ack, (base, batch) in zip(acks, stored, strict=True):
            assert len(batch) == ack["size"]
            assert decode(batch, base)[0].value.startswith(f"{ack['seq']}:0:".encode())
        # With room again, writing resumes.
        more = make_batch(1, value_size=20_000)
        assert store.write(lambda w: w.append(MAIN, [more])) == [state.log_end_offset]


def batch_end_of(store: LogDir, base: int) -> int:
    with store.reader() as r:
        [(got, batch)] = r.read(MAIN, base, 1)[:1]
    assert got == base
    return base + len(decode(batch, base))


def test_a_read_only_log_dir_refuses_writes(tmp_path):
    path = tmp_path / "ro"
    with LogDir(path) as store:
        store.create_partition(TP)
        store.write(lambda w: (w.append(TP, [make_batch(2)]), w.put("x", b"k", b"v")))
        before = all_batches(store, TP)

    with LogDir(path, readonly=True) as ro:
        assert ro.partitions() == [TP]
        assert all_batches(ro, TP) == before
        with ro.reader() as r:
            assert r.get("x", b"k") == b"v"
            assert r.get("nope", b"k") is None
            assert list(r.items("nope")) == []
        for attempt in (
            lambda: ro.write(lambda w: w.append(TP, [make_batch(1)])),
            lambda: ro.create_partition(TP1),
            lambda: ro.drop_partition(TP),
            lambda: ro.write(lambda w: w.put("x", b"k", b"changed")),
        ):
            with pytest.raises(StorageError, match="read-only"):
                attempt()
        assert ro.partitions() == [TP]

    with LogDir(path) as store:
        assert all_batches(store, TP) == before
        with store.reader() as r:
            assert r.offsets(TP) == PartitionOffsets(0, 2, 2, len(before[0][1]))


def test_a_read_only_log_dir_that_does_not_exist_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError):
        LogDir(tmp_path / "missing", readonly=True)
    assert not (tmp_path / "missing").exists()


def test_a_log_dir_from_a_newer_kvlog_is_refused(tmp_path):
    path = tmp_path / "future"
    with LogDir(path) as store:
        store.write(lambda w: w.put("meta", b"format", b"99"))
    with pytest.raises(StorageError, match="format 99"):
        LogDir(path)


def test_codecs_survive_a_reopen(tmp_path):
    path = tmp_path / "codecs"
    batches = [make_batch(5, codec=codec, value_size=300) for codec in Codec]
    with LogDir(path, map_size=32 << 10) as store:
        store.create_partition(TP)
        store.write(lambda w: w.append(TP, batches, leader_epoch=2))
    with LogDir(path) as store:
        stored = all_batches(store, TP)
    assert [decode(b, base) for base, b in stored] == [
        decode(b, 5 * i) for i, b in enumerate(batches)
    ]
