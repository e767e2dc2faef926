"""Futures for produced records: one real future per batch, a light handle per record.

A ``concurrent.futures.Future`` per record costs a lock and a condition each (~2.5 us to
make and resolve; a million live ones make the garbage collector crawl). So each batch
has one :class:`BatchFuture` (the C accumulator's batches are their own future), and
``send()`` returns a slotted :class:`FutureRecordMetadata` that points at it with the
record's offset delta. The handle offers kafka-python's ``get(timeout)``,
``add_callback``/``add_errback`` and the ``concurrent.futures.Future`` methods (``result``,
``exception``, ``done``, ``add_done_callback``, ...). Callbacks run on the producer's I/O
thread, as in Kafka: keep them short.

With the C extension (``kvlog._accumulator``) the future and the handle's fields are C
types, and the C ``send()`` makes a handle without running Python code (it is not tracked
by the garbage collector: it holds no container). :class:`PyBatchFuture` and the slotted
handle base here are the same in Python, used when the extension is not built.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from kvlog.errors import KafkaTimeoutError

log = logging.getLogger(__name__)

try:  # KVLOG_PURE_PYTHON=1: the Python twins (tests of the fallback)
    if os.environ.get("KVLOG_PURE_PYTHON"):
        raise ImportError("KVLOG_PURE_PYTHON is set")
    from kvlog import _accumulator as native
except ImportError:
    native = None  # type: ignore[assignment]


class RecordMetadata(NamedTuple):
    """Where a record was stored (kafka-python's RecordMetadata)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    log_start_offset: int = -1
    serialized_key_size: int = -1
    serialized_value_size: int = -1


# Guards every BatchFuture's completion, lazy Event and callbacks. One lock for all: a
# batch is completed once and rarely waited on, so contention is negligible, while a
# Lock and an Event per batch cost ~2 us each to make (a third of send_batch's time with
# 1,000 partitions, where every call opens hundreds of batches).
_FUTURES_LOCK = threading.Lock()


class PyBatchFuture:
    """Completed once by the I/O thread; waited on by any thread. The Event a waiter
    blocks on is made only when someone waits before completion. (The C twin:
    ``kvlog._accumulator.BatchFuture``; :data:`BatchFuture` is whichever is in use.)"""

    __slots__ = ("_callbacks", "_done", "_event", "base_offset", "error", "log_start_offset")

    def __init__(self) -> None:
        self._done = False
        self._event: threading.Event | None = None
        self._callbacks: list[Callable[[Any], None]] | None = None
        self.base_offset = -1
        self.log_start_offset = -1
        self.error: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def wait(self, timeout: float | None) -> bool:
        if self._done:
            return True
        with _FUTURES_LOCK:
            if self._done:
                return True
            event = self._event
            if event is None:
                event = self._event = threading.Event()
        return event.wait(timeout)

    def set_result(self, base_offset: int, log_start_offset: int = -1) -> None:
        self.base_offset = base_offset
        self.log_start_offset = log_start_offset
        self._finish()

    def set_exception(self, error: BaseException) -> None:
        self.error = error
        self._finish()

    def _finish(self) -> None:
        with _FUTURES_LOCK:
            self._done = True
            event = self._event
            callbacks, self._callbacks = self._callbacks, None
        if event is not None:
            event.set()
        for fn in callbacks or ():
            try:
                fn(self)
            except Exception:
                log.exception("a produce callback raised")

    def add_callback(self, fn: Callable[[Any], None]) -> None:
        with _FUTURES_LOCK:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self)


BatchFuture: Any = native.BatchFuture if native is not None else PyBatchFuture


class _PyRecordHandle:
    """The fields of one record's pending metadata (the C twin: ``RecordHandle``)."""

    __slots__ = (
        "_batch",
        "_delta",
        "_key_size",
        "_value_size",
        "partition",
        "timestamp",
        "topic",
    )

    def __init__(
        self,
        batch: Any,
        delta: int,
        topic: str,
        partition: int,
        timestamp: int,
        key_size: int,
        value_size: int,
    ) -> None:
        self._batch = batch
        self._delta = delta
        self.topic = topic
        self.partition = partition
        self.timestamp = timestamp
        self._key_size = key_size
        self._value_size = value_size


_RecordHandle: Any = native.RecordHandle if native is not None else _PyRecordHandle


class FutureRecordMetadata(_RecordHandle):  # type: ignore[misc]
    """What ``Producer.send`` returns: one record's pending metadata. ``_batch`` is its
    batch's future, ``_delta`` the record's offset in the batch."""

    __slots__ = ()

    _batch: Any
    _delta: int
    _key_size: int
    _value_size: int
    topic: str
    partition: int
    timestamp: int

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<FutureRecordMetadata {self.topic}-{self.partition} {state}>"

    def _metadata(self) -> RecordMetadata:
        batch = self._batch
        offset = batch.base_offset + self._delta if batch.base_offset >= 0 else -1
        return RecordMetadata(
            self.topic,
            self.partition,
            offset,
            self.timestamp,
            batch.log_start_offset,
            self._key_size,
            self._value_size,
        )

    # -- kafka-python -----------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> RecordMetadata:
        """Wait for the record to be acknowledged; raise its error or KafkaTimeoutError."""
        if not self._batch.wait(timeout):
            raise KafkaTimeoutError(
                f"record for {self.topic}-{self.partition} not acknowledged within {timeout} s"
            )
        if self._batch.error is not None:
            raise self._batch.error
        return self._metadata()

    @property
    def is_done(self) -> bool:
        return self._batch.done()

    def succeeded(self) -> bool:
        return self._batch.done() and self._batch.error is None

    def failed(self) -> bool:
        return self._batch.done() and self._batch.error is not None

    @property
    def value(self) -> RecordMetadata | None:
        return self._metadata() if self.succeeded() else None

    def add_callback(
        self, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> FutureRecordMetadata:
        """``fn(record_metadata, *args, **kwargs)`` on success."""

        def run(batch: BatchFuture) -> None:
            if batch.error is None:
                fn(self._metadata(), *args, **kwargs)

        self._batch.add_callback(run)
        return self

    def add_errback(
        self, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> FutureRecordMetadata:
        """``fn(exception, *args, **kwargs)`` on failure."""

        def run(batch: BatchFuture) -> None:
            if batch.error is not None:
                fn(batch.error, *args, **kwargs)

        self._batch.add_callback(run)
        return self

    # -- concurrent.futures.Future ---------------------------------------------------------

    def result(self, timeout: float | None = None) -> RecordMetadata:
        return self.get(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self._batch.wait(timeout):
            raise KafkaTimeoutError(f"record not acknowledged within {timeout} s")
        return self._batch.error

    def done(self) -> bool:
        return self._batch.done()

    def running(self) -> bool:
        return not self._batch.done()

    def cancelled(self) -> bool:
        return False

    def cancel(self) -> bool:
        return False  # a record handed to the producer is sent; like Kafka, no cancel

    def add_done_callback(self, fn: Callable[[FutureRecordMetadata], Any]) -> None:
        self._batch.add_callback(lambda _batch: fn(self))


if native is not None:
    native.set_handle_type(FutureRecordMetadata)


class BatchSendResult:
    """What ``Producer.send_batch`` returns: the fate of many records at once.

    Per record it keeps two int32 columns, not an object: which of the call's batches
    holds it (``_batch_of``, an index into ``_batches``) and its offset delta there."""

    __slots__ = ("_batch_of", "_batches", "_deltas", "_partitions", "count", "timestamp", "topic")

    def __init__(
        self,
        topic: str,
        timestamp: int,
        count: int,
        segments: Sequence[tuple[int, Sequence[int], Any, int]] = (),
    ) -> None:
        """``segments``: (partition, caller indices, batch future, first delta) per run of
        records in one batch."""
        self.topic = topic
        self.timestamp = timestamp
        self.count = count
        batches: list[Any] = []
        partitions: list[int] = []
        batch_of = array("i", bytes(4 * count))
        deltas = array("i", bytes(4 * count))
        for partition, indices, future, delta in segments:
            batches.append(future)
            partitions.append(partition)
            for j, index in enumerate(indices):
                batch_of[index] = len(batches) - 1
                deltas[index] = delta + j
        self._batches = batches
        self._partitions: list[int] | None = partitions
        self._batch_of: Sequence[int] = batch_of
        self._deltas: Sequence[int] = deltas

    @classmethod
    def of_columns(
        cls, topic: str, timestamp: int, batches: list[Any], batch_of: bytes, deltas: bytes
    ) -> BatchSendResult:
        """From the accumulator's ``append_records``: int32 columns as bytes."""
        result = cls.__new__(cls)
        result.topic = topic
        result.timestamp = timestamp
        result._batches = batches
        result._partitions = None  # each batch's own (batch.tp.partition)
        result._batch_of = memoryview(batch_of).cast("i")
        result._deltas = memoryview(deltas).cast("i")
        result.count = len(result._deltas)
        return result

    def __len__(self) -> int:
        return self.count

    @property
    def batches(self) -> list[Any]:
        """The futures of the batches that hold the call's records."""
        return list(self._batches)

    def done(self) -> bool:
        return all(f.done() for f in self._batches)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The first error of any record (None when all were acknowledged)."""
        self._wait(timeout)
        return next((f.error for f in self._batches if f.error is not None), None)

    def _wait(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for future in self._batches:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not future.wait(left):
                raise KafkaTimeoutError(f"{self.count} records not acknowledged within {timeout} s")

    def get(self, timeout: float | None = None) -> list[RecordMetadata]:
        """Every record's metadata, in the order given; raises the first error."""
        self._wait(timeout)
        batches = self._batches
        for future in batches:
            if future.error is not None:
                raise future.error
        partitions = self._partitions
        if partitions is None:
            partitions = [b.tp.partition for b in batches]
        topic, ts, new = self.topic, self.timestamp, tuple.__new__
        return [
            new(
                RecordMetadata,
                (
                    topic,
                    partitions[b],
                    batches[b].base_offset + delta,
                    ts,
                    batches[b].log_start_offset,
                    -1,
                    -1,
                ),
            )
            for b, delta in zip(self._batch_of, self._deltas, strict=True)
        ]
