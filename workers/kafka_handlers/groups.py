"""The classic group protocol: JoinGroup (v0-5), SyncGroup (v0-3), Heartbeat (v0-3),
LeaveGroup (v0-3), each one event of the group core (:mod:`workers.group_core`), which
parks JoinGroup and SyncGroup until the rebalance gets there.

Kafka's versions map onto the core's options: JoinGroup v4+ asks for a known member id
(KIP-394: MEMBER_ID_REQUIRED carries the new id in the response's ``member_id``); v5+
and the others' v3+ carry ``group.instance.id`` (static membership); a v0 join has no
rebalance timeout and uses its session timeout (Kafka's rule). Kafka heartbeats are not
long polls: they are answered at once. In groups of protocol type ``consumer``, members'
subscriptions and assignments reach a Kafka client as Kafka's ConsumerProtocol whichever
wire their writer used (a kvlog member writes CBOR: ipc/consumer_protocol.py translates).
"""

from __future__ import annotations

from typing import Any

from kvlog.ipc.consumer_protocol import for_kafka_member
from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest

from ..group_events import (
    Heartbeat,
    JoinGroup,
    JoinGroupAnswer,
    LeaveGroup,
    LeaveGroupAnswer,
    SyncGroup,
    SyncGroupAnswer,
)
from .base import KafkaContext, Outcome, Plan, handles

_Join = response_class(ApiKey.JoinGroup)
_Sync = response_class(ApiKey.SyncGroup)
_Heartbeat = response_class(ApiKey.Heartbeat)
_Leave = response_class(ApiKey.LeaveGroup)


def _instance_id(body: Any, version: int, since: int) -> str | None:
    return (body.group_instance_id or None) if version >= since else None


@handles(ApiKey.JoinGroup)
def join_group(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body, version = request.body, request.api_version
    rebalance_timeout = body.rebalance_timeout_ms if version >= 1 else -1
    event = JoinGroup(
        group_id=body.group_id,
        member_id=body.member_id or "",
        instance_id=_instance_id(body, version, 5),
        client_id=request.client_id or "",
        session_timeout_ms=body.session_timeout_ms,
        rebalance_timeout_ms=(
            rebalance_timeout if rebalance_timeout >= 0 else body.session_timeout_ms
        ),
        protocol_type=body.protocol_type,
        protocols=[(p.name, bytes(p.metadata)) for p in body.protocols or ()],
        require_known_member_id=version >= 4,
        client_host=ctx.client_host,
    )

    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        if outcome.error is not None:
            error = outcome.error
            return _Join(
                throttle_time_ms=0,
                error_code=outcome.code,
                generation_id=-1,
                protocol_name="",
                leader="",
                member_id=error.details.get("member_id", event.member_id),
                members=[],
            )
        answer: JoinGroupAnswer = outcome.body
        return _Join(
            throttle_time_ms=0,
            error_code=0,
            generation_id=answer.generation,
            protocol_name=answer.protocol or "",
            leader=answer.leader or "",
            member_id=answer.member_id,
            members=[
                _Join.JoinGroupResponseMember(
                    member_id=m.member_id,
                    group_instance_id=m.instance_id,
                    metadata=for_kafka_member.subscription(answer.protocol_type, m.metadata),
                )
                for m in answer.members
            ],
        )

    return Plan([event], respond)


@handles(ApiKey.SyncGroup)
def sync_group(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body = request.body
    # Followers send no assignments; only the leader's SyncGroup carries them.
    assignments = {a.member_id: bytes(a.assignment) for a in body.assignments or ()}
    event = SyncGroup(
        group_id=body.group_id,
        generation=body.generation_id,
        member_id=body.member_id,
        instance_id=_instance_id(body, request.api_version, 3),
        assignments=assignments or None,
    )

    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        if outcome.error is not None:
            assignment = b""
        else:
            answer: SyncGroupAnswer = outcome.body
            assignment = for_kafka_member.assignment(answer.protocol_type, answer.assignment)
        return _Sync(throttle_time_ms=0, error_code=outcome.code, assignment=assignment)

    return Plan([event], respond)


@handles(ApiKey.Heartbeat)
def heartbeat(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body = request.body
    event = Heartbeat(
        group_id=body.group_id,
        generation=body.generation_id,
        member_id=body.member_id,
        instance_id=_instance_id(body, request.api_version, 3),
        max_wait_ms=None,  # answered at once: Kafka clients time their own heartbeats
    )

    def respond(outcomes: list[Outcome]) -> Any:
        return _Heartbeat(throttle_time_ms=0, error_code=outcomes[0].code)

    return Plan([event], respond)


@handles(ApiKey.LeaveGroup)
def leave_group(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body, version = request.body, request.api_version
    if version >= 3:
        members = [(m.member_id or "", m.group_instance_id or None) for m in body.members or ()]
    else:
        members = [(body.member_id, None)]
    event = LeaveGroup(body.group_id, members)

    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        if outcome.error is not None:
            return _Leave(throttle_time_ms=0, error_code=outcome.code, members=[])
        answer: LeaveGroupAnswer = outcome.body
        if version < 3:  # one member: its outcome is the response's
            left = answer.members[0] if answer.members else None
            code = 0 if left is None or left.error is None else int(left.error.code)
            return _Leave(throttle_time_ms=0, error_code=code, members=[])
        return _Leave(
            throttle_time_ms=0,
            error_code=0,
            members=[
                _Leave.MemberResponse(
                    member_id=left.member_id,
                    group_instance_id=instance_id,
                    error_code=0 if left.error is None else int(left.error.code),
                )
                for left, (_, instance_id) in zip(answer.members, members, strict=False)
            ],
        )

    return Plan([event], respond)
