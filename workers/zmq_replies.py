"""The ZeroMQ shells' encoding of the cores' answers: typed bodies in, PROTOCOL.md's reply
fields out.

Shell side: the cores answer in their own vocabulary (:mod:`workers.group_events`,
:mod:`workers.controller_events`, :mod:`workers.broker_core`); this module is the one
place that turns each answer into the fields of kvlog's ZeroMQ wire (the Kafka shell
encodes the same answers into Kafka's responses), and the broker's way back from the
coordinator's metadata fields to the answer (:func:`decode_metadata`). :func:`encode`
dispatches on the answer's type. No decisions here: every field comes from the answer.
"""

from __future__ import annotations

from functools import singledispatch
from typing import Any

from kvlog.errors import ErrorCode, InvalidRequestError, KvlogError
from kvlog.ipc.consumer_protocol import for_kvlog_member

from .broker_core import BrokerPingAnswer, Forwarded
from .controller_events import (
    AclAdded,
    AclListing,
    AclsRemoved,
    ChangeValidated,
    FindCoordinatorAnswer,
    IsrAnswer,
    LeadersElected,
    MetadataAnswer,
    MetadataUnchanged,
    MissingTopic,
    NodeAssignment,
    NodeDownAnswer,
    NodeEntry,
    NodeHeartbeatAck,
    PartitionEntry,
    PartitionsCreated,
    PingAnswer,
    ProducerIdAnswer,
    TopicConfigAltered,
    TopicCreated,
    TopicDeleted,
    TopicEntry,
    UserListing,
    UserRemoved,
    UserUpserted,
)
from .group_events import (
    DeleteGroupsAnswer,
    DescribeGroupsAnswer,
    GroupDescription,
    HeartbeatAnswer,
    JoinGroupAnswer,
    LeaveGroupAnswer,
    ListGroupsAnswer,
    OffsetCommitAnswer,
    OffsetFetchAnswer,
    SyncGroupAnswer,
)
from .txn_events import TxnAck, TxnPartitionsAdded

Fields = dict[str, Any]


def outcome(error: KvlogError | None) -> Fields:
    """A per-entry outcome: ``{"error": 0}`` or the error's code and message."""
    return {"error": 0} if error is None else error.to_wire()


@singledispatch
def encode(body: Any) -> Fields:
    """PROTOCOL.md's reply fields for a core's answer (``None``: no fields)."""
    if body is None:
        return {}
    raise TypeError(f"no ZeroMQ encoding for {type(body).__name__}")


# -- groups (PROTOCOL.md 3.13-3.21) ---------------------------------------------------------


@encode.register
def _(body: JoinGroupAnswer) -> Fields:
    fields: Fields = {
        "generation": body.generation,
        "protocol_type": body.protocol_type,
        "protocol": body.protocol,
        "leader": body.leader,
        "member_id": body.member_id,
        "members": [
            {
                "member_id": m.member_id,
                "instance_id": m.instance_id,
                "metadata": for_kvlog_member.subscription(body.protocol_type, m.metadata),
            }
            for m in body.members
        ],
    }
    if body.assignment is not None:
        fields["assignment"] = body.assignment
    if body.skip_assignment:
        fields["skip_assignment"] = True
    return fields


@encode.register
def _(body: SyncGroupAnswer) -> Fields:
    return {"assignment": for_kvlog_member.assignment(body.protocol_type, body.assignment)}


@encode.register
def _(body: HeartbeatAnswer) -> Fields:
    return {}


@encode.register
def _(body: LeaveGroupAnswer) -> Fields:
    return {"members": [{"member_id": m.member_id, **outcome(m.error)} for m in body.members]}


@encode.register
def _(body: OffsetCommitAnswer) -> Fields:
    return {
        "partitions": [
            {"topic": p.tp.topic, "partition": p.tp.partition, **outcome(p.error)}
            for p in body.partitions
        ]
    }


@encode.register
def _(body: OffsetFetchAnswer) -> Fields:
    out = []
    for p in body.partitions:
        c = p.committed
        out.append(
            {
                "topic": p.tp.topic,
                "partition": p.tp.partition,
                "offset": -1 if c is None else c.offset,
                "metadata": "" if c is None else c.metadata,
                "commit_timestamp": -1 if c is None else c.commit_timestamp,
                "error": 0,
            }
        )
    return {"partitions": out}


@encode.register
def _(body: ListGroupsAnswer) -> Fields:
    return {
        "groups": [
            {"group_id": g.group_id, "state": g.state, "protocol_type": g.protocol_type}
            for g in body.groups
        ]
    }


def _description(d: GroupDescription) -> Fields:
    return {
        "error": 0,
        "group_id": d.group_id,
        "state": d.state,
        "generation": d.generation,
        "protocol": d.protocol,
        "protocol_type": d.protocol_type,
        "leader": d.leader,
        "members": [
            {
                "member_id": m.member_id,
                "instance_id": m.instance_id,
                "client_id": m.client_id,
                "assignment": [[tp.topic, tp.partition] for tp in m.assignment],
            }
            for m in d.members
        ],
    }


@encode.register
def _(body: DescribeGroupsAnswer) -> Fields:
    return {
        "groups": [
            _description(g)
            if isinstance(g, GroupDescription)
            else {"group_id": g.group_id, **outcome(g.error)}
            for g in body.groups
        ]
    }


@encode.register
def _(body: DeleteGroupsAnswer) -> Fields:
    return {"results": [{"group_id": r.group_id, **outcome(r.error)} for r in body.results]}


# -- controller (PROTOCOL.md 3.1, 3.3, 3.7-3.12, 3.22-3.25) ---------------------------------


def _node(n: NodeEntry) -> Fields:
    fields: Fields = {"node_id": n.node_id, "endpoint": n.endpoint, "alive": n.alive}
    if n.kafka_endpoint is not None:
        fields["kafka_endpoint"] = n.kafka_endpoint
    return fields


def _topic(t: TopicEntry | MissingTopic) -> Fields:
    if isinstance(t, MissingTopic):
        fields: Fields = {"name": t.name, "error": int(t.code)}
        if t.message is not None:
            fields["message"] = t.message
        fields["partitions"] = []
        return fields
    return {
        "name": t.name,
        "topic_id": t.topic_id,
        "error": 0,
        "config": t.config,
        "replication_factor": t.replication_factor,
        "partitions": [
            {
                "partition": p.partition,
                "leader": p.leader,
                "leader_epoch": p.leader_epoch,
                "replicas": p.replicas,
                "isr": p.isr,
            }
            for p in t.partitions
        ],
    }


@encode.register
def _(body: MetadataAnswer) -> Fields:
    fields: Fields = {
        "version": body.version,
        "nodes": [_node(n) for n in body.nodes],
        "topics": [_topic(t) for t in body.topics],
        "coordinator": body.coordinator,
    }
    if body.coordinator_kafka is not None:
        fields["coordinator_kafka_endpoint"] = body.coordinator_kafka
    return fields


def decode_metadata(fields: Fields) -> MetadataAnswer:
    """The coordinator's ``metadata`` / ``watch_metadata`` reply back into its answer (the
    broker keeps it as its cache). Raises InvalidRequestError if it is not one."""
    try:
        nodes = [
            NodeEntry(n["node_id"], n["endpoint"], n["alive"], n.get("kafka_endpoint"))
            for n in fields["nodes"]
        ]
        topics: list[TopicEntry | MissingTopic] = []
        for t in fields["topics"]:
            if t.get("error"):
                topics.append(MissingTopic(t["name"], ErrorCode(t["error"]), t.get("message")))
                continue
            partitions = [
                PartitionEntry(
                    p["partition"], p["leader"], p["leader_epoch"], p["replicas"], p["isr"]
                )
                for p in t["partitions"]
            ]
            topics.append(
                TopicEntry(
                    t["name"], t["topic_id"], t["config"], t["replication_factor"], partitions
                )
            )
        return MetadataAnswer(
            fields["version"],
            nodes,
            topics,
            fields.get("coordinator"),
            fields.get("coordinator_kafka_endpoint"),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidRequestError(f"not a metadata reply: {type(exc).__name__}: {exc}") from None


@encode.register
def _(body: MetadataUnchanged) -> Fields:
    return {"version": body.version, "unchanged": True}


@encode.register
def _(body: NodeAssignment) -> Fields:
    fields: Fields = {
        "version": body.version,
        "partitions": [
            {
                "topic": p.topic,
                "partition": p.partition,
                "topic_id": p.topic_id,
                "leader": p.leader,
                "leader_epoch": p.leader_epoch,
                "replicas": p.replicas,
                "isr": p.isr,
                "config": p.config,
            }
            for p in body.partitions
        ],
        "deleted_topic_ids": body.deleted_topic_ids,
        "nodes": [[n, endpoint] for n, endpoint in body.nodes],
    }
    # Kafka's wire (PROTOCOL.md 3.23): only when there are Kafka listeners to name.
    if body.kafka_nodes:
        fields["kafka_nodes"] = [[n, endpoint] for n, endpoint in body.kafka_nodes]
    if body.coordinator_kafka is not None:
        fields["coordinator_kafka_endpoint"] = body.coordinator_kafka
    return fields


@encode.register
def _(body: NodeHeartbeatAck) -> Fields:
    return {"version": body.version}


@encode.register
def _(body: NodeDownAnswer) -> Fields:
    return {"moved": body.moved}


@encode.register
def _(body: IsrAnswer) -> Fields:
    return {
        "leader": body.leader,
        "leader_epoch": body.leader_epoch,
        "isr": body.isr,
        "version": body.version,
    }


@encode.register
def _(body: ChangeValidated) -> Fields:
    return {"version": body.version, "validate_only": True}


@encode.register
def _(body: TopicCreated) -> Fields:
    return {"topic_id": body.topic_id, "version": body.version}


@encode.register
def _(body: TopicDeleted) -> Fields:
    return {"topic_id": body.topic_id, "version": body.version}


@encode.register
def _(body: PartitionsCreated) -> Fields:
    return {"old_count": body.old_count, "count": body.count, "version": body.version}


@encode.register
def _(body: TopicConfigAltered) -> Fields:
    return {"config": body.config, "version": body.version}


@encode.register
def _(body: LeadersElected) -> Fields:
    return {"elected": [[tp.topic, tp.partition] for tp in body.elected], "version": body.version}


@encode.register
def _(body: ProducerIdAnswer) -> Fields:
    return {"producer_id": body.producer_id, "producer_epoch": body.producer_epoch}


@encode.register
def _(body: TxnPartitionsAdded) -> Fields:
    return {
        "partitions": [
            {"topic": tp.topic, "partition": tp.partition, **outcome(error)}
            for tp, error in body.results
        ]
    }


@encode.register
def _(body: TxnAck) -> Fields:
    return {}


@encode.register
def _(body: PingAnswer) -> Fields:
    return {"version": body.version, "nodes": [_node(n) for n in body.nodes]}


@encode.register
def _(body: AclAdded) -> Fields:
    return {"added": body.added}


@encode.register
def _(body: AclsRemoved) -> Fields:
    return {"removed": [e.as_dict() for e in body.removed]}


@encode.register
def _(body: AclListing) -> Fields:
    return {"acls": [e.as_dict() for e in body.acls]}


@encode.register
def _(body: UserUpserted) -> Fields:
    return {"created": body.created, "mechanisms": body.mechanisms}


@encode.register
def _(body: UserRemoved) -> Fields:
    return {"mechanisms": body.mechanisms}


@encode.register
def _(body: UserListing) -> Fields:
    return {"users": [{"name": u.name, "mechanisms": u.iterations} for u in body.users]}


# -- broker (PROTOCOL.md 3.2, 3.3; forwarded ops) -------------------------------------------


@encode.register
def _(body: FindCoordinatorAnswer) -> Fields:
    return {"endpoint": body.endpoint}


@encode.register
def _(body: BrokerPingAnswer) -> Fields:
    return {"version": body.version, "ready": body.ready}


@encode.register
def _(body: Forwarded) -> Fields:
    return body.fields  # the coordinator's reply, passed on as it came
