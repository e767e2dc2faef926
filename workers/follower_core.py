"""The follower's logic, without sockets: apply what a leader returned to a replica fetch.

For every partition this node follows, the node shell fetches from the leader at the
follower's log end offset, sending the epoch of its last batch (``last_fetched_epoch``).
The leader either returns batches (appended here at the leader's offsets, fsynced, with
their epochs noted and the producer state advanced, so this replica can take over as
leader with idempotence intact) or says where the follower's history diverges; the
follower then truncates to that point and fetches again. So replicas never diverge,
whatever a failed leader wrote last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kvlog import batch as batch_format
from kvlog import epochs
from kvlog.errors import ErrorCode, KvlogError, StorageError, error_from_code
from kvlog.log import WriteTxn
from kvlog.producer_state import ProducerStateStage, after_append, delete_partition_state, put_entry
from kvlog.types import TopicPartition

from .leader_core import LeaderCore

log = logging.getLogger(__name__)


@dataclass
class FollowTarget:
    tp: TopicPartition
    leader_id: int
    leader_epoch: int
    offset: int
    last_fetched_epoch: int


class FollowerCore:
    """Shares the node's store, hosted partitions and producer state with its
    :class:`LeaderCore`. Owned by the node's loop; not thread-safe."""

    def __init__(self, core: LeaderCore) -> None:
        self.core = core
        self.latest_epoch: dict[TopicPartition, int] = {}

    def targets(self) -> list[FollowTarget]:
        """Every followed partition whose leader is known, with where to fetch from."""
        core = self.core
        out = []
        for tp in core.leaders:
            # While leading, the epoch cache moves on without us: re-read it when following.
            self.latest_epoch.pop(tp, None)
        followed = [
            h for h in core.hosted.values() if h.leader_id != core.node_id and h.leader_id >= 0
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

        def write(w: WriteTxn) -> tuple[set[TopicPartition], ProducerStateStage]:
            truncated.clear()
            changed = set()
            stage = core.producers.stage()
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
                        self._realign(w, tp, state.log_end_offset, entry)
                        truncated.append(tp)
                        changed.add(tp)
                    continue
                diverging = entry.get("diverging_epoch")
                if diverging:
                    cut = min(int(diverging.get("end_offset", 0)), state.log_end_offset)
                    log.warning(
                        "%s: history diverges from the leader's at %d (epoch %s); "
                        "truncating from %d",
                        tp,
                        cut,
                        diverging.get("epoch"),
                        state.log_end_offset,
                    )
                    w.truncate_to(tp, max(cut, state.log_start_offset))
                    epochs.truncate_from(w, tp, w.offsets(tp).log_end_offset)
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
                    changed.add(tp)
                new = w.offsets(tp)
                leader_hw = int(entry.get("high_watermark", -1))
                hw = max(new.log_start_offset, min(leader_hw, new.log_end_offset))
                if hw > new.high_watermark:
                    w.set_high_watermark(tp, hw)
            for tp in truncated:
                self._rebuild_producer_state(w, tp)
            return changed, stage

        try:
            changed, stage = core.store.write(write)
        except KvlogError as exc:
            log.error("node %d: applying replica data failed: %s", core.node_id, exc.message)
            if isinstance(exc, StorageError):
                core.storage_failed = True
            return set()
        stage.apply()
        with core.store.reader() as r:
            for tp in changed:
                last = epochs.latest(r, tp)
                self.latest_epoch[tp] = last[0] if last else -1
            if truncated:
                core.producers.load(r, truncated)
        return changed

    def _realign(self, w: WriteTxn, tp: TopicPartition, leo: int, entry: dict[str, Any]) -> None:
        """Our offset is outside the leader's log: past its end (cut back) or before its
        start (retention moved on: start over at its log start)."""
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
