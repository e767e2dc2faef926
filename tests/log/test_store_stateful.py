"""The LMDB LogDir against its in-memory model, driven side by side by hypothesis.

Every rule runs the same operation on both stores and requires the same outcome (result
or error type); after every step both must hold exactly the same partitions, offsets,
batches and table rows, and the LMDB store must satisfy the structural invariants
(log start <= HW <= LEO, size = sum of stored batches, LEO = end of the last batch,
every batch validates). The LMDB map starts at 64 KiB so it grows inside the run, and
the LogDir is closed and reopened as a restart would.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from logtest_util import SMALL_MAP, batches, budget, check_store, corrupt, long_test, snapshot

from kvlog.batch import build_batch
from kvlog.cleaner import Cleaner, TopicInfo
from kvlog.codecs import Codec
from kvlog.lmdb_store import LogDir
from kvlog.memory_store import MemoryLogDir
from kvlog.retention import Sweeper
from kvlog.topic_config import DAY_MS
from kvlog.types import PartitionOffsets, TopicPartition

NOW = 1_700_000_000_000
TOPICS = ("a", "b")
TPS = [TopicPartition(t, p) for t in TOPICS for p in range(2)]
TABLE_NAMES = ("x", "y")
TABLE_KEYS = [b"k", b"k0", b"k0\x00", b"k1", b"z" * 40]
# Compared too: the cleaner's rows (written by the compact rule only).
SNAPSHOT_TABLES = (*TABLE_NAMES, "cleaner")

tps = st.sampled_from(TPS)
some_batches = st.lists(batches(max_value=1500, now_ms=NOW), min_size=1, max_size=3)
# Module-level so the test can check that the map did grow in some example.
MAP_GROWTH: list[int] = []


class Boom(Exception):
    """Raised by a write fn to make its transaction roll back."""


class StoresAgree(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="kvlog-stateful-"))
        self.disk = LogDir(self.dir, map_size=SMALL_MAP)
        self.model = MemoryLogDir()
        self.first_map_size = self.disk.env.info()["map_size"]
        self.now = NOW
        self.configs: dict[str, dict[str, int]] = {}

    def teardown(self) -> None:
        map_size = self.disk.env.info()["map_size"]
        if map_size > self.first_map_size:
            MAP_GROWTH.append(map_size)
            event("LMDB map grew")
        self.disk.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- running one operation on both stores ----------------------------------------------

    def both(self, op: Callable[[Any], Any]) -> tuple[str, Any]:
        outcomes = []
        for store in (self.disk, self.model):
            try:
                outcomes.append(("ok", op(store)))
            except Exception as exc:  # the error's type is the outcome to compare
                outcomes.append(("error", type(exc)))
        assert outcomes[0] == outcomes[1], (
            f"LMDB: {outcomes[0]!r:.3000}\nmodel: {outcomes[1]!r:.3000}"
        )
        if outcomes[0][0] == "error":
            event(f"error: {outcomes[0][1].__name__}")
        return outcomes[0]

    def write(self, fn: Callable[[Any], Any]) -> tuple[str, Any]:
        return self.both(lambda store: store.write(fn))

    def offsets(self, tp: TopicPartition) -> PartitionOffsets | None:
        with self.model.reader() as r:
            return r.offsets(tp) if self.model.has_partition(tp) else None

    def batch_sizes(self, tp: TopicPartition, offset: int) -> list[int]:
        if not self.model.has_partition(tp):
            return []
        with self.model.reader() as r:
            return [size for _, size, _ in r.headers(tp, offset)]

    def offset_near(self, data: st.DataObject, tp: TopicPartition, label: str) -> int:
        """An offset around the partition's valid range, out-of-range ones included."""
        state = self.offsets(tp) or PartitionOffsets(0, 0, 0, 0)
        low = max(0, state.log_start_offset - 2)
        return data.draw(st.integers(low, state.log_end_offset + 2), label=label)

    # -- rules -----------------------------------------------------------------------------

    @initialize(starts=st.lists(st.sampled_from([0, 0, 7]), min_size=len(TPS), max_size=len(TPS)))
    def create_partitions(self, starts):
        for tp, start in zip(TPS, starts, strict=True):
            self.both(lambda s, tp=tp, start=start: s.create_partition(tp, start_offset=start))

    @rule(tp=tps, start=st.sampled_from([0, 0, 0, 5, 1000]), drop=st.integers(0, 2))
    def create_or_drop_partition(self, tp, start, drop):
        """Mostly (re)create: most other rules want an existing partition."""
        if drop:
            self.both(lambda s: s.create_partition(tp, start_offset=start))
        else:
            self.both(lambda s: s.drop_partition(tp))

    @rule(
        writes=st.lists(st.tuples(tps, some_batches), min_size=1, max_size=3),
        leader_epoch=st.none() | st.integers(0, 5),
        advance=st.booleans(),
        bad=st.integers(0, 4),
    )
    def append(self, writes, leader_epoch, advance, bad):
        """One transaction appending to up to three partitions; sometimes one batch is
        corrupt and the whole transaction must leave nothing behind."""
        if bad == 0:
            tp, last = writes[-1]
            writes[-1] = (tp, [*last, corrupt(last[0])])

        def fn(w):
            return [
                w.append(tp, group, leader_epoch=leader_epoch, advance_high_watermark=advance)
                for tp, group in writes
            ]

        self.write(fn)

    @rule(
        tp=tps,
        count=st.integers(1, 4),
        size=st.integers(4_000, 40_000),
        seed=st.integers(0, 1 << 32),
        codec=st.sampled_from(list(Codec)),
    )
    def append_large(self, tp, count, size, seed, codec):
        """Incompressible batches of tens of KiB, so the LMDB map has to grow."""
        rnd = random.Random(seed)
        batch = build_batch([(None, rnd.randbytes(size), None, NOW)] * count, codec)
        self.write(lambda w: w.append(tp, [batch]))

    @rule(tp=tps, batch=batches(max_value=800, now_ms=NOW), gap=st.integers(-2, 3))
    def append_at(self, tp, batch, gap):
        state = self.offsets(tp) or PartitionOffsets(0, 0, 0, 0)
        base = max(0, state.log_end_offset + gap)
        self.write(lambda w: w.append_at(tp, base, batch))

    @rule(
        tp=tps,
        data=st.data(),
        max_bytes=st.sampled_from([0, 1, 300, 4000, 1 << 30]),
        bounded=st.booleans(),
    )
    def read(self, tp, data, max_bytes, bounded):
        offset = self.offset_near(data, tp, "offset")
        max_offset = self.offset_near(data, tp, "max_offset") if bounded else None
        # Also every max_bytes at, one below and one above the end of each of the first
        # batches: where an off-by-one in the size limit would show.
        sizes = self.batch_sizes(tp, offset)[:4]
        limits = [max_bytes] + [
            sum(sizes[:n]) + d for n in range(1, len(sizes) + 1) for d in (-1, 0, 1)
        ]

        def op(store):
            with store.reader() as r:
                return [r.read(tp, offset, limit, max_offset=max_offset) for limit in limits]

        self.both(op)

    @rule(tp=tps, data=st.data(), from_start=st.booleans())
    def headers(self, tp, data, from_start):
        start = None if from_start else self.offset_near(data, tp, "start")

        def op(store):
            with store.reader() as r:
                return list(r.headers(tp, start))

        self.both(op)

    @rule(tp=tps, data=st.data())
    def set_high_watermark(self, tp, data):
        offset = self.offset_near(data, tp, "hw")
        self.write(lambda w: w.set_high_watermark(tp, offset))

    @rule(tp=tps, data=st.data())
    def truncate_to(self, tp, data):
        offset = self.offset_near(data, tp, "truncate")
        self.write(lambda w: w.truncate_to(tp, offset))

    @rule(tp=tps, data=st.data())
    def delete_before(self, tp, data):
        offset = self.offset_near(data, tp, "delete before")
        self.write(lambda w: w.delete_before(tp, offset))

    @rule(tp=tps, offset=st.sampled_from([0, 3, 100]))
    def reset(self, tp, offset):
        self.write(lambda w: w.reset(tp, offset))

    @rule(
        topic=st.sampled_from(TOPICS),
        retention_ms=st.none() | st.sampled_from([-1, 0, DAY_MS, 7 * DAY_MS]),
        retention_bytes=st.none() | st.sampled_from([-1, 0, 2000, 20_000]),
        advance_ms=st.integers(0, 3 * DAY_MS),
        per_txn=st.sampled_from([1, 2, 1000]),
    )
    def sweep(self, topic, retention_ms, retention_bytes, advance_ms, per_txn):
        config = {}
        if retention_ms is not None:
            config["retention.ms"] = retention_ms
        if retention_bytes is not None:
            config["retention.bytes"] = retention_bytes
        self.configs[topic] = config
        self.now += advance_ms
        self.both(
            lambda s: Sweeper(s, self.configs.get, max_batches_per_txn=per_txn).sweep(self.now)
        )

    @rule(
        topic=st.sampled_from(TOPICS),
        forced=st.booleans(),
        advance_ms=st.integers(0, 2 * DAY_MS),
        io_bytes=st.sampled_from([1, 2000, 1 << 20]),
        dedupe_bytes=st.sampled_from([1, 1 << 20]),
    )
    def compact(self, topic, forced, advance_ms, io_bytes, dedupe_bytes):
        """The cleaner on both stores: the same rewrites (replace_batches), the same rows."""
        self.now += advance_ms
        info = TopicInfo(
            f"id-{topic}", {"cleanup.policy": "compact", "delete.retention.ms": DAY_MS}
        )

        def op(store):
            cleaner = Cleaner(
                store,
                lambda t: info if t == topic else None,
                clock=lambda: self.now,
                io_buffer_bytes=io_bytes,
                dedupe_buffer_bytes=dedupe_bytes,
            )
            return [(r.tp, r.complete, r.last) for r in cleaner.run({topic} if forced else ())]

        outcome = self.both(op)
        if outcome[0] == "ok" and outcome[1]:
            event("compacted")

    @rule(table=st.sampled_from(TABLE_NAMES), key=st.sampled_from(TABLE_KEYS), value=st.binary())
    def put(self, table, key, value):
        self.write(lambda w: w.put(table, key, value))

    @rule(table=st.sampled_from(TABLE_NAMES), key=st.sampled_from(TABLE_KEYS))
    def delete(self, table, key):
        self.write(lambda w: w.delete(table, key))

    @rule(table=st.sampled_from(TABLE_NAMES), prefix=st.sampled_from([b"", b"k", b"k0", b"q"]))
    def items(self, table, prefix):
        def op(store):
            with store.reader() as r:
                return list(r.items(table, prefix))

        self.both(op)

    @rule(tp=tps, batch_group=some_batches, data=st.data())
    def rolled_back(self, tp, batch_group, data):
        """Many changes in one transaction, then an exception: nothing may remain."""
        cut = self.offset_near(data, tp, "truncate in txn")

        def fn(w):
            w.put("x", b"k", b"rolled back")
            w.delete("y", b"k0")
            w.append(tp, batch_group)
            w.truncate_to(tp, cut)
            w.set_high_watermark(tp, w.offsets(tp).log_start_offset)
            w.drop_partition(TPS[1])
            w.reset(tp, 42)
            raise Boom

        self.write(fn)

    @rule()
    def reopen(self):
        self.disk.close()
        self.disk = LogDir(self.dir, map_size=SMALL_MAP)

    @precondition(lambda self: self.disk.env.info()["map_size"] > self.first_map_size)
    @rule()
    def note_growth(self):
        event("map grew before the end of the run")

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def stores_agree(self):
        assert self.disk.partitions() == self.model.partitions()
        assert snapshot(self.disk, SNAPSHOT_TABLES) == snapshot(self.model, SNAPSHOT_TABLES)

    @invariant()
    def disk_store_is_consistent(self):
        check_store(self.disk)


@long_test
def test_lmdb_store_agrees_with_its_model():
    MAP_GROWTH.clear()
    run_state_machine_as_test(StoresAgree, settings=budget(100, steps=50))
    assert MAP_GROWTH, "no example grew the LMDB map: raise the data sizes"
