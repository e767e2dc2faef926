"""The controller core's vocabulary: the requests it takes and the answers it gives.

Plain data shared by :mod:`workers.controller_core` and the shells that drive it. A shell
decodes its wire's request into one of these events, once; the core answers with the
typed bodies below (inside a :class:`workers.core_result.Reply`), which each shell encodes
for its own wire: the ZeroMQ shells into PROTOCOL.md's fields (:mod:`workers.zmq_replies`),
the Kafka shell into Kafka's Metadata, CreateTopics, ... responses. Errors travel as the
Reply's ``error``, or per entry where an answer has entries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvlog.errors import (
    ErrorCode,
    TopicAuthorizationFailedError,
    UnsupportedVersionError,
)
from kvlog.ipc.kafka.scram import ScramCredential
from kvlog.types import TopicPartition

from .acl import AclEntry
from .scram_users import UserEntry

# The broker id the coordinator process has on Kafka's wire (the group coordinator, and the
# controller admin requests go to). Node ids are small (the n-th log dir is node n, or its
# node.id file's number) and a node may not register with this one, so they never clash;
# INT32_MAX is Kafka's largest broker id, far above any auto-generated one.
COORDINATOR_BROKER_ID = 2**31 - 1

# FindCoordinator's key types (Kafka's CoordinatorType).
GROUP_KEY = 0
TRANSACTION_KEY = 1

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
    kafka_endpoint: str | None = None  # "host:port" of its Kafka listener, if it has one


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
    """``topics`` None: every topic. ``allow_auto_create``: create the named topics that do
    not exist, if the broker's ``auto.create.topics.enable`` allows it (Kafka's Metadata
    v4+); they are answered LEADER_NOT_AVAILABLE, as Kafka does, until the next request."""

    topics: list[str] | None = None
    allow_auto_create: bool = False


@dataclass(slots=True)
class FindCoordinator:
    """Where the coordinator of a group (``key_type`` 0) or a transactional id (1) is."""

    key: str = ""
    key_type: int = GROUP_KEY


@dataclass(slots=True)
class WatchMetadata:
    """The broker's long poll for metadata newer than ``version``."""

    version: int = -1
    wait_ms: int = 1000


@dataclass(slots=True)
class CreateTopic:
    """``validate_only``: check everything, create nothing (answered ChangeValidated).
    ``broker_defaults``: a partition count or replication factor of -1 takes the broker's
    ``num.partitions`` / ``default.replication.factor`` (Kafka's CreateTopics v4+)."""

    name: str
    partitions: int = 1
    replication_factor: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    validate_only: bool = False
    broker_defaults: bool = False


@dataclass(slots=True)
class DeleteTopic:
    name: str


@dataclass(slots=True)
class CreatePartitions:
    """Grow the topic to ``count`` partitions in all."""

    name: str
    count: int
    validate_only: bool = False


@dataclass(slots=True)
class AlterTopicConfig:
    """Set overrides; a value of None removes one. ``replace``: the overrides become exactly
    ``config`` (Kafka's AlterConfigs), every other one is removed."""

    name: str
    config: dict[str, Any]
    validate_only: bool = False
    replace: bool = False


@dataclass(slots=True)
class ElectLeaders:
    """Preferred-leader election; ``topics`` None: every topic."""

    topics: list[str] | None = None


@dataclass(slots=True)
class InitProducerId:
    """A producer id: an idempotent producer's (the controller's), or with
    ``transactional_id`` a transactional producer's (the transaction coordinator's:
    :mod:`workers.txn_core`), whose transactions time out after
    ``transaction_timeout_ms``. ``producer_id`` / ``producer_epoch`` (KIP-360; -1: none):
    a transactional producer bumping its own epoch after an abortable error, allowed only
    with the id's current producer id and epoch (so a zombie cannot fence its successor).
    """

    transactional_id: str | None = None
    transaction_timeout_ms: int = 60_000
    producer_id: int = -1
    producer_epoch: int = -1


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


@dataclass(slots=True)
class UserUpsert:
    """Add a SCRAM user, or replace its credentials for the mechanisms given."""

    name: str
    credentials: list[ScramCredential]


@dataclass(slots=True)
class UserRemove:
    name: str


@dataclass(slots=True)
class UserList:
    pass


ControllerRequest = (
    NodeHeartbeat
    | NodeDown
    | AlterIsr
    | Metadata
    | FindCoordinator
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
    | UserUpsert
    | UserRemove
    | UserList
)

# -- answers ------------------------------------------------------------------------------


@dataclass(slots=True)
class NodeEntry:
    node_id: int
    endpoint: str
    alive: bool
    kafka_endpoint: str | None = None


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


def visible_topics(
    topics: list[TopicEntry | MissingTopic],
    may_describe: Callable[[str], bool],
    principal: str | None,
    *,
    by_name: bool,
) -> list[TopicEntry | MissingTopic]:
    """The one rule for topics a principal may not describe, on every wire: left out of a
    full listing, TOPIC_AUTHORIZATION_FAILED when asked for by name (Kafka's behaviour)."""
    out: list[TopicEntry | MissingTopic] = []
    for topic in topics:
        if may_describe(topic.name):
            out.append(topic)
        elif by_name:
            out.append(
                MissingTopic(
                    topic.name,
                    TopicAuthorizationFailedError.code,
                    f"principal {principal!r} may not describe topic {topic.name!r}",
                )
            )
    return out


@dataclass(slots=True)
class MetadataAnswer:
    """``coordinator``: the coordinator's endpoint where the answerer knows it (the broker),
    else None. ``coordinator_kafka``: the coordinator's Kafka "host:port" (None: it has no
    Kafka listener)."""

    version: int
    nodes: list[NodeEntry]
    topics: list[TopicEntry | MissingTopic]
    coordinator: str | None = None
    coordinator_kafka: str | None = None


@dataclass(slots=True)
class FindCoordinatorAnswer:
    """``endpoint``: the coordinator's ZeroMQ endpoint; ``kafka_endpoint`` its Kafka
    "host:port" and ``broker_id`` its Kafka broker id."""

    endpoint: str
    kafka_endpoint: str | None = None
    broker_id: int = COORDINATOR_BROKER_ID


def find_coordinator(
    event: FindCoordinator, endpoint: str, kafka_endpoint: str | None
) -> FindCoordinatorAnswer:
    """The one rule for FindCoordinator, wherever it is asked: every group and every
    transactional id has the one coordinator process."""
    if event.key_type not in (GROUP_KEY, TRANSACTION_KEY):
        raise UnsupportedVersionError(f"unknown coordinator key type {event.key_type}")
    return FindCoordinatorAnswer(endpoint, kafka_endpoint)


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
    and the live nodes' endpoints; for a node's Kafka listener, the live nodes' Kafka
    endpoints and the coordinator's."""

    version: int
    partitions: list[HostedPartition]
    deleted_topic_ids: list[str]
    nodes: list[tuple[int, str]]
    kafka_nodes: list[tuple[int, str]] = field(default_factory=list)
    coordinator_kafka: str | None = None


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
class ChangeValidated:
    """A ``validate_only`` admin change that would succeed (nothing was changed)."""

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


@dataclass(slots=True)
class UserUpserted:
    created: bool  # False: an existing user's credentials were replaced
    mechanisms: list[str]


@dataclass(slots=True)
class UserRemoved:
    mechanisms: list[str]  # the credentials it had


@dataclass(slots=True)
class UserListing:
    users: list[UserEntry]
