"""The controller core's vocabulary: the requests it takes and the answers it gives.

Plain data shared by :mod:`workers.controller_core` and the shells that drive it. A shell
decodes its wire's request into one of these events, once; the core answers with the
typed bodies below (inside a :class:`workers.core_result.Reply`), which each shell encodes
for its own wire: the ZeroMQ shells into PROTOCOL.md's fields (:mod:`workers.zmq_replies`),
the Kafka shell into Kafka's Metadata, CreateTopics, ... responses. Errors travel as the
Reply's ``error``, or per entry where an answer has entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvlog.errors import ErrorCode
from kvlog.types import TopicPartition

from .acl import AclEntry

# -- requests: nodes (internal) -----------------------------------------------------------


@dataclass(slots=True)
class NodeHeartbeat:
    """A node's registration and long poll for metadata newer than ``applied_version``;
    ``offline`` reports its log dir failing."""

    node_id: int
    endpoint: str
    log_dir: str
    applied_version: int = -1
    pid: int = 0
    wait_ms: int = 1000
    offline: bool = False


@dataclass(slots=True)
class NodeDown:
    """The supervisor saw the node's process (``pid``) die."""

    node_id: int
    pid: int = 0


@dataclass(slots=True)
class AlterIsr:
    """A partition leader asks to shrink or expand its ISR (Kafka's AlterPartition)."""

    tp: TopicPartition
    leader: int
    leader_epoch: int
    isr: list[int]


# -- requests: metadata and admin ---------------------------------------------------------


@dataclass(slots=True)
class Metadata:
    """``topics`` None: every topic."""

    topics: list[str] | None = None


@dataclass(slots=True)
class WatchMetadata:
    """The broker's long poll for metadata newer than ``version``."""

    version: int = -1
    wait_ms: int = 1000


@dataclass(slots=True)
class CreateTopic:
    name: str
    partitions: int = 1
    replication_factor: int = 1
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class DeleteTopic:
    name: str


@dataclass(slots=True)
class CreatePartitions:
    """Grow the topic to ``count`` partitions in all."""

    name: str
    count: int


@dataclass(slots=True)
class AlterTopicConfig:
    """Set overrides; a value of None removes one."""

    name: str
    config: dict[str, Any]


@dataclass(slots=True)
class ElectLeaders:
    """Preferred-leader election; ``topics`` None: every topic."""

    topics: list[str] | None = None


@dataclass(slots=True)
class InitProducerId:
    pass


@dataclass(slots=True)
class Ping:
    pass


@dataclass(slots=True)
class AclAdd:
    entry: AclEntry


@dataclass(slots=True)
class AclRemove:
    """Remove every ACL matching the given fields (None matches anything)."""

    principal: str | None = None
    resource_type: str | None = None
    name: str | None = None
    operation: str | None = None


@dataclass(slots=True)
class AclList:
    pass


ControllerRequest = (
    NodeHeartbeat
    | NodeDown
    | AlterIsr
    | Metadata
    | WatchMetadata
    | CreateTopic
    | DeleteTopic
    | CreatePartitions
    | AlterTopicConfig
    | ElectLeaders
    | InitProducerId
    | Ping
    | AclAdd
    | AclRemove
    | AclList
)

# -- answers ------------------------------------------------------------------------------


@dataclass(slots=True)
class NodeEntry:
    node_id: int
    endpoint: str
    alive: bool


@dataclass(slots=True)
class PartitionEntry:
    """``leader`` -1: no live leader."""

    partition: int
    leader: int
    leader_epoch: int
    replicas: list[int]
    isr: list[int]


@dataclass(slots=True)
class TopicEntry:
    name: str
    topic_id: str
    config: dict[str, Any]
    replication_factor: int
    partitions: list[PartitionEntry]


@dataclass(slots=True)
class MissingTopic:
    """A topic asked for by name that cannot be described (unknown, or not authorized);
    ``message`` None: the code alone (the coordinator's own metadata)."""

    name: str
    code: ErrorCode
    message: str | None = None


@dataclass(slots=True)
class MetadataAnswer:
    """``coordinator``: the coordinator's endpoint where the answerer knows it (the broker),
    else None."""

    version: int
    nodes: list[NodeEntry]
    topics: list[TopicEntry | MissingTopic]
    coordinator: str | None = None


@dataclass(slots=True)
class MetadataUnchanged:
    """A watch whose wait ended with the version where it was."""

    version: int


@dataclass(slots=True)
class HostedPartition:
    """A partition a node holds, as its heartbeat answer carries it."""

    topic: str
    partition: int
    topic_id: str
    leader: int
    leader_epoch: int
    replicas: list[int]
    isr: list[int]
    config: dict[str, Any]


@dataclass(slots=True)
class NodeAssignment:
    """What a node must apply: every partition it hosts, deleted topics' ids (tombstones)
    and the live nodes' endpoints."""

    version: int
    partitions: list[HostedPartition]
    deleted_topic_ids: list[str]
    nodes: list[tuple[int, str]]


@dataclass(slots=True)
class NodeHeartbeatAck:
    """A parked node heartbeat answered without news (its wait ended, or a newer one
    superseded it)."""

    version: int


@dataclass(slots=True)
class NodeDownAnswer:
    moved: bool


@dataclass(slots=True)
class IsrAnswer:
    leader: int
    leader_epoch: int
    isr: list[int]
    version: int


@dataclass(slots=True)
class TopicCreated:
    topic_id: str
    version: int


@dataclass(slots=True)
class TopicDeleted:
    topic_id: str
    version: int


@dataclass(slots=True)
class PartitionsCreated:
    old_count: int
    count: int
    version: int


@dataclass(slots=True)
class TopicConfigAltered:
    config: dict[str, Any]
    version: int


@dataclass(slots=True)
class LeadersElected:
    elected: list[TopicPartition]
    version: int


@dataclass(slots=True)
class ProducerIdAnswer:
    producer_id: int
    producer_epoch: int


@dataclass(slots=True)
class PingAnswer:
    version: int
    nodes: list[NodeEntry]


@dataclass(slots=True)
class AclAdded:
    added: bool


@dataclass(slots=True)
class AclsRemoved:
    removed: list[AclEntry]


@dataclass(slots=True)
class AclListing:
    acls: list[AclEntry]
