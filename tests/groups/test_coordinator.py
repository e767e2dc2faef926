"""GroupCoordinator, one Kafka behaviour at a time, with the clock moved by hand."""

from __future__ import annotations

from typing import Any

import pytest
from coord_harness import Harness, assignment, error_of

from kvlog.errors import ErrorCode
from kvlog.ipc.assignors import range_assign
from kvlog.ipc.consumer_protocol import decode_subscription, encode_assignment
from kvlog.types import TopicPartition as TP
from kvlog.workers.group_core import Group, GroupState

EC = ErrorCode
T = [TP("t", p) for p in range(4)]


class Member:
    """A scripted consumer: joins, syncs (assigning with range when it leads), heartbeats."""

    def __init__(self, h: Harness, name: str, group: str = "g", **join: Any) -> None:
        self.h, self.name, self.group, self.join_args = h, name, group, join
        self.member_id = ""
        self.generation = -1
        self.join_token: int | None = None
        self.sync_token: int | None = None
        self.owned: set[TP] = set()

    def join(self, **changes: Any) -> int:
        _ = self.join_reply  # learn the member id a parked join got meanwhile
        self.join_args.update(changes)
        self.join_token = self.h.join(
            self.group,
            self.member_id,
            client_id=self.name,
            generation=self.generation,
            owned=self.owned,
            **self.join_args,
        )
        return self.join_token

    @property
    def join_reply(self) -> dict[str, Any] | None:
        reply = self.h.replies.get(self.join_token)
        if reply is not None and not reply.get("error"):
            self.member_id = reply["member_id"]
            self.generation = reply["generation"]
        return reply

    def sync(self) -> int:
        reply = self.join_reply
        assert reply is not None and not reply.get("error"), reply
        assignments = None
        if reply["leader"] == self.member_id and not reply.get("skip_assignment"):
            subs = [
                decode_subscription(m["member_id"], m["instance_id"], m["metadata"])
                for m in reply["members"]
            ]
            result = range_assign(self.h.counts, subs)
            assignments = {m: encode_assignment(tps) for m, tps in result.items()}
        self.sync_token = self.h.sync(
            self.group,
            self.member_id,
            self.generation,
            assignments,
            instance_id=self.join_args.get("instance_id"),
        )
        return self.sync_token

    @property
    def sync_reply(self) -> dict[str, Any] | None:
        reply = self.h.replies.get(self.sync_token)
        if reply is not None and not reply.get("error"):
            self.owned = assignment(reply)
        return reply

    def heartbeat(self) -> int:
        return self.h.heartbeat(
            self.group,
            self.member_id,
            self.generation,
            instance_id=self.join_args.get("instance_id"),
        )

    def long_poll(self, max_wait_ms: int | None = 3000) -> int:
        """A heartbeat with ``max_wait_ms``: its token (``h.replies`` has no reply for it
        while it is parked)."""
        _ = self.join_reply  # learn the generation a parked join got meanwhile
        return self.h.long_poll(
            self.group,
            self.member_id,
            self.generation,
            max_wait_ms,
            instance_id=self.join_args.get("instance_id"),
        )

    def commit(self, offsets: dict[TP, int], generation: int | None = None) -> int:
        return self.h.commit(
            self.group,
            self.member_id,
            self.generation if generation is None else generation,
            offsets,
            instance_id=self.join_args.get("instance_id"),
        )


def rebalance(members: list[Member]) -> None:
    """Every member (re)joins, newcomers first, then syncs: the group ends Stable."""
    for m in sorted(members, key=lambda m: bool(m.member_id)):
        m.join()
    for m in members:
        assert m.join_reply is not None, f"{m.name}'s join is still parked"
        assert error_of(m.join_reply) is None, m.join_reply
    for m in members:
        m.sync()
    for m in members:
        assert m.sync_reply is not None and error_of(m.sync_reply) is None, m.sync_reply
    assert members[0].h.group(members[0].group).state is GroupState.STABLE


def test_first_member_leads_and_the_leader_gets_every_members_subscription() -> None:
    h = Harness({"t": 4, "u": 2})
    a, b = Member(h, "a"), Member(h, "b", topics=["t", "u"])
    a.join()
    assert a.join_reply["leader"] == a.member_id
    assert a.generation == 1
    a.sync()
    b.join()
    assert b.join_reply is None, "the join waits for the known members to rejoin"
    assert h.group().state is GroupState.PREPARING_REBALANCE
    assert a.heartbeat() == EC.REBALANCE_IN_PROGRESS
    a.join()
    ra, rb = a.join_reply, b.join_reply
    assert ra["generation"] == rb["generation"] == 2
    assert ra["leader"] == rb["leader"] == a.member_id
    assert rb["members"] == [], "only the leader sees the members"
    subs = {
        m["member_id"]: decode_subscription(m["member_id"], m["instance_id"], m["metadata"])
        for m in ra["members"]
    }
    assert set(subs) == {a.member_id, b.member_id}
    assert subs[a.member_id].topics == ["t"]
    assert subs[b.member_id].topics == ["t", "u"]
    # the leader's assignment is stored and handed to each member
    b.sync()
    assert b.sync_reply is None, "a follower's sync waits for the leader's"
    a.sync()
    assert a.sync_reply is not None and b.sync_reply is not None
    assert a.owned | b.owned == {*T, TP("u", 0), TP("u", 1)}
    assert not a.owned & b.owned
    assert h.group().state is GroupState.STABLE


def test_first_member_leads_when_several_join_during_the_initial_delay() -> None:
    h = Harness(initial_rebalance_delay_ms=500)
    members = [Member(h, f"m{i}") for i in range(3)]
    for m in members:
        m.join()
        h.advance(100)
    first = h.group().leader
    assert first == next(iter(h.group().members))
    h.advance(500)
    assert {m.join_reply["leader"] for m in members} == {first}
    assert members[0].member_id == first


def test_initial_rebalance_delay_waits_for_more_members_up_to_the_rebalance_timeout() -> None:
    h = Harness(initial_rebalance_delay_ms=3000)
    a = Member(h, "a", rebalance_timeout_ms=5000)
    a.join()
    h.advance(2999)
    assert a.join_reply is None, "the first rebalance of an empty group waits"
    b = Member(h, "b", rebalance_timeout_ms=5000)
    b.join()  # at 2999: extends the delay to 5999, capped at the rebalance timeout (5000)
    h.advance(1000)
    assert a.join_reply is None
    h.advance(1000)  # 4999
    assert a.join_reply is None
    h.advance(1)  # 5000: the cap
    assert a.join_reply["generation"] == b.join_reply["generation"] == 1
    assert len(a.join_reply["members"]) == 2


def test_no_initial_delay_completes_the_first_join_at_once() -> None:
    h = Harness(initial_rebalance_delay_ms=0)
    a = Member(h, "a")
    a.join()
    assert a.join_reply["generation"] == 1


def test_rebalance_timeout_removes_members_that_do_not_rejoin() -> None:
    h = Harness()
    a = Member(h, "a", rebalance_timeout_ms=2000)
    b = Member(h, "b", rebalance_timeout_ms=2000)
    rebalance([a])
    rebalance([a, b])
    c = Member(h, "c", rebalance_timeout_ms=2000)
    c.join()
    a.join()
    for _ in range(6):  # b keeps its session alive but never rejoins
        h.advance(300)
        assert b.heartbeat() == EC.REBALANCE_IN_PROGRESS
    assert c.join_reply is None
    h.advance(200)  # 2000 ms after the rebalance began
    assert c.join_reply["generation"] == a.join_reply["generation"] == 3
    assert set(h.group().members) == {a.member_id, c.member_id}
    assert b.heartbeat() == EC.UNKNOWN_MEMBER_ID


def test_session_timeout_removes_a_silent_member() -> None:
    h = Harness()
    a = Member(h, "a", session_timeout_ms=1000)
    b = Member(h, "b", session_timeout_ms=1000)
    rebalance([a])
    rebalance([a, b])
    for _ in range(3):
        h.advance(333)
        assert a.heartbeat() == 0
    assert b.member_id in h.group().members, "not removed before its session runs out"
    h.advance(1)  # 1000 ms since b's last word
    assert b.member_id not in h.group().members
    assert a.heartbeat() == EC.REBALANCE_IN_PROGRESS
    a.join()
    assert a.join_reply["generation"] == 3
    assert [m["member_id"] for m in a.join_reply["members"]] == [a.member_id]


def test_leave_rebalances_at_once() -> None:
    h = Harness()
    a, b = Member(h, "a"), Member(h, "b")
    rebalance([a])
    rebalance([a, b])
    assert h.leave("g", b.member_id) == 0
    assert a.heartbeat() == EC.REBALANCE_IN_PROGRESS
    rebalance([a])
    assert a.owned == set(T)
    assert h.leave("g", a.member_id) == 0
    assert h.group().state is GroupState.EMPTY
    assert h.leave("g", a.member_id) == EC.UNKNOWN_MEMBER_ID


def stable_static_pair(h: Harness) -> tuple[Member, Member]:
    """Two static members after two generations (so their metadata carries generation
    and owned partitions, as a real consumer's does)."""
    a = Member(h, "a", instance_id="A", session_timeout_ms=5000)
    b = Member(h, "b", instance_id="B", session_timeout_ms=5000)
    rebalance([a])
    rebalance([a, b])
    assert h.group().generation == 2
    return a, b


@pytest.mark.parametrize("who", ["leader", "follower"])
def test_static_member_restart_keeps_its_assignment_without_a_rebalance(who) -> None:
    h = Harness()
    a, b = stable_static_pair(h)
    old = a if who == "leader" else b
    generation = h.group().generation
    h.advance(3000)  # within its 5 s session: the process died and came back
    other = b if old is a else a
    assert other.heartbeat() == 0
    new = Member(h, old.name, instance_id=old.join_args["instance_id"], session_timeout_ms=5000)
    new.join()
    reply = new.join_reply
    assert reply is not None, "the restarted member's join is parked: a rebalance began"
    assert error_of(reply) is None, reply
    assert reply["generation"] == generation, "no new generation"
    assert new.member_id != old.member_id
    if who == "leader":
        assert reply["skip_assignment"] is True, "the leader must not assign again"
    assert h.group().state is GroupState.STABLE
    new.sync()
    assert new.sync_reply is not None
    assert new.owned == old.owned and new.owned
    assert other.heartbeat() == 0, "the others never see a rebalance"
    # the old process is fenced
    assert old.heartbeat() == EC.FENCED_INSTANCE_ID
    assert old.commit({T[0]: 1}) == EC.FENCED_INSTANCE_ID
    old.join()
    assert error_of(old.join_reply) is EC.FENCED_INSTANCE_ID
    token = h.sync("g", old.member_id, generation, None, instance_id="A" if old is a else "B")
    assert error_of(h.replies[token]) is EC.FENCED_INSTANCE_ID
    assert new.commit({T[0]: 1}) == 0


def test_static_member_restart_with_new_topics_rebalances() -> None:
    h = Harness({"t": 4, "u": 2})
    stable_static_pair(h)
    new = Member(h, "b", instance_id="B", topics=["t", "u"], session_timeout_ms=5000)
    new.join()
    assert new.join_reply is None
    assert h.group().state is GroupState.PREPARING_REBALANCE


def test_static_member_that_stays_away_past_its_session_is_removed() -> None:
    h = Harness()
    a, b = stable_static_pair(h)
    for _ in range(6):
        h.advance(900)
        assert a.heartbeat() in (0, EC.REBALANCE_IN_PROGRESS)
    assert b.member_id not in h.group().members
    assert "B" not in h.group().static


def test_commits_are_fenced_by_generation() -> None:
    h = Harness()
    a, b = Member(h, "a"), Member(h, "b")
    rebalance([a])
    assert a.commit({T[0]: 5}) == 0
    b.join()  # PreparingRebalance: the current generation may still commit before revoking
    assert a.commit({T[0]: 6}) == 0
    a.join()  # CompletingRebalance: generation 2 handed out
    assert a.commit({T[0]: 7}, generation=1) == EC.ILLEGAL_GENERATION
    assert a.join_reply["generation"] == 2
    assert a.commit({T[0]: 7}) == EC.REBALANCE_IN_PROGRESS
    a.sync()
    b.sync()
    assert a.commit({T[0]: 8}) == 0
    assert a.commit({T[0]: 9}, generation=1) == EC.ILLEGAL_GENERATION
    assert h.commit("g", "nobody", 2, {T[0]: 9}) == EC.UNKNOWN_MEMBER_ID
    assert h.commit("g", "", -1, {T[0]: 9}) == EC.UNKNOWN_MEMBER_ID, "only when empty"
    assert h.committed("g") == {T[0]: 8}
    h.leave("g", a.member_id)
    h.leave("g", b.member_id)
    assert h.commit("g", "", -1, {T[0]: 0}) == 0, "an empty group takes admin commits"
    assert h.committed("g") == {T[0]: 0}


def test_offset_fetch_works_in_every_state() -> None:
    h = Harness()
    assert h.committed("g") == {}, "an unknown group has no offsets"
    assert h.commit("g", "", -1, {T[1]: 3}) == 0
    seen = {}
    a, b = Member(h, "a"), Member(h, "b")
    a.join()
    seen[h.group().state] = h.committed("g")
    a.sync()
    seen[h.group().state] = h.committed("g")
    b.join()
    seen[h.group().state] = h.committed("g")
    a.join()
    assert b.join_reply is not None
    seen[h.group().state] = h.committed("g")
    h.leave("g", a.member_id)
    h.leave("g", b.member_id)
    seen[h.group().state] = h.committed("g")
    assert set(seen) == {
        GroupState.COMPLETING_REBALANCE,
        GroupState.STABLE,
        GroupState.PREPARING_REBALANCE,
        GroupState.EMPTY,
    }
    assert all(found == {T[1]: 3} for found in seen.values()), seen
    assert h.delete_group("g") is None
    assert h.committed("g") == {}, "Dead: deleted with its offsets"


def test_offsets_of_two_groups_are_independent() -> None:
    h = Harness()
    x, y = Member(h, "x", group="gx"), Member(h, "y", group="gy")
    rebalance([x])
    rebalance([y])
    assert x.owned == y.owned == set(T), "each group gets every partition"
    assert x.commit({T[0]: 10, T[1]: 11}) == 0
    assert y.commit({T[0]: 20}) == 0
    assert h.committed("gx") == {T[0]: 10, T[1]: 11}
    assert h.committed("gy") == {T[0]: 20}
    h.leave("gy", y.member_id)
    assert h.delete_group("gy") is None
    assert h.committed("gx") == {T[0]: 10, T[1]: 11}
    assert h.committed("gy") == {}


def test_delete_group_refuses_a_group_with_members() -> None:
    h = Harness()
    a = Member(h, "a")
    rebalance([a])
    a.commit({T[0]: 1})
    error = h.delete_group("g")
    assert error is not None and error.code is EC.NON_EMPTY_GROUP
    assert "member" in error.message
    h.leave("g", a.member_id)
    assert h.delete_group("g") is None
    assert "g" not in h.coord.groups
    error = h.delete_group("g")
    assert error is not None and error.code is EC.GROUP_ID_NOT_FOUND
    h.restart()
    assert "g" not in h.coord.groups, "the delete is durable"


def test_server_side_assignment_comes_in_the_join_reply() -> None:
    h = Harness({"t": 4, "u": 3}, initial_rebalance_delay_ms=100)
    tokens = [
        h.join("srv", client_id=f"c{i}", server_assignor="range", topics=["t", "u"])
        for i in range(2)
    ]
    h.advance(100)
    replies = [h.replies[t] for t in tokens]
    assert h.group("srv").state is GroupState.STABLE, "no SyncGroup round"
    assert all(r["generation"] == 1 for r in replies)
    got = [assignment(r) for r in replies]
    assert got[0] | got[1] == {*T, TP("u", 0), TP("u", 1), TP("u", 2)}
    assert not got[0] & got[1]
    assert {len(got[0]), len(got[1])} == {3, 4}  # range: t 2+2, u 2+1
    # a sync is still answered with the same assignment
    token = h.sync("srv", replies[0]["member_id"], 1)
    assert assignment(h.replies[token]) == got[0]
    # a classic member cannot join a coordinator-assigned group
    bad = h.join("srv", client_id="classic")
    assert error_of(h.replies[bad]) is EC.INCONSISTENT_GROUP_PROTOCOL


def test_server_assigned_group_rebalances_when_its_topic_grows() -> None:
    h = Harness({"t": 2})
    token = h.join("srv", client_id="c", server_assignor="sticky", topics=["t"])
    member = h.replies[token]["member_id"]
    assert assignment(h.replies[token]) == {TP("t", 0), TP("t", 1)}
    h.counts["t"] = 3
    h.restart()  # the coordinator was down while the partition was added
    assert h.group("srv").state is GroupState.PREPARING_REBALANCE
    assert h.heartbeat("srv", member, 1) == EC.REBALANCE_IN_PROGRESS
    token = h.join("srv", member, client_id="c", server_assignor="sticky", topics=["t"])
    assert assignment(h.replies[token]) == {TP("t", 0), TP("t", 1), TP("t", 2)}


def test_group_and_offsets_survive_a_coordinator_restart() -> None:
    h = Harness()
    a, b = Member(h, "a"), Member(h, "b")
    rebalance([a])
    rebalance([a, b])
    a.commit({T[0]: 42})
    before = (h.group().generation, h.group().leader, dict(h.group().members))
    h.restart()
    group = h.group()
    assert group.state is GroupState.STABLE
    assert (group.generation, group.leader) == before[:2]
    assert {m: x.assigned for m, x in group.members.items()} == {
        m: x.assigned for m, x in before[2].items()
    }
    assert h.committed("g") == {T[0]: 42}
    assert a.heartbeat() == 0 and b.heartbeat() == 0, "members carry on"
    assert b.commit({T[2]: 7}) == 0
    b.sync()
    assert b.sync_reply is not None and b.owned
    # sessions restarted at load: a member that is gone still expires
    for _ in range(4):
        h.advance(300)
        a.heartbeat()
    assert b.member_id not in h.group().members


def test_restart_while_waiting_for_the_leaders_sync_never_reuses_the_generation() -> None:
    h = Harness()
    a, b = Member(h, "a"), Member(h, "b")
    rebalance([a])
    b.join()
    a.join()
    assert h.group().state is GroupState.COMPLETING_REBALANCE
    assert a.join_reply["generation"] == 2
    h.restart()
    assert h.group().generation == 2
    assert h.group().state is GroupState.PREPARING_REBALANCE
    a.join()
    b.join()
    assert a.join_reply["generation"] == b.join_reply["generation"] == 3


def test_join_with_a_member_id_does_not_create_a_group() -> None:
    h = Harness()
    token = h.join("nowhere", "m-1")
    assert error_of(h.replies[token]) is EC.UNKNOWN_MEMBER_ID
    assert "nowhere" not in h.coord.groups
    assert h.list_groups() == []


def test_session_timeout_outside_the_brokers_range_is_refused() -> None:
    h = Harness(min_session_timeout_ms=500, max_session_timeout_ms=10_000)
    for bad in (499, 10_001):
        token = h.join(session_timeout_ms=bad)
        reply = h.replies[token]
        assert error_of(reply) is EC.INVALID_SESSION_TIMEOUT
        assert "session.timeout.ms" in reply["message"]


def test_group_max_size() -> None:
    h = Harness(max_size=2)
    Member(h, "a").join()
    Member(h, "b").join()
    c = Member(h, "c")
    c.join()
    assert error_of(c.join_reply) is EC.GROUP_MAX_SIZE_REACHED


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (GroupState.EMPTY, GroupState.STABLE),
        (GroupState.EMPTY, GroupState.COMPLETING_REBALANCE),
        (GroupState.STABLE, GroupState.COMPLETING_REBALANCE),
        (GroupState.STABLE, GroupState.EMPTY),
        (GroupState.COMPLETING_REBALANCE, GroupState.EMPTY),
        (GroupState.DEAD, GroupState.STABLE),
    ],
)
def test_illegal_transitions_are_refused(start, to) -> None:
    group = Group("g", start)
    with pytest.raises(AssertionError, match="illegal transition"):
        group.transition(to)
