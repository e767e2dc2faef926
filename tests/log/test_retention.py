"""Retention: the pure policy (retention_cutoff) and the Sweeper on both stores."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from logtest_util import all_batches, budget, check_partition, make_batch

from kvlog.errors import UnknownTopicOrPartitionError
from kvlog.retention import BatchInfo, Sweeper, SweepResult, retention_cutoff
from kvlog.topic_config import DAY_MS, TOPIC_CONFIG, UNLIMITED
from kvlog.types import TopicPartition

NOW = 1_700_000_000_000
TP = TopicPartition("logs", 0)
TP1 = TopicPartition("logs", 1)
KEEP = TopicPartition("unknown", 0)


def test_kafka_defaults():
    assert TOPIC_CONFIG["retention.ms"].default == 7 * DAY_MS
    assert TOPIC_CONFIG["retention.bytes"].default == UNLIMITED


# -- the policy -----------------------------------------------------------------------------


def infos(*batches: tuple[int, int, int]) -> list[BatchInfo]:
    """Contiguous batches from offset 0 given (record count, size, max timestamp)."""
    out, base = [], 0
    for count, size, ts in batches:
        out.append(BatchInfo(base, base + count, size, ts))
        base += count
    return out


def cutoff(batches: list[BatchInfo], *, hw: int | None = None, ms=UNLIMITED, size=UNLIMITED):
    return retention_cutoff(
        batches,
        total_bytes=sum(b.size_bytes for b in batches),
        high_watermark=batches[-1].next_offset if hw is None else hw,
        retention_ms=ms,
        retention_bytes=size,
        now_ms=NOW,
    )


def test_both_rules_disabled_keeps_everything():
    batches = infos((1, 100, 0), (1, 100, 0))
    assert cutoff(batches) is None


def test_time_rule_goes_by_the_newest_record():
    batches = infos((2, 10, NOW - 1001), (3, 10, NOW - 1000), (1, 10, NOW - 5000))
    assert cutoff(batches, ms=1000) == 2  # the second is exactly retention.ms old: kept
    assert cutoff(batches, ms=999) == 6
    assert cutoff(batches, ms=1001) is None
    assert cutoff(batches, ms=0) == 6


def test_deletion_stops_at_the_first_batch_that_stays():
    # The third batch is old, but the second is not: the log stays a contiguous suffix.
    batches = infos((1, 10, NOW - 10_000), (1, 10, NOW), (1, 10, NOW - 10_000))
    assert cutoff(batches, ms=1000) == 1


def test_never_past_the_high_watermark():
    batches = infos((2, 10, 0), (2, 10, 0), (2, 10, 0))
    assert cutoff(batches, ms=1, hw=6) == 6
    assert cutoff(batches, ms=1, hw=5) == 4  # the last batch is not fully below the HW
    assert cutoff(batches, ms=1, hw=3) == 2
    assert cutoff(batches, ms=1, hw=1) is None
    assert cutoff(batches, size=0, hw=3) == 2


def test_size_rule_keeps_at_least_retention_bytes():
    batches = infos((1, 100, NOW), (1, 200, NOW), (1, 300, NOW))  # 600 bytes
    assert cutoff(batches, size=600) is None
    assert cutoff(batches, size=500) == 1  # 500 left
    assert cutoff(batches, size=499) == 1
    assert cutoff(batches, size=300) == 2  # 300 left
    assert cutoff(batches, size=299) == 2  # the last batch would leave 0 < 299
    assert cutoff(batches, size=0) == 3


def test_either_rule_deletes():
    batches = infos((1, 100, NOW - 10), (1, 100, NOW), (1, 100, NOW))
    assert cutoff(batches, ms=5, size=UNLIMITED) == 1
    assert cutoff(batches, ms=UNLIMITED, size=100) == 2
    assert cutoff(batches, ms=5, size=100) == 2


def test_batches_are_consumed_only_as_far_as_needed():
    seen = []

    def lazy() -> Iterator[BatchInfo]:
        for info in infos((1, 10, 0), (1, 10, NOW), (1, 10, 0), (1, 10, 0)):
            seen.append(info.base_offset)
            yield info

    got = retention_cutoff(
        lazy(), total_bytes=40, high_watermark=4, retention_ms=5, retention_bytes=-1, now_ms=NOW
    )
    assert got == 1
    assert seen == [0, 1]


@st.composite
def logs(draw: st.DrawFn) -> tuple[list[BatchInfo], int]:
    shape = draw(
        st.lists(
            st.tuples(st.integers(1, 5), st.integers(1, 500), st.integers(NOW - 10_000, NOW)),
            min_size=1,
            max_size=15,
        )
    )
    batches = infos(*shape)
    hw = draw(st.integers(0, batches[-1].next_offset))
    return batches, hw


@budget(300)
@given(
    log=logs(),
    retention_ms=st.one_of(st.just(UNLIMITED), st.integers(0, 12_000)),
    retention_bytes=st.one_of(st.just(UNLIMITED), st.integers(0, 8000)),
)
def test_cutoff_properties(log, retention_ms, retention_bytes):
    batches, hw = log
    total = sum(b.size_bytes for b in batches)
    got = retention_cutoff(
        batches,
        total_bytes=total,
        high_watermark=hw,
        retention_ms=retention_ms,
        retention_bytes=retention_bytes,
        now_ms=NOW,
    )
    if retention_ms == UNLIMITED and retention_bytes == UNLIMITED:
        assert got is None
        return
    ends = [b.next_offset for b in batches]
    deleted = 0 if got is None else ends.index(got) + 1  # always a batch boundary
    assert got is None or got <= hw
    kept_bytes = total - sum(b.size_bytes for b in batches[:deleted])

    def deletable(info: BatchInfo, remaining: int) -> bool:
        old = retention_ms != UNLIMITED and NOW - info.max_timestamp > retention_ms
        big = retention_bytes != UNLIMITED and remaining - info.size_bytes >= retention_bytes
        return info.next_offset <= hw and (old or big)

    remaining = total
    for info in batches[:deleted]:
        assert deletable(info, remaining), info
        remaining -= info.size_bytes
    if deleted < len(batches):
        assert not deletable(batches[deleted], remaining), "stopped before a deletable batch"
    if retention_ms == UNLIMITED and deleted:
        assert kept_bytes >= retention_bytes
    if retention_bytes == UNLIMITED:
        assert all(NOW - b.max_timestamp > retention_ms for b in batches[:deleted])


# -- the sweeper ----------------------------------------------------------------------------


def put_batches(store, tp: TopicPartition, ages_ms: list[int], *, value_size: int = 50) -> None:
    store.create_partition(tp)
    for i, age in enumerate(ages_ms):
        batch = make_batch(2, tag=f"{tp}-{i}", value_size=value_size, timestamp_ms=NOW - age - 1)
        store.write(lambda w, b=batch: w.append(tp, [b]))


class Configs:
    def __init__(self, configs: dict[str, dict]) -> None:
        self.configs = configs

    def __call__(self, topic: str) -> dict | None:
        return self.configs.get(topic)


def offsets(store, tp=TP):
    with store.reader() as r:
        return r.offsets(tp)


def test_sweeper_applies_kafkas_defaults(store):
    day = DAY_MS
    # make_batch's newest record is timestamp_ms + 1 = NOW - age.
    put_batches(store, TP, [8 * day, 7 * day + 1, 7 * day, 1 * day])
    put_batches(store, KEEP, [30 * day])
    sweeper = Sweeper(store, Configs({"logs": {}}))
    before = all_batches(store, TP)

    assert sweeper.sweep(NOW) == [SweepResult(TP, 0, 4, len(before[0][1]) + len(before[1][1]))]
    assert all_batches(store, TP) == before[2:]
    assert offsets(store, KEEP).log_start_offset == 0  # no config: left alone
    assert sweeper.sweep(NOW) == []  # nothing more is old enough
    assert sweeper.sweep(NOW + 1)[0].new_log_start == 6
    assert sweeper.sweep(NOW + 6 * day) == []  # exactly 7 days old: kept
    assert sweeper.sweep(NOW + 6 * day + 1)[0].new_log_start == 8
    assert offsets(store) == (8, 8, 8, 0)
    check_partition(store, TP)


def test_sweeper_never_deletes_past_the_high_watermark(store):
    put_batches(store, TP, [10_000, 10_000, 10_000])
    store.write(lambda w: w.set_high_watermark(TP, 3))
    sweeper = Sweeper(store, Configs({"logs": {"retention.ms": 1}}))
    assert sweeper.sweep(NOW)[0].new_log_start == 2
    store.write(lambda w: w.set_high_watermark(TP, 6))
    assert sweeper.sweep(NOW)[0].new_log_start == 6
    check_partition(store, TP)


def test_sweeper_size_rule(store):
    put_batches(store, TP, [0] * 6, value_size=100)
    size = offsets(store).size_bytes // 6
    sweeper = Sweeper(store, Configs({"logs": {"retention.ms": -1, "retention.bytes": 2 * size}}))
    result = sweeper.sweep(NOW)
    assert result == [SweepResult(TP, 0, 8, 4 * size)]
    assert offsets(store).size_bytes == 2 * size
    assert sweeper.sweep(NOW) == []


def test_unlimited_retention_keeps_everything(store):
    put_batches(store, TP, [400 * DAY_MS] * 3)
    sweeper = Sweeper(store, Configs({"logs": {"retention.ms": -1, "retention.bytes": -1}}))
    assert sweeper.sweep(NOW + 1000 * DAY_MS) == []
    assert offsets(store).log_start_offset == 0


def test_sweeper_deletes_in_bounded_transactions(store):
    put_batches(store, TP, [10_000] * 7)
    writes = []
    real_write = store.write

    class Counting:
        def partitions(self):
            return store.partitions()

        def reader(self):
            return store.reader()

        def write(self, fn):
            writes.append(fn)
            return real_write(fn)

    sweeper = Sweeper(Counting(), Configs({"logs": {"retention.ms": 1}}), max_batches_per_txn=3)
    [result] = sweeper.sweep(NOW)
    assert (result.old_log_start, result.new_log_start) == (0, 14)
    assert result.bytes_freed > 0 and offsets(store).size_bytes == 0
    assert len(writes) == 3  # 3 + 3 + 1 batches


def test_reading_never_deletes(store):
    put_batches(store, TP, [0, 0, 0])
    before = offsets(store)
    for _ in range(3):
        for offset in range(before.log_end_offset):
            with store.reader() as r:
                r.read(TP, offset, 1)
                list(r.headers(TP, offset))
    assert offsets(store) == before
    assert Sweeper(store, Configs({"logs": {}})).sweep(NOW) == []
    assert offsets(store) == before


def test_a_partition_dropped_during_the_sweep_is_skipped(store):
    put_batches(store, TP, [10_000] * 2)
    put_batches(store, TP1, [10_000] * 2)

    def config_for(topic: str) -> dict:
        if store.has_partition(TP):
            store.drop_partition(TP)  # gone between listing and sweeping
        return {"retention.ms": 1}

    results = Sweeper(store, config_for).sweep(NOW)
    assert [r.tp for r in results] == [TP1]
    with pytest.raises(UnknownTopicOrPartitionError):
        offsets(store, TP)
    assert offsets(store, TP1).log_start_offset == 4
