"""The ZeroMQ shells' encoding of the cores' answers: typed bodies in, PROTOCOL.md's reply
fields out.

Shell side: the cores answer in their own vocabulary (:mod:`workers.group_events`,
:mod:`workers.controller_events`); this module is the one place that turns each answer
into the fields of kvlog's ZeroMQ wire (the Kafka shell encodes the same answers into
Kafka's responses). :func:`encode` dispatches on the answer's type. No decisions here:
every field comes from the answer.
"""

from __future__ import annotations

from functools import singledispatch
from typing import Any

from kvlog.errors import KvlogError

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
            {"member_id": m.member_id, "instance_id": m.instance_id, "metadata": m.metadata}
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
    return {"assignment": body.assignment}


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
