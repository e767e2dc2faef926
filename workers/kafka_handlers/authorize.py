"""The ACL checks of the Kafka wire: each core event, checked by the same typed functions
the ZeroMQ wire's op table calls (:mod:`workers.acl`), so a principal may do the same
things on both wires. Shell side; security off (no authorizer) allows everything.

The node's events (the data path) are checked as the node's ZeroMQ ops are: Produce needs
write on each topic, Fetch read, ListOffsets describe; OffsetForLeaderEpoch (describe) and
DeleteRecords (delete) have no ZeroMQ op and need what Kafka's need.

Metadata and FindCoordinator need no permission (as ``metadata`` and ``find_coordinator``
on ZeroMQ): the metadata answer leaves out, or refuses by name, the topics the principal
may not describe (:func:`workers.controller_events.visible_topics`).
"""

from __future__ import annotations

from functools import singledispatch
from typing import Any

from .. import acl
from ..acl import Authorizer
from ..controller_events import (
    AclAdd,
    AclList,
    AclRemove,
    AlterTopicConfig,
    CreatePartitions,
    CreateTopic,
    DeleteTopic,
    FindCoordinator,
    InitProducerId,
    Metadata,
)
from ..group_events import (
    DeleteGroups,
    DescribeGroups,
    Heartbeat,
    JoinGroup,
    LeaveGroup,
    ListGroups,
    OffsetCommit,
    OffsetFetch,
    SyncGroup,
)
from ..node_model import DeleteRecords, Fetch, ListOffsets, OffsetForLeaderEpoch, Produce
from ..txn_events import AddOffsetsToTxn, AddPartitionsToTxn, EndTxn, TxnOffsetCommit


def authorize(auth: Authorizer | None, principal: str, event: Any) -> None:
    """Raise the named authorization error unless ``principal`` may send ``event``."""
    if auth is not None:
        _check(event, auth, principal)


@singledispatch
def _check(event: Any, auth: Authorizer, principal: str) -> None:
    # An event without a rule is for kvlog's own processes only (as an unknown ZeroMQ op).
    acl.check_internal(auth, principal)


@_check.register(Metadata)
@_check.register(FindCoordinator)
def _(event: Any, auth: Authorizer, principal: str) -> None:
    """Anyone; the answer is filtered."""


@_check.register
def _(event: CreateTopic, auth: Authorizer, principal: str) -> None:
    acl.check_create_topic(auth, principal, event.name)


@_check.register
def _(event: DeleteTopic, auth: Authorizer, principal: str) -> None:
    acl.check_topics(auth, principal, [event.name], "delete")


@_check.register(CreatePartitions)
@_check.register(AlterTopicConfig)
def _(event: Any, auth: Authorizer, principal: str) -> None:
    acl.check_topics(auth, principal, [event.name], "alter")


@_check.register
def _(event: InitProducerId, auth: Authorizer, principal: str) -> None:
    if event.transactional_id is not None:
        acl.check_transactional_id(auth, principal, event.transactional_id)
    else:
        acl.check_init_producer_id(auth, principal)


@_check.register
def _(event: AddPartitionsToTxn, auth: Authorizer, principal: str) -> None:
    topics = (tp.topic for tp in event.partitions)
    acl.check_txn_partitions(auth, principal, event.transactional_id, topics)


@_check.register
def _(event: AddOffsetsToTxn, auth: Authorizer, principal: str) -> None:
    acl.check_txn_offsets(auth, principal, event.transactional_id, event.group_id)


@_check.register
def _(event: EndTxn, auth: Authorizer, principal: str) -> None:
    acl.check_transactional_id(auth, principal, event.transactional_id)


@_check.register
def _(event: TxnOffsetCommit, auth: Authorizer, principal: str) -> None:
    topics = (e.tp.topic for e in event.offsets)
    acl.check_txn_offset_commit(auth, principal, event.transactional_id, event.group_id, topics)


@_check.register(JoinGroup)
@_check.register(SyncGroup)
@_check.register(Heartbeat)
@_check.register(LeaveGroup)
def _(event: Any, auth: Authorizer, principal: str) -> None:
    acl.check_groups(auth, principal, [event.group_id], "read")


@_check.register
def _(event: OffsetCommit, auth: Authorizer, principal: str) -> None:
    acl.check_offset_commit(auth, principal, event.group_id, (e.tp.topic for e in event.offsets))


@_check.register
def _(event: OffsetFetch, auth: Authorizer, principal: str) -> None:
    acl.check_groups(auth, principal, [event.group_id], "describe")


@_check.register
def _(event: ListGroups, auth: Authorizer, principal: str) -> None:
    acl.check_cluster(auth, principal, "describe")


@_check.register
def _(event: DescribeGroups, auth: Authorizer, principal: str) -> None:
    acl.check_groups(auth, principal, event.group_ids, "describe")


@_check.register
def _(event: DeleteGroups, auth: Authorizer, principal: str) -> None:
    acl.check_groups(auth, principal, event.group_ids, "delete")


@_check.register(AclAdd)
@_check.register(AclRemove)
def _(event: Any, auth: Authorizer, principal: str) -> None:
    acl.check_cluster(auth, principal, "alter")


@_check.register
def _(event: AclList, auth: Authorizer, principal: str) -> None:
    acl.check_cluster(auth, principal, "describe")


# -- the node's events -----------------------------------------------------------------------


@_check.register
def _(event: Produce, auth: Authorizer, principal: str) -> None:
    topics = (tp.topic for tp, _ in event.entries)
    acl.check_produce(auth, principal, topics, event.transactional_id)


@_check.register
def _(event: Fetch, auth: Authorizer, principal: str) -> None:
    if event.replica_id >= 0:  # a replica's fetch: kvlog's own nodes only
        acl.check_internal(auth, principal)
    else:
        acl.check_topics(auth, principal, (p.tp.topic for p in event.partitions), "read")


@_check.register
def _(event: ListOffsets, auth: Authorizer, principal: str) -> None:
    acl.check_topics(auth, principal, (tp.topic for tp, _ in event.partitions), "describe")


@_check.register
def _(event: OffsetForLeaderEpoch, auth: Authorizer, principal: str) -> None:
    acl.check_topics(auth, principal, (q.tp.topic for q in event.partitions), "describe")


@_check.register
def _(event: DeleteRecords, auth: Authorizer, principal: str) -> None:
    acl.check_topics(auth, principal, (tp.topic for tp, _ in event.partitions), "delete")
