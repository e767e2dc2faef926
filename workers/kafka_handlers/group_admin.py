"""The admin views of groups: DescribeGroups (v0-4), ListGroups (v0-2), DeleteGroups
(v0-1), events of the group admin core (:mod:`workers.group_admin_core`).

Each group of DescribeGroups and DeleteGroups is its own event, so each is authorized on
its own and a refusal is that group's error, as in Kafka. A group the core does not know
is described as Kafka's versions before 6 describe it: state ``Dead``, no error.
"""

from __future__ import annotations

from typing import Any

from kvlog.errors import ErrorCode
from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest

from ..group_events import (
    DeleteGroups,
    DescribeGroups,
    GroupDescription,
    GroupError,
    ListGroups,
)
from .base import KafkaContext, Outcome, Plan, handles

_Describe = response_class(ApiKey.DescribeGroups)
_Group = _Describe.DescribedGroup
_Member = _Group.DescribedGroupMember
_List = response_class(ApiKey.ListGroups)
_Delete = response_class(ApiKey.DeleteGroups)


@handles(ApiKey.DescribeGroups)
def describe_groups(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    group_ids = list(request.body.groups or ())

    def respond(outcomes: list[Outcome]) -> Any:
        return _Describe(
            throttle_time_ms=0,
            groups=[_described(g, o) for g, o in zip(group_ids, outcomes, strict=True)],
        )

    return Plan([DescribeGroups([g]) for g in group_ids], respond)


def _described(group_id: str, outcome: Outcome) -> Any:
    code = outcome.code
    found: GroupDescription | GroupError | None = None
    if outcome.error is None:
        [found] = outcome.body.groups
        if isinstance(found, GroupError):
            code = 0 if found.error is None else int(found.error.code)
    if not isinstance(found, GroupDescription):
        if code == ErrorCode.GROUP_ID_NOT_FOUND:
            code = 0  # Kafka before DescribeGroups v6: an unknown group is Dead, no error
        return _Group(
            error_code=code,
            group_id=group_id,
            group_state="Dead",
            protocol_type="",
            protocol_data="",
            members=[],
        )
    return _Group(
        error_code=0,
        group_id=found.group_id,
        group_state=found.state,
        protocol_type=found.protocol_type or "",
        protocol_data=found.protocol or "",
        members=[
            _Member(
                member_id=m.member_id,
                group_instance_id=m.instance_id,
                client_id=m.client_id,
                client_host=m.client_host,
                member_metadata=m.metadata,
                member_assignment=m.assignment_bytes,
            )
            for m in found.members
        ],
    )


@handles(ApiKey.ListGroups)
def list_groups(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        groups = [] if outcome.error is not None else outcome.body.groups
        return _List(
            throttle_time_ms=0,
            error_code=outcome.code,
            groups=[
                _List.ListedGroup(group_id=g.group_id, protocol_type=g.protocol_type)
                for g in groups
            ],
        )

    return Plan([ListGroups()], respond)


@handles(ApiKey.DeleteGroups)
def delete_groups(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    group_ids = list(request.body.groups_names or ())

    def respond(outcomes: list[Outcome]) -> Any:
        results = []
        for group_id, outcome in zip(group_ids, outcomes, strict=True):
            code = outcome.code
            if outcome.error is None:
                [result] = outcome.body.results
                code = 0 if result.error is None else int(result.error.code)
            results.append(_Delete.DeletableGroupResult(group_id=group_id, error_code=code))
        return _Delete(throttle_time_ms=0, results=results)

    return Plan([DeleteGroups([g]) for g in group_ids], respond)
