"""The transaction coordinator, without sockets (Kafka's TransactionCoordinator, KIP-98).

Theory of operation. A transactional producer (``transactional.id``) gets a producer id
and epoch from :meth:`TransactionCoordinator.init_producer_id`; every InitProducerId of
the same transactional id bumps the epoch, which fences the older instance: its requests
are PRODUCER_FENCED from then on (Kafka's Kafka-wire handlers answer
INVALID_PRODUCER_EPOCH to the versions that predate that code), and the markers of the
new epoch fence its batches at every partition. A transaction is the partitions
(AddPartitionsToTxn) and consumer groups (AddOffsetsToTxn) the producer adds before
writing to them; EndTxn decides it. The states and their legal moves are
:mod:`workers.txn_model`'s; each is durable (the coordinator's store, table
``transactions``) before any reply that depends on it, and the whole table is loaded at
start (:meth:`load`), so a coordinator killed at any point picks up where it was.

Deciding: EndTxn on an Ongoing transaction writes PrepareCommit (PrepareAbort) and, in
the same write, makes the producer's pending group offsets committed (or drops them:
:meth:`workers.offsets_core.OffsetsCore.end_txn`); then the EndTxn is answered, as Kafka
does, and the markers go out (:mod:`workers.txn_markers`: one ``write_txn_markers`` send
per leader node, retried until every leader wrote and replicated its partitions'
markers). Only then is CompleteCommit (CompleteAbort) written. A coordinator that dies
between the two finds PrepareCommit at start and sends the markers again (a leader skips
one it already wrote).

Waiting, decided here: a request for a transactional id whose transaction is still
ending (Prepare*) is parked until it completes, then handled as if it arrived then; after
``park_max_ms`` it is answered CONCURRENT_TRANSACTIONS (the client retries). So the next
transaction of a producer begins as soon as the previous one's markers are written,
without a client backoff.

Timers (:meth:`tick`): an Ongoing transaction older than its ``transaction.timeout.ms``
is aborted with the epoch bumped (the producer is fenced, as in Kafka since KIP-360's
coordinator changes); an idle transactional id unused for
``transactional.id.expiration.ms`` is forgotten (Dead); parked requests time out; marker
sends are retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from kvlog.errors import (
    ConcurrentTransactionsError,
    InvalidProducerIdMappingError,
    InvalidRequestError,
    InvalidTransactionTimeoutError,
    InvalidTxnStateError,
    KvlogError,
    OperationNotAttemptedError,
    ProducerFencedError,
    UnknownTopicOrPartitionError,
)
from kvlog.log import LogStore, WriteTxn
from kvlog.types import TopicPartition

from .config import broker_default
from .controller_events import InitProducerId, ProducerIdAnswer
from .core_result import Result
from .offsets_core import OffsetsCore
from .txn_events import (
    AddOffsetsToTxn,
    AddPartitionsToTxn,
    EndTxn,
    MarkersAnswer,
    TxnAck,
    TxnOffsetCommit,
    TxnPartitionsAdded,
)
from .txn_markers import MARKER_TIMEOUT_MS, RETRY_BACKOFF_MS, LeaderLookup, MarkerChannel
from .txn_model import MAX_EPOCH, NO_START, TRANSACTIONS_TABLE, TxnMetadata, TxnState

log = logging.getLogger(__name__)

PARK_MAX_MS = 5000


@dataclass
class TxnConfig:
    """The coordinator's transaction settings (Kafka's broker config names)."""

    max_timeout_ms: int = broker_default("transaction.max.timeout.ms")
    id_expiration_ms: int = broker_default("transactional.id.expiration.ms")
    park_max_ms: int = PARK_MAX_MS
    marker_timeout_ms: int = MARKER_TIMEOUT_MS
    retry_backoff_ms: int = RETRY_BACKOFF_MS


@dataclass(slots=True)
class Parked:
    """A request waiting for its transactional id's transaction to complete."""

    token: Any
    event: Any
    deadline_ms: int


Handler = Callable[[Result, Any, Any, int], None]


@dataclass
class TransactionCoordinator:
    """Owned by the coordinator's loop (beside the group and offsets cores); not
    thread-safe. ``leaders`` says where each partition's marker goes,
    ``partition_count`` which partitions exist, ``allocate_producer_id`` hands out
    producer ids inside a write (the controller's counter)."""

    store: LogStore
    config: TxnConfig
    leaders: LeaderLookup
    partition_count: Callable[[str], int | None]
    allocate_producer_id: Callable[[WriteTxn], int]
    offsets: OffsetsCore
    txns: dict[str, TxnMetadata] = field(default_factory=dict)
    parked: dict[str, list[Parked]] = field(default_factory=dict)
    _completing: set[str] = field(default_factory=set)  # markers written, Complete not stored
    _retry_complete_at: int | None = None

    def __post_init__(self) -> None:
        self.channel = MarkerChannel(
            self.leaders, self.config.marker_timeout_ms, self.config.retry_backoff_ms
        )
        self._handlers: dict[type, Handler] = {
            InitProducerId: self._init_producer_id,
            AddPartitionsToTxn: self._add_partitions,
            AddOffsetsToTxn: self._add_offsets,
            EndTxn: self._end_txn,
            TxnOffsetCommit: self._offset_commit,
        }

    def handles(self) -> list[type]:
        return [*self._handlers, MarkersAnswer]

    # -- entry points ----------------------------------------------------------------------

    def load(self, now_ms: int) -> Result:
        """A new process: every transactional id from the store; decided transactions'
        markers go out again."""
        self.txns.clear()
        self.parked.clear()
        self.channel.forget()
        with self.store.reader() as r:
            for key, raw in r.items(TRANSACTIONS_TABLE):
                meta = TxnMetadata.decode(key.decode(), raw)
                self.txns[meta.transactional_id] = meta
        for meta in self.txns.values():
            if meta.state.preparing:
                self._send_markers(meta)
        out = Result()
        self._pump(out, now_ms)
        return out.wake_at(self.next_deadline_ms())

    def handle(self, token: Any, event: Any, now_ms: int) -> Result:
        out = Result()
        if isinstance(event, MarkersAnswer):
            self.channel.on_answer(event.token, event.fields, now_ms)
        else:
            self._dispatch(out, token, event, now_ms)
        self._pump(out, now_ms)
        return out.wake_at(self.next_deadline_ms())

    def tick(self, now_ms: int) -> Result:
        out = Result()
        for meta in list(self.txns.values()):
            due = meta.times_out_at()
            if due is not None and due <= now_ms:
                log.info(
                    "transactional id %r: transaction open for %d ms, longer than its "
                    "timeout %d ms: aborting it",
                    meta.transactional_id,
                    now_ms - meta.start_ms,
                    meta.timeout_ms,
                )
                try:
                    self._fence_and_abort(meta, now_ms)
                except KvlogError as exc:
                    log.error("aborting %r failed: %s", meta.transactional_id, exc.message)
        expired = [
            m
            for m in self.txns.values()
            if (at := m.expires_at(self.config.id_expiration_ms)) is not None and at <= now_ms
        ]
        if expired:
            self._expire(expired, now_ms)
        for tid, waiting in list(self.parked.items()):
            due_now = [p for p in waiting if p.deadline_ms <= now_ms]
            if not due_now:
                continue
            self.parked[tid] = [p for p in waiting if p.deadline_ms > now_ms]
            if not self.parked[tid]:
                del self.parked[tid]
            for p in due_now:
                out.fail(
                    p.token,
                    ConcurrentTransactionsError(
                        f"transactional id {tid!r}: the previous transaction is still "
                        "completing (its markers are being written); retry"
                    ),
                )
        self._pump(out, now_ms)
        return out.wake_at(self.next_deadline_ms())

    def metadata_moved(self, now_ms: int) -> Result:
        """Leaders or node endpoints changed: markers waiting for them may go now."""
        self.channel.metadata_moved()
        out = Result()
        self._pump(out, now_ms)
        return out.wake_at(self.next_deadline_ms())

    def next_deadline_ms(self) -> int | None:
        due: list[int] = []
        for meta in self.txns.values():
            at = meta.times_out_at()
            if at is None:
                at = meta.expires_at(self.config.id_expiration_ms)
            if at is not None:
                due.append(at)
        due += [p.deadline_ms for waiting in self.parked.values() for p in waiting]
        channel = self.channel.next_deadline_ms()
        if channel is not None:
            due.append(channel)
        if self._retry_complete_at is not None:
            due.append(self._retry_complete_at)
        return min(due, default=None)

    # -- dispatch and parking --------------------------------------------------------------

    def _dispatch(self, out: Result, token: Any, event: Any, now_ms: int) -> None:
        try:
            self._handlers[type(event)](out, token, event, now_ms)
        except KvlogError as exc:
            out.fail(token, exc)

    def _park(self, token: Any, event: Any, tid: str, now_ms: int) -> None:
        parked = Parked(token, event, now_ms + self.config.park_max_ms)
        self.parked.setdefault(tid, []).append(parked)

    def _release(self, out: Result, tid: str, now_ms: int) -> None:
        """The transaction of ``tid`` completed: its parked requests are handled now."""
        for parked in self.parked.pop(tid, []):
            self._dispatch(out, parked.token, parked.event, now_ms)

    # -- storage ---------------------------------------------------------------------------

    def _store(self, *metas: TxnMetadata, extra: Callable[[WriteTxn], None] | None = None) -> None:
        """Write ``metas`` (a Dead one is deleted) durably, then adopt them."""

        def write(w: WriteTxn) -> None:
            for meta in metas:
                key = meta.transactional_id.encode()
                if meta.state is TxnState.DEAD:
                    w.delete(TRANSACTIONS_TABLE, key)
                else:
                    w.put(TRANSACTIONS_TABLE, key, meta.encode())
            if extra is not None:
                extra(w)

        self.store.write(write)
        for meta in metas:
            if meta.state is TxnState.DEAD:
                self.txns.pop(meta.transactional_id, None)
            else:
                self.txns[meta.transactional_id] = meta

    def _current(self, tid: str, producer_id: int, epoch: int) -> TxnMetadata:
        """The id's metadata, if the request's producer id and epoch are current."""
        meta = self.txns.get(tid)
        if meta is None or meta.producer_id != producer_id:
            raise InvalidProducerIdMappingError(
                f"producer id {producer_id} is not transactional id {tid!r}'s"
                + ("" if meta is None else f" (it has {meta.producer_id})")
                + "; call init_transactions() again"
            )
        if epoch != meta.producer_epoch:
            raise ProducerFencedError(
                f"transactional id {tid!r}: epoch {epoch} is fenced, the current one is "
                f"{meta.producer_epoch} (a newer producer instance, or a timed-out "
                "transaction); close this producer"
            )
        return meta

    # -- requests --------------------------------------------------------------------------

    def _init_producer_id(self, out: Result, token: Any, ev: InitProducerId, now_ms: int) -> None:
        tid = ev.transactional_id
        if not tid:
            raise InvalidRequestError("a transactional id must not be empty")
        timeout = ev.transaction_timeout_ms
        if not 0 < timeout <= self.config.max_timeout_ms:
            raise InvalidTransactionTimeoutError(
                f"transaction.timeout.ms={timeout}: must be 1..{self.config.max_timeout_ms} "
                "(the broker's transaction.max.timeout.ms)"
            )
        meta = self.txns.get(tid)
        if ev.producer_id >= 0:
            # KIP-360: the producer bumps its own epoch (after an abortable error such as
            # UNKNOWN_PRODUCER_ID), only while it is still the id's current instance.
            self._current(tid, ev.producer_id, ev.producer_epoch)
        if meta is not None and meta.state.preparing:
            self._park(token, ev, tid, now_ms)  # checked again once it completes
            return
        if meta is not None and meta.state is TxnState.ONGOING:
            # A new instance: the open transaction is aborted with the old instance fenced;
            # this request is answered once that abort completes.
            self._fence_and_abort(meta, now_ms)
            if ev.producer_id >= 0:  # the epoch it bumps is the one the abort bumped
                ev = replace(ev, producer_epoch=self.txns[tid].producer_epoch)
            self._park(token, ev, tid, now_ms)
            return
        # A new id, or an epoch that cannot grow: a new producer id at epoch 0.
        fresh = meta is None or meta.producer_epoch >= MAX_EPOCH
        base = meta or TxnMetadata(tid, -1, -1, timeout, updated_ms=now_ms)

        def write(w: WriteTxn) -> TxnMetadata:
            new = base.moved(
                TxnState.EMPTY,
                now_ms,
                producer_id=self.allocate_producer_id(w) if fresh else base.producer_id,
                producer_epoch=0 if fresh else base.producer_epoch + 1,
                timeout_ms=timeout,
                partitions=frozenset(),
                groups=frozenset(),
                start_ms=NO_START,
            )
            w.put(TRANSACTIONS_TABLE, tid.encode(), new.encode())
            return new

        stored = self.txns[tid] = self.store.write(write)
        log.info(
            "transactional id %r: producer id %d epoch %d",
            tid,
            stored.producer_id,
            stored.producer_epoch,
        )
        out.reply(token, ProducerIdAnswer(stored.producer_id, stored.producer_epoch))

    def _add_partitions(self, out: Result, token: Any, ev: AddPartitionsToTxn, now_ms: int) -> None:
        meta = self._current(ev.transactional_id, ev.producer_id, ev.producer_epoch)
        if meta.state.preparing:
            self._park(token, ev, ev.transactional_id, now_ms)
            return
        wanted = frozenset(ev.partitions)
        unknown = {tp for tp in wanted if not self._exists(tp)}
        if unknown:
            results: list[tuple[TopicPartition, KvlogError | None]] = []
            for tp in ev.partitions:
                if tp in unknown:
                    results.append((tp, UnknownTopicOrPartitionError(f"{tp} does not exist")))
                else:
                    why = f"{tp} not added: other partitions of the request do not exist"
                    results.append((tp, OperationNotAttemptedError(why)))
            out.reply(token, TxnPartitionsAdded(results))
            return
        if meta.state is not TxnState.ONGOING or not wanted <= meta.partitions:
            self._store(self._begun(meta, now_ms, partitions=meta.partitions | wanted))
        out.reply(token, TxnPartitionsAdded([(tp, None) for tp in ev.partitions]))

    def _add_offsets(self, out: Result, token: Any, ev: AddOffsetsToTxn, now_ms: int) -> None:
        meta = self._current(ev.transactional_id, ev.producer_id, ev.producer_epoch)
        if meta.state.preparing:
            self._park(token, ev, ev.transactional_id, now_ms)
            return
        if not ev.group_id:
            raise InvalidRequestError("a group id must not be empty")
        if meta.state is not TxnState.ONGOING or ev.group_id not in meta.groups:
            self._store(self._begun(meta, now_ms, groups=meta.groups | {ev.group_id}))
        out.reply(token, TxnAck())

    def _offset_commit(self, out: Result, token: Any, ev: TxnOffsetCommit, now_ms: int) -> None:
        meta = self._current(ev.transactional_id, ev.producer_id, ev.producer_epoch)
        if meta.state is not TxnState.ONGOING or ev.group_id not in meta.groups:
            raise InvalidTxnStateError(
                f"transactional id {ev.transactional_id!r}: group {ev.group_id!r} is not in "
                "an open transaction; add it first (AddOffsetsToTxn / "
                "send_offsets_to_transaction)"
            )
        # KIP-447: the consumer whose offsets these are must still be the group's member
        # of this generation, or its producer is a zombie's.
        self.offsets.admit_txn(ev.group_id, ev.generation, ev.member_id, ev.instance_id)
        answer = self.offsets.stage_txn(ev.group_id, ev.producer_id, ev.offsets, now_ms)
        out.reply(token, answer)

    def _end_txn(self, out: Result, token: Any, ev: EndTxn, now_ms: int) -> None:
        meta = self._current(ev.transactional_id, ev.producer_id, ev.producer_epoch)
        state = meta.state
        if state is TxnState.ONGOING:
            self._decide(meta, ev.committed, now_ms)
            out.reply(token, TxnAck())
            return
        same = ev.committed == meta.committing
        if state.preparing and same:
            self._park(token, ev, ev.transactional_id, now_ms)
            return
        if state in (TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT) and same:
            out.reply(token, TxnAck())  # a retry of the EndTxn that ended it
            return
        outcome = "commit" if ev.committed else "abort"
        raise InvalidTxnStateError(
            f"transactional id {ev.transactional_id!r}: cannot {outcome} in state "
            f"{state.value} (begin a transaction first, or end it one way)"
        )

    # -- transitions -----------------------------------------------------------------------

    def _exists(self, tp: TopicPartition) -> bool:
        count = self.partition_count(tp.topic)
        return count is not None and 0 <= tp.partition < count

    @staticmethod
    def _begun(meta: TxnMetadata, now_ms: int, **changes: Any) -> TxnMetadata:
        if meta.state is TxnState.ONGOING:
            return meta.moved(TxnState.ONGOING, now_ms, **changes)
        # A new transaction: what the last one held is gone.
        fresh = {"partitions": frozenset(), "groups": frozenset(), **changes}
        return meta.moved(TxnState.ONGOING, now_ms, start_ms=now_ms, **fresh)

    def _decide(self, meta: TxnMetadata, commit: bool, now_ms: int, **changes: Any) -> None:
        """Prepare the outcome (and the group offsets with it), durably; then markers."""
        prepared = meta.moved(
            TxnState.PREPARE_COMMIT if commit else TxnState.PREPARE_ABORT, now_ms, **changes
        )
        final = prepared
        if not prepared.partitions:  # no marker to write: complete at once
            final = self._completed(prepared, now_ms)
        groups, pid = meta.groups, meta.producer_id
        self._store(final, extra=lambda w: OffsetsCore.end_txn(w, groups, pid, commit))
        log.info(
            "transactional id %r: %s producer id %d epoch %d (%d partitions, %d groups)",
            meta.transactional_id,
            "committing" if commit else "aborting",
            pid,
            prepared.producer_epoch,
            len(prepared.partitions),
            len(groups),
        )
        if final.state.preparing:
            self._send_markers(final)

    def _fence_and_abort(self, meta: TxnMetadata, now_ms: int) -> None:
        """Abort the open transaction with the epoch bumped: the producer is fenced."""
        epoch = meta.producer_epoch + 1 if meta.producer_epoch < MAX_EPOCH else meta.producer_epoch
        self._decide(meta, False, now_ms, producer_epoch=epoch)

    @staticmethod
    def _completed(meta: TxnMetadata, now_ms: int) -> TxnMetadata:
        done = TxnState.COMPLETE_COMMIT if meta.committing else TxnState.COMPLETE_ABORT
        return meta.moved(
            done, now_ms, partitions=frozenset(), groups=frozenset(), start_ms=NO_START
        )

    def _send_markers(self, meta: TxnMetadata) -> None:
        self.channel.add(
            meta.transactional_id,
            meta.producer_id,
            meta.producer_epoch,
            meta.committing,
            meta.partitions,
        )

    def _pump(self, out: Result, now_ms: int) -> None:
        """Send what markers can go; complete the transactions whose markers are all
        written (one durable write for all of them) and release their parked requests."""
        out.sends.extend(self.channel.sends(now_ms))
        self._completing.update(self.channel.done())
        if not self._completing:
            return
        if self._retry_complete_at is not None and now_ms < self._retry_complete_at:
            return
        done = [
            self._completed(self.txns[tid], now_ms)
            for tid in sorted(self._completing)
            if tid in self.txns and self.txns[tid].state.preparing
        ]
        try:
            self._store(*done)
        except KvlogError as exc:
            log.error("completing transactions failed (%s); retrying", exc.message)
            self._retry_complete_at = now_ms + self.config.retry_backoff_ms
            return
        self._retry_complete_at = None
        finished, self._completing = self._completing, set()
        for tid in sorted(finished):
            self._release(out, tid, now_ms)
        out.sends.extend(self.channel.sends(now_ms))

    def _expire(self, expired: list[TxnMetadata], now_ms: int) -> None:
        dead = [m.moved(TxnState.DEAD, now_ms) for m in expired]
        try:
            self._store(*dead)
        except KvlogError as exc:
            log.warning("expiring transactional ids failed: %s", exc.message)
            return
        for meta in dead:
            log.info(
                "transactional id %r expired (transactional.id.expiration.ms)",
                meta.transactional_id,
            )


__all__ = ["Parked", "TransactionCoordinator", "TxnConfig"]
