"""The producer's record accumulator in Python: the twin of ``kvlog._accumulator``.

Used when the C extension is not built (or with ``KVLOG_PURE_PYTHON=1``), and the
reference the C accumulator is tested against (tests/broker/test_accumulator_native.py):
the same partitions, the same batch boundaries, the same payload bytes. What the
accumulator does is described in ipc/accumulator.py.

Time is passed in (monotonic seconds) so tests drive it by hand.
"""

from __future__ import annotations

import random
import threading
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from time import monotonic, time_ns
from typing import Any, Protocol

import cbor2

from kvlog.errors import (
    InvalidPartitionsError,
    KafkaTimeoutError,
    ProducerClosedError,
    SerializationError,
)
from kvlog.partitioner import partition_for_key
from kvlog.types import TopicPartition

from .client_args import check_timestamp, header_value
from .futures import BatchFuture, FutureRecordMetadata

RECORD_OVERHEAD = 12


class AccumulatorHooks(Protocol):
    """What the accumulator asks of its producer (called without the accumulator's
    state half-changed; any thread)."""

    def topic_partitions(self, topic: str) -> tuple[list[TopicPartition], int]:
        """The topic's partitions and the metadata version they are from (may block
        waiting for metadata)."""
        ...

    def choose_sticky(self, topic: str, count: int, current: int) -> int:
        """The next sticky partition for unkeyed records (``current`` -1: the first)."""
        ...

    def wake(self) -> None:
        """A batch is ready, or a new one started its linger.ms clock."""
        ...


class NoHooks:
    """Hooks for an accumulator without a producer (tests): topics come from the
    low-level API, sticky partitions are drawn at random, nobody is woken."""

    def topic_partitions(self, topic: str) -> tuple[list[TopicPartition], int]:
        raise LookupError(f"no producer to ask for topic {topic!r}'s partitions")

    def choose_sticky(self, topic: str, count: int, current: int) -> int:
        return random.choice([p for p in range(count) if p != current] or [current])

    def wake(self) -> None:
        pass


def _serialized(value: Any, what: str) -> bytes | None:
    """A serializer's result as bytes (the C twin copies any bytes-like result)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise SerializationError(f"the {what} serializer returned {type(value).__name__}, not bytes")


class ProducerBatch:
    """One partition's batch from first record to acknowledgement. Owned by the
    accumulator; the I/O thread sets its sequencing fields."""

    __slots__ = (
        "attempts",
        "base_sequence",
        "created",
        "deadline",
        "encoded",
        "first_timestamp",
        "future",
        "headers",
        "keys",
        "max_timestamp",
        "producer_epoch",
        "retry_at",
        "size",
        "tp",
        "ts_deltas",
        "values",
    )

    def __init__(self, tp: TopicPartition, now: float, delivery_timeout_s: float) -> None:
        self.tp = tp
        # The batch's columns, as the payload stores them (kvlog.batch).
        self.ts_deltas: list[int] = []
        self.keys: list[bytes | None] = []
        self.values: list[bytes | None] = []
        self.headers: list[list[list[Any]] | None] | None = None
        self.first_timestamp = 0
        self.max_timestamp = -1
        self.size = 0
        self.created = now
        self.deadline = now + delivery_timeout_s
        self.future = BatchFuture()
        self.base_sequence = -1
        self.producer_epoch = -1
        self.encoded: bytes | None = None
        self.attempts = 0
        self.retry_at = 0.0

    def __repr__(self) -> str:
        return f"<ProducerBatch {self.tp} n={len(self.values)} seq={self.base_sequence}>"

    @property
    def record_count(self) -> int:
        return len(self.values)

    def payload(self) -> bytes:
        """The records as kvlog's columnar CBOR payload (kvlog/batch.py), uncompressed."""
        ts = self.ts_deltas
        columns: list[Any] = [
            None,
            # One shared delta (a send_batch, or records sent in the same ms): one int.
            ts[0] if ts.count(ts[0]) == len(ts) else ts,
            self.keys,
            self.values,
        ]
        if self.headers is not None and any(self.headers):
            columns.append(self.headers)
        return cbor2.dumps(columns)


@dataclass
class _Topic:
    tps: list[TopicPartition]
    version: int
    sticky: int = -1
    count: int = field(init=False)

    def __post_init__(self) -> None:
        self.count = len(self.tps)


class PyRecordAccumulator:
    """Shared by user threads (send, append) and the I/O thread (ready/drain/complete):
    every method takes the one lock."""

    def __init__(
        self,
        *,
        batch_size: int,
        linger_ms: int,
        buffer_memory: int,
        max_block_ms: int,
        delivery_timeout_ms: int,
        hooks: AccumulatorHooks | None = None,
        key_serializer: Any = None,
        value_serializer: Any = None,
        raw_keys: bool = True,
        raw_values: bool = True,
        yield_batches: int = 0,
        yield_timeout_s: float = 0.005,
    ) -> None:
        self.batch_size = batch_size
        self.linger_s = linger_ms / 1000
        self.buffer_memory = buffer_memory
        self.max_block_s = max_block_ms / 1000
        self.delivery_timeout_s = delivery_timeout_ms / 1000
        self._hooks: AccumulatorHooks = hooks or NoHooks()
        self._key_serializer = key_serializer
        self._value_serializer = value_serializer
        self._raw_keys = raw_keys or key_serializer is None
        self._raw_values = raw_values or value_serializer is None
        self._yield_batches = yield_batches
        self._yield_timeout_s = yield_timeout_s
        # A plain Lock on the hot path (send); the Condition on the same lock is only
        # waited on when buffer.memory is full.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._open: dict[TopicPartition, ProducerBatch] = {}
        self._queues: dict[TopicPartition, deque[ProducerBatch]] = {}
        self._incomplete: dict[int, ProducerBatch] = {}
        self._topics: dict[str, _Topic] = {}
        self._version = -1
        self._used = 0
        self._flushing = 0
        self._refusing = False
        self._progress = 0
        self._progress_cond = threading.Condition()
        self._sender = -1
        self.stalled = False
        self.closed = False

    # -- topics ----------------------------------------------------------------------------

    def set_topic(self, topic: str, tps: list[TopicPartition], version: int) -> None:
        found = self._topics.get(topic)
        self._topics[topic] = _Topic(list(tps), version, found.sticky if found else -1)
        self._version = version

    def set_version(self, version: int) -> None:
        self._version = version

    def sticky(self, topic: str) -> int | None:
        found = self._topics.get(topic)
        return None if found is None or found.sticky < 0 else found.sticky

    def _topic_for_send(self, topic: str) -> _Topic:
        found = self._topics.get(topic)
        if found is None or found.version != self._version or not found.count:
            tps, version = self._hooks.topic_partitions(topic)
            self.set_topic(topic, tps, version)
            found = self._topics[topic]
        return found

    def _choose_sticky(self, info: _Topic, topic: str, current: int) -> int:
        partition = self._hooks.choose_sticky(topic, info.count, current)
        if not 0 <= partition < info.count:
            raise ValueError(f"choose_sticky gave partition {partition} of {info.count}")
        info.sticky = partition
        return partition

    def _partition(self, info: _Topic, topic: str, key: bytes | None, partition: int | None) -> int:
        count = info.count
        if partition is not None:
            if not 0 <= partition < count:
                raise InvalidPartitionsError(
                    f"partition {partition} does not exist: topic {topic!r} has {count}"
                )
            return partition
        if key is not None:
            return partition_for_key(key, count)
        if info.sticky < 0 or info.sticky >= count:
            return self._choose_sticky(info, topic, -1)
        return info.sticky

    # -- user threads ----------------------------------------------------------------------

    def send(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        headers: Iterable[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> FutureRecordMetadata:
        """Producer.send: serialize, pick the partition, append; a handle on the record."""
        if self._refusing:
            raise ProducerClosedError("send() on a closed producer; create a new one")
        key_bytes = self._field(key, self._raw_keys, self._key_serializer, "key")
        value_bytes = self._field(value, self._raw_values, self._value_serializer, "value")
        header_list = None
        if headers:
            header_list = [[str(name), header_value(hvalue)] for name, hvalue in headers]
        info = self._topic_for_send(topic)
        p = self._partition(info, topic, key_bytes, partition)
        ts = time_ns() // 1_000_000 if timestamp_ms is None else check_timestamp(timestamp_ms)
        future, delta, filled = self.append(
            info.tps[p], ts, key_bytes, value_bytes, header_list, monotonic()
        )
        handle = FutureRecordMetadata(
            future,
            delta,
            info.tps[p].topic,
            p,
            ts,
            -1 if key_bytes is None else len(key_bytes),
            -1 if value_bytes is None else len(value_bytes),
        )
        if filled and key_bytes is None and info.sticky == p:
            self._choose_sticky(info, topic, p)  # Kafka's sticky partitioner moves on
        if filled or delta == 0:
            self._hooks.wake()  # full: send it; new: its linger.ms clock starts
        if filled and self._wants_yield(info.tps[p]):
            self._yield()
        return handle

    @staticmethod
    def _field(value: Any, raw: bool, serializer: Any, what: str) -> bytes | None:
        if raw and (value is None or type(value) is bytes):
            return value
        return _serialized(serializer(value) if serializer is not None else value, what)

    def append(
        self,
        tp: TopicPartition,
        timestamp: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[list[Any]] | None,
        now: float,
    ) -> tuple[Any, int, bool]:
        """Add a record; returns its batch's future, its delta and whether a batch filled."""
        size = RECORD_OVERHEAD + (len(key) if key else 0) + (len(value) if value else 0)
        if headers:
            size += sum(len(h[0]) + len(h[1]) + 4 for h in headers)
        with self._lock:
            if self.closed:
                raise ProducerClosedError("the producer is closed; create a new one")
            if self._used + size > self.buffer_memory and self._used:
                self._wait_for_room(size)
            batch, delta, filled = self._put(tp, timestamp, key, value, headers, size, now)
            return batch.future, delta, filled

    def _put(
        self,
        tp: TopicPartition,
        timestamp: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[list[Any]] | None,
        size: int,
        now: float,
    ) -> tuple[ProducerBatch, int, bool]:
        """One record into its partition's open batch (lock held)."""
        batch = self._open.get(tp)
        filled = False
        if batch is not None and batch.size + size > self.batch_size:
            self._close(batch)
            filled = True
            batch = None
        if batch is None:
            batch = ProducerBatch(tp, now, self.delivery_timeout_s)
            self._open[tp] = batch
            self._incomplete[id(batch)] = batch
        # Three appends to the batch's columns: this runs once per record.
        values = batch.values
        delta = len(values)
        if not delta:
            batch.first_timestamp = timestamp
        if timestamp > batch.max_timestamp:
            batch.max_timestamp = timestamp
        batch.ts_deltas.append(timestamp - batch.first_timestamp)
        batch.keys.append(key)
        values.append(value)
        if headers or batch.headers is not None:
            if batch.headers is None:
                batch.headers = [None] * delta
            batch.headers.append(headers)
        batch.size += size
        self._used += size
        if batch.size >= self.batch_size:
            self._close(batch)
            filled = True
        return batch, delta, filled

    def _wait_for_room(self, size: int) -> None:
        if not self._cond.wait_for(
            lambda: self.closed or self._used + size <= self.buffer_memory or not self._used,
            self.max_block_s,
        ):
            raise KafkaTimeoutError(
                f"buffer.memory ({self.buffer_memory} bytes) stayed full for max.block.ms "
                f"({self.max_block_s * 1000:.0f} ms): the broker is not keeping up or is "
                "unreachable"
            )
        if self.closed:
            raise ProducerClosedError("the producer was closed while send() waited")

    def append_records(
        self,
        topic: str,
        values: Sequence[Any],
        keys: Sequence[Any] | None,
        partition: int | None,
        timestamp: int,
        now: float,
    ) -> tuple[list[ProducerBatch], bytes, bytes]:
        """send_batch's path: every record as send() would place it (a key's partition,
        the sticky one, or ``partition``), all with one timestamp. Returns the batches
        that hold them and, per record, the index of its batch and its delta (int32
        columns as bytes)."""
        with self._lock:
            if self.closed:
                raise ProducerClosedError("the producer is closed; create a new one")
        if keys is not None and len(keys) != len(values):
            raise ValueError(f"send_batch: {len(keys)} keys for {len(values)} values")
        info = self._topic_for_send(topic)
        if partition is not None:
            self._partition(info, topic, None, partition)  # checks it
        batches: list[ProducerBatch] = []
        seen: dict[int, int] = {}
        batch_of = array("i")
        deltas = array("i")
        must_yield = False
        for i, value in enumerate(values):
            key = None if keys is None else keys[i]
            key_bytes = self._field(key, self._raw_keys, self._key_serializer, "key")
            value_bytes = self._field(value, self._raw_values, self._value_serializer, "value")
            p = self._partition(info, topic, key_bytes, partition)
            size = RECORD_OVERHEAD + (len(key_bytes or b"")) + len(value_bytes or b"")
            with self._lock:
                if self.closed:
                    raise ProducerClosedError("the producer is closed; create a new one")
                if self._used + size > self.buffer_memory and self._used:
                    self._wait_for_room(size)
                batch, delta, filled = self._put(
                    info.tps[p], timestamp, key_bytes, value_bytes, None, size, now
                )
            index = seen.get(id(batch))
            if index is None:
                index = seen[id(batch)] = len(batches)
                batches.append(batch)
            batch_of.append(index)
            deltas.append(delta)
            if filled:
                must_yield = must_yield or self._wants_yield(info.tps[p])
                if partition is None and key_bytes is None and info.sticky == p:
                    self._choose_sticky(info, topic, p)
        if values:
            self._hooks.wake()  # full batches go now; new ones start their linger.ms clock
        if must_yield and not self.stalled and not self.closed:
            self._yield()
        return batches, batch_of.tobytes(), deltas.tobytes()

    def _close(self, batch: ProducerBatch) -> None:
        """Move an open batch to its partition's send queue (lock held)."""
        if self._open.get(batch.tp) is batch:
            del self._open[batch.tp]
        self._queues.setdefault(batch.tp, deque()).append(batch)

    # -- giving the I/O thread its turn ----------------------------------------------------

    def _wants_yield(self, tp: TopicPartition) -> bool:
        return (
            self._yield_batches > 0
            and not self.stalled
            and not self.closed
            and len(self._queues.get(tp) or ()) >= self._yield_batches
            and threading.get_ident() != self._sender
        )

    def sender_thread(self) -> None:
        """The calling thread is the sender's: a send() from a callback there (it runs
        callbacks) never waits for itself."""
        self._sender = threading.get_ident()

    def _yield(self) -> None:
        """Wait (GIL released) until the sender reports progress, at most the yield
        timeout; after a timeout, no more waiting until it does (ipc/accumulator.py)."""
        with self._progress_cond:
            seen = self._progress
            moved = self._progress_cond.wait_for(
                lambda: self._progress != seen, self._yield_timeout_s
            )
            if not moved:
                self.stalled = True

    def progress(self) -> None:
        """The sender took batches or completed some: a send() yielding to it goes on."""
        with self._progress_cond:
            self._progress += 1
            self.stalled = False
            self._progress_cond.notify_all()

    def queued(self, tp: TopicPartition) -> int:
        with self._lock:
            return len(self._queues.get(tp) or ())

    def refuse(self) -> None:
        """send() raises from now on (the producer is closing)."""
        self._refusing = True

    # -- flush / close ---------------------------------------------------------------------

    def incomplete(self) -> list[ProducerBatch]:
        with self._lock:
            return list(self._incomplete.values())

    def begin_flush(self) -> None:
        with self._cond:
            self._flushing += 1

    def end_flush(self) -> None:
        with self._cond:
            self._flushing -= 1

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self.progress()

    @property
    def has_unsent(self) -> bool:
        with self._cond:
            return bool(self._open) or any(self._queues.values())

    # -- the I/O thread --------------------------------------------------------------------

    def ready(self, now: float) -> tuple[list[TopicPartition], float | None]:
        """Partitions with a batch to send now (closed batches first, then lingered open
        ones, oldest first), and when the next open batch is due."""
        out = []
        next_due: float | None = None
        with self._cond:
            hurry = self._flushing > 0 or self.closed
            for tp, queue in self._queues.items():
                if queue:
                    head = queue[0]
                    if head.retry_at <= now:
                        out.append(tp)
                    elif next_due is None or head.retry_at < next_due:
                        next_due = head.retry_at
            lingered = []
            for tp, batch in self._open.items():
                if self._queues.get(tp):
                    continue
                due = batch.created + self.linger_s
                if hurry or due <= now:
                    lingered.append((batch.created, tp))
                elif next_due is None or due < next_due:
                    next_due = due
        # Oldest first: a request takes what fits in max.request.size, and a fixed order
        # would drain the first partitions again and again while the last ones wait.
        lingered.sort(key=lambda item: item[0])
        out.extend(tp for _, tp in lingered)
        return out, next_due

    def drain(self, tp: TopicPartition, now: float) -> ProducerBatch | None:
        """The partition's next batch to send, if one is due."""
        with self._cond:
            queue = self._queues.get(tp)
            if queue:
                if queue[0].retry_at > now:
                    return None
                return queue.popleft()
            batch = self._open.get(tp)
            if batch is None:
                return None
            if not (self._flushing or self.closed or batch.created + self.linger_s <= now):
                return None
            del self._open[tp]
            return batch

    def requeue_front(self, batches: Iterable[ProducerBatch], retry_at: float) -> None:
        """Put batches back at the head of their partitions' queues, keeping order."""
        with self._cond:
            for batch in reversed(list(batches)):
                batch.retry_at = retry_at
                self._queues.setdefault(batch.tp, deque()).appendleft(batch)

    def complete(self, batch: ProducerBatch) -> None:
        """The batch is done (acknowledged or failed): free its memory."""
        with self._cond:
            if self._incomplete.pop(id(batch), None) is not None:
                self._used -= batch.size
                self._cond.notify_all()

    def expired(self, now: float) -> list[ProducerBatch]:
        """Queued or open batches past delivery.timeout.ms (removed; caller fails them)."""
        out = []
        with self._cond:
            for queue in self._queues.values():
                while queue and queue[0].deadline <= now:
                    out.append(queue.popleft())
            for tp in [tp for tp, b in self._open.items() if b.deadline <= now]:
                out.append(self._open.pop(tp))
        return out

    def abort_all(self) -> list[ProducerBatch]:
        """Take every unsent batch (close without flushing)."""
        with self._cond:
            out = [b for q in self._queues.values() for b in q] + list(self._open.values())
            self._queues.clear()
            self._open.clear()
            return out
