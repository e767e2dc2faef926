"""ipc/accumulator.py with time passed in: linger.ms, batch.size, buffer.memory
backpressure, flush, requeue and delivery.timeout.ms expiry."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvlog.errors import KafkaTimeoutError, ProducerClosedError
from kvlog.ipc.accumulator import (
    ACCELERATED,
    RECORD_OVERHEAD,
    NativeRecordAccumulator,
    PyRecordAccumulator,
)
from kvlog.types import TopicPartition

TP = TopicPartition("t", 0)
TP2 = TopicPartition("t", 1)

# Every test runs on the C accumulator and on its pure-Python twin.
IMPLEMENTATIONS = [PyRecordAccumulator] + ([NativeRecordAccumulator] if ACCELERATED else [])
_impl: list[type] = [PyRecordAccumulator]


@pytest.fixture(autouse=True, params=IMPLEMENTATIONS, ids=lambda cls: cls.__name__)
def implementation(request: pytest.FixtureRequest) -> None:
    _impl[0] = request.param


def make(**overrides: int) -> Any:
    config = {
        "batch_size": 1000,
        "linger_ms": 100,
        "buffer_memory": 100_000,
        "max_block_ms": 5000,
        "delivery_timeout_ms": 10_000,
    }
    config.update(overrides)
    return _impl[0](**config)


def rec(size: int) -> bytes:
    """A value whose record takes exactly ``size`` bytes of the accumulator's accounting."""
    return b"x" * (size - RECORD_OVERHEAD)


def test_linger_holds_a_partial_batch_until_due() -> None:
    acc = make(linger_ms=100)
    _, delta, filled = acc.append(TP, 1, None, rec(50), None, now=10.0)
    assert (delta, filled) == (0, False)
    assert acc.ready(10.05) == ([], pytest.approx(10.1))
    assert acc.drain(TP, 10.05) is None
    assert acc.ready(10.1)[0] == [TP]
    batch = acc.drain(TP, 10.1)
    assert batch is not None and batch.record_count == 1
    assert acc.drain(TP, 10.1) is None  # taken


def test_linger_counts_from_the_batch_first_record() -> None:
    acc = make(linger_ms=100)
    acc.append(TP, 1, None, rec(50), None, now=0.0)
    acc.append(TP, 2, None, rec(50), None, now=0.09)
    _, due = acc.ready(0.095)
    assert due == pytest.approx(0.1)
    batch = acc.drain(TP, 0.1)
    assert batch is not None and batch.record_count == 2
    assert batch.ts_deltas == [0, 1] and batch.first_timestamp == 1


def test_batch_size_closes_a_batch_before_linger() -> None:
    acc = make(batch_size=200, linger_ms=60_000)
    results = [acc.append(TP, 1, None, rec(50), None, now=0.0) for _ in range(5)]
    assert [r[1] for r in results] == [0, 1, 2, 3, 0]  # the 5th record starts a new batch
    assert [r[2] for r in results] == [False, False, False, True, False]
    assert results[0][0] is results[3][0] and results[4][0] is not results[0][0]
    ready, _ = acc.ready(0.0)
    assert ready == [TP]  # the full batch goes now, linger or not
    full = acc.drain(TP, 0.0)
    assert full is not None and full.record_count == 4 and full.size == 200
    assert acc.drain(TP, 0.0) is None  # the new open batch lingers


def test_a_record_larger_than_batch_size_gets_a_batch_of_its_own() -> None:
    acc = make(batch_size=100, linger_ms=60_000)
    acc.append(TP, 1, None, rec(40), None, now=0.0)
    _, delta, filled = acc.append(TP, 1, None, rec(500), None, now=0.0)
    assert (delta, filled) == (0, True)
    first = acc.drain(TP, 0.0)
    second = acc.drain(TP, 0.0)
    assert first is not None and first.record_count == 1 and first.size == 40
    assert second is not None and second.record_count == 1 and second.size == 500


def test_partitions_batch_independently() -> None:
    acc = make(linger_ms=100)
    acc.append(TP, 1, None, rec(50), None, now=0.0)
    acc.append(TP2, 1, None, rec(50), None, now=0.05)
    assert acc.ready(0.1)[0] == [TP]
    assert sorted(acc.ready(0.16)[0]) == [TP, TP2]


def test_flush_sends_lingering_batches_now() -> None:
    acc = make(linger_ms=60_000)
    acc.append(TP, 1, None, rec(50), None, now=0.0)
    assert acc.ready(1.0)[0] == []
    acc.begin_flush()
    try:
        assert acc.ready(1.0)[0] == [TP]
        batch = acc.drain(TP, 1.0)
        assert batch is not None
    finally:
        acc.end_flush()
    assert [b is batch for b in acc.incomplete()] == [True]  # sent, not yet acknowledged
    acc.complete(batch)
    assert acc.incomplete() == []


def test_buffer_memory_blocks_send_until_a_batch_completes() -> None:
    acc = make(buffer_memory=1000, batch_size=400, max_block_ms=10_000)
    for _ in range(5):
        acc.append(TP, 1, None, rec(200), None, now=0.0)  # 1000 bytes held
    outcome: list[object] = []

    def blocked_send() -> None:
        try:
            outcome.append(acc.append(TP, 1, None, rec(200), None, now=0.0))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=blocked_send)
    thread.start()
    thread.join(0.3)
    assert thread.is_alive() and not outcome, "send() did not wait for buffer memory"
    batch = acc.drain(TP, 0.0)  # the first full batch (400 bytes) is sent ...
    assert batch is not None and batch.size == 400
    acc.complete(batch)  # ... and acknowledged: its memory comes back
    thread.join(5)
    assert not thread.is_alive() and len(outcome) == 1
    assert not isinstance(outcome[0], Exception), outcome


def test_buffer_memory_full_for_max_block_ms_raises_kafka_timeout() -> None:
    acc = make(buffer_memory=500, batch_size=400, max_block_ms=50)
    acc.append(TP, 1, None, rec(400), None, now=0.0)
    started = time.monotonic()
    with pytest.raises(KafkaTimeoutError) as info:
        acc.append(TP, 1, None, rec(200), None, now=0.0)
    assert time.monotonic() - started < 5
    assert "buffer.memory" in str(info.value) and "max.block.ms" in str(info.value)
    assert info.value.retriable


def test_one_record_bigger_than_buffer_memory_still_goes_when_nothing_is_held() -> None:
    acc = make(buffer_memory=100, max_block_ms=50)
    acc.append(TP, 1, None, rec(300), None, now=0.0)  # does not wait for room forever
    assert acc.has_unsent


def test_close_wakes_a_blocked_send() -> None:
    acc = make(buffer_memory=200, batch_size=200, max_block_ms=10_000)
    acc.append(TP, 1, None, rec(200), None, now=0.0)
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            acc.append(TP, 1, None, rec(100), None, now=0.0)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    thread.join(0.2)
    assert thread.is_alive()
    acc.close()
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], ProducerClosedError)
    with pytest.raises(ProducerClosedError):
        acc.append(TP, 1, None, rec(10), None, now=0.0)


def test_expiry_after_delivery_timeout() -> None:
    acc = make(linger_ms=60_000, batch_size=100, delivery_timeout_ms=1000)
    acc.append(TP, 1, None, rec(100), None, now=0.0)  # full: queued
    acc.append(TP, 1, None, rec(50), None, now=0.5)  # open
    acc.append(TP2, 1, None, rec(50), None, now=0.2)  # open, another partition
    assert acc.expired(0.99) == []
    expired = acc.expired(1.0)
    assert [(b.tp, b.size) for b in expired] == [(TP, 100)]
    assert [(b.tp, b.size) for b in acc.expired(1.3)] == [(TP2, 50)]
    assert [(b.tp, b.size) for b in acc.expired(1.5)] == [(TP, 50)]
    assert not acc.has_unsent


def test_abort_all_takes_queued_batches_then_open_ones_whatever_their_deadline() -> None:
    acc = make(linger_ms=60_000, batch_size=100, delivery_timeout_ms=1000)
    acc.append(TP, 1, None, rec(100), None, now=0.0)  # full: queued
    acc.append(TP, 1, None, rec(50), None, now=0.5)  # open
    acc.append(TP2, 1, None, rec(50), None, now=0.2)  # open, another partition
    taken = sorted((b.tp, b.size) for b in acc.abort_all())
    assert taken == sorted([(TP, 100), (TP, 50), (TP2, 50)])
    assert not acc.has_unsent and acc.abort_all() == []


def test_requeue_front_keeps_order_and_waits_for_the_backoff() -> None:
    acc = make(batch_size=100, linger_ms=0)
    for _ in range(3):
        acc.append(TP, 1, None, rec(100), None, now=0.0)
    first, second = acc.drain(TP, 0.0), acc.drain(TP, 0.0)
    assert first is not None and second is not None
    acc.requeue_front([first, second], retry_at=5.0)
    assert acc.ready(1.0) == ([], 5.0)
    assert acc.drain(TP, 1.0) is None
    assert acc.drain(TP, 5.0) is first
    assert acc.drain(TP, 5.0) is second
    third = acc.drain(TP, 5.0)
    assert third is not None and third not in (first, second)


def test_append_records_splits_over_batches_in_one_call() -> None:
    acc = make(batch_size=250, linger_ms=60_000)
    acc.set_topic("t", [TP, TP2], 0)
    values = [rec(100) for _ in range(5)]
    batches, batch_of, deltas = acc.append_records("t", values, None, 0, 7, now=0.0)
    runs = list(zip(memoryview(batch_of).cast("i"), memoryview(deltas).cast("i"), strict=True))
    assert runs == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]  # two records per batch
    assert acc.queued(TP) == 2  # the first two closed: a third record did not fit
    sent = []
    acc.begin_flush()
    while (batch := acc.drain(TP, 0.0)) is not None:
        sent.append(batch)
    acc.end_flush()
    assert [b.future for b in sent] == [b.future for b in batches]
    assert sum(b.record_count for b in sent) == 5
    assert all(b.size <= 250 for b in sent)


def test_completing_twice_frees_memory_once() -> None:
    acc = make(buffer_memory=1000, batch_size=500, max_block_ms=50)
    acc.append(TP, 1, None, rec(500), None, now=0.0)
    batch = acc.drain(TP, 0.0)
    assert batch is not None
    acc.complete(batch)
    acc.complete(batch)
    acc.append(TP, 1, None, rec(500), None, now=0.0)
    acc.append(TP, 1, None, rec(500), None, now=0.0)
    with pytest.raises(KafkaTimeoutError):  # 1000 held: a double free would have let it in
        acc.append(TP, 1, None, rec(500), None, now=0.0)


def _drain_all(acc: Any, tps: list[TopicPartition]) -> dict[TopicPartition, list]:
    acc.begin_flush()
    out: dict[TopicPartition, list] = {}
    for tp in tps:
        while (batch := acc.drain(tp, 0.0)) is not None:
            out.setdefault(tp, []).append((batch.keys, batch.values, batch.size))
    acc.end_flush()
    return out


@settings(max_examples=150, deadline=None)
@given(
    calls=st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 3),
                st.one_of(st.none(), st.binary(max_size=20)),
                st.one_of(st.none(), st.binary(max_size=120)),
            ),
            max_size=30,
        ),
        max_size=8,
    ),
    batch_size=st.integers(50, 400),
)
def test_append_records_builds_the_batches_append_would(calls, batch_size) -> None:
    # send_batch's path (one call for many records) must cut batches exactly where
    # record-by-record send() would.
    tps = [TopicPartition("t", p) for p in range(4)]
    one_by_one = make(batch_size=batch_size, linger_ms=60_000)
    grouped = make(batch_size=batch_size, linger_ms=60_000)
    grouped.set_topic("t", tps, 0)
    for records in calls:
        for p, key, value in records:
            one_by_one.append(tps[p], 5, key, value, None, now=0.0)
        groups: dict[int, tuple[list, list]] = {}
        for p, key, value in records:
            keys, values = groups.setdefault(p, ([], []))
            keys.append(key)
            values.append(value)
        for p, (keys, values) in groups.items():
            batches, batch_of, _ = grouped.append_records("t", values, keys, p, 5, now=0.0)
            assert len(batch_of) == 4 * len(values)
            assert {b.tp for b in batches} <= {tps[p]}
        # Full batches are ready at once (linger.ms is a minute), the same ones.
        assert sorted(grouped.ready(0.0)[0]) == sorted(one_by_one.ready(0.0)[0])
    assert _drain_all(grouped, tps) == _drain_all(one_by_one, tps)
