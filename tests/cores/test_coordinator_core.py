"""CoordinatorCore: one entry point routing every coordinator request to the core that
decides it, and the policy between the cores (coordinator-assigned groups rebalance when
the controller changes their topics)."""

from __future__ import annotations

import dataclasses
import typing

from kvlog.errors import ErrorCode
from kvlog.ipc.consumer_protocol import decode_assignment
from kvlog.memory_store import MemoryLogDir
from kvlog.types import TopicPartition as TP
from kvlog.workers.controller_core import ControllerConfig
from kvlog.workers.controller_events import (
    ControllerRequest,
    CreatePartitions,
    CreateTopic,
    NodeHeartbeat,
)
from kvlog.workers.coordinator_core import CoordinatorCore
from kvlog.workers.core_ids import seeded_ids
from kvlog.workers.core_result import Result
from kvlog.workers.group_core import seeded_member_ids
from kvlog.workers.group_events import (
    GroupRequest,
    Heartbeat,
    HeartbeatAnswer,
    JoinGroup,
    SyncGroup,
)
from kvlog.workers.group_model import GroupConfig, GroupState
from kvlog.workers.txn_events import (
    AddOffsetsToTxn,
    AddPartitionsToTxn,
    EndTxn,
    MarkersAnswer,
    TxnOffsetCommit,
)

NOW = 1_000_000


def coordinator(store: MemoryLogDir, start: int = 1) -> CoordinatorCore:
    return CoordinatorCore(
        store,
        ControllerConfig([0]),
        GroupConfig(min_session_timeout_ms=10, initial_rebalance_delay_ms=0),
        member_ids=seeded_member_ids(b"m%d" % start),
        topic_ids=seeded_ids(b"t%d" % start, 32),
    )


def test_every_request_type_has_one_route() -> None:
    core = coordinator(MemoryLogDir())
    types = {*typing.get_args(GroupRequest), *typing.get_args(ControllerRequest)}
    # The transaction coordinator's events (issue 17), markers' answers included.
    types |= {AddPartitionsToTxn, AddOffsetsToTxn, EndTxn, TxnOffsetCommit, MarkersAnswer}
    assert set(core.routes) == types


def test_a_coordinator_assigned_group_rebalances_when_its_topic_grows() -> None:
    store = MemoryLogDir()
    core = coordinator(store)
    core.start(NOW)
    core.handle("n", NodeHeartbeat(0, "tcp://n0", "/d0"), NOW)
    core.handle("c", CreateTopic("t", 2), NOW)
    join = JoinGroup("g", session_timeout_ms=10_000, server_assignor="range", topics=["t"])
    result = core.handle("j", join, NOW)
    [reply] = result.replies
    assert decode_assignment(reply.body.assignment) == {TP("t", 0), TP("t", 1)}
    member, generation = reply.body.member_id, reply.body.generation
    parked = core.handle("hb", Heartbeat("g", generation, member, max_wait_ms=3000), NOW)
    assert parked.replies == [], "a long poll with nothing to report"
    grown = core.handle("grow", CreatePartitions("t", 3), NOW)
    [answer] = [r for r in grown.replies if r.token == "hb"]
    assert answer.error.code is ErrorCode.REBALANCE_IN_PROGRESS, "heard of it at once"
    assert core.groups.groups["g"].state is GroupState.PREPARING_REBALANCE
    rejoined = core.handle("j2", dataclasses.replace(join, member_id=member), NOW)
    [reply] = rejoined.replies
    assert decode_assignment(reply.body.assignment) == {TP("t", p) for p in range(3)}


def test_start_loads_the_groups_and_the_timer_is_the_earliest_of_every_core() -> None:
    store = MemoryLogDir()
    core = coordinator(store)
    core.start(NOW)
    join = JoinGroup("g", session_timeout_ms=1000, protocols=[("range", b"")])
    [reply] = core.handle("j", join, NOW).replies
    member = reply.body.member_id
    core.handle("s", _sync(member), NOW)
    restarted = coordinator(store, start=2)
    result: Result = restarted.start(NOW + 10)
    assert restarted.groups.groups["g"].state is GroupState.STABLE
    assert result.deadline_ms == NOW + 10 + 1000, "the member's session, restarted at load"
    beat = restarted.handle("hb", Heartbeat("g", reply.body.generation, member), NOW + 20)
    assert [r.body for r in beat.replies] == [HeartbeatAnswer()]
    assert restarted.tick(NOW + 20).deadline_ms == NOW + 20 + 1000


def _sync(member: str) -> SyncGroup:
    return SyncGroup("g", 1, member, assignments={member: b""})
