"""GroupAdminCore: ListGroups, DescribeGroups and DeleteGroups over the group core and the
committed offsets, each answered with one entry per group in request order."""

from __future__ import annotations

from coord_harness import Harness
from test_coordinator import Member, rebalance

from kvlog.errors import ErrorCode
from kvlog.ipc.consumer_protocol import encode_assignment, encode_subscription
from kvlog.types import TopicPartition as TP
from kvlog.workers.group_events import (
    DeleteGroups,
    DescribedMember,
    DescribeGroups,
    GroupDescription,
    GroupError,
)

EC = ErrorCode


def describe(h: Harness, *group_ids: str) -> list:
    [reply] = h.admin.describe_groups("d", DescribeGroups(list(group_ids)), h.now).replies
    return reply.body.groups


def test_list_shows_live_groups_and_groups_with_only_offsets() -> None:
    h = Harness()
    rebalance([Member(h, "a", group="live")])
    assert h.commit("offsets-only", "", -1, {TP("t", 0): 3}) == 0
    assert h.list_groups() == [
        {"group_id": "live", "state": "Stable", "protocol_type": "consumer"},
        {"group_id": "offsets-only", "state": "Empty", "protocol_type": "consumer"},
    ]


def test_describe_in_request_order_with_an_error_per_unknown_group() -> None:
    h = Harness()
    a = Member(h, "a", group="live")
    rebalance([a])
    h.commit("offsets-only", "", -1, {TP("t", 0): 3})
    live, unknown, offsets_only = describe(h, "live", "nope", "offsets-only")
    assert live == GroupDescription(
        "live",
        "Stable",
        1,
        "range",
        "consumer",
        a.member_id,
        [
            DescribedMember(
                a.member_id,
                None,
                "a",
                [TP("t", p) for p in range(4)],
                metadata=encode_subscription(["t"], [], -1),
                assignment_bytes=encode_assignment([TP("t", p) for p in range(4)]),
            )
        ],
    )
    assert isinstance(unknown, GroupError) and unknown.error.code is EC.GROUP_ID_NOT_FOUND
    assert offsets_only == GroupDescription("offsets-only", "Empty", 0, None, "consumer", None, [])


def test_an_assignment_that_is_not_the_consumer_protocols_lists_no_partitions() -> None:
    h = Harness()
    a = Member(h, "a")
    a.join()
    assert a.join_reply["leader"] == a.member_id
    token = h.sync("g", a.member_id, a.generation, {a.member_id: b"\xff not cbor"})
    assert h.replies[token] == {"assignment": b"\xff not cbor"}, "stored as it came"
    [group] = describe(h, "g")
    assert group.state == "Stable" and group.members[0].assignment == []


def test_delete_refuses_groups_with_members_and_removes_offsets_with_the_group() -> None:
    h = Harness()
    a = Member(h, "a")
    rebalance([a])
    a.commit({TP("t", 0): 1})
    h.commit("idle", "", -1, {TP("t", 0): 2})
    event = DeleteGroups(["g", "idle", "nope"])
    [reply] = h.admin.delete_groups("x", event, h.now).replies
    busy, idle, nope = reply.body.results
    assert busy.error.code is EC.NON_EMPTY_GROUP
    assert idle == GroupError("idle")
    assert nope.error.code is EC.GROUP_ID_NOT_FOUND
    assert h.committed("idle") == {} and h.committed("g") == {TP("t", 0): 1}
    h.restart()
    assert [g["group_id"] for g in h.list_groups()] == ["g"]
