"""KIP-394 in the group core: a newcomer that asks for it gets its member id first.

Kafka's JoinGroup v4+ (and kvlog's ``join_group`` with ``require_member_id``) answers a
join without a member id MEMBER_ID_REQUIRED carrying a new id; the member joins when it
rejoins with it. Until then it is a *pending* member: no rebalance, no session to expire
as a ghost, but it may leave, it counts toward group.max.size, and it is forgotten after
its session timeout.
"""

from __future__ import annotations

from coord_harness import Harness, error_of

from kvlog.errors import ErrorCode as EC
from kvlog.workers.group_model import GroupState


def required_id(h: Harness, group: str = "g", **kw: object) -> str:
    token = h.join(group, require_known_member_id=True, **kw)
    reply = h.replies[token]
    assert error_of(reply) is EC.MEMBER_ID_REQUIRED
    member_id = reply["member_id"]
    assert member_id.startswith("c-") and member_id in reply["message"]
    return member_id


def test_the_first_join_hands_out_a_member_id_and_creates_no_member() -> None:
    h = Harness()
    member_id = required_id(h)
    assert h.coord.live_group("g") is None, "no group, no ghost member"
    assert h.list_groups() == []
    token = h.join("g", member_id, require_known_member_id=True)
    reply = h.replies[token]
    assert "error" not in reply or reply["error"] == 0
    assert reply["member_id"] == member_id and reply["leader"] == member_id
    assert h.group().state is GroupState.COMPLETING_REBALANCE
    assert h.coord.pending == {}


def test_a_pending_member_that_leaves_is_gone_and_nothing_rebalances() -> None:
    h = Harness()
    first = required_id(h)
    h.join("g", first)
    assert h.group().state is GroupState.COMPLETING_REBALANCE
    generation = h.group().generation
    pending = required_id(h)
    assert h.leave("g", pending) == 0
    assert (
        h.group().generation == generation and h.group().state is not GroupState.PREPARING_REBALANCE
    )
    token = h.join("g", pending)
    assert error_of(h.replies[token]) is EC.UNKNOWN_MEMBER_ID


def test_a_pending_member_id_expires_after_the_session_timeout() -> None:
    h = Harness()
    member_id = required_id(h, session_timeout_ms=1000)
    h.advance(999)
    assert member_id in h.coord.pending["g"]
    h.advance(1)
    assert "g" not in h.coord.pending
    token = h.join("g", member_id)
    assert error_of(h.replies[token]) is EC.UNKNOWN_MEMBER_ID


def test_a_made_up_member_id_is_still_unknown() -> None:
    h = Harness()
    required_id(h)
    token = h.join("g", "c-000000000000")
    assert error_of(h.replies[token]) is EC.UNKNOWN_MEMBER_ID


def test_pending_members_count_toward_the_group_size_limit() -> None:
    h = Harness(max_size=2)
    ids = [required_id(h), required_id(h)]
    assert len(set(ids)) == 2
    token = h.join("g", require_known_member_id=True)
    assert error_of(h.replies[token]) is EC.GROUP_MAX_SIZE_REACHED
    h.join("g", ids[0])
    h.join("g", ids[1])
    assert set(h.group().members) == set(ids)


def test_static_members_and_clients_that_do_not_ask_join_at_once() -> None:
    h = Harness()
    token = h.join("g", require_known_member_id=True, instance_id="i-1")
    assert h.replies[token].get("error", 0) == 0, "static members never wait for an id"
    token = h.join("h")
    assert h.replies[token].get("error", 0) == 0, "without the flag: the old behaviour"


def test_an_inconsistent_protocol_is_refused_before_an_id_is_handed_out() -> None:
    h = Harness()
    h.join("g", protocols=["range"])
    token = h.join("g", protocols=["roundrobin"], require_known_member_id=True)
    assert error_of(h.replies[token]) is EC.INCONSISTENT_GROUP_PROTOCOL
    assert "g" not in h.coord.pending
