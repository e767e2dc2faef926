"""The idempotent producer's sequencing (ipc/sequencing.py) against a faulty network.

A hypothesis state machine drives the real :class:`Sequencer` the way the producer's
Sender does (a per-partition queue, at most one batch per request, ``requeue_front`` for
what the sequencer hands back, ``on_expired`` for queued batches past
delivery.timeout.ms) against one partition whose leader applies Kafka's sequence rules
with the real ``check_sequence`` / ``after_append`` of kvlog/producer_state.py.

The network delivers requests and replies in order (one connection) but may lose any of
them; a request may time out while it is still on its way (the leader then still
appends it); the leader may answer with a retriable error, or reject an attempt with a
fatal error, without appending; some batches are poison (the leader always rejects them
as too large); time passes delivery timeouts in creation order.

Safety, after every step: no record is stored twice; stored records are in send order;
an acknowledged batch is stored exactly at the offset it was acknowledged with; a batch
fails only if the leader rejected it (poison, or a fatal rejection of one attempt) or it
passed its delivery timeout, so the leader's sequence errors never end in a failure the
sequencer could have ridden over; nothing is ever stored for a poison batch. Liveness,
at the end: with the faults stopped, every batch reaches a final verdict (no deadlock).
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from kvlog.batch import BatchHeader
from kvlog.errors import (
    ErrorCode,
    KvlogError,
    MessageSizeTooLargeError,
    NotLeaderOrFollowerError,
    RequestTimedOutError,
)
from kvlog.ipc.sequencing import Sequencer, Verdict
from kvlog.producer_state import ProducerEntry, after_append, check_sequence
from kvlog.types import TopicPartition

TP = TopicPartition("t", 0)
PRODUCER_ID = 7
MAX_IN_FLIGHT = 5
SEQUENCE_ERRORS = {
    ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
    ErrorCode.UNKNOWN_PRODUCER_ID,
    ErrorCode.INVALID_PRODUCER_EPOCH,
    ErrorCode.DUPLICATE_SEQUENCE_NUMBER,
}


class Batch:
    """What the Sender's ProducerBatch is to the sequencer, plus the model's bookkeeping."""

    def __init__(self, number: int, records: list[int], poison: bool) -> None:
        self.number = number
        self.records = records
        self.record_count = len(records)
        self.base_sequence = -1
        self.producer_epoch = -1
        self.encoded: bytes | None = None
        self.poison = poison
        self.rejected = False  # the leader refused an attempt with a fatal error
        self.past_deadline = False
        self.verdict: str | None = None  # "done" / "fail"
        self.acked_offset = -1
        self.fail_error: KvlogError | None = None

    def __repr__(self) -> str:
        return (
            f"Batch#{self.number}(seq={self.base_sequence}, epoch={self.producer_epoch}, "
            f"n={self.record_count}{', poison' if self.poison else ''})"
        )


class Request:
    def __init__(self, attempt: int, batch: Batch) -> None:
        self.attempt = attempt
        self.batch = batch
        # What the encoded batch carries: fixed at send time, as the bytes are.
        self.header = BatchHeader(
            partition_leader_epoch=-1,
            magic=1,
            crc=0,
            attributes=0,
            last_offset_delta=batch.record_count - 1,
            first_timestamp=0,
            max_timestamp=0,
            producer_id=PRODUCER_ID,
            producer_epoch=batch.producer_epoch,
            base_sequence=batch.base_sequence,
            record_count=batch.record_count,
        )
        self.records = list(batch.records)


class SequencerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sequencer = Sequencer(idempotent=True, max_in_flight=MAX_IN_FLIGHT)
        self.queue: deque[Batch] = deque()  # the accumulator's queue for TP
        self.batches: list[Batch] = []
        self.next_record = 0
        self.next_attempt = 0
        self.pending: dict[int, Batch] = {}  # attempt -> batch: requests awaiting replies
        self.requests: list[Request] = []  # on the way to the leader, in order
        self.replies: list[tuple[int, KvlogError | None, int]] = []  # (attempt, error, base)
        # the leader
        self.log: list[int] = []  # record ids by offset
        self.entry: ProducerEntry | None = None

    # -- the producer side -------------------------------------------------------------

    @rule(count=st.integers(1, 3), poison=st.integers(0, 9))
    def new_batch(self, count: int, poison: int) -> None:
        records = list(range(self.next_record, self.next_record + count))
        self.next_record += count
        batch = Batch(len(self.batches), records, poison == 9)
        self.batches.append(batch)
        self.queue.append(batch)

    @precondition(
        lambda self: self.queue and not self.queue[0].past_deadline and self.sequencer.may_send(TP)
    )
    @rule()
    def send(self) -> None:
        self._send()

    def _send(self) -> None:
        batch = self.queue.popleft()
        self.sequencer.on_send(TP, batch)
        if batch.encoded is None:
            batch.encoded = b"encoded"
        attempt = self.next_attempt
        self.next_attempt += 1
        self.pending[attempt] = batch
        self.requests.append(Request(attempt, batch))

    def _requeue(self, resend: list[Any]) -> None:
        for batch in reversed(resend):
            self.queue.appendleft(batch)

    def _succeed(self, batch: Batch, base_offset: int) -> None:
        resend = self.sequencer.on_success(TP, batch)
        batch.verdict = "done"
        batch.acked_offset = base_offset
        self._requeue(resend)

    def _error(self, batch: Batch, error: KvlogError) -> None:
        can_retry = not batch.past_deadline
        verdict, resend = self.sequencer.on_error(TP, batch, error, can_retry=can_retry)
        if verdict is Verdict.FAIL:
            batch.verdict = "fail"
            batch.fail_error = error
        self._requeue(resend)

    def _on_reply(self, attempt: int, error: KvlogError | None, base: int) -> None:
        batch = self.pending.pop(attempt, None)
        if batch is None:
            return  # the request timed out already: the I/O thread drops the reply
        if error is None:
            self._succeed(batch, base)
        else:
            self._error(batch, error)

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def request_times_out(self, data: st.DataObject) -> None:
        """request.timeout.ms fires (the request or its reply may still be on the way)."""
        attempt = data.draw(st.sampled_from(sorted(self.pending)))
        batch = self.pending.pop(attempt)
        self._error(batch, RequestTimedOutError("no reply within request.timeout.ms"))

    @precondition(lambda self: any(not b.past_deadline for b in self.batches))
    @rule()
    def time_passes(self) -> None:
        """The oldest batch still within delivery.timeout.ms passes it (deadlines follow
        creation order: every older batch has passed it already)."""
        next(b for b in self.batches if not b.past_deadline).past_deadline = True

    @precondition(lambda self: self.queue and self.queue[0].past_deadline)
    @rule()
    def queued_head_expires(self) -> None:
        """The Sender's turn starts with the accumulator handing back queued batches past
        delivery.timeout.ms (in-flight ones wait for their request's outcome)."""
        self._expire_queued_head()

    def _expire_queued_head(self) -> None:
        batch = self.queue.popleft()
        if batch.base_sequence >= 0:
            self.sequencer.on_expired(TP, batch)  # the Sender ignores what it returns
        batch.verdict = "fail"

    # -- the network and the leader ----------------------------------------------------

    @precondition(lambda self: self.requests)
    @rule()
    def deliver_request(self) -> None:
        self._leader_handle(self.requests.pop(0))

    def _leader_handle(self, request: Request) -> None:
        if request.batch.poison:
            error = MessageSizeTooLargeError("batch exceeds max.message.bytes")
            self.replies.append((request.attempt, error, -1))
            return
        try:
            duplicate_of = check_sequence(self.entry, TP, request.header)
        except KvlogError as exc:
            self.replies.append((request.attempt, exc, -1))
            return
        if duplicate_of is not None:
            self.replies.append((request.attempt, None, duplicate_of))
            return
        base = len(self.log)
        self.log.extend(request.records)
        self.entry = after_append(self.entry, request.header, base)
        self.replies.append((request.attempt, None, base))

    @precondition(lambda self: self.requests)
    @rule()
    def leader_answers_retriable_error(self) -> None:
        request = self.requests.pop(0)
        self.replies.append(
            (request.attempt, NotLeaderOrFollowerError("leadership moved; refresh"), -1)
        )

    @precondition(lambda self: self.requests)
    @rule()
    def leader_rejects_fatally(self) -> None:
        """A fatal rejection of any attempt, before the sequence check (as when the
        topic's max.message.bytes was lowered meanwhile): nothing is appended."""
        request = self.requests.pop(0)
        request.batch.rejected = True
        error = MessageSizeTooLargeError("batch exceeds max.message.bytes")
        self.replies.append((request.attempt, error, -1))

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def lose_request(self, data: st.DataObject) -> None:
        self.requests.pop(data.draw(st.integers(0, len(self.requests) - 1)))

    @precondition(lambda self: self.replies)
    @rule()
    def deliver_reply(self) -> None:
        self._on_reply(*self.replies.pop(0))

    @precondition(lambda self: self.replies)
    @rule(data=st.data())
    def lose_reply(self, data: st.DataObject) -> None:
        self.replies.pop(data.draw(st.integers(0, len(self.replies) - 1)))

    # -- safety ------------------------------------------------------------------------

    @invariant()
    def log_has_each_record_once_in_send_order(self) -> None:
        assert len(set(self.log)) == len(self.log), f"a record is stored twice: {self.log}"
        assert self.log == sorted(self.log), f"records stored out of send order: {self.log}"

    @invariant()
    def acknowledged_batches_are_where_the_ack_says(self) -> None:
        for batch in self.batches:
            if batch.verdict == "done":
                assert not batch.poison
                stored = self.log[batch.acked_offset : batch.acked_offset + batch.record_count]
                assert stored == batch.records, (
                    f"{batch} was acknowledged at offset {batch.acked_offset} but the log "
                    f"holds {stored} there (log {self.log})"
                )

    @invariant()
    def batches_fail_only_when_poison_or_out_of_time(self) -> None:
        for batch in self.batches:
            if batch.verdict == "fail" and not (
                batch.poison or batch.rejected or batch.past_deadline
            ):
                raise AssertionError(
                    f"{batch} failed with {batch.fail_error!r} though the leader never "
                    "rejected it and it was not past its delivery timeout"
                )

    @invariant()
    def poison_is_never_stored(self) -> None:
        for batch in self.batches:
            if batch.poison:
                assert not set(batch.records) & set(self.log)

    # -- liveness ----------------------------------------------------------------------

    def teardown(self) -> None:
        """Stop the faults and run to quiescence: every batch must reach a verdict."""
        for _ in range(10_000):
            if self.replies:
                self._on_reply(*self.replies.pop(0))
            elif self.requests:
                self._leader_handle(self.requests.pop(0))
            elif self.pending:  # lost on the way: the request timeout fires
                attempt = min(self.pending)
                self._error(self.pending.pop(attempt), RequestTimedOutError("lost"))
            elif self.queue and self.queue[0].past_deadline:
                self._expire_queued_head()
            elif self.queue:
                assert self.sequencer.may_send(TP), (
                    f"deadlock: {len(self.queue)} batch(es) queued, nothing in flight, and "
                    "the sequencer lets none go"
                )
                # like the Sender's turn: as many as the sequencer lets go
                while self.queue and self.sequencer.may_send(TP):
                    self._send()
            else:
                break
            self.log_has_each_record_once_in_send_order()
            self.acknowledged_batches_are_where_the_ack_says()
            self.batches_fail_only_when_poison_or_out_of_time()
        open_batches = [b for b in self.batches if b.verdict is None]
        assert not open_batches, f"batches without a verdict after quiescence: {open_batches}"
        for batch in self.batches:
            if batch.verdict == "done":
                assert set(batch.records) <= set(self.log)


# 200 examples in the default run (about 6 s); KVLOG_LONG_TESTS=1 explores 1,000.
SequencerMachine.TestCase.settings = settings(
    max_examples=1000 if os.environ.get("KVLOG_LONG_TESTS") == "1" else 200,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSequencer = SequencerMachine.TestCase
