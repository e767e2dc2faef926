"""The partition leader's logic, without sockets: group commit, reads, replication.

One :class:`LeaderCore` per node process, over that node's log store. The node shell
feeds it whole requests and asks it to commit once per loop turn; the core decides what
is written and what each request is answered. Per-batch work only: it checks batch
headers and CRCs and never decodes records (except one batch for a timestamp lookup).

Group commit: :meth:`stage_produce` validates a request's batches and queues them;
:meth:`commit` writes every queued batch of every queued request in ONE write
transaction (one fsync) together with the producer-state rows.

Replication: for each partition this node leads, a
:class:`~workers.replication_core.LeaderReplica` tracks followers (their fetch offsets are
their acknowledgements), the ISR and the high watermark. An ``acks=all`` item waits
until the high watermark passes it; a request is answered once all its items are
decided. Consumers read below the high watermark, followers up to the log end offset,
after a divergence check on their last fetched epoch (Kafka's KIP-595 style).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kvlog import batch as batch_format
from kvlog import epochs
from kvlog.batch import BatchHeader
from kvlog.errors import (
    ErrorCode,
    FencedLeaderEpochError,
    KvlogError,
    MessageSizeTooLargeError,
    NotLeaderOrFollowerError,
    OffsetOutOfRangeError,
    StorageError,
    UnknownLeaderEpochError,
    UnknownServerError,
    UnknownTopicOrPartitionError,
)
from kvlog.log import LogStore, WriteTxn
from kvlog.producer_state import ProducerStateTable, delete_partition_state
from kvlog.topic_config import effective_topic_config
from kvlog.types import PartitionOffsets, TopicPartition, partition_key

from .replication_core import DEFAULT_REPLICA_LAG_TIME_MAX_MS, LeaderReplica

log = logging.getLogger(__name__)

LATEST_TIMESTAMP = -1
EARLIEST_TIMESTAMP = -2
TOPIC_IDS_TABLE = "topic_ids"


@dataclass
class HostedPartition:
    """What this node knows about a partition it holds (from the coordinator)."""

    tp: TopicPartition
    topic_id: str
    leader_id: int
    leader_epoch: int
    replicas: list[int]
    config: dict[str, Any] = field(default_factory=dict)
    isr: list[int] = field(default_factory=list)

    @property
    def max_message_bytes(self) -> int:
        return int(effective_topic_config(self.config)["max.message.bytes"])

    @property
    def min_insync_replicas(self) -> int:
        return int(effective_topic_config(self.config)["min.insync.replicas"])


@dataclass
class ProduceItem:
    tp: TopicPartition
    batch: bytes | memoryview | None
    header: BatchHeader | None
    error: KvlogError | None = None
    base_offset: int = -1
    log_start_offset: int = -1
    duplicate: bool = False

    def result(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": int(self.error.code), "message": self.error.message}
        return {
            "error": 0,
            "base_offset": self.base_offset,
            "log_start_offset": self.log_start_offset,
        }


@dataclass
class StagedProduce:
    """One produce request waiting for the next group commit."""

    token: Any
    acks: int
    items: list[ProduceItem]
    timeout_ms: int = 30_000
    pending: int = 0  # acks=all items still waiting for replication

    def results(self) -> list[dict[str, Any]]:
        return [item.result() for item in self.items]


@dataclass
class FetchPartition:
    tp: TopicPartition
    offset: int
    max_bytes: int
    last_fetched_epoch: int = -1  # replica fetches: the epoch of the follower's last batch
    leader_epoch: int = -1  # the leader epoch the fetcher believes in (-1: any)


@dataclass
class FetchedPartition:
    tp: TopicPartition
    error: KvlogError | None = None
    high_watermark: int = -1
    log_start_offset: int = -1
    log_end_offset: int = -1
    batches: list[tuple[int, bytes]] = field(default_factory=list)
    diverging: tuple[int, int] | None = None  # (epoch, end offset) the follower must cut to

    @property
    def size(self) -> int:
        return sum(len(b) for _, b in self.batches)

    def header(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "topic": self.tp.topic,
            "partition": self.tp.partition,
            "error": 0 if self.error is None else int(self.error.code),
            "high_watermark": self.high_watermark,
            "log_start_offset": self.log_start_offset,
            "bases": [base for base, _ in self.batches],
        }
        if self.error is not None:
            out["message"] = self.error.message
        if self.log_end_offset >= 0:
            out["log_end_offset"] = self.log_end_offset
        if self.diverging is not None:
            out["diverging_epoch"] = {"epoch": self.diverging[0], "end_offset": self.diverging[1]}
        return out


class LeaderCore:
    """Owned by one node's loop; not thread-safe."""

    def __init__(
        self,
        node_id: int,
        store: LogStore,
        *,
        lag_time_max_ms: int = DEFAULT_REPLICA_LAG_TIME_MAX_MS,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.lag_time_max_ms = lag_time_max_ms
        self.hosted: dict[TopicPartition, HostedPartition] = {}
        self.leaders: dict[TopicPartition, LeaderReplica] = {}
        self.producers = ProducerStateTable()
        self._staged: list[StagedProduce] = []
        self.touched: set[TopicPartition] = set()
        self.hw_dirty: set[TopicPartition] = set()
        self.decided: list[StagedProduce] = []  # acks=all requests whose last item settled
        self.storage_failed = False  # a write failed: the node takes its log dir offline

    # -- assignment ------------------------------------------------------------------------

    def apply_assignment(
        self,
        partitions: Iterable[HostedPartition],
        deleted_topic_ids: Iterable[str] = (),
        now_ms: int = 0,
    ) -> None:
        """Host exactly what the coordinator assigned; drop deleted topics' partitions;
        take up or give up leaderships.

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
        with self.store.reader() as r:
            self.producers.load(r, new)
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
                    if replica.pending_isr is None or sorted(hosted.isr) == sorted(
                        replica.pending_isr
                    ):
                        replica.isr_applied(hosted.isr or [self.node_id])
        strays = local - set(assigned) - set(changed)
        if strays:
            log.warning(
                "node %d holds partitions the coordinator does not assign: %s (kept, not served)",
                self.node_id,
                ", ".join(sorted(map(str, strays))),
            )

    def _hosted(self, tp: TopicPartition) -> HostedPartition:
        hosted = self.hosted.get(tp)
        if hosted is None:
            raise UnknownTopicOrPartitionError(f"node {self.node_id} does not host {tp}")
        return hosted

    def _leader_for(self, tp: TopicPartition) -> LeaderReplica:
        replica = self.leaders.get(tp)
        if replica is None:
            hosted = self._hosted(tp)
            raise NotLeaderOrFollowerError(
                f"node {self.node_id} is not the leader of {tp} (node {hosted.leader_id} is); "
                "refresh metadata"
            )
        return replica

    # -- produce ---------------------------------------------------------------------------

    def stage_produce(
        self,
        token: Any,
        acks: int,
        entries: list[tuple[TopicPartition, bytes | memoryview]],
        timeout_ms: int = 30_000,
    ) -> StagedProduce:
        """Validate a request's batches (header, CRC, size, leadership, enough in-sync
        replicas for acks=all) and queue them."""
        items = []
        for tp, batch in entries:
            try:
                replica = self._leader_for(tp)
                hosted = self.hosted[tp]
                if len(batch) > hosted.max_message_bytes:
                    raise MessageSizeTooLargeError(
                        f"batch of {len(batch)} bytes for {tp} exceeds max.message.bytes="
                        f"{hosted.max_message_bytes}; lower batch.size or raise the topic's "
                        "max.message.bytes"
                    )
                if acks == -1:
                    replica.check_enough_replicas()
                header = batch_format.validate(batch)
            except KvlogError as exc:
                items.append(ProduceItem(tp, None, None, exc))
                continue
            items.append(ProduceItem(tp, batch, header))
        staged = StagedProduce(token, acks, items, timeout_ms)
        self._staged.append(staged)
        return staged

    @property
    def has_staged(self) -> bool:
        return bool(self._staged)

    def commit(self, now_ms: int = 0) -> list[StagedProduce]:
        """Write every staged batch (and dirty high watermarks) in one durable
        transaction; returns the requests that can be answered now. acks=all requests
        on replicated partitions come back later, through :attr:`decided`."""
        staged, self._staged = self._staged, []
        if not staged:
            return []
        leaders = self.leaders

        def write(w: WriteTxn) -> Any:
            stage = self.producers.stage()
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
                    try:
                        duplicate_of = stage.check(item.tp, item.header)
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
                    )[0]
                    stage.record(w, item.tp, item.header, base)
                    outcome.append((item, base, False, None))
            self._write_high_watermarks(w)
            offsets = {o[0].tp: w.offsets(o[0].tp) for o in outcome if o[0].tp in leaders}
            return stage, outcome, offsets

        try:
            stage, outcome, offsets = self.store.write(write)
        except Exception as exc:  # nothing was written: every staged item fails alike
            if not isinstance(exc, KvlogError):
                log.exception("node %d: group commit failed", self.node_id)
                exc = UnknownServerError(f"group commit failed: {type(exc).__name__}: {exc}")
            else:
                log.error("node %d: group commit failed: %s", self.node_id, exc.message)
                if isinstance(exc, StorageError):
                    self.storage_failed = True
            for request in staged:
                for item in request.items:
                    if item.error is None:
                        item.error = exc
            return staged
        stage.apply()
        self.hw_dirty.clear()
        for tp, state in offsets.items():
            replica = leaders.get(tp)
            if replica is not None:
                replica.on_local_append(state.log_end_offset)
                if replica.recompute_high_watermark():
                    self.hw_dirty.add(tp)
        for item, base, duplicate, error in outcome:
            item.error = error
            item.base_offset = base
            item.duplicate = duplicate
            if item.tp in offsets:
                item.log_start_offset = offsets[item.tp].log_start_offset
            if error is None and not duplicate:
                self.touched.add(item.tp)
        ready = []
        deadline = now_ms
        for request in staged:
            if request.acks == -1:
                for item in request.items:
                    if item.error is not None:
                        continue
                    replica = leaders.get(item.tp)
                    end = item.base_offset + (
                        item.header.last_offset_delta + 1 if item.header else 1
                    )
                    if replica is not None and replica.high_watermark < end:
                        request.pending += 1
                        replica.wait_for(request, end, deadline + request.timeout_ms, item)
            if request.pending == 0:
                ready.append(request)
        return ready

    def _write_high_watermarks(self, w: WriteTxn) -> None:
        for tp in self.hw_dirty:
            replica = self.leaders.get(tp)
            if replica is None:
                continue
            state = w.offsets(tp)
            hw = min(max(replica.high_watermark, state.log_start_offset), state.log_end_offset)
            if hw > state.high_watermark:  # never lower it: this commit may have moved it
                w.set_high_watermark(tp, hw)

    def flush_high_watermarks(self) -> None:
        """Persist moved high watermarks (they are also written with every commit)."""
        if not self.hw_dirty:
            return
        try:
            self.store.write(self._write_high_watermarks)
        except KvlogError as exc:
            log.warning("node %d: persisting high watermarks failed: %s", self.node_id, exc)
            return
        self.hw_dirty.clear()

    def _settle(self, done: list[tuple[Any, KvlogError | None]]) -> None:
        """Apply decided acks=all waits to their requests; finished ones go to decided."""
        for waiter, error in done:
            request: StagedProduce = waiter.token
            if error is not None and waiter.item is not None:
                waiter.item.error = error
            request.pending -= 1
            if request.pending == 0:
                self.decided.append(request)

    def poll_waiters(self, now_ms: int, tps: Iterable[TopicPartition] | None = None) -> None:
        """Settle acks=all waits that replication or time decided."""
        for tp in self.leaders if tps is None else tps:
            replica = self.leaders.get(tp)
            if replica is not None and replica.waiters:
                self._settle(replica.ready_waiters(now_ms))

    def next_deadline_ms(self) -> int | None:
        return min(
            (d for r in self.leaders.values() if (d := r.next_deadline_ms()) is not None),
            default=None,
        )

    def isr_proposals(self, now_ms: int) -> list[tuple[LeaderReplica, list[int]]]:
        out = []
        for replica in self.leaders.values():
            proposed = replica.proposed_isr(now_ms)
            if proposed is not None:
                replica.pending_isr = proposed
                out.append((replica, proposed))
        return out

    # -- fetch -----------------------------------------------------------------------------

    def fetch(
        self,
        partitions: list[FetchPartition],
        max_bytes: int,
        *,
        replica_id: int = -1,
        now_ms: int = 0,
    ) -> list[FetchedPartition]:
        """Read whole batches for each partition: below the high watermark for consumers,
        up to the log end offset for followers (whose fetch offset acknowledges what they
        have). The first batch is returned even when larger than the limits."""
        out = []
        total = 0
        moved: list[TopicPartition] = []
        with self.store.reader() as r:
            for part in partitions:
                fetched = FetchedPartition(part.tp)
                out.append(fetched)
                try:
                    replica = self._leader_for(part.tp)
                    if part.leader_epoch >= 0 and part.leader_epoch != replica.leader_epoch:
                        if part.leader_epoch < replica.leader_epoch:
                            raise FencedLeaderEpochError(
                                f"{part.tp}: fetch for epoch {part.leader_epoch}, leader is at "
                                f"{replica.leader_epoch}"
                            )
                        raise UnknownLeaderEpochError(
                            f"{part.tp}: fetch for epoch {part.leader_epoch}, leader is at "
                            f"{replica.leader_epoch}"
                        )
                    state = r.offsets(part.tp)
                    fetched.log_start_offset = state.log_start_offset
                    fetched.log_end_offset = state.log_end_offset
                    if replica_id >= 0:
                        if part.last_fetched_epoch >= 0:
                            found_epoch, end = epochs.end_offset_for_epoch(
                                r, part.tp, part.last_fetched_epoch, state.log_end_offset
                            )
                            if found_epoch != part.last_fetched_epoch or end < part.offset:
                                fetched.diverging = (found_epoch, end)
                                fetched.high_watermark = replica.high_watermark
                                continue
                        if part.offset <= state.log_end_offset and replica.on_follower_fetch(
                            replica_id, part.offset, now_ms
                        ):
                            moved.append(part.tp)
                    fetched.high_watermark = replica.high_watermark
                    budget = min(part.max_bytes, max_bytes - total)
                    if budget <= 0 and total:
                        continue
                    fetched.batches = r.read(
                        part.tp,
                        part.offset,
                        max(budget, 1),
                        max_offset=None if replica_id >= 0 else replica.high_watermark,
                    )
                    total += fetched.size
                except KvlogError as exc:
                    fetched.error = exc
        if moved:
            self.hw_dirty.update(moved)
            self.touched.update(moved)  # consumers waiting below the old HW can go on
            self.poll_waiters(now_ms, moved)
        return out

    def offsets(self, tp: TopicPartition) -> PartitionOffsets:
        self._leader_for(tp)
        with self.store.reader() as r:
            return r.offsets(tp)

    def list_offset(self, tp: TopicPartition, timestamp: int) -> tuple[int, int]:
        """Kafka's ListOffsets: (offset, timestamp). -2 earliest, -1 latest (the high
        watermark), else the first record with timestamp >= the given one (-1 if none)."""
        replica = self._leader_for(tp)
        with self.store.reader() as r:
            state = r.offsets(tp)
            hw = replica.high_watermark
            if timestamp == EARLIEST_TIMESTAMP:
                return state.log_start_offset, -1
            if timestamp == LATEST_TIMESTAMP:
                return hw, -1
            if timestamp < 0:
                raise OffsetOutOfRangeError(f"timestamp {timestamp} is not -1, -2 or >= 0")
            for base, _size, header in r.headers(tp):
                if base >= hw:
                    break
                if header.max_timestamp < timestamp:
                    continue
                found = r.read(tp, max(base, state.log_start_offset), 1)
                for record in batch_format.decode(found[0][1], found[0][0]):
                    if record.offset >= state.log_start_offset and record.timestamp >= timestamp:
                        return record.offset, record.timestamp
        return -1, -1


__all__ = [
    "EARLIEST_TIMESTAMP",
    "LATEST_TIMESTAMP",
    "ErrorCode",
    "FetchPartition",
    "FetchedPartition",
    "HostedPartition",
    "LeaderCore",
    "StagedProduce",
]
