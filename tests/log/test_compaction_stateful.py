"""Log compaction against a model, driven by hypothesis.

Random appends of keyed records and tombstones in both batch formats (kvlog's native
batches and Kafka RecordBatch v2, every codec, idempotent producer fields), compactions at
random moments with an injected clock and random settings (map size: passes; read chunk:
transactions; dirty ratio; compaction lag; tombstone retention), reads from random
offsets, restarts. The model is every record appended (offset -> key, value) and the
times compactions ran. After every step, what a consumer reading from the start sees
must be what a compacted log may hold:

- only records the model has, each at its own offset, offsets strictly increasing (so the
  order per key is kept and no offset appears twice);
- for every key, its latest record, unless that is a tombstone that a compaction removed,
  and then no record of the key at all (a removed tombstone never resurrects an older
  value);
- a tombstone is removed only ``delete.retention.ms`` after a compaction that ran after it
  was written;
- nothing at or past the high watermark, nor in the log's last batch, is touched; log
  start, high watermark and log end never move; every stored batch keeps its base offset,
  last offset, leader epoch and producer id/epoch/base sequence, and validates.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from logtest_util import SMALL_MAP, budget, long_test

from kvlog import batch as batch_format
from kvlog import kafka_batch
from kvlog.cleaner import Cleaner, TopicInfo
from kvlog.codecs import Codec
from kvlog.lmdb_store import LogDir
from kvlog.types import TopicPartition

TP = TopicPartition("table", 0)
KEYS = [f"key-{i}".encode() for i in range(6)]
START_MS = 1_700_000_000_000
RETENTION_MS = 10_000

records = st.lists(
    st.tuples(st.integers(0, len(KEYS) - 1), st.integers(0, 4)), min_size=1, max_size=8
)


class CompactionMatchesModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="kvlog-compaction-"))
        self.store = LogDir(self.dir, map_size=SMALL_MAP)
        self.store.create_partition(TP)
        self.now = START_MS
        self.model: dict[int, tuple[bytes, bytes | None, int]] = {}  # offset -> key, value, ms
        self.batches: dict[int, batch_format.BatchHeader] = {}  # base -> header as appended
        self.compactions: list[int] = []  # when each compaction ran
        self.removed_tombstones: set[int] = set()
        self.next_seq = 0
        self.info = TopicInfo("table-id", {"cleanup.policy": "compact"})

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- rules -------------------------------------------------------------------------------

    @rule(
        recs=records,
        kafka=st.booleans(),
        codec=st.sampled_from(list(Codec)),
        idempotent=st.booleans(),
        advance_hw=st.integers(0, 3),
        epoch=st.integers(0, 3),
    )
    def append(self, recs, kafka, codec, idempotent, advance_hw, epoch):
        keys = [KEYS[k] for k, _ in recs]
        # value 0 is a tombstone; the value names the record's future offset to be unique
        with self.store.reader() as r:
            leo = r.offsets(TP).log_end_offset
        values = [None if v == 0 else f"{leo + i}:{v}".encode() for i, (_, v) in enumerate(recs)]
        producer = (
            {"producer_id": 7, "producer_epoch": 1, "base_sequence": self.next_seq}
            if idempotent
            else {}
        )
        ts = [i * 3 for i in range(len(recs))]
        common = dict(
            first_timestamp=self.now, max_timestamp=self.now + ts[-1], codec=codec, **producer
        )
        if kafka:
            batch = kafka_batch.encode(None, ts, keys, values, **common)
        else:
            batch = batch_format.encode(ts, keys, values, **common)
        if idempotent:
            self.next_seq += len(recs)
        [base] = self.store.write(
            lambda w: w.append(
                TP, [batch], leader_epoch=epoch, advance_high_watermark=advance_hw > 0
            )
        )
        assert base == leo
        self.batches[base] = batch_format.read_header(batch)
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            self.model[base + i] = (key, value, self.now)  # when it was appended
        event("kafka batch" if kafka else "native batch")

    @rule()
    def raise_high_watermark(self):
        self.store.write(lambda w: w.set_high_watermark(TP, w.offsets(TP).log_end_offset))

    @rule(ms=st.sampled_from([1, RETENTION_MS // 2, RETENTION_MS, 3 * RETENTION_MS]))
    def advance_clock(self, ms):
        self.now += ms

    @rule(
        forced=st.booleans(),
        dedupe_bytes=st.sampled_from([24 * 4, 24 * 8, 1 << 20]),
        io_bytes=st.sampled_from([1, 300, 1 << 20]),
        ratio=st.sampled_from([0.0, 0.5, 0.9]),
        min_lag=st.sampled_from([0, 0, RETENTION_MS]),
    )
    def compact(self, forced, dedupe_bytes, io_bytes, ratio, min_lag):
        self.info = TopicInfo(
            "table-id",
            {
                "cleanup.policy": "compact",
                "min.cleanable.dirty.ratio": ratio,
                "min.compaction.lag.ms": min_lag,
                "delete.retention.ms": RETENTION_MS,
            },
        )
        before = self.visible()
        cleaner = Cleaner(
            self.store,
            lambda topic: self.info,
            clock=lambda: self.now,
            dedupe_buffer_bytes=dedupe_bytes,
            io_buffer_bytes=io_bytes,
        )
        results = cleaner.run({TP.topic} if forced else ())
        after = self.visible()
        gone = set(before) - set(after)
        latest = self.latest()
        for offset in gone:
            key, value, appended = self.model[offset]
            if value is None and latest[key] == offset:
                # A key's latest record, a tombstone, goes only delete.retention.ms after
                # a compaction that ran after it was written.
                assert any(
                    appended <= ran <= self.now - RETENTION_MS for ran in self.compactions
                ), f"tombstone at {offset} removed too early"
                self.removed_tombstones.add(offset)
                event("tombstone removed")
        if results:
            event(f"compacted in {max(r.last.passes for r in results)} pass(es)")
            if gone:
                event("records removed")
        self.compactions.append(self.now)

    @rule(data=st.data())
    def read_from_anywhere(self, data):
        with self.store.reader() as r:
            state = r.offsets(TP)
        offset = data.draw(st.integers(state.log_start_offset, state.log_end_offset), "offset")
        with self.store.reader() as r:
            got = r.read(TP, offset, data.draw(st.sampled_from([1, 500, 1 << 20])))
        if offset < state.log_end_offset:
            assert got, f"a read from {offset} below the log end found nothing"
            base, first = got[0]
            assert batch_format.next_offset(base, first) > offset
        offsets = [rec.offset for b, v in got for rec in batch_format.decode(v, b)]
        assert offsets == sorted(set(offsets))
        visible = self.visible()
        for o in offsets:
            if o >= offset:
                assert o in visible

    @rule()
    def reopen(self):
        self.store.close()
        self.store = LogDir(self.dir, map_size=SMALL_MAP)

    # -- what a consumer from the start sees -----------------------------------------------

    def latest(self) -> dict[bytes, int]:
        """Each key's latest offset in the model."""
        out: dict[bytes, int] = {}
        for offset, (key, _value, _ts) in self.model.items():
            out[key] = max(out.get(key, -1), offset)
        return out

    def visible(self) -> dict[int, tuple[bytes | None, bytes | None]]:
        with self.store.reader() as r:
            state = r.offsets(TP)
            got = r.read(TP, 0, 1 << 40) if state.log_end_offset else []
        out = {}
        last = -1
        for base, value in got:
            for rec in batch_format.decode(value, base):
                assert rec.offset > last, "offsets not strictly increasing"
                last = rec.offset
                out[rec.offset] = (rec.key, rec.value)
        return out

    @invariant()
    def consumer_from_start_sees_a_compacted_log(self):
        seen = self.visible()
        with self.store.reader() as r:
            state = r.offsets(TP)
            headers = list(r.headers(TP))
        assert state[:3] == (0, state.high_watermark, len(self.model))
        for offset, (key, value) in seen.items():
            assert self.model[offset][:2] == (key, value), f"record at {offset} changed"
        for key, offset in self.latest().items():
            if offset in seen:
                continue
            assert offset in self.removed_tombstones, f"the latest record of {key!r} is gone"
            assert not any(k == key for k, _ in seen.values()), f"{key!r} resurrected"
        # Untouchable: the last batch, and everything at or past the high watermark.
        last_base = headers[-1][0] if headers else 0
        for offset in self.model:
            if offset >= min(last_base, state.high_watermark):
                assert offset in seen, f"record {offset} past the cleanable range is gone"
        # Every stored batch is one that was appended, with its identity kept.
        for base, _size, header in headers:
            appended = self.batches[base]
            assert header.last_offset_delta == appended.last_offset_delta
            assert header.partition_leader_epoch >= 0
            assert (header.producer_id, header.producer_epoch, header.base_sequence) == (
                appended.producer_id,
                appended.producer_epoch,
                appended.base_sequence,
            )
            assert header.first_timestamp == appended.first_timestamp
            assert header.max_timestamp <= appended.max_timestamp
            assert header.magic == appended.magic and header.codec == appended.codec

    @precondition(lambda self: self.compactions)
    @invariant()
    def batches_validate(self):
        with self.store.reader() as r:
            for _base, value in r.read(TP, 0, 1 << 40) if self.model else []:
                batch_format.validate(value)


@long_test
def test_compaction_keeps_what_a_compacted_log_must():
    run_state_machine_as_test(CompactionMatchesModel, settings=budget(100, steps=60))
