"""Properties of the partition assignors (ipc/assignors.py), pure functions.

Every assignor gives each partition of a subscribed topic to exactly one member subscribed
to it (cooperative-sticky: to at most one, and never to a member while another member still
owns it); round robin and the sticky assignors balance counts; sticky keeps what members own;
all are deterministic. Plus Kafka's documented examples.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvlog.errors import UnsupportedAssignorError
from kvlog.ipc.assignors import (
    ASSIGNORS,
    MemberSubscription,
    assignor,
    cooperative_sticky_assign,
    range_assign,
    roundrobin_assign,
    sticky_assign,
)
from kvlog.types import TopicPartition as TP

EAGER = ["range", "roundrobin", "sticky"]
ALL = [*EAGER, "cooperative-sticky"]
TOPIC_NAMES = ["t0", "t1", "t2", "t3"]


@st.composite
def topics(draw: st.DrawFn) -> dict[str, int]:
    names = draw(st.lists(st.sampled_from(TOPIC_NAMES), min_size=1, max_size=4, unique=True))
    return {name: draw(st.integers(0, 9)) for name in names}


def all_tps(partitions: dict[str, int]) -> list[TP]:
    return [TP(t, p) for t in sorted(partitions) for p in range(partitions[t])]


@st.composite
def groups(draw: st.DrawFn, *, same_topics: bool = False, disjoint_owned: bool = False):
    """(partitions, members): random subscriptions (some to topics that do not exist),
    random owned partitions (overlapping claims unless disjoint_owned), generations and
    instance ids."""
    partitions = draw(topics())
    n = draw(st.integers(1, 7))
    every = sorted(partitions)
    tps = all_tps(partitions)
    members = []
    claimed: set[TP] = set()
    ids = draw(
        st.lists(st.text("abcdef", min_size=1, max_size=3), min_size=n, max_size=n, unique=True)
    )
    for member_id in ids:
        if same_topics:
            subscribed = list(every)
        else:
            subscribed = draw(
                st.lists(st.sampled_from([*every, "missing"]), max_size=4, unique=True)
            )
        pool = [tp for tp in tps if not (disjoint_owned and tp in claimed)]
        owned = draw(st.lists(st.sampled_from(pool), unique=True)) if pool else []
        claimed.update(owned)
        members.append(
            MemberSubscription(
                member_id,
                subscribed,
                owned,
                draw(st.integers(-1, 5)),
                draw(st.none() | st.sampled_from(["i1", "i2", "i3"])),
            )
        )
    return partitions, members


def owners_of(result: dict[str, list[TP]]) -> Counter[TP]:
    return Counter(tp for tps in result.values() for tp in tps)


def check_exactly_one_subscribed_owner(partitions, members, result) -> None:
    by_id = {m.member_id: m for m in members}
    assert set(result) == set(by_id), "every member gets an entry, and only members"
    counts = owners_of(result)
    subscribed_topics = {t for m in members for t in m.topics}
    for tp in all_tps(partitions):
        expected = 1 if tp.topic in subscribed_topics else 0
        assert counts[tp] == expected, (tp, counts[tp], result)
    for member_id, tps in result.items():
        for tp in tps:
            assert tp.topic in by_id[member_id].topics, (member_id, tp)
            assert 0 <= tp.partition < partitions.get(tp.topic, 0), tp


def spread(result: dict[str, list[TP]], member_ids) -> int:
    sizes = [len(result[m]) for m in member_ids]
    return max(sizes) - min(sizes)


@pytest.mark.parametrize("name", EAGER)
@settings(max_examples=150, deadline=None)
@given(group=groups())
def test_each_partition_goes_to_exactly_one_subscribed_member(name, group) -> None:
    partitions, members = group
    result = assignor(name)(partitions, members)
    check_exactly_one_subscribed_owner(partitions, members, result)


@settings(max_examples=150, deadline=None)
@given(group=groups(disjoint_owned=True))
def test_cooperative_sticky_never_gives_a_partition_another_member_still_owns(group) -> None:
    partitions, members = group
    result = cooperative_sticky_assign(partitions, members)
    by_id = {m.member_id: m for m in members}
    owned_by = {tp: m.member_id for m in members for tp in m.owned}
    counts = owners_of(result)
    assert set(result) == set(by_id)
    assert all(c <= 1 for c in counts.values()), result
    for member_id, tps in result.items():
        for tp in tps:
            assert tp.topic in by_id[member_id].topics, (member_id, tp)
            assert owned_by.get(tp, member_id) == member_id, (
                f"{tp} given to {member_id} while {owned_by[tp]} still owns it"
            )


def follow_up(members, result, generation):
    """The members after they revoked what moved: each owns what it was given."""
    return [
        MemberSubscription(m.member_id, m.topics, result[m.member_id], generation, m.instance_id)
        for m in members
    ]


@settings(max_examples=150, deadline=None)
@given(group=groups(same_topics=True, disjoint_owned=True))
def test_cooperative_sticky_converges_in_the_follow_up_rebalance(group) -> None:
    """Round one only revokes what moves; round two (owned = round one's result) hands it
    over: then every partition has exactly one owner, and nothing kept moved."""
    partitions, members = group
    first = cooperative_sticky_assign(partitions, members)
    second = cooperative_sticky_assign(partitions, follow_up(members, first, 1))
    check_exactly_one_subscribed_owner(partitions, members, second)
    for m in members:
        assert set(first[m.member_id]) <= set(second[m.member_id])


@settings(max_examples=150, deadline=None)
@given(group=groups(disjoint_owned=True))
def test_cooperative_sticky_converges_with_different_subscriptions(group) -> None:
    """With members subscribed to different topics a kept partition may still have to move
    for balance; the rebalances still settle within a few rounds."""
    partitions, members = group
    for generation in range(1, 7):
        result = cooperative_sticky_assign(partitions, members)
        members = follow_up(members, result, generation)
        counts = owners_of(result)
        subscribed = {t for m in members for t in m.topics}
        if all(counts[tp] == 1 for tp in all_tps(partitions) if tp.topic in subscribed):
            break
    else:
        raise AssertionError(f"no complete assignment after 6 rounds: {result}")
    check_exactly_one_subscribed_owner(partitions, members, result)


@pytest.mark.parametrize("name", ["roundrobin", "sticky", "cooperative-sticky"])
@settings(max_examples=150, deadline=None)
@given(group=groups(same_topics=True, disjoint_owned=True))
def test_balanced_when_every_member_subscribes_to_the_same_topics(name, group) -> None:
    partitions, members = group
    result = assignor(name)(partitions, members)
    if name == "cooperative-sticky":  # balance is reached after the follow-up rebalance
        members = [
            MemberSubscription(m.member_id, m.topics, result[m.member_id], 9, m.instance_id)
            for m in members
        ]
        result = assignor(name)(partitions, members)
    assert spread(result, [m.member_id for m in members]) <= 1, result


@settings(max_examples=150, deadline=None)
@given(group=groups(same_topics=True))
def test_range_is_balanced_per_topic(group) -> None:
    """Range balances each topic separately (so over several topics the first members can
    hold more in total: Kafka's documented behaviour, see the example below)."""
    partitions, members = group
    result = range_assign(partitions, members)
    for topic in partitions:
        sizes = [sum(tp.topic == topic for tp in result[m.member_id]) for m in members]
        assert max(sizes) - min(sizes) <= 1, (topic, result)


@st.composite
def balanced_owned(draw: st.DrawFn):
    """Members all subscribed to the same topics, owning a balanced, complete assignment."""
    partitions = draw(topics())
    n = draw(st.integers(1, 6))
    tps = draw(st.permutations(all_tps(partitions)))
    ids = [f"m{i}" for i in draw(st.permutations(range(n)))]
    owned: dict[str, list[TP]] = {m: [] for m in ids}
    for i, tp in enumerate(tps):  # dealt in turn: counts differ by at most one
        owned[ids[i % n]].append(tp)
    members = [
        MemberSubscription(
            m,
            sorted(partitions),
            owned[m],
            draw(st.integers(0, 5)),
            draw(st.none() | st.just(f"inst-{m}")),
        )
        for m in ids
    ]
    return partitions, members


@pytest.mark.parametrize("name", ["sticky", "cooperative-sticky"])
@settings(max_examples=150, deadline=None)
@given(group=balanced_owned())
def test_sticky_keeps_a_balanced_assignment_unchanged(name, group) -> None:
    partitions, members = group
    result = assignor(name)(partitions, members)
    for m in members:
        assert sorted(result[m.member_id]) == sorted(m.owned), (m.member_id, result)


@settings(max_examples=150, deadline=None)
@given(group=balanced_owned(), newcomers=st.integers(1, 4))
def test_sticky_takes_only_what_newcomers_need(group, newcomers) -> None:
    """Members join: every old member keeps as many of its partitions as its fair share
    allows (at least min(owned, floor(partitions / members))), and counts stay balanced."""
    partitions, members = group
    joined = members + [MemberSubscription(f"new{i}", sorted(partitions)) for i in range(newcomers)]
    result = sticky_assign(partitions, joined)
    floor = sum(partitions.values()) // len(joined)
    for m in members:
        kept = set(result[m.member_id]) & set(m.owned)
        assert len(kept) >= min(len(m.owned), floor), (m.member_id, m.owned, result)
    assert spread(result, [m.member_id for m in joined]) <= 1, result


@settings(max_examples=150, deadline=None)
@given(group=balanced_owned(), data=st.data())
def test_sticky_keeps_everything_when_members_leave(group, data) -> None:
    partitions, members = group
    if len(members) < 2:
        return
    stay = data.draw(st.integers(1, len(members) - 1))
    remaining = members[:stay]
    result = sticky_assign(partitions, remaining)
    for m in remaining:
        assert set(m.owned) <= set(result[m.member_id]), (m.member_id, result)
    assert spread(result, [m.member_id for m in remaining]) <= 1, result


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=100, deadline=None)
@given(group=groups(), data=st.data())
def test_deterministic(name, group, data) -> None:
    """Same input, same output; and the order in which members are listed (join order at
    the coordinator) does not matter."""
    partitions, members = group
    fn = assignor(name)
    first = fn(partitions, members)
    assert fn(dict(partitions), list(members)) == first
    shuffled = data.draw(st.permutations(members))
    again = fn(partitions, shuffled)
    assert {k: sorted(v) for k, v in again.items()} == {k: sorted(v) for k, v in first.items()}


def test_kafka_range_example() -> None:
    """Kafka's RangeAssignor javadoc: two topics of three partitions, two consumers."""
    members = [MemberSubscription("C1", ["t0", "t1"]), MemberSubscription("C0", ["t0", "t1"])]
    result = range_assign({"t0": 3, "t1": 3}, members)
    assert result == {
        "C0": [TP("t0", 0), TP("t0", 1), TP("t1", 0), TP("t1", 1)],
        "C1": [TP("t0", 2), TP("t1", 2)],
    }


def test_kafka_roundrobin_example() -> None:
    """Kafka's RoundRobinAssignor javadoc, same input."""
    members = [MemberSubscription("C0", ["t0", "t1"]), MemberSubscription("C1", ["t0", "t1"])]
    result = roundrobin_assign({"t0": 3, "t1": 3}, members)
    assert result == {
        "C0": [TP("t0", 0), TP("t0", 2), TP("t1", 1)],
        "C1": [TP("t0", 1), TP("t1", 0), TP("t1", 2)],
    }


def test_range_more_members_than_partitions_leaves_the_rest_idle() -> None:
    members = [MemberSubscription(f"c{i}", ["t"]) for i in range(4)]
    result = range_assign({"t": 1}, members)
    assert result == {"c0": [TP("t", 0)], "c1": [], "c2": [], "c3": []}


def test_static_members_sort_by_instance_id() -> None:
    """A restarted static member gets a new member id but keeps its ranges."""
    before = range_assign(
        {"t": 4},
        [
            MemberSubscription("zzz", ["t"], instance_id="a"),
            MemberSubscription("aaa", ["t"], instance_id="b"),
        ],
    )
    after = range_assign(
        {"t": 4},
        [
            MemberSubscription("bbb", ["t"], instance_id="a"),
            MemberSubscription("aaa", ["t"], instance_id="b"),
        ],
    )
    assert before["zzz"] == after["bbb"] == [TP("t", 0), TP("t", 1)]


def test_unknown_assignor_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedAssignorError, match="known: range"):
        assignor("nope")
    assert set(ASSIGNORS) == set(ALL)
