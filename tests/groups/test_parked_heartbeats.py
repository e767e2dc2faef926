"""Long-poll heartbeats in the GroupCoordinator core, with the clock moved by hand.

A heartbeat that carries ``max_wait_ms`` and has nothing to report is parked, and
answered REBALANCE_IN_PROGRESS the moment its group starts a rebalance, UNKNOWN_MEMBER_ID
or FENCED_INSTANCE_ID when its member goes, success when its wait ends (capped at half the
member's session) or a newer heartbeat of the member arrives. Heartbeats without it (older
clients) are answered at once. Also the coordinator's wire op, on a fake server.
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from coord_harness import Harness, error_of
from test_coordinator import Member, rebalance, stable_static_pair

from kvlog import clock
from kvlog.errors import ErrorCode, InvalidRequestError, KvlogError, NonEmptyGroupError
from kvlog.ipc.wire import PROTOCOL_VERSION, Request
from kvlog.workers.core_result import Result
from kvlog.workers.group_events import Heartbeat
from kvlog.workers.group_model import GroupState
from kvlog.workers.group_shell import GroupOps
from kvlog.workers.zmq_core_shell import CoreShell

pytestmark = pytest.mark.timeout(30)

EC = ErrorCode


def held(h: Harness) -> int:
    """Members holding a parked heartbeat; checks the coordinator's count agrees."""
    tokens = [
        m.heartbeat_token
        for g in h.coord.groups.values()
        for m in g.members.values()
        if m.heartbeat_token is not None
    ]
    assert len(tokens) == len(set(tokens))
    assert h.coord.parked_heartbeats == len(tokens)
    return len(tokens)


def pair(h: Harness, **join: Any) -> tuple[Member, Member]:
    """Two members of a Stable group "g" (a leads), after two generations."""
    a, b = Member(h, "a", **join), Member(h, "b", **join)
    rebalance([a])
    rebalance([a, b])
    return a, b


def test_heartbeats_without_max_wait_ms_are_answered_at_once() -> None:
    h = Harness()
    a, _ = pair(h)
    for wait in (None, 0):
        token = a.long_poll(wait)
        assert h.replies[token] == {}, "an older client's heartbeat is answered at once"
    assert a.heartbeat() == 0
    assert held(h) == 0


def test_a_parked_heartbeat_is_answered_when_its_wait_ends() -> None:
    h = Harness()
    a, _b = pair(h, session_timeout_ms=10_000)
    token = a.long_poll(3000)
    assert token not in h.replies, "parked: nothing to report yet"
    assert held(h) == 1
    assert h.coord.next_deadline_ms() == h.now + 3000, "the loop wakes when the wait ends"
    h.advance(2999)
    assert token not in h.replies
    h.advance(1)
    assert h.replies[token] == {}
    assert held(h) == 0
    assert h.group().state is GroupState.STABLE


def test_the_wait_is_capped_at_half_the_session() -> None:
    h = Harness()
    a, b = pair(h, session_timeout_ms=1000)
    token = a.long_poll(60_000)
    assert b.heartbeat() == 0
    h.advance(499)
    assert token not in h.replies
    h.advance(1)
    assert h.replies[token] == {}, "answered at half the session, not after a minute"
    assert a.member_id in h.group().members


@pytest.mark.parametrize("how", ["join", "leave", "expiry", "rejoin"])
def test_a_parked_heartbeat_hears_of_a_rebalance_at_once(how: str) -> None:
    h = Harness()
    a, b = pair(h, session_timeout_ms=10_000)
    c = Member(h, "c", session_timeout_ms=1000)
    if how == "expiry":
        rebalance([a, b, c])
    ta = a.long_poll(3000)
    h.advance(100)
    assert ta not in h.replies
    if how == "join":
        c.join()
    elif how == "leave":
        tb = b.long_poll(3000)
        assert h.leave("g", b.member_id) == 0
        assert error_of(h.replies[tb]) is EC.UNKNOWN_MEMBER_ID, "its member left"
    elif how == "expiry":
        assert b.heartbeat() == 0
        h.advance(900)  # c's session (1000 ms since its sync) runs out
        assert c.member_id not in h.group().members
    else:
        b.join()  # its subscription changed (it owns partitions now): a rebalance
    assert error_of(h.replies[ta]) is EC.REBALANCE_IN_PROGRESS, h.replies.get(ta)
    assert h.group().state is GroupState.PREPARING_REBALANCE
    assert held(h) == 0
    # while it prepares, a long poll is answered at once, not parked
    token = a.long_poll(3000)
    assert error_of(h.replies[token]) is EC.REBALANCE_IN_PROGRESS
    assert held(h) == 0


def test_a_parked_heartbeat_of_a_coordinator_assigned_group_hears_of_new_partitions() -> None:
    h = Harness({"t": 2})
    a = Member(h, "a", server_assignor="range", session_timeout_ms=10_000)
    a.join()
    assert h.group().state is GroupState.STABLE
    token = a.long_poll(3000)
    h.counts["t"] = 4
    h.topics_changed()
    assert error_of(h.replies[token]) is EC.REBALANCE_IN_PROGRESS
    assert held(h) == 0


def test_completing_rebalance_parks_and_stable_keeps_it_parked() -> None:
    h = Harness()
    a, b = pair(h, session_timeout_ms=10_000)
    c = Member(h, "c", session_timeout_ms=10_000)
    c.join()
    a.join()
    b.join()
    assert h.group().state is GroupState.COMPLETING_REBALANCE
    tb = b.long_poll(3000)
    assert tb not in h.replies, "parked while the leader computes the assignment"
    for m in (b, c, a):
        m.sync()
    assert h.group().state is GroupState.STABLE
    assert tb not in h.replies, "becoming Stable is nothing to report"
    h.advance(3000)
    assert h.replies[tb] == {}


def test_a_newer_heartbeat_supersedes_the_parked_one() -> None:
    h = Harness()
    a, _b = pair(h, session_timeout_ms=10_000)
    first = a.long_poll(3000)
    h.advance(1000)
    second = a.long_poll(3000)
    assert h.replies[first] == {}, "the older one is answered at once"
    assert second not in h.replies
    assert held(h) == 1
    h.advance(2999)  # the wait counts from the newer one's arrival
    assert second not in h.replies
    h.advance(1)
    assert h.replies[second] == {}
    third = a.long_poll(3000)
    assert a.heartbeat() == 0  # an ordinary heartbeat supersedes it too
    assert h.replies[third] == {}
    assert held(h) == 0


def test_a_member_removed_at_the_sync_deadline_gets_unknown_member_id() -> None:
    h = Harness()
    a, b = pair(h, session_timeout_ms=10_000, rebalance_timeout_ms=3000)
    c = Member(h, "c", session_timeout_ms=10_000, rebalance_timeout_ms=3000)
    c.join()
    a.join()
    b.join()
    assert a.join_reply["leader"] == a.member_id
    b.sync()
    c.sync()
    ta = a.long_poll(5000)  # the leader heartbeats but never sends its assignment
    tb = b.long_poll(5000)
    h.advance(3000)
    assert error_of(h.replies[ta]) is EC.UNKNOWN_MEMBER_ID
    assert error_of(h.replies[tb]) is EC.REBALANCE_IN_PROGRESS
    assert a.member_id not in h.group().members
    assert held(h) == 0


def test_a_static_restart_fences_the_old_processes_parked_heartbeat_only() -> None:
    h = Harness()
    a, b = stable_static_pair(h)
    generation = h.group().generation
    old_token = a.long_poll(2000)  # a's process dies with its heartbeat parked
    other_token = b.long_poll(2000)
    h.advance(1000)
    new = Member(h, "a", instance_id="A", session_timeout_ms=5000)
    new.join()
    assert error_of(new.join_reply) is None and new.join_reply["skip_assignment"]
    assert error_of(h.replies[old_token]) is EC.FENCED_INSTANCE_ID
    assert other_token not in h.replies, "no rebalance: the other member is not disturbed"
    assert h.group().generation == generation
    assert held(h) == 1
    h.advance(1000)
    assert h.replies[other_token] == {}


def test_max_parked_heartbeats_answers_the_rest_at_once() -> None:
    h = Harness(max_parked_heartbeats=1)
    a, b = pair(h, session_timeout_ms=10_000)
    ta = a.long_poll(3000)
    tb = b.long_poll(3000)
    assert ta not in h.replies
    assert h.replies[tb] == {}, "over the cap: answered at once, as for an older client"
    again = a.long_poll(3000)  # superseding its own: still one parked
    assert h.replies[ta] == {} and again not in h.replies
    assert held(h) == 1
    h.advance(3000)
    assert h.replies[again] == {}
    tb = b.long_poll(3000)
    assert tb not in h.replies, "room again"
    assert held(h) == 1


def long_poll_forever(h: Harness, members: list[Member], ms: int, wait_ms: int) -> list[int]:
    """Each member sends its next long poll as soon as the last is answered (the client's
    heartbeat thread), for ``ms`` in 10 ms steps; returns every reply's error code."""
    tokens = {m.name: m.long_poll(wait_ms) for m in members}
    codes = []
    for _ in range(ms // 10):
        h.advance(10)
        for m in members:
            reply = h.replies.get(tokens[m.name])
            if reply is not None:
                codes.append(reply.get("error", 0))
                tokens[m.name] = m.long_poll(wait_ms)
    return codes


def test_sessions_do_not_expire_while_members_long_poll() -> None:
    h = Harness()
    a, b = pair(h, session_timeout_ms=1000)
    generation = h.group().generation
    codes = long_poll_forever(h, [a, b], 10_000, wait_ms=60_000)
    assert codes and set(codes) == {0}, "ten sessions' worth of long polls, all answered"
    assert len(codes) >= 2 * 10_000 // 500 - 2, "each answered at half the session"
    assert set(h.group().members) == {a.member_id, b.member_id}
    assert h.group().generation == generation and h.group().state is GroupState.STABLE


def test_a_member_that_dies_while_parked_expires_a_session_after_its_last_heartbeat() -> None:
    h = Harness()
    a, b = pair(h, session_timeout_ms=1000)
    last = a.long_poll(3000)  # a's last heartbeat arrives; then its process dies
    died_at = h.now
    tb = b.long_poll(200)
    h.advance(500)
    assert h.replies[last] == {}, "answered at half the session (nobody reads it)"
    assert h.replies[tb] == {}
    while h.now < died_at + 999:
        tb = b.long_poll(200)
        h.advance(min(200, died_at + 999 - h.now))
    assert a.member_id in h.group().members, "not before its session ran out"
    tb = b.long_poll(200)
    h.advance(1)
    assert a.member_id not in h.group().members, (
        "removed session.timeout.ms after its heartbeat arrived, not after the answer"
    )
    assert error_of(h.replies[tb]) is EC.REBALANCE_IN_PROGRESS


def test_parked_heartbeats_are_never_persisted_and_die_with_a_restart() -> None:
    h = Harness()
    a, _b = pair(h, session_timeout_ms=10_000)
    token = a.long_poll(3000)
    group = h.group()
    stored = cbor2.loads(group.encode())
    assert not any("heartbeat" in key for m in stored["members"] for key in m)
    h.restart()  # the process dies: the parked heartbeat with it
    assert held(h) == 0
    assert all(m.heartbeat_token is None for m in h.group().members.values())
    h.advance(5000)
    assert token not in h.replies, "a lost token is not answered by the new process"
    again = a.long_poll(3000)  # the client timed out (or saw the drop) and heartbeats again
    assert again not in h.replies and held(h) == 1
    h.advance(3000)
    assert h.replies[again] == {}
    assert h.group().state is GroupState.STABLE


def test_a_group_with_a_parked_heartbeat_is_not_deleted_and_leaving_answers_it() -> None:
    h = Harness()
    a = Member(h, "a", session_timeout_ms=10_000)
    rebalance([a])
    token = a.long_poll(3000)
    assert isinstance(h.delete_group("g"), NonEmptyGroupError)
    assert token not in h.replies and held(h) == 1
    assert h.leave("g", a.member_id) == 0
    assert error_of(h.replies[token]) is EC.UNKNOWN_MEMBER_ID
    assert h.delete_group("g") is None
    assert "g" not in h.coord.groups
    assert h.coord.parked_heartbeats == 0


# -- the wire op --------------------------------------------------------------------------------


class HarnessCore:
    """The coordinator core's routes for heartbeats and timers, over a harness's group
    core."""

    def __init__(self, h: Harness) -> None:
        self.h = h

    def handle(self, token: Any, event: Any, now_ms: int) -> Result:
        assert isinstance(event, Heartbeat)
        return self.h.coord.heartbeat(token, event, now_ms)

    def tick(self, now_ms: int) -> Result:
        return self.h.coord.tick(now_ms)


class FakeServer(GroupOps, CoreShell):
    """The coordinator's group ops (the ZeroMQ shell) over a harness's group core;
    replies are recorded."""

    def __init__(self, h: Harness) -> None:
        self.core = HarnessCore(h)
        self.sent: list[tuple[bytes, int | None, dict[str, Any]]] = []

    def reply(self, peer: bytes, request_id: int | None, fields: dict[str, Any]) -> None:
        self.sent.append((peer, request_id, fields))

    def reply_error(self, peer: bytes, request_id: int | None, exc: KvlogError) -> None:
        self.reply(peer, request_id, exc.to_wire())


def heartbeat_request(rid: int, member: Member, **extra: Any) -> Request:
    header = {
        "v": PROTOCOL_VERSION,
        "id": rid,
        "op": "heartbeat",
        "group_id": "g",
        "generation": member.generation,
        "member_id": member.member_id,
        **extra,
    }
    return Request(header, [])


def test_the_wire_op_parks_only_with_max_wait_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    a, _ = pair(h, session_timeout_ms=10_000)
    monkeypatch.setattr(clock, "now_ms", lambda: h.now)
    server = FakeServer(h)
    assert server.op_heartbeat(heartbeat_request(1, a), b"p") == {}, "an older client"
    assert server.op_heartbeat(heartbeat_request(2, a, max_wait_ms=None), b"p") == {}
    assert server.op_heartbeat(heartbeat_request(3, a, max_wait_ms=3000), b"p") is None
    with pytest.raises(InvalidRequestError):
        server.op_heartbeat(heartbeat_request(4, a, max_wait_ms=-1), b"p")
    with pytest.raises(InvalidRequestError):
        server.op_heartbeat(heartbeat_request(5, a, max_wait_ms="soon"), b"p")
    assert held(h) == 1, "refused requests leave the parked one alone"
    h.now += 2999
    server.on_timers(0.0)  # the shell's timer: not due yet
    assert server.sent == []
    h.now += 1
    server.on_timers(0.0)
    assert server.sent == [(b"p", 3, {})]


def test_tokens_are_answered_once_through_a_rebalance_storm() -> None:
    """Members long-polling while others come and go: every parked token gets exactly
    one answer (the harness asserts no second one), and none is left behind."""
    h = Harness({"t": 8})
    members = [Member(h, f"m{i}", session_timeout_ms=2000) for i in range(4)]
    for n in range(1, len(members) + 1):
        rebalance(members[:n])
    sent = {m.long_poll(800) for m in members}
    newcomer = Member(h, "n", session_timeout_ms=2000)
    newcomer.join()
    assert all(error_of(h.replies[t]) is EC.REBALANCE_IN_PROGRESS for t in sent)
    for m in members:
        m.join()
    everyone = [*members, newcomer]
    for m in everyone:
        m.sync()
    assert h.group().state is GroupState.STABLE
    sent |= {m.long_poll(800) for m in everyone}
    assert held(h) == 5
    assert h.leave("g", members[0].member_id) == 0
    assert held(h) == 0
    sent |= {m.long_poll(800) for m in members[1:]}  # REBALANCE_IN_PROGRESS at once
    h.advance(2000)  # everyone else's session runs out
    assert held(h) == 0
    assert sent <= set(h.replies), "every heartbeat was answered"
    assert h.group().state is GroupState.EMPTY
