"""The producer's record accumulator: per-partition batches waiting to be sent.

``send()`` appends a record to its partition's open batch (under one lock: the producer is
shared between threads); a batch closes when it reaches ``batch.size``. The sender takes
a partition's batch when it is full, when it has lingered ``linger.ms``, or when a flush
or close asks for everything. ``buffer.memory`` bounds the bytes held: ``send()`` blocks up
to ``max.block.ms`` while the buffer is full (backpressure), then raises.

Time is passed in (monotonic seconds) so tests drive it by hand.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

from kvlog.errors import KafkaTimeoutError, ProducerClosedError
from kvlog.types import TopicPartition

from .futures import BatchFuture

RECORD_OVERHEAD = 12


def _bytes_in(items: list[bytes | None]) -> int:
    """Total length of byte strings, None counting 0."""
    try:
        return sum(map(len, items))
    except TypeError:  # a None among them (a null key or a tombstone)
        return sum(len(x) for x in items if x is not None)


class ProducerBatch:
    """One partition's batch from first record to acknowledgement."""

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


class RecordAccumulator:
    """Shared by user threads (append) and the I/O thread (ready/drain/complete)."""

    def __init__(
        self,
        *,
        batch_size: int,
        linger_ms: int,
        buffer_memory: int,
        max_block_ms: int,
        delivery_timeout_ms: int,
    ) -> None:
        self.batch_size = batch_size
        self.linger_s = linger_ms / 1000
        self.buffer_memory = buffer_memory
        self.max_block_s = max_block_ms / 1000
        self.delivery_timeout_s = delivery_timeout_ms / 1000
        # A plain Lock on the hot path (send); the Condition on the same lock is only
        # waited on when buffer.memory is full.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._open: dict[TopicPartition, ProducerBatch] = {}
        self._queues: dict[TopicPartition, deque[ProducerBatch]] = {}
        self._incomplete: dict[int, ProducerBatch] = {}
        self._used = 0
        self._flushing = 0
        self.closed = False

    # -- user threads ----------------------------------------------------------------------

    def append(
        self,
        tp: TopicPartition,
        timestamp: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[list[Any]] | None,
        now: float,
    ) -> tuple[BatchFuture, int, bool]:
        """Add a record; returns its batch's future, its delta and whether a batch filled."""
        size = RECORD_OVERHEAD + (len(key) if key else 0) + (len(value) if value else 0)
        if headers:
            size += sum(len(h[0]) + len(h[1]) + 4 for h in headers)
        with self._lock:
            if self.closed:
                raise ProducerClosedError("the producer is closed; create a new one")
            if self._used + size > self.buffer_memory and self._used:
                self._wait_for_room(size)
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
            return batch.future, delta, filled

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

    def append_many(
        self,
        tp: TopicPartition,
        timestamp: int,
        keys: list[bytes | None],
        values: list[bytes | None],
        now: float,
    ) -> list[tuple[BatchFuture, int, int, bool]]:
        """Add many records to one partition under one lock (``send_batch``'s path).

        Returns ``(future, first delta, count, batch filled)`` per batch the records
        landed in."""
        with self._lock:
            if self.closed:
                raise ProducerClosedError("the producer is closed; create a new one")
            return self._append_locked(tp, timestamp, keys, values, now)

    def append_partitioned(
        self,
        tps: list[TopicPartition],
        groups: Iterable[tuple[int, list[bytes | None], list[bytes | None]]],
        timestamp: int,
        now: float,
    ) -> list[tuple[int, list[tuple[BatchFuture, int, int, bool]]]]:
        """Add records bound for many partitions under one lock: ``groups`` holds
        ``(partition, keys, values)``. Returns, per group in order, the partition and
        what :meth:`append_many` returns for it.

        One call per ``send_batch`` instead of one per partition: with 1,000 partitions a
        call touches hundreds of them, and a lock round and a call each cost more than
        the records."""
        out: list[tuple[int, list[tuple[BatchFuture, int, int, bool]]]] = []
        with self._lock:
            if self.closed:
                raise ProducerClosedError("the producer is closed; create a new one")
            for partition, keys, values in groups:
                out.append(
                    (partition, self._append_locked(tps[partition], timestamp, keys, values, now))
                )
        return out

    def _append_locked(
        self,
        tp: TopicPartition,
        timestamp: int,
        keys: list[bytes | None],
        values: list[bytes | None],
        now: float,
    ) -> list[tuple[BatchFuture, int, int, bool]]:
        n = len(values)
        total = RECORD_OVERHEAD * n + _bytes_in(keys) + _bytes_in(values)
        batch = self._open.get(tp)
        if (
            batch is not None
            and batch.size + total < self.batch_size
            and self._used + total <= self.buffer_memory
        ):
            # The common case: everything fits in the open batch and stays below
            # batch.size, so no per-record sizes are needed.
            start = len(batch.values)
            if timestamp > batch.max_timestamp:
                batch.max_timestamp = timestamp
            batch.ts_deltas.extend([timestamp - batch.first_timestamp] * n)
            batch.keys.extend(keys)
            batch.values.extend(values)
            if batch.headers is not None:
                batch.headers.extend([None] * n)
            batch.size += total
            self._used += total
            return [(batch.future, start, n, False)]
        sizes = [
            RECORD_OVERHEAD + (len(k) if k else 0) + (len(v) if v else 0)
            for k, v in zip(keys, values, strict=True)
        ]
        out: list[tuple[BatchFuture, int, int, bool]] = []
        i = 0
        while i < n:
            need = sizes[i]
            if self._used + need > self.buffer_memory and self._used:
                self._wait_for_room(need)
            batch = self._open.get(tp)
            if batch is None or (batch.values and batch.size + need > self.batch_size):
                if batch is not None:
                    self._close(batch)
                batch = ProducerBatch(tp, now, self.delivery_timeout_s)
                self._open[tp] = batch
                self._incomplete[id(batch)] = batch
            # Take as many records as fit in this batch (at least one) and the buffer.
            room = max(self.batch_size - batch.size, need)
            budget = min(room, max(self.buffer_memory - self._used, need))
            j, taken = i, 0
            while j < n and (j == i or taken + sizes[j] <= budget):
                taken += sizes[j]
                j += 1
            start = len(batch.values)
            if not start:
                batch.first_timestamp = timestamp
            if timestamp > batch.max_timestamp:
                batch.max_timestamp = timestamp
            batch.ts_deltas.extend([timestamp - batch.first_timestamp] * (j - i))
            batch.keys.extend(keys[i:j])
            batch.values.extend(values[i:j])
            if batch.headers is not None:
                batch.headers.extend([None] * (j - i))
            batch.size += taken
            self._used += taken
            filled = batch.size >= self.batch_size
            if filled:
                self._close(batch)
            out.append((batch.future, start, j - i, filled))
            i = j
        return out

    def _close(self, batch: ProducerBatch) -> None:
        """Move an open batch to its partition's send queue (lock held)."""
        if self._open.get(batch.tp) is batch:
            del self._open[batch.tp]
        self._queues.setdefault(batch.tp, deque()).append(batch)

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

    @property
    def has_unsent(self) -> bool:
        with self._cond:
            return bool(self._open) or any(self._queues.values())

    # -- the I/O thread --------------------------------------------------------------------

    def ready(self, now: float) -> tuple[list[TopicPartition], float | None]:
        """Partitions with a batch to send now, and when the next open batch is due."""
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
            for tp, batch in self._open.items():
                if self._queues.get(tp):
                    continue
                due = batch.created + self.linger_s
                if hurry or due <= now:
                    out.append(tp)
                elif next_due is None or due < next_due:
                    next_due = due
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
