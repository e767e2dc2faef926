"""Reads on the leader, without sockets: fetches for consumers and followers (long polls),
ListOffsets and OffsetForLeaderEpoch.

Isolation (Kafka's, KIP-98): a ``read_uncommitted`` consumer reads below the high
watermark; a ``read_committed`` one below the last stable offset (the first offset of the
oldest transaction not yet decided and replicated: :mod:`kvlog.txn_state`), and gets the
aborted transactions overlapping what it read, so it can drop their records. Every
consumer fetch answer carries the LSO. ListOffsets' latest is the LSO for
``read_committed``. A parked ``read_committed`` fetch is woken like any other when its
partitions are touched (an append, a marker, a high watermark move: everything that
moves the LSO) and stays parked if the LSO did not move.

A fetch reads whole batches per partition: below the high watermark for consumers, up to
the log end offset for followers, whose fetch offset acknowledges what they have (it goes
to the partition's :class:`~workers.replication_core.LeaderReplica` and may move the high
watermark). A follower's fetch first checks its last fetched epoch against the leader's
epoch cache (Kafka's KIP-595 divergence check).

Long poll (Kafka's ``fetch.max.wait.ms`` / ``fetch.min.bytes``), decided here only: a
fetch is answered at once when its wait is 0, when ``MAX_PARKED_FETCHES`` are parked
already, when what it finds reaches ``min_bytes``, or when a partition has an error or a
divergence. Otherwise it is *parked* under its token: :meth:`FetchCore.wake` re-reads it
when an append or a high watermark move touched one of its partitions, and
:meth:`FetchCore.tick` answers it with whatever there is once its wait (capped at the
node's ``fetch_max_wait_ms``) ran out.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvlog import batch as batch_format
from kvlog import epochs, txn_state
from kvlog.errors import KvlogError, OffsetOutOfRangeError
from kvlog.types import TopicPartition

from .core_result import Result
from .leader_core import LeaderCore
from .node_model import (
    READ_COMMITTED,
    EpochEndOffset,
    Fetch,
    FetchedPartition,
    FetchPartition,
    FetchResponse,
    ListedOffset,
    ListOffsets,
    ListOffsetsResponse,
    OffsetForLeaderEpoch,
    OffsetForLeaderEpochResponse,
)
from .replication_core import check_leader_epoch

LATEST_TIMESTAMP = -1
EARLIEST_TIMESTAMP = -2
MAX_PARKED_FETCHES = 10_000
DEFAULT_FETCH_MAX_WAIT_MS = 30_000


@dataclass(slots=True)
class ParkedFetch:
    request: Fetch
    deadline_ms: int

    def wants(self, touched: set[TopicPartition]) -> bool:
        return any(p.tp in touched for p in self.request.partitions)


class FetchCore:
    """Reads through the node's :class:`LeaderCore` (its store and replicas). Owned by
    the node's loop; not thread-safe."""

    def __init__(
        self,
        leader: LeaderCore,
        *,
        fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS,
        max_parked: int = MAX_PARKED_FETCHES,
    ) -> None:
        self.leader = leader
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.max_parked = max_parked
        self.parked: list[ParkedFetch] = []

    def fetch(self, request: Fetch, now_ms: int) -> Result:
        """Answer now, or park until data, an error or the end of the wait."""
        # Longer waits than the node allows are shortened, not refused (clients retry).
        wait_ms = min(request.max_wait_ms, self.fetch_max_wait_ms)
        parked = ParkedFetch(request, now_ms + wait_ms)
        result = Result()
        if wait_ms <= 0 or len(self.parked) >= self.max_parked:
            self._try_answer(parked, now_ms, result, final=True)
        elif not self._try_answer(parked, now_ms, result, final=False):
            self.parked.append(parked)
            result.wake_at(parked.deadline_ms)
        return result

    def wake(self, touched: set[TopicPartition], now_ms: int) -> Result:
        """Answer the parked fetches that data on ``touched`` partitions satisfies."""
        result = Result()
        if not self.parked or not touched:
            return result
        still = []
        for parked in self.parked:
            if parked.wants(touched) and self._try_answer(parked, now_ms, result, final=False):
                continue
            still.append(parked)
        self.parked = still
        return result

    def tick(self, now_ms: int) -> Result:
        """Answer the parked fetches whose wait ran out, with whatever there is."""
        result = Result()
        if not self.parked:
            return result
        due = [p for p in self.parked if p.deadline_ms <= now_ms]
        if due:
            self.parked = [p for p in self.parked if p.deadline_ms > now_ms]
            for parked in due:
                self._try_answer(parked, now_ms, result, final=True)
        return result.wake_at(self.next_deadline_ms())

    def next_deadline_ms(self) -> int | None:
        return min((p.deadline_ms for p in self.parked), default=None)

    def _try_answer(self, parked: ParkedFetch, now_ms: int, result: Result, *, final: bool) -> bool:
        request = parked.request
        partitions = self.read(
            request.partitions,
            request.max_bytes,
            replica_id=request.replica_id,
            now_ms=now_ms,
            read_committed=request.isolation_level == READ_COMMITTED,
        )
        response = FetchResponse(partitions, request.replica_id)
        decided = any(p.error or p.diverging for p in partitions)
        if not final and response.size < request.min_bytes and not decided:
            return False
        result.reply(request.token, response)
        return True

    def read(
        self,
        partitions: list[FetchPartition],
        max_bytes: int,
        *,
        replica_id: int = -1,
        now_ms: int = 0,
        read_committed: bool = False,
    ) -> list[FetchedPartition]:
        """Read whole batches for each partition: below the high watermark for consumers
        (below the LSO for ``read_committed`` ones), up to the log end offset for
        followers (whose fetch offset acknowledges what they have). The first batch is
        returned even when larger than the limits."""
        leader = self.leader
        txns = leader.txns
        out = []
        total = 0
        moved: list[TopicPartition] = []
        with leader.store.reader() as r:
            for part in partitions:
                fetched = FetchedPartition(part.tp)
                out.append(fetched)
                try:
                    replica = leader.leader_for(part.tp)
                    check_leader_epoch(replica, part.tp, part.leader_epoch)
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
                    hw = fetched.high_watermark = replica.high_watermark
                    lso = txns.last_stable_offset(part.tp, hw, state.log_start_offset)
                    fetched.last_stable_offset = lso
                    if read_committed:
                        fetched.aborted = []
                    budget = min(part.max_bytes, max_bytes - total)
                    if budget <= 0 and total:
                        continue
                    limit = None if replica_id >= 0 else lso if read_committed else hw
                    fetched.batches = r.read(part.tp, part.offset, max(budget, 1), max_offset=limit)
                    total += fetched.size
                    if read_committed and fetched.batches:
                        base, last = fetched.batches[-1]
                        upper = batch_format.next_offset(base, last)
                        found = txns.aborted(part.tp, part.offset, upper)
                        if found:  # (the cleaner may have removed some: rows are the truth)
                            found = txn_state.stored_aborted(r, part.tp, found)
                        fetched.aborted = [(a.producer_id, a.first_offset) for a in found]
                except KvlogError as exc:
                    fetched.error = exc
                    if replica_id >= 0 and 0 <= part.offset < fetched.log_start_offset:
                        # The follower starts over at the log start: what it cannot see.
                        fetched.open_transactions = txns.partition(part.tp).open_below(
                            fetched.log_start_offset
                        )
        if moved:
            leader.followers_fetched(moved, now_ms)
        return out

    # -- offsets ---------------------------------------------------------------------------

    def list_offsets(self, request: ListOffsets) -> Result:
        out = []
        for tp, timestamp in request.partitions:
            try:
                epoch = request.current_leader_epochs.get(tp, -1)
                committed = request.isolation_level == READ_COMMITTED
                out.append(
                    self.list_offset(
                        tp, timestamp, current_leader_epoch=epoch, read_committed=committed
                    )
                )
            except KvlogError as exc:
                out.append(ListedOffset(tp, exc))
        return Result().reply(request.token, ListOffsetsResponse(out))

    def list_offset(
        self,
        tp: TopicPartition,
        timestamp: int,
        *,
        current_leader_epoch: int = -1,
        read_committed: bool = False,
    ) -> ListedOffset:
        """Kafka's ListOffsets: -2 earliest (the log start), -1 latest (the high
        watermark; the LSO for ``read_committed``), else the first record with timestamp
        >= the given one (offset -1 if none; below the LSO for ``read_committed``); with
        the epoch of the leader that wrote the offset (Kafka v4+): the current one for
        latest, the epoch cache's for earliest, the batch's for a timestamp."""
        replica = self.leader.leader_for(tp)
        check_leader_epoch(replica, tp, current_leader_epoch)
        with self.leader.store.reader() as r:
            state = r.offsets(tp)
            hw = replica.high_watermark
            if read_committed:
                hw = self.leader.txns.last_stable_offset(tp, hw, state.log_start_offset)
            if timestamp == EARLIEST_TIMESTAMP:
                start = state.log_start_offset
                epoch = max((e for e, at in epochs.entries(r, tp) if at <= start), default=-1)
                return ListedOffset(tp, None, start, -1, epoch)
            if timestamp == LATEST_TIMESTAMP:
                return ListedOffset(tp, None, hw, -1, replica.leader_epoch)
            if timestamp < 0:
                raise OffsetOutOfRangeError(f"timestamp {timestamp} is not -1, -2 or >= 0")
            for base, _size, header in r.headers(tp):
                if base >= hw:
                    break
                if header.max_timestamp < timestamp or header.is_control:
                    continue  # a marker holds no record to point at
                found = r.read(tp, max(base, state.log_start_offset), 1)
                for record in batch_format.decode(found[0][1], found[0][0]):
                    if record.offset >= state.log_start_offset and record.timestamp >= timestamp:
                        return ListedOffset(
                            tp, None, record.offset, record.timestamp, header.partition_leader_epoch
                        )
        return ListedOffset(tp)

    def offset_for_leader_epoch(self, request: OffsetForLeaderEpoch) -> Result:
        """Where each asked-for epoch ends in this leader's log (the epoch cache's answer,
        the one followers get on a divergence): the largest cached epoch at or below it,
        and where the next one starts, or the log end offset for the latest."""
        out = []
        leader = self.leader
        with leader.store.reader() as r:
            for query in request.partitions:
                tp = query.tp
                try:
                    replica = leader.leader_for(tp)
                    check_leader_epoch(replica, tp, query.current_leader_epoch)
                    if query.leader_epoch < 0:  # Kafka: an undefined epoch ends nowhere
                        out.append(EpochEndOffset(tp, None, -1, -1))
                        continue
                    leo = r.offsets(tp).log_end_offset
                    epoch, end = epochs.end_offset_for_epoch(r, tp, query.leader_epoch, leo)
                    out.append(EpochEndOffset(tp, None, epoch, end))
                except KvlogError as exc:
                    out.append(EpochEndOffset(tp, exc))
        return Result().reply(request.token, OffsetForLeaderEpochResponse(out))


__all__ = [
    "DEFAULT_FETCH_MAX_WAIT_MS",
    "EARLIEST_TIMESTAMP",
    "LATEST_TIMESTAMP",
    "MAX_PARKED_FETCHES",
    "FetchCore",
    "ParkedFetch",
    "check_leader_epoch",
]
