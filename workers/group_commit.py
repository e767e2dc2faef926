"""The leader's group commit, without sockets: staging produce requests, writing them in
one transaction, and deciding their replies (a part of :class:`workers.leader_core.LeaderCore`).

:meth:`GroupCommit.commit` writes every queued batch of every queued request in ONE write
transaction (one fsync) together with the producer-state and transaction-state rows,
then decides the replies. The write (:meth:`GroupCommit._write`) and the decisions after
it (:meth:`GroupCommit._complete`) are separate steps: a shell with a committer thread
(``workers/committer.py``) takes the write with :meth:`GroupCommit.take_commit`, runs it
there and hands the outcome back to :meth:`GroupCommit.commit_landed` once durable (or
failed), while new requests stage for the next commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvlog import txn_state
from kvlog.batch import BatchHeader
from kvlog.errors import KvlogError, NotLeaderOrFollowerError
from kvlog.ipc.acks import ACKS_ALL, answers_produce
from kvlog.log import LogStore, WriteTxn
from kvlog.producer_state import ProducerStateTable
from kvlog.txn_state import TxnStateTable
from kvlog.types import TopicPartition

from .core_result import Result
from .node_model import UNANSWERED, LeaderStats, ProducedPartition, ProduceResponse, Unanswered
from .replication_core import LeaderReplica


@dataclass(slots=True)
class ProduceItem:
    tp: TopicPartition
    batch: bytes | memoryview | None
    header: BatchHeader | None
    error: KvlogError | None = None
    base_offset: int = -1
    log_start_offset: int = -1
    marker: bool = False  # a transaction marker the leader built
    wait_end: int = -1  # acks=all: the offset to wait for, if not the batch's end

    def outcome(self) -> ProducedPartition:
        return ProducedPartition(self.tp, self.error, self.base_offset, self.log_start_offset)


@dataclass(frozen=True, slots=True)
class CommitJob:
    """A group commit taken for a committer: its requests, and the transaction's body."""

    staged: list[StagedProduce]
    write: Callable[[WriteTxn], Any]


@dataclass(slots=True)
class StagedProduce:
    """One produce request from staging until its reply."""

    token: Any
    acks: int
    items: list[ProduceItem]
    timeout_ms: int = 30_000
    request_bytes: int = 0
    pending: int = 0  # acks=all items still waiting for replication

    def response(self) -> ProduceResponse | Unanswered:
        if not answers_produce(self.acks):
            return UNANSWERED
        return ProduceResponse([item.outcome() for item in self.items], self.request_bytes)


class GroupCommit:
    """The group commit steps of :class:`workers.leader_core.LeaderCore` (a mixin: the
    state is the core's, declared below). Owned by the node's loop; not thread-safe,
    except :meth:`_write`, which a committer thread may run (see its docstring)."""

    node_id: int
    store: LogStore
    leaders: dict[TopicPartition, LeaderReplica]
    producers: ProducerStateTable
    txns: TxnStateTable
    stats: LeaderStats
    _staged: list[StagedProduce]
    _hw_dirty: set[TopicPartition]
    _touched: set[TopicPartition]
    _waiting: set[TopicPartition]
    _next_hw_flush_ms: int
    take_decided: Callable[[], Result]
    write_failed: Callable[[str, BaseException], KvlogError]

    def stage(self, request: StagedProduce) -> None:
        """Queue a request built elsewhere (the coordinator's markers:
        :mod:`workers.markers_core`) for the next :meth:`commit`."""
        self._staged.append(request)

    @property
    def has_staged(self) -> bool:
        return bool(self._staged)

    def commit(self, now_ms: int) -> Result:
        """Write every staged batch (and moved high watermarks) in one durable
        transaction; answer what that decides, and acks=all requests that replication
        or time decided since."""
        job = self.take_commit()
        if job is None:
            return self.take_decided()
        try:
            written = self.store.write(job.write)
        except Exception as exc:
            return self.commit_landed(job, None, exc, now_ms)
        return self.commit_landed(job, written, None, now_ms)

    def take_commit(self) -> CommitJob | None:
        """The staged requests as one write transaction, for a committer to run; every
        later :meth:`produce` stages for the next one. Nothing is decided until
        :meth:`commit_landed` hears the outcome (no other write may come in between)."""
        staged, self._staged = self._staged, []
        if not staged:
            return None
        self.stats.commit_requests = len(staged)
        self.stats.commit_batches = sum(len(r.items) for r in staged)
        # The high watermarks to persist, as they are now: the write may run on another
        # thread while this one moves them.
        marks = self._hw_marks()
        return CommitJob(staged, lambda w: self._write(w, staged, marks))

    def commit_landed(
        self, job: CommitJob, written: Any, error: BaseException | None, now_ms: int
    ) -> Result:
        """A group commit is durable (``written``: what its write returned), or failed
        (``error``: nothing was written, and every item of its requests fails alike)."""
        if error is not None:
            self._fail(job.staged, error)
            return self._answer(job.staged).extend(self.take_decided())
        return self._complete(job.staged, written, now_ms)

    def _write(
        self, w: WriteTxn, staged: list[StagedProduce], marks: dict[TopicPartition, int]
    ) -> Any:
        """The commit's one transaction (no side effects outside it: it may run twice).
        It may run on a committer thread while the loop stages the next requests and
        answers fetches: it reads only ``staged``, ``marks`` and what changes only once
        the commit has landed (leaderships, producer state)."""
        leaders = self.leaders
        stage = self.producers.stage()
        txns = self.txns.stage()
        outcome: list[tuple[ProduceItem, int, bool, KvlogError | None]] = []
        for request in staged:
            for item in request.items:
                if item.error is not None or item.header is None or item.batch is None:
                    continue
                replica = leaders.get(item.tp)
                if replica is None:
                    # Leadership moved between staging and this commit.
                    moved = NotLeaderOrFollowerError(
                        f"node {self.node_id} stopped leading {item.tp} before the "
                        "write; refresh metadata and retry"
                    )
                    outcome.append((item, -1, False, moved))
                    continue
                header = item.header
                if item.marker and not txn_state.marker_needed(
                    txns.partition(item.tp),
                    stage.entry(item.tp, header.producer_id),
                    header.producer_id,
                    header.producer_epoch,
                ):
                    # Written already: answered once all before it is replicated.
                    item.wait_end = w.offsets(item.tp).log_end_offset
                    outcome.append((item, -1, True, None))
                    continue
                try:
                    duplicate_of = None if item.marker else stage.check(item.tp, header)
                    txns.check(item.tp, header)
                except KvlogError as exc:
                    outcome.append((item, -1, False, exc))
                    continue
                if duplicate_of is not None:
                    outcome.append((item, duplicate_of, True, None))
                    continue
                alone = replica.isr == [self.node_id] and len(replica.replicas) == 1
                base = w.append(
                    item.tp,
                    [item.batch],
                    leader_epoch=replica.leader_epoch,
                    advance_high_watermark=alone,
                    headers=[item.header],  # validated at staging
                )[0]
                stage.record(w, item.tp, header, base)
                txns.record(w, item.tp, header, base, item.batch)
                outcome.append((item, base, False, None))
        self._write_high_watermarks(w, marks)
        offsets = {o[0].tp: w.offsets(o[0].tp) for o in outcome if o[0].tp in leaders}
        for tp, state in offsets.items():
            txns.settle(w, tp, state.high_watermark)
            txns.purge(w, tp, state.log_start_offset)
        return (stage, txns), outcome, offsets, marks

    def _fail(self, staged: list[StagedProduce], exc: BaseException) -> None:
        error = self.write_failed("group commit", exc)
        for request in staged:
            for item in request.items:
                if item.error is None:
                    item.error = error

    def _complete(self, staged: list[StagedProduce], written: Any, now_ms: int) -> Result:
        """After the durable write: advance replicas, park acks=all items, answer."""
        (stage, txns), outcome, offsets, marks = written
        leaders = self.leaders
        stage.apply()
        txns.apply()
        for tp, hw in marks.items():  # not those that moved again during the commit
            replica = leaders.get(tp)
            if replica is None or replica.high_watermark == hw:
                self._hw_dirty.discard(tp)
        for tp, state in offsets.items():
            replica = leaders.get(tp)
            if replica is not None:
                replica.on_local_append(state.log_end_offset)
                # A partition without followers moved its stored high watermark in the
                # commit itself: nothing is left to persist. Marking it dirty anyway made
                # every later commit re-read it and a flush transaction every 200 ms
                # (at 1,000 partitions: hundreds of state reads per commit).
                if (
                    replica.recompute_high_watermark()
                    and replica.high_watermark > state.high_watermark
                ):
                    self._hw_dirty.add(tp)
        appended = self.stats.appended
        for item, base, duplicate, error in outcome:
            item.error = error
            item.base_offset = base
            if item.tp in offsets:
                item.log_start_offset = offsets[item.tp].log_start_offset
            if error is None and not duplicate:
                self._touched.add(item.tp)
                counts = appended.get(item.tp.topic)
                if counts is None:
                    counts = appended[item.tp.topic] = [0, 0]
                counts[0] += item.header.last_offset_delta + 1 if item.header else 0
                counts[1] += len(item.batch) if item.batch is not None else 0
        ready = []
        result = Result()
        for request in staged:
            if request.acks == ACKS_ALL:
                for item in request.items:
                    if item.error is not None:
                        continue
                    replica = leaders.get(item.tp)
                    end = item.wait_end
                    if end < 0:
                        end = item.base_offset + (
                            item.header.last_offset_delta + 1 if item.header else 1
                        )
                    if replica is not None and replica.high_watermark < end:
                        request.pending += 1
                        deadline = now_ms + request.timeout_ms
                        replica.wait_for(request, end, deadline, item)
                        self._waiting.add(item.tp)
                        result.wake_at(deadline)
            if request.pending == 0:
                ready.append(request)
        if self._hw_dirty:
            result.wake_at(self._next_hw_flush_ms)
        return self._answer(ready).extend(self.take_decided()).extend(result)

    @staticmethod
    def _answer(requests: list[StagedProduce]) -> Result:
        result = Result()
        for request in requests:
            result.reply(request.token, request.response())
        return result

    def _hw_marks(self) -> dict[TopicPartition, int]:
        """The moved high watermarks not persisted yet."""
        leaders = self.leaders
        return {tp: leaders[tp].high_watermark for tp in self._hw_dirty if tp in leaders}

    def _write_high_watermarks(
        self, w: WriteTxn, marks: dict[TopicPartition, int] | None = None
    ) -> None:
        for tp, mark in (self._hw_marks() if marks is None else marks).items():
            state = w.offsets(tp)
            hw = min(max(mark, state.log_start_offset), state.log_end_offset)
            if hw > state.high_watermark:  # never lower it: this commit may have moved it
                w.set_high_watermark(tp, hw)


__all__ = ["CommitJob", "GroupCommit", "ProduceItem", "StagedProduce"]
