"""The producer's record accumulator: per-partition batches waiting to be sent.

``send()`` serializes a record, picks its partition (Kafka's murmur2 of the key, the
sticky partition for a null key, or the one given) and appends it to that partition's
open batch; a batch closes when it reaches ``batch.size``. ``send_batch()`` does the same
for many records in one call (``append_records``). The sender takes a partition's batch
when it is full, when it has lingered ``linger.ms``, or when a flush or close asks for
everything. ``buffer.memory`` bounds the bytes held: ``send()`` blocks up to
``max.block.ms`` while the buffer is full (backpressure), then raises.

Two implementations with one behaviour: :class:`NativeRecordAccumulator` over the C
extension ``kvlog._accumulator`` (a record is appended as CBOR columns, its handle made,
without running Python code), and the pure-Python :class:`PyRecordAccumulator`
(ipc/accumulator_py.py), used when the extension is not built and the reference it is
tested against. :data:`RecordAccumulator` is the one in use.

Giving the I/O thread its turn: the thread calling ``send()`` and the producer's I/O
thread share the GIL, and CPython hands it to a waiting thread only every switch interval
(5 ms). So when ``send()`` closes a batch while its partition already holds
``yield_batches`` (max.in.flight) closed batches waiting to be sent -- the sender could
not send the new records sooner anyway -- it waits, GIL released, until the sender
reports progress (a reply handled, batches taken), at most one switch interval. After a
wait that times out (the broker is slow or away) it does not wait again until the sender
moves: records then queue up to ``buffer.memory`` as before.

Closing ``send()`` without a check per record (:class:`SendGate`, for the transactional
producer, which may send only inside a transaction): ``send()`` asks its hooks for a
topic's partitions only when the topic's registration is older than the metadata version
it was last told; a closed gate tells it a version no topic is registered at, so every
``send()`` asks the hooks (which raise, saying why), and an open one the real version, so
``send()`` stays one C call. The check costs a Python call per record only while sends
are refused anyway.

Time is passed in (monotonic seconds) to the low-level methods, so tests drive it by hand.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from kvlog.errors import KafkaTimeoutError, ProducerClosedError

from .accumulator_py import (
    RECORD_OVERHEAD,
    AccumulatorHooks,
    NoHooks,
    ProducerBatch,
    PyRecordAccumulator,
    check_timestamp,
    header_value,
)
from .futures import native

__all__ = [
    "ACCELERATED",
    "RECORD_OVERHEAD",
    "AccumulatorHooks",
    "GatedPyRecordAccumulator",
    "NativeRecordAccumulator",
    "NoHooks",
    "ProducerBatch",
    "PyRecordAccumulator",
    "RecordAccumulator",
    "SendGate",
    "check_timestamp",
    "header_value",
]

ACCELERATED = native is not None
_Base: Any = native.Accumulator if native is not None else object

GATED = -(2**63) + 1  # a metadata version no topic is ever registered at


class SendGate:
    """Mixin over an accumulator (C or Python): :meth:`gate` opens or closes ``send()``
    (see the module docstring). While closed, every ``send()`` calls the hooks'
    ``topic_partitions``, which decides whether the record may go. Thread-safe: the gate,
    the metadata version and the registrations change under one lock, so a topic
    registered concurrently with a closing gate cannot reopen it."""

    _gate_lock: threading.Lock
    _gate_open: bool
    _meta_version: int

    def _init_gate(self) -> None:
        self._gate_lock = threading.Lock()
        self._gate_open = True
        self._meta_version = -1

    def gate(self, open_: bool) -> None:
        """Open (sends take the fast path) or close (every send asks the hooks)."""
        with self._gate_lock:
            self._gate_open = open_
            super().set_version(self._meta_version if open_ else GATED)  # type: ignore[misc]

    def set_version(self, version: int) -> None:
        with self._gate_lock:
            self._meta_version = version
            super().set_version(version if self._gate_open else GATED)  # type: ignore[misc]

    def set_topic(self, topic: str, tps: list[Any], version: int) -> None:
        with self._gate_lock:
            super().set_topic(topic, tps, version)  # type: ignore[misc]
            self._meta_version = version
            if not self._gate_open:
                super().set_version(GATED)  # type: ignore[misc]


class NativeRecordAccumulator(SendGate, _Base):  # type: ignore[misc]
    """The C accumulator with its Python parts: blocking while buffer.memory is full and
    the hooks into the producer. Shared by user threads (send, append) and the I/O
    thread (ready/drain/complete); every C method is atomic under the GIL."""

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
        yield_timeout_s: float | None = None,
    ) -> None:
        if native is None:
            raise ImportError("kvlog._accumulator is not built: use PyRecordAccumulator")
        self._configure(
            batch_size,
            linger_ms / 1000,
            buffer_memory,
            delivery_timeout_ms / 1000,
            yield_batches,
            sys.getswitchinterval() if yield_timeout_s is None else yield_timeout_s,
            key_serializer,
            value_serializer,
            raw_keys or key_serializer is None,
            raw_values or value_serializer is None,
        )
        self.max_block_s = max_block_ms / 1000
        self._hooks: AccumulatorHooks = hooks or NoHooks()
        self._cond = threading.Condition()
        self._room_waiters = 0
        self._init_gate()

    # -- hooks the C code calls (never with a record half-appended) ------------------------

    def _on_topic(self, topic: str) -> None:
        tps, version = self._hooks.topic_partitions(topic)
        self.set_topic(topic, list(tps), version)

    def _choose_sticky(self, topic: str, count: int, current: int) -> int:
        return self._hooks.choose_sticky(topic, count, current)

    def _wake(self) -> None:
        self._hooks.wake()

    def _check_timestamp(self, timestamp_ms: Any) -> int:
        return check_timestamp(timestamp_ms)

    def _wait_for_room(self, size: int) -> None:
        """Block while buffer.memory cannot take ``size`` more bytes (the C code checks
        again after: another thread may have taken the room meanwhile)."""
        with self._cond:
            self._room_waiters += 1
            try:
                ok = self._cond.wait_for(lambda: self._has_room(size), self.max_block_s)
            finally:
                self._room_waiters -= 1
        if not ok:
            raise KafkaTimeoutError(
                f"buffer.memory ({self.buffer_memory} bytes) stayed full for max.block.ms "
                f"({self.max_block_s * 1000:.0f} ms): the broker is not keeping up or is "
                "unreachable"
            )
        if self.closed:
            raise ProducerClosedError("the producer was closed while send() waited")

    def _has_room(self, size: int) -> bool:
        return bool(self.closed) or not self._used or self._used + size <= self.buffer_memory

    # -- what needs a waiter woken ---------------------------------------------------------

    def complete(self, batch: Any) -> None:
        """The batch is done (acknowledged or failed): free its memory."""
        # A waiter counts itself under the condition before it checks the room, and the
        # room is freed before the count is read: no wake-up is lost.
        if self._release(batch) and self._room_waiters:
            with self._cond:
                self._cond.notify_all()

    def close(self) -> None:
        self._close()
        with self._cond:
            self._cond.notify_all()


class GatedPyRecordAccumulator(SendGate, PyRecordAccumulator):
    """The pure-Python accumulator with the send gate (the producer's, when the C
    extension is not built)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_gate()


RecordAccumulator: Any = NativeRecordAccumulator if ACCELERATED else GatedPyRecordAccumulator
