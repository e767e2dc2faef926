"""The idempotent producer's per-partition sequencing, sans-IO.

Each partition's batches get consecutive sequence numbers when first sent and keep them
on every retry, so the leader can drop duplicates and refuse gaps. Up to
``max_in_flight`` batches of a partition may be in flight (the leader remembers the last
five). What happens on failure (Kafka's rules, simplified where kvlog's leader allows):

- retriable error or lost reply: the batch goes back to the queue; new batches of the
  partition wait until every in-flight one has answered, then the failed ones are sent
  again, in sequence order (later ones that failed with OUT_OF_ORDER_SEQUENCE_NUMBER
  because of the gap count as retriable);
- definite rejection (the leader answered with a fatal error, so the batch was not
  written): the batch fails; the partition's later unacknowledged batches are renumbered
  from the failed batch's sequence, so the log has no gap;
- ambiguous loss (a batch exhausts delivery.timeout.ms while its fate is unknown): the
  batch fails and the partition bumps its producer epoch and restarts at sequence 0 (the
  leader accepts a newer epoch starting at 0), so whatever the leader has, nothing
  after it is refused or duplicated.

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
        if part.mode is not _Mode.NORMAL:
            return False
        return len(part.inflight) < self.max_in_flight

    def on_send(self, tp: Hashable, batch: SequencedBatch) -> None:
        """A batch leaves for the leader; its first send fixes its sequence."""
        part = self._part(tp)
        if self.idempotent and batch.base_sequence < 0:
            batch.base_sequence = part.next_seq
            batch.producer_epoch = part.epoch
            part.next_seq = (part.next_seq + batch.record_count) & INT32_MAX
            batch.encoded = None
        part.inflight.append(batch)

    def on_success(self, tp: Hashable, batch: SequencedBatch) -> list[SequencedBatch]:
        part = self._part(tp)
        _remove(part.inflight, batch)
        return self._settle(part)

    def on_error(
        self, tp: Hashable, batch: SequencedBatch, error: KvlogError, *, can_retry: bool
    ) -> tuple[Verdict, list[SequencedBatch]]:
        """Decide a failed batch's fate; returns it and the batches to put back at the
        head of the partition's queue now (in order), if any."""
        part = self._part(tp)
        _remove(part.inflight, batch)
        gap = error.code is ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER and part.mode is not _Mode.NORMAL
        if can_retry and (error.retriable or gap):
            if part.mode is _Mode.NORMAL:
                part.mode = _Mode.RETRYING
            part.resend.append(batch)
            return Verdict.RETRY, self._settle(part)
        if self.idempotent and error.code is not ErrorCode.KAFKA_TIMEOUT:
            # The leader rejected it: it was not written. Later batches shift down.
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
        """An in-flight batch ran out of delivery.timeout.ms: its fate is unknown."""
        part = self._part(tp)
        _remove(part.inflight, batch)
        if self.idempotent and batch.base_sequence >= 0:
            part.mode = _Mode.BUMP_EPOCH
        return self._settle(part)

    def _settle(self, part: _Partition) -> list[SequencedBatch]:
        """Once nothing is in flight, leave the special mode; returns batches to resend."""
        if part.inflight or part.mode is _Mode.NORMAL:
            return []
        resend = sorted(part.resend, key=lambda b: b.base_sequence)
        part.resend = []
        if part.mode is _Mode.RENUMBER:
            # Start at the lowest sequence that was not written: the rejected batch's, or
            # an earlier batch that failed retriably meanwhile.
            seq = min([part.renumber_from, *(b.base_sequence for b in resend)])
            for batch in resend:
                batch.base_sequence = seq
                batch.producer_epoch = part.epoch
                batch.encoded = None
                seq = (seq + batch.record_count) & INT32_MAX
            part.next_seq = seq
        elif part.mode is _Mode.BUMP_EPOCH:
            part.epoch = (part.epoch + 1) & INT16_MAX
            seq = 0
            for batch in resend:
                batch.base_sequence = seq
                batch.producer_epoch = part.epoch
                batch.encoded = None
                seq = (seq + batch.record_count) & INT32_MAX
            part.next_seq = seq
        part.mode = _Mode.NORMAL
        part.renumber_from = -1
        return resend


def _remove(items: list[SequencedBatch], batch: SequencedBatch) -> None:
    for i, item in enumerate(items):
        if item is batch:
            del items[i]
            return
