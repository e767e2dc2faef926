"""The group cores' vocabulary: the requests they take and the answers they give.

Plain data shared by the cores (:mod:`workers.group_core`, :mod:`workers.offsets_core`,
:mod:`workers.group_admin_core`) and every shell that drives them. A shell decodes its
wire's request into one of these events, once; the core answers with the typed bodies
below (inside a :class:`workers.core_result.Reply`), which each shell encodes for its own
wire: the ZeroMQ shell into PROTOCOL.md's fields (:mod:`workers.zmq_replies`), the Kafka
shell into Kafka's JoinGroup, SyncGroup, ... responses. Errors are never bodies: they
travel as the Reply's ``error`` (a request-level error), or per entry where the answer has
entries (``error`` None = success).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from kvlog.errors import KvlogError
from kvlog.metadata_store import CommittedOffset
from kvlog.types import TopicPartition

# -- requests -----------------------------------------------------------------------------


@dataclass(slots=True)
class JoinGroup:
    """Join or rejoin a group. ``protocols`` (leader-assigns mode) lists the assignors the
    member supports, most preferred first, each with its subscription metadata; with
    ``server_assignor`` (coordinator-assigns mode) the coordinator assigns ``topics``.
    ``require_known_member_id`` (Kafka's JoinGroup v4+, KIP-394): a newcomer without a
    member id is answered MEMBER_ID_REQUIRED carrying its new id, and joins when it rejoins
    with it."""

    group_id: str
    member_id: str = ""
    instance_id: str | None = None
    client_id: str = "kvlog"
    session_timeout_ms: int = 45_000
    rebalance_timeout_ms: int = 300_000
    protocol_type: str = "consumer"
    protocols: list[tuple[str, bytes]] = field(default_factory=list)
    server_assignor: str | None = None
    topics: list[str] = field(default_factory=list)
    owned: list[TopicPartition] = field(default_factory=list)
    require_known_member_id: bool = False
    client_host: str = ""  # where the member connects from, as DescribeGroups shows it


@dataclass(slots=True)
class SyncGroup:
    """``assignments`` (member id -> assignment bytes) only from the leader."""

    group_id: str
    generation: int
    member_id: str
    instance_id: str | None = None
    assignments: dict[str, bytes] | None = None


@dataclass(slots=True)
class Heartbeat:
    """``max_wait_ms`` (None or 0: answer at once) makes it a long poll."""

    group_id: str
    generation: int
    member_id: str
    instance_id: str | None = None
    max_wait_ms: int | None = None


@dataclass(slots=True)
class LeaveGroup:
    """``members``: (member id, instance id); an empty member id with an instance id
    names the static member holding that instance id."""

    group_id: str
    members: list[tuple[str, str | None]]


class CommitEntry(NamedTuple):
    tp: TopicPartition
    offset: int
    metadata: str = ""


@dataclass(slots=True)
class OffsetCommit:
    """Generation -1 with an empty member id is a standalone (admin) commit."""

    group_id: str
    offsets: list[CommitEntry]
    generation: int = -1
    member_id: str = ""
    instance_id: str | None = None


@dataclass(slots=True)
class OffsetFetch:
    """``partitions`` None: every partition the group committed."""

    group_id: str
    partitions: list[TopicPartition] | None = None


@dataclass(slots=True)
class ListGroups:
    pass


@dataclass(slots=True)
class DescribeGroups:
    group_ids: list[str]


@dataclass(slots=True)
class DeleteGroups:
    group_ids: list[str]


GroupRequest = (
    JoinGroup
    | SyncGroup
    | Heartbeat
    | LeaveGroup
    | OffsetCommit
    | OffsetFetch
    | ListGroups
    | DescribeGroups
    | DeleteGroups
)

# -- answers ------------------------------------------------------------------------------


@dataclass(slots=True)
class JoinedMember:
    """A member as the leader sees it: its metadata for the chosen protocol."""

    member_id: str
    instance_id: str | None
    metadata: bytes


@dataclass(slots=True)
class JoinGroupAnswer:
    """``members`` only for the leader in leader-assigns mode; ``assignment`` only in
    coordinator-assigns mode (None otherwise); ``skip_assignment`` for a static member
    that rejoined a Stable group unchanged (it keeps its assignment)."""

    generation: int
    protocol_type: str | None
    protocol: str | None
    leader: str | None
    member_id: str
    members: list[JoinedMember] = field(default_factory=list)
    assignment: bytes | None = None
    skip_assignment: bool = False


@dataclass(slots=True)
class SyncGroupAnswer:
    """The member's assignment, as its group's leader wrote it (``protocol_type`` says
    how to read it: the shells translate a ``consumer`` group's for the member's wire)."""

    assignment: bytes
    protocol_type: str | None = None


@dataclass(slots=True)
class HeartbeatAnswer:
    """Success: keep going (errors travel as the reply's error)."""


@dataclass(slots=True)
class MemberLeft:
    member_id: str
    error: KvlogError | None = None


@dataclass(slots=True)
class LeaveGroupAnswer:
    members: list[MemberLeft]


@dataclass(slots=True)
class PartitionCommitted:
    tp: TopicPartition
    error: KvlogError | None = None


@dataclass(slots=True)
class OffsetCommitAnswer:
    """One entry per requested partition, in request order."""

    partitions: list[PartitionCommitted]


@dataclass(slots=True)
class FetchedOffset:
    tp: TopicPartition
    committed: CommittedOffset | None  # None: nothing committed


@dataclass(slots=True)
class OffsetFetchAnswer:
    partitions: list[FetchedOffset]


@dataclass(slots=True)
class GroupListing:
    group_id: str
    state: str
    protocol_type: str


@dataclass(slots=True)
class ListGroupsAnswer:
    groups: list[GroupListing]


@dataclass(slots=True)
class DescribedMember:
    """``assignment``: the partitions its assignment bytes name (decoded in either consumer
    protocol format); ``metadata`` (its subscription for the group's protocol) and
    ``assignment_bytes`` as the members exchanged them."""

    member_id: str
    instance_id: str | None
    client_id: str
    assignment: list[TopicPartition]
    client_host: str = ""
    metadata: bytes = b""
    assignment_bytes: bytes = b""


@dataclass(slots=True)
class GroupDescription:
    group_id: str
    state: str
    generation: int
    protocol: str | None
    protocol_type: str | None
    leader: str | None
    members: list[DescribedMember]


@dataclass(slots=True)
class GroupError:
    """A per-group outcome of DescribeGroups (error set) or DeleteGroups."""

    group_id: str
    error: KvlogError | None = None


@dataclass(slots=True)
class DescribeGroupsAnswer:
    """One entry per requested group, in request order."""

    groups: list[GroupDescription | GroupError]


@dataclass(slots=True)
class DeleteGroupsAnswer:
    results: list[GroupError]
