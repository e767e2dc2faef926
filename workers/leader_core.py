"""The partition leader's logic, without sockets: group commit, acks, ISR, offsets.

One :class:`LeaderCore` per node process, over that node's log store. Per-batch work
only: it checks batch headers and CRCs and never decodes records (except one batch for a
timestamp lookup).

Group commit: :meth:`produce` validates a request's batches and queues them;
:meth:`commit` writes every queued batch of every queued request in ONE write
transaction (one fsync) together with the producer-state rows, then decides the replies
(the commit's steps, :meth:`take_commit`, :meth:`commit_landed` and the write and
decisions between them, are :mod:`workers.group_commit`, a part of this class).

Transactions: the leader keeps each partition's open transactions, last stable offset and
aborted index (:mod:`kvlog.txn_state`) in the same commit as the batches. The transaction
coordinator's markers (:mod:`workers.markers_core`) are control batches appended in the
group commit like a produce with acks=all; a marker already written (the coordinator
retries) is not written again (:func:`kvlog.txn_state.marker_needed`) and is answered once
everything before it is replicated.

Replies to produce requests: acks=1 (and acks=all on a partition without followers) once
the commit is durable; acks=all once the high watermark passes the request's last batch
(every in-sync replica has it), or its ``timeout_ms`` ran out, or leadership moved;
acks=0 never (an ``UNANSWERED`` reply tells the shell the request is finished). A request
is answered when its last batch is decided.

Replication: for each partition this node leads, a
:class:`~workers.replication_core.LeaderReplica` tracks followers (their fetch offsets,
recorded by the fetch path, are their acknowledgements), the ISR and the high watermark.
The leader asks the coordinator for ISR changes (``alter_isr`` sends, at most one in
flight per partition, checked every ``ISR_CHECK_INTERVAL_MS``); moved high watermarks
are persisted with the next commit or every ``HW_FLUSH_INTERVAL_MS``; idle idempotent
producers are forgotten every ``PRODUCER_EXPIRY_CHECK_MS``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from kvlog import batch as batch_format
from kvlog import epochs, txn_state
from kvlog.compact_records import first_keyless
from kvlog.errors import (
    InvalidRecordError,
    KvlogError,
    MessageSizeTooLargeError,
    NotLeaderOrFollowerError,
    StorageError,
    UnknownServerError,
    UnknownTopicOrPartitionError,
)
from kvlog.ipc.acks import ACKS_ALL
from kvlog.log import LogStore, WriteTxn
from kvlog.producer_state import ProducerStateTable, delete_partition_state, delete_producer
from kvlog.txn_state import TxnStateTable
from kvlog.types import TopicPartition, partition_key

from .core_result import Result, Send
from .group_commit import CommitJob, GroupCommit, ProduceItem, StagedProduce
from .log_dir_core import LogDirHealth
from .node_model import (
    COORDINATOR,
    Answer,
    HostedPartition,
    LeaderStats,
    Produce,
    ProduceRules,
    earliest,
)
from .replication_core import DEFAULT_REPLICA_LAG_TIME_MAX_MS, LeaderReplica

log = logging.getLogger(__name__)
T = TypeVar("T")

TOPIC_IDS_TABLE = "topic_ids"
DEFAULT_MESSAGE_MAX_BYTES = 100 << 20
ISR_CHECK_INTERVAL_MS = 250
HW_FLUSH_INTERVAL_MS = 200
PRODUCER_EXPIRY_CHECK_MS = 600_000
ALTER_ISR_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class IsrChange:
    """Token of an ``alter_isr`` send: its answer comes back to :meth:`on_isr_answer`."""

    tp: TopicPartition


def check_keyed(tp: TopicPartition, batch: bytes | memoryview) -> None:
    """Refuse a batch with a record without a key on a compacted topic, as Kafka does
    (INVALID_RECORD): compaction keeps the latest record per key, so such a record could
    only be dropped later, silently (the one per-record walk of the leader: in C, and
    only on compacted topics)."""
    delta = first_keyless(batch)
    if delta >= 0:
        raise InvalidRecordError(
            f"{tp}: the record at offset delta {delta} of the batch has no key, and topic "
            f"{tp.topic!r} is compacted (cleanup.policy=compact): give every record a key, "
            "or produce to a topic with cleanup.policy=delete"
        )


class LeaderCore(GroupCommit):
    """Owned by one node's loop (with the fetch and follower cores, which share its
    store, hosted partitions and producer state); not thread-safe."""

    def __init__(
        self,
        node_id: int,
        store: LogStore,
        *,
        health: LogDirHealth | None = None,
        lag_time_max_ms: int = DEFAULT_REPLICA_LAG_TIME_MAX_MS,
        message_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES,
        producer_id_expiration_ms: int = 86_400_000,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.health = health or LogDirHealth(f"node {node_id}", "?")
        self.lag_time_max_ms = lag_time_max_ms
        self.message_max_bytes = message_max_bytes
        self.producer_id_expiration_ms = producer_id_expiration_ms
        self.hosted: dict[TopicPartition, HostedPartition] = {}
        self._rules: dict[TopicPartition, ProduceRules] = {}  # of self.hosted
        self.leaders: dict[TopicPartition, LeaderReplica] = {}
        self.producers = ProducerStateTable()
        self.txns = TxnStateTable()
        self._staged: list[StagedProduce] = []
        self.stats = LeaderStats()
        self._decided: list[StagedProduce] = []  # acks=all requests whose last item settled
        self._touched: set[TopicPartition] = set()  # readable data moved: wake long polls
        self._hw_dirty: set[TopicPartition] = set()  # high watermarks not persisted yet
        self._waiting: set[TopicPartition] = set()  # partitions with acks=all waiters
        self._isr_in_flight: dict[TopicPartition, LeaderReplica] = {}
        self._isr_watch = False  # some led partition has followers: check the ISR
        self._next_isr_check_ms = 0
        self._next_hw_flush_ms = 0
        self._next_producer_expiry_ms: int | None = None

    def start(self, now_ms: int) -> None:
        self._next_producer_expiry_ms = now_ms + PRODUCER_EXPIRY_CHECK_MS

    # -- assignment ------------------------------------------------------------------------

    def apply_assignment(
        self,
        partitions: Iterable[HostedPartition],
        deleted_topic_ids: Iterable[str] = (),
        now_ms: int = 0,
    ) -> Result:
        """Host exactly what the coordinator assigned; drop deleted topics' partitions;
        take up or give up leaderships (acks=all requests waiting on a partition given up
        fail with NOT_LEADER_OR_FOLLOWER: the Result answers those now complete).

        A local partition whose stored topic id differs from the assignment's belongs to
        an older topic of the same name: its data is dropped and it starts empty. A new
        leadership records its epoch's start offset (the log end offset) in the epoch
        cache, so followers can find where their history diverges.
        """
        assigned = {p.tp: p for p in partitions}
        deleted = set(deleted_topic_ids)
        local = set(self.store.partitions())
        new_leaders = [
            tp
            for tp, h in assigned.items()
            if h.leader_id == self.node_id
            and (tp not in self.leaders or self.leaders[tp].leader_epoch != h.leader_epoch)
        ]

        def reconcile(w: WriteTxn) -> list[TopicPartition]:
            changed = []
            for tp in local:
                raw = w.get(TOPIC_IDS_TABLE, partition_key(tp))
                stored_id = raw.decode() if raw else ""
                want = assigned.get(tp)
                stale = want is not None and stored_id and stored_id != want.topic_id
                if stored_id in deleted or stale:
                    w.drop_partition(tp)
                    w.delete(TOPIC_IDS_TABLE, partition_key(tp))
                    delete_partition_state(w, tp)
                    txn_state.clear(w, tp)
                    epochs.clear(w, tp)
                    changed.append(tp)
            for tp, hosted in assigned.items():
                if w.create_partition(tp) or tp in changed:
                    changed.append(tp)
                w.put(TOPIC_IDS_TABLE, partition_key(tp), hosted.topic_id.encode())
            for tp in new_leaders:
                epochs.record(w, tp, assigned[tp].leader_epoch, w.offsets(tp).log_end_offset)
            return changed

        changed = self.store.write(reconcile)
        for tp in changed:
            self.producers.forget_partition(tp)
            self.txns.forget_partition(tp)
        new = [tp for tp in assigned if tp not in self.hosted or tp in changed]
        for tp, replica in list(self.leaders.items()):
            hosted = assigned.get(tp)
            if (
                hosted is None
                or hosted.leader_id != self.node_id
                or tp in changed
                or (hosted.leader_epoch != replica.leader_epoch)
            ):
                reason = "leadership moved" if hosted is not None else "partition deleted"
                self._settle(replica.abandon(f"node {self.node_id} no longer leads ({reason})"))
                del self.leaders[tp]
        self.hosted = assigned
        self._rules = {}
        with self.store.reader() as r:
            self.producers.load(r, new)
            self.txns.load(r, new)
            for tp, hosted in assigned.items():
                if hosted.leader_id != self.node_id:
                    continue
                replica = self.leaders.get(tp)
                if replica is None:
                    state = r.offsets(tp)
                    self.leaders[tp] = LeaderReplica.start(
                        tp,
                        self.node_id,
                        hosted.replicas,
                        hosted.isr or [self.node_id],
                        hosted.leader_epoch,
                        state.log_end_offset,
                        state.high_watermark,
                        now_ms,
                        min_insync_replicas=hosted.min_insync_replicas,
                        lag_time_max_ms=self.lag_time_max_ms,
                    )
                    log.info(
                        "node %d leads %s (epoch %d, isr %s)",
                        self.node_id,
                        tp,
                        hosted.leader_epoch,
                        hosted.isr,
                    )
                else:
                    replica.replicas = list(hosted.replicas)
                    replica.min_insync_replicas = hosted.min_insync_replicas
                    settled = replica.pending_isr is None or sorted(hosted.isr) == sorted(
                        replica.pending_isr
                    )
                    if settled and replica.isr_applied(hosted.isr or [self.node_id]):
                        self._hw_moved(tp)
        strays = local - set(assigned) - set(changed)
        if strays:
            log.warning(
                "node %d holds partitions the coordinator does not assign: %s (kept, not served)",
                self.node_id,
                ", ".join(sorted(map(str, strays))),
            )
        self._update_isr_watch()
        self._poll_waiters(now_ms)  # ISRs changed: acks=all waits may be decided
        return self.take_decided().wake_at(self.next_deadline_ms())

    def _update_isr_watch(self) -> None:
        me = [self.node_id]
        self._isr_watch = any(r.followers or r.isr != me for r in self.leaders.values())

    def _hosted(self, tp: TopicPartition) -> HostedPartition:
        hosted = self.hosted.get(tp)
        if hosted is None:
            raise UnknownTopicOrPartitionError(f"node {self.node_id} does not host {tp}")
        return hosted

    def leader_for(self, tp: TopicPartition) -> LeaderReplica:
        """This node's replica state of ``tp``; raises if it does not lead it."""
        replica = self.leaders.get(tp)
        if replica is None:
            hosted = self._hosted(tp)
            raise NotLeaderOrFollowerError(
                f"node {self.node_id} is not the leader of {tp} (node {hosted.leader_id} is); "
                "refresh metadata"
            )
        return replica

    # -- produce ---------------------------------------------------------------------------

    def produce(self, request: Produce, now_ms: int = 0) -> Result:
        """Validate a request (its size; per batch the header, CRC, size, leadership,
        enough in-sync replicas for acks=all) and queue it for the next :meth:`commit`.
        Only a request refused as a whole is answered at once."""
        total = sum(len(batch) for _, batch in request.entries)
        if total > self.message_max_bytes:
            return Result().fail(
                request.token,
                MessageSizeTooLargeError(
                    f"produce request of {total} bytes exceeds the broker's message.max.bytes="
                    f"{self.message_max_bytes}; send smaller requests (max.request.size)"
                ),
            )
        items = []
        all_rules = self._rules
        for tp, batch in request.entries:
            try:
                replica = self.leader_for(tp)
                rules = all_rules.get(tp)
                if rules is None:
                    # The topic's effective config is merged per call: once per assignment.
                    rules = all_rules[tp] = self.hosted[tp].produce_rules()
                limit = rules.max_message_bytes
                if len(batch) > limit:
                    raise MessageSizeTooLargeError(
                        f"batch of {len(batch)} bytes for {tp} exceeds max.message.bytes="
                        f"{limit}; raise the limit with `kvlog topics alter "
                        f"{tp.topic} --config max.message.bytes={len(batch)}` or send smaller "
                        "records"
                    )
                if request.acks == ACKS_ALL:
                    replica.check_enough_replicas()
                header = batch_format.validate(batch)
                batch_format.check_produced(header)
                if rules.compacted and not header.is_control:
                    check_keyed(tp, batch)
            except KvlogError as exc:
                items.append(ProduceItem(tp, None, None, exc))
                continue
            items.append(ProduceItem(tp, batch, header))
        self._staged.append(
            StagedProduce(request.token, request.acks, items, request.timeout_ms, total)
        )
        return Result()

    def _flush_high_watermarks(self) -> None:
        """Persist moved high watermarks (they are also written with every commit)."""
        try:
            self.store.write(self._write_high_watermarks)
        except KvlogError as exc:
            log.warning("node %d: persisting high watermarks failed: %s", self.node_id, exc)
            return
        self._hw_dirty.clear()

    # -- writes outside the group commit ----------------------------------------------------

    def write(self, fn: Callable[[WriteTxn], T]) -> T:
        """One durable write transaction outside the group commit (DeleteRecords), with
        the high watermarks moved since the last write, so what ``fn`` reads and caps at
        is the leaders' own. Raises what the store raises (see :meth:`write_failed`)."""

        def both(w: WriteTxn) -> T:
            self._write_high_watermarks(w)
            return fn(w)

        result = self.store.write(both)
        self._hw_dirty.clear()
        return result

    def write_failed(self, what: str, exc: BaseException) -> KvlogError:
        """The error a failed write gives its requests (a storage failure takes the log
        dir offline)."""
        if not isinstance(exc, KvlogError):
            log.exception("node %d: %s failed", self.node_id, what)
            return UnknownServerError(f"{what} failed: {type(exc).__name__}: {exc}")
        log.error("node %d: %s failed: %s", self.node_id, what, exc.message)
        if isinstance(exc, StorageError):
            self.health.write_failed()
        return exc

    # -- acks=all and replication ----------------------------------------------------------

    def _settle(self, done: list[tuple[Any, KvlogError | None]]) -> None:
        """Apply decided acks=all waits to their requests; finished ones are decided."""
        for waiter, error in done:
            request: StagedProduce = waiter.token
            if error is not None and waiter.item is not None:
                waiter.item.error = error
            request.pending -= 1
            if request.pending == 0:
                self._decided.append(request)

    def _poll_waiters(self, now_ms: int, tps: Iterable[TopicPartition] | None = None) -> None:
        """Settle acks=all waits that replication or time decided."""
        for tp in list(self._waiting if tps is None else tps):
            replica = self.leaders.get(tp)
            if replica is not None and replica.waiters:
                self._settle(replica.ready_waiters(now_ms))
            if replica is None or not replica.waiters:
                self._waiting.discard(tp)

    def take_decided(self) -> Result:
        """Replies to the acks=all requests decided since the last call."""
        decided, self._decided = self._decided, []
        return self._answer(decided)

    def _hw_moved(self, tp: TopicPartition) -> None:
        self._hw_dirty.add(tp)
        self._touched.add(tp)  # consumers waiting below the old high watermark can go on

    def followers_fetched(self, moved: list[TopicPartition], now_ms: int) -> None:
        """Follower fetches moved these partitions' high watermarks (see the fetch core)."""
        for tp in moved:
            self._hw_moved(tp)
        self._poll_waiters(now_ms, moved)

    def take_touched(self) -> set[TopicPartition]:
        """Partitions whose readable data moved (appends, high watermarks) since the last
        call: what parked long polls may now be satisfied by."""
        touched, self._touched = self._touched, set()
        return touched

    def _isr_sends(self, now_ms: int) -> list[Send]:
        out = []
        for tp, replica in self.leaders.items():
            # One change in flight per partition, and only one that is sent is pending:
            # a pending change nobody asked for would hold every later one back.
            if tp in self._isr_in_flight:
                continue
            proposed = replica.proposed_isr(now_ms)
            if proposed is None:
                continue
            replica.pending_isr = proposed
            self._isr_in_flight[tp] = replica
            log.info(
                "node %d: %s asking for ISR %s (now %s)", self.node_id, tp, proposed, replica.isr
            )
            fields = {
                "topic": tp.topic,
                "partition": tp.partition,
                "leader": self.node_id,
                "leader_epoch": replica.leader_epoch,
                "isr": proposed,
            }
            out.append(Send(COORDINATOR, "alter_isr", fields, IsrChange(tp), ALTER_ISR_TIMEOUT_MS))
        return out

    def on_isr_answer(self, answer: Answer, now_ms: int) -> Result:
        """The coordinator's answer to an ``alter_isr`` send."""
        tp = answer.token.tp
        replica = self._isr_in_flight.pop(tp, None)
        if replica is None or replica is not self.leaders.get(tp):
            return Result()  # asked for by a leadership of this node that has ended
        if answer.fields is None or answer.error is not None:
            replica.pending_isr = None
            log.info("node %d: ISR change for %s refused: %s", self.node_id, tp, answer.error)
            return Result()
        replica.isr_applied(list(answer.fields.get("isr", replica.isr)))
        self._update_isr_watch()
        self._hw_moved(tp)
        self._poll_waiters(now_ms, [tp])
        return self.take_decided().wake_at(self.next_deadline_ms())

    # -- timers ----------------------------------------------------------------------------

    def tick(self, now_ms: int) -> Result:
        """Time-driven work: acks=all timeouts, ISR checks, high watermark flushes,
        producer-id expiry."""
        result = Result()
        self._poll_waiters(now_ms)
        result.extend(self.take_decided())
        if now_ms >= self._next_isr_check_ms:
            self._next_isr_check_ms = now_ms + ISR_CHECK_INTERVAL_MS
            # Without followers or a shrunk ISR no leader has a change to propose; the
            # scan over every led partition is what 1,000 of them cost 4 times a second.
            if self._isr_watch:
                result.sends.extend(self._isr_sends(now_ms))
        expiry = self._next_producer_expiry_ms
        if expiry is not None and now_ms >= expiry:
            self._next_producer_expiry_ms = now_ms + PRODUCER_EXPIRY_CHECK_MS
            self._expire_producers(now_ms)
        if self._hw_dirty and now_ms >= self._next_hw_flush_ms:
            self._next_hw_flush_ms = now_ms + HW_FLUSH_INTERVAL_MS
            self._flush_high_watermarks()
        return result.wake_at(self.next_deadline_ms())

    def next_deadline_ms(self) -> int | None:
        due = [self._next_producer_expiry_ms]
        for tp in self._waiting:
            replica = self.leaders.get(tp)
            if replica is not None:
                due.append(replica.next_deadline_ms())
        if self._isr_watch:
            due.append(self._next_isr_check_ms)
        if self._hw_dirty:
            due.append(self._next_hw_flush_ms)
        return earliest(due)

    def _expire_producers(self, now_ms: int) -> None:
        """Forget idempotent producers idle for producer.id.expiration.ms (Kafka: 1 day)."""
        expired = self.producers.expire(
            now_ms,
            self.producer_id_expiration_ms,
            # A producer with a transaction open stays (its marker will come).
            keep=lambda tp, pid: pid in self.txns.partition(tp).open,
        )
        if not expired:
            return

        def write(w: WriteTxn) -> None:
            for tp, producer_id in expired:
                delete_producer(w, tp, producer_id)

        try:
            self.store.write(write)
        except KvlogError as exc:
            log.warning("node %d: could not delete expired producer state: %s", self.node_id, exc)
        log.info("node %d: expired %d idle producer id(s)", self.node_id, len(expired))


__all__ = [
    "CommitJob",
    "HostedPartition",
    "IsrChange",
    "LeaderCore",
    "ProduceItem",
    "StagedProduce",
]
