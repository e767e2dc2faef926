"""The transaction coordinator's vocabulary: the requests it takes and the answers it gives.

Plain data shared by :mod:`workers.txn_core` and the shells that drive it (kvlog's ZeroMQ
ops ``add_partitions_to_txn``, ``add_offsets_to_txn``, ``end_txn``, ``txn_offset_commit``
and ``init_producer_id`` with a ``transactional_id``; Kafka's AddPartitionsToTxn,
AddOffsetsToTxn, EndTxn, TxnOffsetCommit and InitProducerId). A request's error is the
Reply's ``error``; per-partition results carry their own. ``InitProducerId`` itself is the
controller's event (:class:`workers.controller_events.InitProducerId`): the coordinator
core hands the ones with a transactional id here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvlog.errors import KvlogError
from kvlog.types import TopicPartition

from .group_events import CommitEntry

# -- requests (from clients) ----------------------------------------------------------------


@dataclass(slots=True)
class AddPartitionsToTxn:
    """Add partitions to the producer's transaction (begins one if none is open)."""

    transactional_id: str
    producer_id: int
    producer_epoch: int
    partitions: list[TopicPartition]


@dataclass(slots=True)
class AddOffsetsToTxn:
    """Add a consumer group's offsets to the transaction: the offsets the producer then
    commits with :class:`TxnOffsetCommit` become the group's committed offsets only if the
    transaction commits."""

    transactional_id: str
    producer_id: int
    producer_epoch: int
    group_id: str


@dataclass(slots=True)
class EndTxn:
    """Commit (``committed``) or abort the producer's transaction."""

    transactional_id: str
    producer_id: int
    producer_epoch: int
    committed: bool


@dataclass(slots=True)
class TxnOffsetCommit:
    """Offsets of ``group_id`` to commit with the transaction (pending until it ends).
    ``generation`` / ``member_id`` / ``instance_id``: the consumer's group metadata
    (KIP-447), checked against the group as Kafka's coordinator does, so a zombie
    consumer's producer is fenced; -1 / "" / None: unchecked (before KIP-447)."""

    transactional_id: str
    group_id: str
    producer_id: int
    producer_epoch: int
    offsets: list[CommitEntry] = field(default_factory=list)
    generation: int = -1
    member_id: str = ""
    instance_id: str | None = None


# -- internal -------------------------------------------------------------------------------


@dataclass(slots=True)
class MarkersAnswer:
    """What came back for one of the core's ``write_txn_markers`` sends to a leader node:
    the reply's fields (``results``, one per marker sent), or ``fields`` None with the
    reason none came (timed out, could not send)."""

    token: Any
    fields: dict[str, Any] | None
    error: KvlogError | None = None


TxnRequest = AddPartitionsToTxn | AddOffsetsToTxn | EndTxn | TxnOffsetCommit

# -- answers --------------------------------------------------------------------------------


@dataclass(slots=True)
class TxnPartitionsAdded:
    """One result per requested partition, in request order (``None``: added)."""

    results: list[tuple[TopicPartition, KvlogError | None]]


@dataclass(slots=True)
class TxnAck:
    """AddOffsetsToTxn and EndTxn succeeded (EndTxn: the decision is durable; markers
    follow)."""


__all__ = [
    "AddOffsetsToTxn",
    "AddPartitionsToTxn",
    "EndTxn",
    "MarkersAnswer",
    "TxnAck",
    "TxnOffsetCommit",
    "TxnPartitionsAdded",
    "TxnRequest",
]
