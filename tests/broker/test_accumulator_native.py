"""The C accumulator (kvlog._accumulator) against its pure-Python twin.

Both get the same records through ``send()`` and ``append_records()`` (send_batch's
path) and must agree on everything a record's fate depends on: the partition (murmur2,
sticky, given), its offset delta, the batch boundaries, the batches' headers and their
payload bytes (which must decode to the records sent). Then record handles: every one
gets its offset, and a failed batch fails each of its records.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvlog import batch as batch_format
from kvlog.errors import (
    InvalidPartitionsError,
    InvalidTimestampError,
    NotEnoughReplicasError,
    ProducerClosedError,
    SerializationError,
)
from kvlog.ipc.accumulator import ACCELERATED, NativeRecordAccumulator, PyRecordAccumulator
from kvlog.ipc.futures import BatchSendResult
from kvlog.partitioner import partition_for_key_py
from kvlog.types import TopicPartition

pytestmark = pytest.mark.skipif(not ACCELERATED, reason="kvlog._accumulator is not built")

TOPICS = {"a": 3, "b": 1}
RECORD_SIZE = 100  # 12 bytes of accounting + an 88-byte value


class Hooks:
    """Deterministic hooks: the sticky partition moves to the next one; wakes counted."""

    def __init__(self) -> None:
        self.wakes = 0
        self.sticky_calls: list[tuple[str, int, int]] = []

    def topic_partitions(self, topic: str) -> tuple[list[TopicPartition], int]:
        return [TopicPartition(topic, p) for p in range(TOPICS[topic])], 7

    def choose_sticky(self, topic: str, count: int, current: int) -> int:
        self.sticky_calls.append((topic, count, current))
        return (current + 1) % count if current >= 0 else count - 1

    def wake(self) -> None:
        self.wakes += 1


def make(cls: type, hooks: Hooks, **overrides: Any) -> Any:
    config: dict[str, Any] = {
        "batch_size": 300,
        "linger_ms": 60_000,
        "buffer_memory": 1 << 24,
        "max_block_ms": 1000,
        "delivery_timeout_ms": 120_000,
        "hooks": hooks,
    }
    config.update(overrides)
    return cls(**config)


def drained(acc: Any) -> list[tuple[Any, ...]]:
    """Every batch, in order per partition: what the sender would send."""
    acc.begin_flush()
    out = []
    try:
        for topic, count in TOPICS.items():
            for p in range(count):
                tp = TopicPartition(topic, p)
                while (batch := acc.drain(tp, 0.0)) is not None:
                    out.append(
                        (
                            batch.tp,
                            batch.record_count,
                            batch.size,
                            batch.first_timestamp,
                            batch.max_timestamp,
                            batch.payload(),
                        )
                    )
    finally:
        acc.end_flush()
    return out


headers_st = st.one_of(
    st.none(),
    st.lists(
        st.tuples(st.text(max_size=6), st.binary(max_size=8)),
        max_size=3,
    ),
)
record_st = st.tuples(
    st.sampled_from(sorted(TOPICS)),
    st.one_of(st.none(), st.binary(max_size=120)),  # value
    st.one_of(st.none(), st.binary(max_size=24)),  # key
    headers_st,
    st.one_of(st.none(), st.integers(0, 2)),  # partition (checked against the topic)
    st.integers(1_700_000_000_000, 1_700_000_000_050),  # timestamp
)


def _send(acc: Any, record: tuple[Any, ...]) -> tuple[Any, ...]:
    topic, value, key, headers, partition, ts = record
    try:
        h = acc.send(topic, value, key, headers, partition, ts)
    except InvalidPartitionsError as exc:
        return ("refused", str(exc))
    return (h.topic, h.partition, h._delta, h.timestamp, h._key_size, h._value_size)


@settings(max_examples=200, deadline=None)
@given(records=st.lists(record_st, max_size=60), batch_size=st.integers(40, 600))
def test_send_places_and_encodes_records_as_the_python_twin(records, batch_size) -> None:
    hooks = [Hooks(), Hooks()]
    accs = [
        make(cls, h, batch_size=batch_size)
        for cls, h in zip((NativeRecordAccumulator, PyRecordAccumulator), hooks, strict=True)
    ]
    for record in records:
        placed = [_send(acc, record) for acc in accs]
        assert placed[0] == placed[1], record
        topic, _, key, _, partition, _ = record
        if placed[0][0] != "refused" and partition is None and key is not None:
            assert placed[0][1] == partition_for_key_py(key, TOPICS[topic])  # Kafka's murmur2
    assert [accs[0].sticky(t) for t in TOPICS] == [accs[1].sticky(t) for t in TOPICS]
    assert hooks[0].sticky_calls == hooks[1].sticky_calls
    assert hooks[0].wakes == hooks[1].wakes
    native, python = (drained(acc) for acc in accs)
    assert native == python
    for _tp, count, _, first, _, payload in native:
        frame = batch_format.encode_payload(
            payload, count, first_timestamp=first, max_timestamp=first
        )
        assert len(batch_format.decode(frame, 0)) == count


def test_a_batch_decodes_to_the_records_sent() -> None:
    acc = make(NativeRecordAccumulator, Hooks(), batch_size=1 << 20)
    sent = [
        (b"v1", b"k1", None, 1_000),
        (None, b"k2", [("h", b"1"), ("\u00e9", bytearray(b"\x00"))], 1_005),
        (b"", None, None, 990),
        (b"v4", None, [], 1_000),
    ]
    for value, key, headers, ts in sent:
        acc.send("b", value, key, headers, None, ts)
    ((tp, count, _, first, top, payload),) = drained(acc)
    assert (tp, count, first, top) == (TopicPartition("b", 0), 4, 1_000, 1_005)
    frame = batch_format.encode_payload(payload, count, first_timestamp=first, max_timestamp=top)
    records = batch_format.decode(frame, 10)
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in records] == [
        (10, 1_000, b"k1", b"v1", []),
        (11, 1_005, b"k2", None, [("h", b"1"), ("\u00e9", b"\x00")]),
        (12, 990, None, b"", []),
        (13, 1_000, None, b"v4", []),
    ]


@settings(max_examples=150, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from(sorted(TOPICS)),
            st.lists(st.one_of(st.none(), st.binary(max_size=80)), max_size=40),
            st.booleans(),  # keyed
            st.one_of(st.none(), st.just(0)),  # partition
        ),
        max_size=6,
    ),
    batch_size=st.integers(40, 900),
)
def test_append_records_places_records_as_the_python_twin(calls, batch_size) -> None:
    hooks = [Hooks(), Hooks()]
    accs = [
        make(cls, h, batch_size=batch_size)
        for cls, h in zip((NativeRecordAccumulator, PyRecordAccumulator), hooks, strict=True)
    ]
    for topic, values, keyed, partition in calls:
        keys = [b"k%d" % i if i % 3 else None for i in range(len(values))] if keyed else None
        results = []
        for acc in accs:
            batches, batch_of, deltas = acc.append_records(topic, values, keys, partition, 5, 0.0)
            result = BatchSendResult.of_columns(topic, 5, batches, batch_of, deltas)
            results.append(
                (
                    [b.tp for b in batches],
                    bytes(batch_of),
                    bytes(deltas),
                    len(result),
                )
            )
        assert results[0] == results[1]
    assert hooks[0].sticky_calls == hooks[1].sticky_calls
    assert drained(accs[0]) == drained(accs[1])


@pytest.mark.parametrize("cls", [NativeRecordAccumulator, PyRecordAccumulator])
def test_sticky_partition_moves_when_its_batch_fills(cls: type) -> None:
    hooks = Hooks()
    acc = make(cls, hooks, batch_size=RECORD_SIZE * 3)
    partitions = [acc.send("a", b"x" * 88, None, None, None, 1).partition for _ in range(7)]
    # Three records per batch; each full batch moves the sticky partition on.
    assert partitions == [2, 2, 2, 0, 0, 0, 1]
    assert hooks.sticky_calls == [("a", 3, -1), ("a", 3, 2), ("a", 3, 0)]


@pytest.mark.parametrize("cls", [NativeRecordAccumulator, PyRecordAccumulator])
def test_send_refuses_what_it_cannot_send(cls: type) -> None:
    acc = make(cls, Hooks())
    with pytest.raises(InvalidPartitionsError, match="partition 3 does not exist"):
        acc.send("a", b"v", None, None, 3)
    with pytest.raises(SerializationError, match="header values must be bytes"):
        acc.send("a", b"v", None, [("h", "text")])
    with pytest.raises(InvalidTimestampError):
        acc.send("a", b"v", None, None, None, -1)
    with pytest.raises(InvalidTimestampError):
        acc.send("a", b"v", None, None, None, True)
    assert not acc.has_unsent  # nothing was half-appended
    acc.refuse()
    with pytest.raises(ProducerClosedError, match="closed producer"):
        acc.send("a", b"v")


@pytest.mark.parametrize("cls", [NativeRecordAccumulator, PyRecordAccumulator])
def test_serializers_apply_before_the_append(cls: type) -> None:
    acc = make(
        cls,
        Hooks(),
        key_serializer=lambda k: None if k is None else str(k).encode(),
        value_serializer=lambda v: bytearray(b"<%s>" % str(v).encode()),
        raw_keys=False,
        raw_values=False,
    )
    handle = acc.send("b", {"x": 1}, 42, None, None, 7)
    assert (handle._key_size, handle._value_size) == (2, 10)
    ((_, count, _, _, _, payload),) = drained(acc)
    frame = batch_format.encode_payload(payload, count, first_timestamp=7, max_timestamp=7)
    (record,) = batch_format.decode(frame, 0)
    assert (record.key, record.value) == (b"42", b"<{'x': 1}>")
    bad = make(cls, Hooks(), value_serializer=lambda v: 5, raw_values=False)
    with pytest.raises(SerializationError, match="not bytes"):
        bad.send("b", "v")


@pytest.mark.parametrize("cls", [NativeRecordAccumulator, PyRecordAccumulator])
def test_every_record_handle_gets_its_offset_or_its_batch_error(cls: type) -> None:
    acc = make(cls, Hooks(), batch_size=RECORD_SIZE * 4)
    handles = [acc.send("b", b"x" * 88, None, None, None, 1) for _ in range(10)]
    batches: list[Any] = []
    acc.begin_flush()
    while (batch := acc.drain(TopicPartition("b", 0), 0.0)) is not None:
        batches.append(batch)
    acc.end_flush()
    assert [b.record_count for b in batches] == [4, 4, 2]
    batches[0].future.set_result(100)
    batches[1].future.set_exception(NotEnoughReplicasError("only 1 in sync"))
    batches[2].future.set_result(300, 50)
    for b in batches:
        acc.complete(b)
    assert [h.get(timeout=0).offset for h in handles[:4]] == [100, 101, 102, 103]
    for h in handles[4:8]:
        with pytest.raises(NotEnoughReplicasError):
            h.get(timeout=0)
        assert h.failed()
    assert [(m.offset, m.log_start_offset) for m in (h.get(0) for h in handles[8:])] == [
        (300, 50),
        (301, 50),
    ]
    assert not acc.incomplete()


def test_a_completed_native_batch_drops_its_records() -> None:
    acc = make(NativeRecordAccumulator, Hooks())
    handle = acc.send("b", b"v", b"k", None, None, 1)
    acc.begin_flush()
    batch = acc.drain(TopicPartition("b", 0), 0.0)
    acc.end_flush()
    assert batch is handle._batch and batch.payload()
    batch.set_result(5)
    assert handle.get(0).offset == 5
    with pytest.raises(ValueError, match="completed"):
        batch.payload()


@pytest.mark.parametrize("cls", [NativeRecordAccumulator, PyRecordAccumulator])
def test_send_yields_to_the_sender_only_while_it_moves(cls: type) -> None:
    # One closed batch waiting is enough to yield; each record fills a batch.
    acc = make(cls, Hooks(), batch_size=RECORD_SIZE, yield_batches=1, yield_timeout_s=10.0)
    started = time.monotonic()
    threading.Timer(0.2, acc.progress).start()
    acc.send("b", b"x" * 88, None, None, None, 1)  # queued: 1 -> waits for progress()
    waited = time.monotonic() - started
    assert 0.15 <= waited < 5, waited  # ended by the sender's progress, not the timeout
    assert not acc.stalled
    # A sender that does not move: one wait of yield_timeout_s, then none until it does.
    acc = make(cls, Hooks(), batch_size=RECORD_SIZE, yield_batches=1, yield_timeout_s=0.1)
    started = time.monotonic()
    for _ in range(20):
        acc.send("b", b"x" * 88, None, None, None, 1)
    assert 0.09 <= time.monotonic() - started < 1.0
    assert acc.stalled and acc.queued(TopicPartition("b", 0)) == 20
    acc.progress()
    assert not acc.stalled


@pytest.mark.parametrize("cls", [NativeRecordAccumulator, PyRecordAccumulator])
def test_send_on_the_sender_thread_never_waits_for_itself(cls: type) -> None:
    # A produce callback runs on the I/O thread; a send() there must not wait for it.
    acc = make(cls, Hooks(), batch_size=RECORD_SIZE, yield_batches=1, yield_timeout_s=30.0)
    took: list[float] = []

    def sender() -> None:
        acc.sender_thread()
        started = time.monotonic()
        for _ in range(3):
            acc.send("b", b"x" * 88, None, None, None, 1)
        took.append(time.monotonic() - started)

    thread = threading.Thread(target=sender)
    thread.start()
    thread.join(20)
    assert took and took[0] < 5 and not acc.stalled


MANY = 300  # partitions: send_batch's grouped path (kvlog/_acc_send_batch.c, append_grouped)


class ManyHooks(Hooks):
    def topic_partitions(self, topic: str) -> tuple[list[TopicPartition], int]:
        return [TopicPartition(topic, p) for p in range(MANY)], 7


def drained_many(acc: Any) -> list[tuple[Any, ...]]:
    acc.begin_flush()
    out = []
    try:
        for p in range(MANY):
            while (batch := acc.drain(TopicPartition("m", p), 0.0)) is not None:
                out.append((batch.tp, batch.record_count, batch.size, batch.payload()))
    finally:
        acc.end_flush()
    return out


@settings(max_examples=60, deadline=None)
@given(
    calls=st.lists(
        st.lists(
            st.tuples(
                st.binary(min_size=0, max_size=6),  # key: few distinct ones, so repeats
                st.one_of(st.none(), st.binary(max_size=80)),
            ),
            max_size=120,
        ),
        max_size=5,
    ),
    batch_size=st.integers(40, 900),
)
def test_append_records_grouped_by_partition_as_the_python_twin(calls, batch_size) -> None:
    """Keyed bytes records over many partitions take the grouped path in C: the same
    batches (in the order of their first record), batch_of, deltas and payloads as the
    record-by-record Python twin."""
    accs = [
        make(cls, ManyHooks(), batch_size=batch_size)
        for cls in (NativeRecordAccumulator, PyRecordAccumulator)
    ]
    for records in calls:
        keys = [k for k, _ in records]
        values = [v for _, v in records]
        results = []
        for acc in accs:
            batches, batch_of, deltas = acc.append_records("m", values, keys, None, 5, 0.0)
            results.append(([b.tp for b in batches], bytes(batch_of), bytes(deltas)))
        assert results[0] == results[1]
    assert drained_many(accs[0]) == drained_many(accs[1])


def test_append_records_grouped_results_resolve_per_record() -> None:
    acc = make(NativeRecordAccumulator, ManyHooks(), batch_size=400)
    keys = [b"key-%d" % (i % 37) for i in range(500)]
    values = [b"v%d" % i for i in range(500)]
    batches, batch_of, deltas = acc.append_records("m", values, keys, None, 5, 0.0)
    result = BatchSendResult.of_columns("m", 5, batches, batch_of, deltas)
    assert len(result) == 500
    want = [partition_for_key_py(k, MANY) for k in keys]
    tps = [b.tp for b in batches]
    of = memoryview(batch_of).cast("i")
    assert [tps[of[i]].partition for i in range(500)] == want
    # Each partition's records keep the call's order: deltas count up per batch.
    seen: dict[int, int] = {}
    for i, d in enumerate(memoryview(deltas).cast("i")):
        b = of[i]
        assert d == seen.get(b, -1) + 1
        seen[b] = d
