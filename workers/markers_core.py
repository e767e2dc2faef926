"""Transaction markers on the leader, without sockets: the coordinator's WriteTxnMarkers.

The transaction coordinator (:mod:`workers.txn_core`) sends each partition leader the
markers of the transactions it decided (a ``write_txn_markers`` send, one per leader
node). Each marker becomes a control batch (:mod:`kvlog.control_batch`) stamped with this
node's clock, staged into the leader's next group commit as an acks=all produce
(:meth:`workers.leader_core.LeaderCore.stage`): the answer, one
:class:`~workers.node_model.ProducedPartition` per marker, leaves once every in-sync
replica has it, so the coordinator moves the transaction to Complete only then. Refused
per marker: a partition this node does not lead, or leads at another leader epoch than
the coordinator believed (NOT_LEADER_OR_FOLLOWER, FENCED_LEADER_EPOCH,
UNKNOWN_LEADER_EPOCH: the coordinator asks again where the leader is now); too few
in-sync replicas (NOT_ENOUGH_REPLICAS). A marker already written is not written twice
(:func:`kvlog.txn_state.marker_needed`).
"""

from __future__ import annotations

from kvlog import batch as batch_format
from kvlog import control_batch
from kvlog.errors import KvlogError
from kvlog.ipc.acks import ACKS_ALL

from .core_result import Result
from .leader_core import LeaderCore, ProduceItem, StagedProduce
from .node_model import WriteTxnMarkers
from .replication_core import check_leader_epoch


def write_markers(leader: LeaderCore, request: WriteTxnMarkers, now_ms: int) -> Result:
    """Stage ``request``'s markers for the leader's next commit (answered after it, or
    once replicated)."""
    items = []
    for m in request.markers:
        try:
            replica = leader.leader_for(m.tp)
            check_leader_epoch(replica, m.tp, m.leader_epoch)
            replica.check_enough_replicas()
        except KvlogError as exc:
            items.append(ProduceItem(m.tp, None, None, exc, marker=True))
            continue
        kind = control_batch.COMMIT if m.committed else control_batch.ABORT
        batch = control_batch.build(
            m.producer_id,
            m.producer_epoch,
            kind,
            timestamp_ms=now_ms,
            coordinator_epoch=m.coordinator_epoch,
        )
        items.append(ProduceItem(m.tp, batch, batch_format.read_header(batch), marker=True))
    leader.stage(StagedProduce(request.token, ACKS_ALL, items, request.timeout_ms))
    return Result()


__all__ = ["write_markers"]
