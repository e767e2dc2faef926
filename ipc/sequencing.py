"""The idempotent producer's per-partition sequencing, sans-IO.

Each partition's batches get consecutive sequence numbers when first sent and keep them
on every retry, so the leader can drop duplicates and refuse gaps. The leader remembers
the last five batches of a producer, so a retry is recognised only if at most four later
batches were appended after it: a partition therefore has at most ``max_in_flight``
batches from its oldest unsettled one to its newest (not merely ``max_in_flight`` in
flight: over ZeroMQ a lost reply does not fail the later requests of the connection, as
a dropped TCP connection does in Kafka, so later batches keep being acknowledged while
the oldest one waits for its timeout). What happens on failure (Kafka's rules,
simplified where kvlog's leader allows):

- retriable error or lost reply: the batch goes back to the queue; new batches of the
  partition wait until every in-flight one has answered, then the failed ones are sent
  again, in sequence order. OUT_OF_ORDER_SEQUENCE_NUMBER and UNKNOWN_PRODUCER_ID count
  as retriable while an earlier batch of the partition is still open (the gap is its
  doing), and they prove the batch was not written at that sequence;
- definite rejection (the leader answered every attempt with an error, so the batch was
  not written): the batch fails; the partition's later unacknowledged batches are renumbered
  from the failed batch's sequence, so the log has no gap;
- ambiguous loss (a batch fails after an attempt that got no answer, or exhausts
  delivery.timeout.ms while queued for a retry): the batch fails and the partition bumps
  its producer epoch and restarts at sequence 0 (the leader accepts a newer epoch
  starting at 0). Before the bump, every open batch that might have been written (one
  of its attempts got no answer) is resent with its old sequence until the leader says
  what it holds (Kafka likewise bumps only once no batch is in flight): renumbering such
  a batch could store it twice.

Without idempotence, batches carry no sequence and simply retry.

Owned by the producer's I/O thread; not thread-safe.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Protocol

from kvlog.errors import ErrorCode, KvlogError

INT32_MAX = 0x7FFFFFFF
INT16_MAX = 0x7FFF

# No answer from the leader: the batch may or may not have been written.
_AMBIGUOUS = frozenset(
    {ErrorCode.REQUEST_TIMED_OUT, ErrorCode.NETWORK_EXCEPTION, ErrorCode.KAFKA_TIMEOUT}
)
# The leader refused the batch's sequence (it expected another one first).
_SEQUENCE_GAP = frozenset({ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER, ErrorCode.UNKNOWN_PRODUCER_ID})


class SequencedBatch(Protocol):
    record_count: int
    base_sequence: int
    producer_epoch: int
    encoded: bytes | None


class Verdict(enum.Enum):
    DONE = "done"  # succeeded
    RETRY = "retry"  # will be resent (see ``release``)
    FAIL = "fail"  # give up on this batch


class _Mode(enum.Enum):
    NORMAL = "normal"
    RETRYING = "retrying"
    RENUMBER = "renumber"
    BUMP_EPOCH = "bump_epoch"


@dataclass
class _Partition:
    epoch: int
    next_seq: int = 0
    inflight: list[SequencedBatch] = field(default_factory=list)
    # Sent batches in first-send order, from the oldest whose fate is still open; a
    # settled batch stays while an older one is open (see the module docstring).
    window: list[SequencedBatch] = field(default_factory=list)
    settled: set[int] = field(default_factory=set)
    # Batches of the window one of whose attempts ended without an answer (timed out):
    # the leader may have written them.
    maybe_written: set[int] = field(default_factory=set)
    mode: _Mode = _Mode.NORMAL
    resend: list[SequencedBatch] = field(default_factory=list)
    renumber_from: int = -1


class Sequencer:
    def __init__(self, *, idempotent: bool, max_in_flight: int, producer_epoch: int = 0) -> None:
        self.idempotent = idempotent
        self.max_in_flight = max_in_flight
        self.producer_epoch = producer_epoch
        self._parts: dict[Hashable, _Partition] = {}

    def _part(self, tp: Hashable) -> _Partition:
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition(self.producer_epoch)
        return part

    def inflight(self, tp: Hashable) -> int:
        part = self._parts.get(tp)
        return 0 if part is None else len(part.inflight)

    def may_send(self, tp: Hashable) -> bool:
        part = self._parts.get(tp)
        if part is None:
            return True
        if len(part.inflight) >= self.max_in_flight:
            return False
        if part.mode is _Mode.BUMP_EPOCH:
            # Resolving what the leader holds before the bump: only batches that wait to
            # be resent with their old sequence may go.
            return _waiting_to_resend(part)
        if part.mode is not _Mode.NORMAL:
            return False
        if len(part.window) < self.max_in_flight:
            return True
        # The window is full: only a batch of it that waits to be resent may go.
        return _waiting_to_resend(part)

    def on_send(self, tp: Hashable, batch: SequencedBatch) -> None:
        """A batch leaves for the leader; its first send fixes its sequence."""
        part = self._part(tp)
        if self.idempotent and batch.base_sequence < 0:
            batch.base_sequence = part.next_seq
            batch.producer_epoch = part.epoch
            part.next_seq = (part.next_seq + batch.record_count) & INT32_MAX
            batch.encoded = None
        part.inflight.append(batch)
        if not any(item is batch for item in part.window):
            part.window.append(batch)

    def on_success(self, tp: Hashable, batch: SequencedBatch) -> list[SequencedBatch]:
        part = self._part(tp)
        _remove(part.inflight, batch)
        _close(part, batch)
        return self._settle(part)

    def on_error(
        self, tp: Hashable, batch: SequencedBatch, error: KvlogError, *, can_retry: bool
    ) -> tuple[Verdict, list[SequencedBatch]]:
        """Decide a failed batch's fate; returns it and the batches to put back at the
        head of the partition's queue now (in order), if any."""
        part = self._part(tp)
        _remove(part.inflight, batch)
        if error.code in _AMBIGUOUS and any(item is batch for item in part.window):
            part.maybe_written.add(id(batch))
        gap = False
        if error.code in _SEQUENCE_GAP:
            # The leader holds no batch at this sequence (a retry of a written batch
            # would have been answered as a duplicate: it is within the last five).
            part.maybe_written.discard(id(batch))
            # Only the echo of an earlier batch's trouble while that one is still open.
            gap = part.mode is not _Mode.NORMAL or not part.window or part.window[0] is not batch
        if can_retry and (error.retriable or gap):
            if part.mode is _Mode.NORMAL:
                part.mode = _Mode.RETRYING
            part.resend.append(batch)
            return Verdict.RETRY, self._settle(part)
        maybe_written = id(batch) in part.maybe_written
        _close(part, batch)
        if self.idempotent and not maybe_written:
            # The leader rejected every attempt: it was not written. Later batches shift
            # down.
            if part.mode is not _Mode.BUMP_EPOCH:
                start = batch.base_sequence
                if part.mode is _Mode.RENUMBER:
                    start = min(start, part.renumber_from)
                part.mode = _Mode.RENUMBER
                part.renumber_from = start
        elif self.idempotent:
            part.mode = _Mode.BUMP_EPOCH
        return Verdict.FAIL, self._settle(part)

    def on_expired(self, tp: Hashable, batch: SequencedBatch) -> list[SequencedBatch]:
        """A batch queued for a retry ran out of delivery.timeout.ms: its fate is unknown."""
        part = self._part(tp)
        _remove(part.inflight, batch)
        _close(part, batch)
        if self.idempotent and batch.base_sequence >= 0:
            part.mode = _Mode.BUMP_EPOCH
        return self._settle(part)

    def _settle(self, part: _Partition) -> list[SequencedBatch]:
        """Once nothing is in flight, leave the special mode; returns batches to resend."""
        if part.inflight or part.mode is _Mode.NORMAL:
            return []
        resend = sorted(part.resend, key=lambda b: b.base_sequence)
        part.resend = []
        # Renumbering covers every open batch of the window: those handed back now and
        # those already queued again for a retry (they carry old sequences too).
        renumber = sorted(
            (b for b in part.window if id(b) not in part.settled), key=lambda b: b.base_sequence
        )
        if part.mode is _Mode.RENUMBER:
            # The batches after the rejected one move down into its place; earlier open
            # ones keep their sequences (later batches may have been acknowledged since).
            after = [b for b in renumber if b.base_sequence > part.renumber_from]
            part.next_seq = _renumber(after, part.renumber_from, part.epoch)
        elif part.mode is _Mode.BUMP_EPOCH:
            if any(id(b) in part.maybe_written for b in renumber):
                return resend  # resend with old sequences first; bump once they settle
            part.epoch = (part.epoch + 1) & INT16_MAX
            part.next_seq = _renumber(renumber, 0, part.epoch)
        part.mode = _Mode.NORMAL
        part.renumber_from = -1
        return resend


def _renumber(batches: list[SequencedBatch], seq: int, epoch: int) -> int:
    """Give ``batches`` consecutive sequences from ``seq``; returns the next one."""
    for batch in batches:
        batch.base_sequence = seq
        batch.producer_epoch = epoch
        batch.encoded = None
        seq = (seq + batch.record_count) & INT32_MAX
    return seq


def _waiting_to_resend(part: _Partition) -> bool:
    """An open batch of the window is neither in flight nor held back: it heads the
    partition's queue (retries are queued in front), so it is what the sender takes."""
    return any(
        id(b) not in part.settled
        and not any(b is i for i in part.inflight)
        and not any(b is r for r in part.resend)
        for b in part.window
    )


def _close(part: _Partition, batch: SequencedBatch) -> None:
    """The batch's fate is decided: drop it, and every settled batch before the oldest
    open one, from the partition's window."""
    if not any(item is batch for item in part.window):
        return
    part.settled.add(id(batch))
    while part.window and id(part.window[0]) in part.settled:
        gone = id(part.window.pop(0))
        part.settled.discard(gone)
        part.maybe_written.discard(gone)


def _remove(items: list[SequencedBatch], batch: SequencedBatch) -> None:
    for i, item in enumerate(items):
        if item is batch:
            del items[i]
            return
