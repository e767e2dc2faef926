"""The follower's logic, without sockets: which leaders to fetch from, and applying what
they return.

For every partition this node follows, the follower fetches from the leader at its log
end offset, sending the epoch of its last batch (``last_fetched_epoch``). The leader
either returns batches (appended here at the leader's offsets, fsynced, with their epochs
noted and the producer state and transaction state (open transactions, aborted index:
:mod:`kvlog.txn_state`) advanced, so this replica can take over as leader with idempotence
and transactions intact, and its last stable offset is the leader's at the same high
watermark) or says where the follower's history diverges; the follower then
truncates to that point and fetches again. So replicas never diverge, whatever a failed
leader wrote last.

Scheduling, decided here only: one replica fetch in flight per leader node, covering every
partition this node follows from it (a ``Send`` to that node; its answer comes back to
:meth:`FollowerCore.on_answer`); the next one goes as soon as the answer is applied (its
offsets acknowledge what was just written), or ``RETRY_BACKOFF_MS`` later after a failed
fetch. When leadership moves, the fetch in flight to every leader concerned is dropped
(a late answer to it is ignored) and a new one goes at once: a fetch parked at a leader
that died is never answered and would otherwise hold fetching from that node until it
times out, and one parked at a live leader does not cover a partition it just took over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kvlog import batch as batch_format
from kvlog import epochs, txn_state
from kvlog.errors import ErrorCode, KvlogError, StorageError, error_from_code
from kvlog.log import WriteTxn
from kvlog.producer_state import ProducerStateStage, after_append, delete_partition_state, put_entry
from kvlog.txn_state import TxnStage
from kvlog.types import TopicPartition

from .core_result import Send
from .leader_core import LeaderCore
from .node_model import Answer, NodePeer

log = logging.getLogger(__name__)

RETRY_BACKOFF_MS = 100
FETCH_TIMEOUT_SLACK_MS = 5000  # a replica fetch times out this long after its wait
FETCH_MAX_BYTES = 64 << 20
FETCH_PARTITION_MAX_BYTES = 8 << 20


@dataclass
class FollowTarget:
    tp: TopicPartition
    leader_id: int
    leader_epoch: int
    offset: int
    last_fetched_epoch: int


@dataclass(frozen=True, slots=True)
class ReplicaFetch:
    """Token of a replica fetch send: its answer comes back to :meth:`FollowerCore.on_answer`."""

    leader_id: int
    serial: int


class FollowerCore:
    """Shares the node's store, hosted partitions and producer state with its
    :class:`LeaderCore`. Owned by the node's loop; not thread-safe."""

    def __init__(self, core: LeaderCore, *, fetch_wait_max_ms: int = 500) -> None:
        self.core = core
        self.fetch_wait_max_ms = fetch_wait_max_ms
        self.latest_epoch: dict[TopicPartition, int] = {}
        self._in_flight: dict[int, tuple[ReplicaFetch, list[FollowTarget]]] = {}
        self._retry_at: dict[int, int] = {}  # leader id -> when a failed fetch is retried
        self._serial = 0

    # -- scheduling ------------------------------------------------------------------------

    def followed(self) -> dict[TopicPartition, tuple[int, int]]:
        """(leader, leader epoch) of every partition this node follows."""
        me = self.core.node_id
        return {
            tp: (h.leader_id, h.leader_epoch)
            for tp, h in self.core.hosted.items()
            if h.leader_id != me
        }

    def leadership_moved(self, before: dict[TopicPartition, tuple[int, int]]) -> None:
        """The assignment changed (``before`` is :meth:`followed` before it): forget the
        latest epoch of what this node leads now, and drop the fetch in flight to every
        leader whose partitions moved, so the next :meth:`sends` fetches from it again
        at once."""
        after = self.followed()
        for tp in self.core.leaders:
            # While leading, the epoch cache moves on without us: re-read it when following.
            self.latest_epoch.pop(tp, None)
        moved = {lid for tp, (lid, _) in before.items() if after.get(tp) != before[tp]}
        moved |= {lid for tp, (lid, _) in after.items() if before.get(tp) != after[tp]}
        for leader_id in moved & set(self._in_flight):
            log.debug(
                "node %d: dropping the replica fetch in flight to node %d",
                self.core.node_id,
                leader_id,
            )
            del self._in_flight[leader_id]
            self._retry_at.pop(leader_id, None)

    def sends(self, now_ms: int, endpoints: dict[int, str]) -> list[Send]:
        """A replica fetch to each leader this node follows that has none in flight and
        is not backing off (and whose endpoint is known)."""
        me = self.core.node_id
        leaders = {h.leader_id for h in self.core.hosted.values() if h.leader_id not in (me, -1)}
        for leader_id in set(self._retry_at) - leaders:
            del self._retry_at[leader_id]
        due = {
            lid
            for lid in leaders
            if lid not in self._in_flight
            and self._retry_at.get(lid, now_ms) <= now_ms
            and lid in endpoints
        }
        if not due:
            return []
        by_leader: dict[int, list[FollowTarget]] = {}
        for target in self.targets(due):
            by_leader.setdefault(target.leader_id, []).append(target)
        out = []
        wait = self.fetch_wait_max_ms
        for leader_id, group in by_leader.items():
            self._retry_at.pop(leader_id, None)
            self._serial += 1
            token = ReplicaFetch(leader_id, self._serial)
            self._in_flight[leader_id] = (token, group)
            fields = {
                "replica_id": me,
                "max_wait_ms": wait,
                "min_bytes": 1,
                "max_bytes": FETCH_MAX_BYTES,
                "partitions": [
                    {
                        "topic": t.tp.topic,
                        "partition": t.tp.partition,
                        "offset": t.offset,
                        "max_bytes": FETCH_PARTITION_MAX_BYTES,
                        "last_fetched_epoch": t.last_fetched_epoch,
                        "leader_epoch": t.leader_epoch,
                    }
                    for t in group
                ],
            }
            peer = NodePeer(leader_id, endpoints[leader_id])
            out.append(Send(peer, "fetch", fields, token, wait + FETCH_TIMEOUT_SLACK_MS))
        return out

    def on_answer(self, answer: Answer, now_ms: int) -> set[TopicPartition]:
        """A leader answered a replica fetch: apply it. Returns the partitions that changed."""
        token: ReplicaFetch = answer.token
        leader_id = token.leader_id
        entry = self._in_flight.get(leader_id)
        if entry is None or entry[0] != token:
            return set()  # dropped when leadership moved: a newer fetch is out
        del self._in_flight[leader_id]
        targets = entry[1]
        entries = (answer.fields or {}).get("partitions")
        if (
            answer.error is not None
            or not isinstance(entries, list)
            or len(entries) != len(targets)
        ):
            self._retry_at[leader_id] = now_ms + RETRY_BACKOFF_MS
            log.debug(
                "node %d: replica fetch from node %d failed: %s",
                self.core.node_id,
                leader_id,
                answer.error,
            )
            return set()
        try:
            changed = self.apply(targets, entries, answer.frames)
        except KvlogError as exc:
            log.error(
                "node %d: replica data from node %d rejected: %s", self.core.node_id, leader_id, exc
            )
            changed = set()
        if any(e.get("error") for e in entries) and not changed:
            self._retry_at[leader_id] = now_ms + RETRY_BACKOFF_MS
        return changed

    def next_deadline_ms(self) -> int | None:
        waiting = [at for lid, at in self._retry_at.items() if lid not in self._in_flight]
        return min(waiting, default=None)

    def forget_epochs(self) -> None:
        """Re-read every partition's latest epoch from the store (after the log dir
        failed and came back)."""
        self.latest_epoch.clear()

    # -- replicating -----------------------------------------------------------------------

    def targets(self, leader_ids: set[int] | None = None) -> list[FollowTarget]:
        """Every followed partition whose leader is known (of ``leader_ids``, if given),
        with where to fetch from."""
        core = self.core
        out = []
        followed = [
            h
            for h in core.hosted.values()
            if h.leader_id != core.node_id
            and h.leader_id >= 0
            and (leader_ids is None or h.leader_id in leader_ids)
        ]
        if not followed:
            return out
        with core.store.reader() as r:
            for hosted in followed:
                tp = hosted.tp
                if tp not in self.latest_epoch:
                    last = epochs.latest(r, tp)
                    self.latest_epoch[tp] = last[0] if last else -1
                out.append(
                    FollowTarget(
                        tp,
                        hosted.leader_id,
                        hosted.leader_epoch,
                        r.offsets(tp).log_end_offset,
                        self.latest_epoch[tp],
                    )
                )
        return out

    def apply(
        self, targets: list[FollowTarget], entries: list[dict[str, Any]], frames: list[bytes]
    ) -> set[TopicPartition]:
        """Append or truncate per the leader's reply, in one durable transaction. Returns
        the partitions that changed."""
        core = self.core
        plan: list[tuple[FollowTarget, dict[str, Any], list[bytes]]] = []
        cursor = 0
        for target, entry in zip(targets, entries, strict=True):
            bases = entry.get("bases") or []
            plan.append((target, entry, frames[cursor : cursor + len(bases)]))
            cursor += len(bases)
        truncated: list[TopicPartition] = []
        # Reset at the leader's log start: the transactions it has open below it.
        reset: dict[TopicPartition, list[tuple[int, int]]] = {}

        def write(w: WriteTxn) -> tuple[set[TopicPartition], ProducerStateStage, TxnStage]:
            truncated.clear()
            reset.clear()
            changed = set()
            stage = core.producers.stage()
            txns = core.txns.stage()
            for target, entry, batches in plan:
                tp = target.tp
                hosted = core.hosted.get(tp)
                if hosted is None or hosted.leader_id != target.leader_id:
                    continue  # the assignment moved on while the fetch was out
                state = w.offsets(tp)
                if state.log_end_offset != target.offset:
                    continue  # another reply already moved this replica
                code = entry.get("error", 0)
                if code:
                    error = error_from_code(code, entry.get("message"))
                    if error.code is ErrorCode.OFFSET_OUT_OF_RANGE:
                        if self._realign(w, tp, state.log_end_offset, entry):
                            reset[tp] = [
                                (int(pid), int(first))
                                for pid, first in entry.get("open_transactions") or []
                            ]
                        truncated.append(tp)
                        changed.add(tp)
                    continue
                diverging = entry.get("diverging_epoch")
                if diverging:
                    cut = self._divergence_point(w, tp, state.log_end_offset, diverging)
                    log.warning(
                        "%s: history diverges from the leader's at %d (epoch %s); "
                        "truncating from %d",
                        tp,
                        cut,
                        diverging.get("epoch"),
                        state.log_end_offset,
                    )
                    w.truncate_to(tp, max(cut, state.log_start_offset))
                    left = w.offsets(tp)
                    epochs.truncate_from(w, tp, left.log_end_offset)
                    if left.log_end_offset <= left.log_start_offset:
                        epochs.clear(w, tp)  # no batch left to have a history
                    truncated.append(tp)
                    changed.add(tp)
                    continue
                for base, batch in zip(entry.get("bases") or [], batches, strict=True):
                    if base < w.offsets(tp).log_end_offset:
                        continue
                    header = batch_format.validate(batch)
                    w.append_at(tp, base, batch)
                    if header.partition_leader_epoch >= 0:
                        epochs.record(w, tp, header.partition_leader_epoch, base)
                    stage.record(w, tp, header, base)
                    txns.record(w, tp, header, base, batch)
                    changed.add(tp)
                new = w.offsets(tp)
                leader_hw = int(entry.get("high_watermark", -1))
                hw = max(new.log_start_offset, min(leader_hw, new.log_end_offset))
                if hw > new.high_watermark:
                    w.set_high_watermark(tp, hw)
                    txns.settle(w, tp, hw)
                # The leader's log start moved (DeleteRecords, retention): this replica
                # follows it, up to its own high watermark (Kafka's followers do too).
                if int(entry.get("log_start_offset", -1)) > new.log_start_offset:
                    moved = w.delete_before(tp, int(entry["log_start_offset"]))
                    txns.purge(w, tp, moved.log_start_offset)
            for tp in truncated:
                self._rebuild_producer_state(w, tp)
                txn_state.rebuild(w, tp, w.offsets(tp).high_watermark, reset.get(tp))
            return changed, stage, txns

        try:
            changed, stage, txns = core.store.write(write)
        except KvlogError as exc:
            log.error("node %d: applying replica data failed: %s", core.node_id, exc.message)
            if isinstance(exc, StorageError):
                core.health.write_failed()
            return set()
        stage.apply()
        txns.apply()
        with core.store.reader() as r:
            for tp in changed:
                last = epochs.latest(r, tp)
                self.latest_epoch[tp] = last[0] if last else -1
            if truncated:
                core.producers.load(r, truncated)
                core.txns.load(r, truncated)
        return changed

    @staticmethod
    def _divergence_point(
        w: WriteTxn, tp: TopicPartition, leo: int, diverging: dict[str, Any]
    ) -> int:
        """Where this replica's history leaves the leader's (Kafka's follower rule). The
        leader named the largest epoch it has at or below ours and where that epoch ends
        in its log: the histories agree up to there, or up to where that epoch ends here if
        sooner. Without that epoch here, they agree at most up to where our own epochs
        before it end (the next fetch, with our new last epoch, checks again)."""
        epoch = int(diverging.get("epoch", -1))
        end = int(diverging.get("end_offset", 0))
        if epoch < 0:
            return min(end, leo)
        own_epoch, own_end = epochs.end_offset_for_epoch(w, tp, epoch, leo)
        if own_epoch == epoch:
            return min(own_end, end, leo)
        return min(own_end, leo)

    def _realign(self, w: WriteTxn, tp: TopicPartition, leo: int, entry: dict[str, Any]) -> bool:
        """Our offset is outside the leader's log: past its end (cut back) or before its
        start (retention moved on: start over at its log start). Returns whether it
        started over."""
        leader_end = int(entry.get("log_end_offset", -1))
        leader_start = int(entry.get("log_start_offset", -1))
        if 0 <= leader_end < leo:
            log.warning("%s: log end %d is past the leader's %d; truncating", tp, leo, leader_end)
            w.truncate_to(tp, leader_end)
            epochs.truncate_from(w, tp, w.offsets(tp).log_end_offset)
        elif leader_start > leo:
            log.warning(
                "%s: leader's log starts at %d, past our end %d; starting over there",
                tp,
                leader_start,
                leo,
            )
            w.reset(tp, leader_start)
            epochs.clear(w, tp)
            return True
        return False

    def _rebuild_producer_state(self, w: WriteTxn, tp: TopicPartition) -> None:
        """After a truncation: producer state from the batch headers that remain (Kafka
        rebuilds it from the log the same way)."""
        delete_partition_state(w, tp)
        entries: dict[int, Any] = {}
        for base, _size, header in w.headers(tp):
            if header.producer_id >= 0:
                entries[header.producer_id] = after_append(
                    entries.get(header.producer_id), header, base
                )
        for producer_id, entry in entries.items():
            put_entry(w, tp, producer_id, entry)
