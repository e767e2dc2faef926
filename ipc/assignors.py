"""Partition assignors: who in a group reads which partitions. Pure functions.

Used by the group leader (the classic protocol: the leader assigns) and by the
coordinator itself when members ask it to assign (server-side assignment, so a client in
another language needs no assignor). Every assignor gives each partition of a topic to
exactly one member subscribed to that topic, or to nobody when no member subscribes.

- ``range`` (Kafka's default): per topic, members sorted by id take consecutive ranges;
  the first ``partitions % members`` take one extra.
- ``roundrobin``: all partitions sorted, dealt to the subscribed members in turn.
- ``sticky``: as balanced as round robin, but members keep the partitions they own.
- ``cooperative-sticky``: sticky, but a partition that moves is first only revoked from
  its owner; it is given to the new owner in the follow-up rebalance (incremental: the
  other partitions never stop).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kvlog.errors import UnsupportedAssignorError
from kvlog.types import TopicPartition


@dataclass
class MemberSubscription:
    member_id: str
    topics: list[str]
    owned: list[TopicPartition] = field(default_factory=list)
    generation: int = -1
    instance_id: str | None = None


Assignment = dict[str, list[TopicPartition]]
AssignFn = Callable[[Mapping[str, int], list[MemberSubscription]], Assignment]


def _sort_key(member: MemberSubscription) -> tuple[str, str]:
    # Static members sort by instance id so a restart keeps the same ranges.
    return (member.instance_id or "", member.member_id)


def range_assign(partitions: Mapping[str, int], members: list[MemberSubscription]) -> Assignment:
    out: Assignment = {m.member_id: [] for m in members}
    for topic in sorted(partitions):
        subscribers = sorted((m for m in members if topic in m.topics), key=_sort_key)
        if not subscribers:
            continue
        count = partitions[topic]
        per, extra = divmod(count, len(subscribers))
        start = 0
        for i, member in enumerate(subscribers):
            take = per + (1 if i < extra else 0)
            out[member.member_id].extend(
                TopicPartition(topic, p) for p in range(start, start + take)
            )
            start += take
    return out


def roundrobin_assign(
    partitions: Mapping[str, int], members: list[MemberSubscription]
) -> Assignment:
    out: Assignment = {m.member_id: [] for m in members}
    ordered = sorted(members, key=_sort_key)
    if not ordered:
        return out
    turn = 0
    for topic in sorted(partitions):
        for p in range(partitions[topic]):
            for _ in range(len(ordered)):
                member = ordered[turn % len(ordered)]
                turn += 1
                if topic in member.topics:
                    out[member.member_id].append(TopicPartition(topic, p))
                    break
    return out


def sticky_assign(partitions: Mapping[str, int], members: list[MemberSubscription]) -> Assignment:
    """Balanced (counts differ by at most one among members with the same subscription)
    while keeping every valid current owner where balance allows."""
    out: Assignment = {m.member_id: [] for m in members}
    if not members:
        return out
    by_id = {m.member_id: m for m in members}
    all_tps = [TopicPartition(t, p) for t in sorted(partitions) for p in range(partitions[t])]
    valid = set(all_tps)
    # Current owners; a partition claimed twice goes to the claim of the newer generation.
    owner: dict[TopicPartition, str] = {}
    claim_gen: dict[TopicPartition, int] = {}
    for m in sorted(members, key=_sort_key):
        for tp in m.owned:
            if tp in valid and tp.topic in m.topics and m.generation >= claim_gen.get(tp, -2):
                owner[tp] = m.member_id
                claim_gen[tp] = m.generation
    for tp, member_id in owner.items():
        out[member_id].append(tp)
    eligible = {
        tp: sorted(
            (m.member_id for m in members if tp.topic in m.topics),
            key=lambda i: _sort_key(by_id[i]),
        )
        for tp in all_tps
    }
    assignable = [tp for tp in all_tps if eligible[tp]]
    subscribed = [m for m in members if m.topics]
    if not subscribed:
        return out
    # Quota per member: an even share of the partitions it could take.
    total = len(assignable)
    n = len(subscribed)
    ceiling = -(-total // n)
    # Shed excess: members over the ceiling give up their newest-numbered partitions.
    for m in subscribed:
        mine = sorted(out[m.member_id], key=lambda tp: (tp.topic, tp.partition))
        while len(mine) > ceiling:
            tp = mine.pop()
            del owner[tp]
        out[m.member_id] = mine
    kept = dict(owner)  # what members keep from before: the last to move while evening out

    def load(member_id: str) -> tuple[int, tuple[str, str]]:
        return (len(out[member_id]), _sort_key(by_id[member_id]))

    # Give unowned partitions to the least loaded eligible member, the partitions with the
    # fewest eligible members first (the flexible ones then fill the gaps).
    for tp in sorted(assignable, key=lambda tp: len(eligible[tp])):
        if tp in owner:
            continue
        target = min(eligible[tp], key=load)
        out[target].append(tp)
        owner[tp] = target
    # Even out: while a member holds two more than an eligible member of one of its
    # partitions, the most loaded member gives one up: first what it did not own before,
    # then its highest-numbered. Taking from the top never pushes a member below its fair
    # share, so every owner keeps what balance allows.
    order = {tp: i for i, tp in enumerate(all_tps)}
    for _ in range(total * total + 1):  # each move lowers the sum of squared loads
        move = None
        for source in sorted(out, key=lambda i: (-len(out[i]), _sort_key(by_id[i]))):
            for tp in sorted(out[source], key=lambda tp: (kept.get(tp) == source, -order[tp])):
                target = min(eligible[tp], key=load)
                if len(out[source]) - len(out[target]) > 1:
                    move = (tp, source, target)
                    break
            if move is not None:
                break
        if move is None:
            break
        tp, source, target = move
        out[source].remove(tp)
        out[target].append(tp)
        owner[tp] = target
    for member_id in out:
        out[member_id].sort(key=lambda tp: (tp.topic, tp.partition))
    return out


def cooperative_sticky_assign(
    partitions: Mapping[str, int], members: list[MemberSubscription]
) -> Assignment:
    """Sticky, minus partitions that would move while another member still owns them."""
    target = sticky_assign(partitions, members)
    # Any other member's claim withholds a partition: it keeps reading it until it revokes.
    claims: dict[TopicPartition, set[str]] = {}
    for m in members:
        for tp in m.owned:
            claims.setdefault(tp, set()).add(m.member_id)
    return {
        member_id: [tp for tp in tps if claims.get(tp, set()) <= {member_id}]
        for member_id, tps in target.items()
    }


ASSIGNORS: dict[str, AssignFn] = {
    "range": range_assign,
    "roundrobin": roundrobin_assign,
    "sticky": sticky_assign,
    "cooperative-sticky": cooperative_sticky_assign,
}

COOPERATIVE = {"cooperative-sticky"}


def assignor(name: str) -> AssignFn:
    try:
        return ASSIGNORS[name]
    except KeyError:
        raise UnsupportedAssignorError(
            f"unknown assignor {name!r}; known: {', '.join(ASSIGNORS)}"
        ) from None
