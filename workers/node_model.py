"""The node cores' vocabulary: typed requests in, typed reply bodies out.

A shell decodes a client request once into one of the request types here (``Produce``,
``Fetch``, ``ListOffsets``, ``OffsetForLeaderEpoch``, ``DeleteRecords``, and the
transaction coordinator's ``WriteTxnMarkers``), calls
:class:`~workers.node_core.NodeCore` and encodes the bodies of the replies it gets back
for its own wire (``workers/node_wire.py`` for kvlog's
ZeroMQ wire; a Kafka shell encodes the same bodies into Kafka responses). Nothing here
knows a wire. The answers to the core's own requests to other kvlog processes (a
``Send``) come back as an :class:`Answer`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from kvlog.errors import KvlogError
from kvlog.topic_config import cleanup_policies, effective_topic_config
from kvlog.types import TopicPartition

D = TypeVar("D", int, float)

COORDINATOR = "coordinator"  # Send.to for requests to the coordinator process

# Kafka's isolation levels (Fetch v4+, ListOffsets v2+).
READ_UNCOMMITTED = 0
READ_COMMITTED = 1  # below the last stable offset, with the aborted transactions


def earliest(deadlines: Iterable[D | None]) -> D | None:
    """The first of some deadlines (None: no deadline)."""
    return min((d for d in deadlines if d is not None), default=None)


@dataclass(frozen=True, slots=True)
class NodePeer:
    """Send.to for a request to another node (the shell keeps one link per node id)."""

    node_id: int
    endpoint: str


# -- what the coordinator assigns ------------------------------------------------------------


class ProduceRules(NamedTuple):
    """A partition's topic config as the leader checks produced batches against it."""

    max_message_bytes: int
    compacted: bool  # cleanup.policy includes compact: records without a key are refused


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

    def produce_rules(self) -> ProduceRules:
        """What the leader checks a produced batch against (the effective config merged
        once: the leader keeps this per assignment)."""
        config = effective_topic_config(self.config)
        return ProduceRules(int(config["max.message.bytes"]), "compact" in cleanup_policies(config))

    @property
    def min_insync_replicas(self) -> int:
        return int(effective_topic_config(self.config)["min.insync.replicas"])


@dataclass
class Assignment:
    """The coordinator's word on what this node hosts (a ``node_heartbeat`` answer)."""

    partitions: list[HostedPartition]
    deleted_topic_ids: list[str] = field(default_factory=list)
    nodes: dict[int, str] = field(default_factory=dict)  # node id -> endpoint
    version: int = -1


# -- requests --------------------------------------------------------------------------------


@dataclass(slots=True)
class Produce:
    """Append one batch per entry; ``acks`` 0, 1 or -1 (all)."""

    token: Any
    acks: int
    entries: list[tuple[TopicPartition, bytes | memoryview]]
    timeout_ms: int = 30_000
    transactional_id: str | None = None  # what the ACLs check (Kafka's Produce v3+)


@dataclass(slots=True)
class FetchPartition:
    tp: TopicPartition
    offset: int
    max_bytes: int
    last_fetched_epoch: int = -1  # replica fetches: the epoch of the follower's last batch
    leader_epoch: int = -1  # the leader epoch the fetcher believes in (-1: any)


@dataclass(slots=True)
class Fetch:
    """A long poll: answered once ``min_bytes`` are there, an error shows, or
    ``max_wait_ms`` ran out. ``replica_id`` >= 0: a follower's fetch."""

    token: Any
    partitions: list[FetchPartition]
    max_bytes: int = 50 << 20
    min_bytes: int = 1
    max_wait_ms: int = 500
    replica_id: int = -1
    isolation_level: int = READ_UNCOMMITTED


@dataclass(slots=True)
class ListOffsets:
    """Kafka's ListOffsets: per partition a timestamp, -1 latest, -2 earliest.
    ``current_leader_epochs``: the leader epoch the client believes in, for the
    partitions it names one for (Kafka v4+; a stale or future one is refused)."""

    token: Any
    partitions: list[tuple[TopicPartition, int]]
    current_leader_epochs: dict[TopicPartition, int] = field(default_factory=dict)
    isolation_level: int = READ_UNCOMMITTED  # read_committed: latest is the LSO


@dataclass(slots=True)
class EpochQuery:
    """Where ``leader_epoch`` ends in the leader's log; ``current_leader_epoch`` fences
    a client with stale metadata (-1: any)."""

    tp: TopicPartition
    leader_epoch: int
    current_leader_epoch: int = -1


@dataclass(slots=True)
class OffsetForLeaderEpoch:
    """Kafka's OffsetForLeaderEpoch, answered from the leader's epoch cache: consumers
    check their position with it after a leader change (KIP-320)."""

    token: Any
    partitions: list[EpochQuery]


@dataclass(slots=True)
class DeleteRecords:
    """Kafka's DeleteRecords: move each partition's log start offset up to ``offset``
    (-1: the high watermark), dropping whole batches below it."""

    token: Any
    partitions: list[tuple[TopicPartition, int]]
    timeout_ms: int = 30_000


@dataclass(slots=True)
class TxnMarker:
    """One transaction's marker for one partition: commit or abort (producer id, epoch).
    ``leader_epoch``: the leadership the coordinator sends it to (-1: any); another is
    fenced, so a marker meant for a deposed leader is never written by it."""

    tp: TopicPartition
    producer_id: int
    producer_epoch: int
    committed: bool
    leader_epoch: int = -1
    coordinator_epoch: int = 0


@dataclass(slots=True)
class WriteTxnMarkers:
    """From the transaction coordinator (Kafka's WriteTxnMarkers): append each marker
    to its partition, replicated to every in-sync replica (acks=all) before the answer
    (a :class:`ProduceResponse`, one entry per marker, in order)."""

    token: Any
    markers: list[TxnMarker]
    timeout_ms: int = 5000


@dataclass(slots=True)
class Answer:
    """What came back for a ``Send`` of the core: the reply's fields and frames, or
    ``fields`` None when none came (``error`` says why: timed out, could not send)."""

    token: Any
    fields: dict[str, Any] | None
    frames: list[bytes] = field(default_factory=list)
    error: KvlogError | None = None


# -- reply bodies ----------------------------------------------------------------------------


@dataclass(slots=True)
class ProducedPartition:
    tp: TopicPartition
    error: KvlogError | None = None
    base_offset: int = -1
    log_start_offset: int = -1


@dataclass(slots=True)
class ProduceResponse:
    partitions: list[ProducedPartition]  # one per request entry, in request order
    request_bytes: int = 0  # what the request carried (the produce quota counts it)


@dataclass(slots=True)
class FetchedPartition:
    tp: TopicPartition
    error: KvlogError | None = None
    high_watermark: int = -1
    log_start_offset: int = -1
    log_end_offset: int = -1
    batches: list[tuple[int, bytes]] = field(default_factory=list)
    diverging: tuple[int, int] | None = None  # (epoch, end offset) the follower must cut to
    last_stable_offset: int = -1
    # read_committed: (producer id, first offset) of each aborted transaction overlapping
    # the batches returned (None: read_uncommitted, Kafka's null)
    aborted: list[tuple[int, int]] | None = None
    # A follower fetch below the log start: (producer id, first offset) of the
    # transactions the leader has open that began below it (the log cannot show them)
    open_transactions: list[tuple[int, int]] | None = None

    @property
    def size(self) -> int:
        return sum(len(b) for _, b in self.batches)


@dataclass(slots=True)
class FetchResponse:
    partitions: list[FetchedPartition]  # one per requested partition, in request order
    replica_id: int = -1

    @property
    def size(self) -> int:
        return sum(p.size for p in self.partitions)

    @property
    def quota_bytes(self) -> int:
        """Bytes the consumer quota counts: replication is never throttled."""
        return 0 if self.replica_id >= 0 else self.size


@dataclass(slots=True)
class ListedOffset:
    tp: TopicPartition
    error: KvlogError | None = None
    offset: int = -1
    timestamp: int = -1
    leader_epoch: int = -1  # the epoch of the leader that wrote ``offset`` (-1: unknown)


@dataclass(slots=True)
class ListOffsetsResponse:
    partitions: list[ListedOffset]


@dataclass(slots=True)
class EpochEndOffset:
    tp: TopicPartition
    error: KvlogError | None = None
    leader_epoch: int = -1  # the largest epoch <= the one asked for (-1: none)
    end_offset: int = -1  # where that epoch ends (the next one starts, or the log end)


@dataclass(slots=True)
class OffsetForLeaderEpochResponse:
    partitions: list[EpochEndOffset]


@dataclass(slots=True)
class DeletedRecords:
    tp: TopicPartition
    error: KvlogError | None = None
    low_watermark: int = -1  # the partition's log start offset now


@dataclass(slots=True)
class DeleteRecordsResponse:
    partitions: list[DeletedRecords]


@dataclass(slots=True)
class NodeStatus:
    node_id: int
    metadata_version: int


@dataclass(slots=True)
class LeaderStats:
    """What a leader core counted for metrics, plain data the shell reads and resets:
    per topic the records and batch bytes appended (never a retry's duplicate), and the
    size of the last group commit."""

    appended: dict[str, list[int]] = field(default_factory=dict)  # topic -> [records, bytes]
    commit_requests: int = 0  # produce requests in the last group commit
    commit_batches: int = 0  # batches in it

    def take_appended(self) -> dict[str, list[int]]:
        appended, self.appended = self.appended, {}
        return appended


class Unanswered:
    """The body of a reply that is not sent: the request is finished and its client
    expects nothing (a produce with acks=0). A shell frees what the request held (its
    in-flight slot, its place in a connection's response order) and sends nothing."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNANSWERED"


UNANSWERED = Unanswered()


__all__ = [
    "COORDINATOR",
    "READ_COMMITTED",
    "READ_UNCOMMITTED",
    "UNANSWERED",
    "Answer",
    "Assignment",
    "DeleteRecords",
    "DeleteRecordsResponse",
    "DeletedRecords",
    "EpochEndOffset",
    "EpochQuery",
    "Fetch",
    "FetchPartition",
    "FetchResponse",
    "FetchedPartition",
    "HostedPartition",
    "LeaderStats",
    "ListOffsets",
    "ListOffsetsResponse",
    "ListedOffset",
    "NodePeer",
    "NodeStatus",
    "OffsetForLeaderEpoch",
    "OffsetForLeaderEpochResponse",
    "Produce",
    "ProduceResponse",
    "ProduceRules",
    "ProducedPartition",
    "TxnMarker",
    "Unanswered",
    "WriteTxnMarkers",
    "earliest",
]
