"""The consumer protocol: what group members tell each other through the coordinator.

A member's JoinGroup carries, per assignor it supports, a *subscription*; the leader's
SyncGroup carries each member's *assignment*. Both are CBOR maps (PROTOCOL.md, "Consumer
protocol formats"). The client (ipc/group_member.py) and the coordinator, when it assigns
itself (workers/group_model.py), share these encoders.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import cbor2

from kvlog.types import TopicPartition

from .assignors import MemberSubscription


def _by_topic(tps: Iterable[TopicPartition]) -> list[list[Any]]:
    grouped: dict[str, list[int]] = {}
    for tp in tps:
        grouped.setdefault(tp.topic, []).append(tp.partition)
    return [[topic, sorted(parts)] for topic, parts in sorted(grouped.items())]


def encode_subscription(
    topics: Iterable[str], owned: Iterable[TopicPartition], generation: int
) -> bytes:
    """``{"topics": [...], "owned": [[topic, [partitions]], ...], "generation": n}``."""
    return cbor2.dumps(
        {"topics": sorted(topics), "owned": _by_topic(owned), "generation": generation}
    )


def decode_subscription(member_id: str, instance_id: str | None, raw: bytes) -> MemberSubscription:
    data = cbor2.loads(raw) if raw else {}
    return MemberSubscription(
        member_id,
        list(data.get("topics", [])),
        [TopicPartition(t, p) for t, ps in data.get("owned", []) for p in ps],
        data.get("generation", -1),
        instance_id,
    )


def encode_assignment(tps: Iterable[TopicPartition]) -> bytes:
    """``{"partitions": [[topic, [partitions]], ...]}``."""
    return cbor2.dumps({"partitions": _by_topic(tps)})


def decode_assignment(raw: bytes) -> set[TopicPartition]:
    if not raw:
        return set()
    data = cbor2.loads(raw)
    return {TopicPartition(t, p) for t, ps in data.get("partitions", []) for p in ps}


def subscribed_topics(metadata: bytes) -> Any:
    """The topics of a subscription (the raw bytes if it is not one)."""
    try:
        data = cbor2.loads(metadata) if metadata else {}
    except Exception:
        return metadata
    if not isinstance(data, dict):
        return metadata
    return sorted(map(str, data.get("topics") or []))


def same_subscription(a: list[tuple[str, bytes]], b: list[tuple[str, bytes]]) -> bool:
    """Same assignors, in the same order, over the same topics (the owned partitions and
    generation inside a subscription change with every rebalance and do not count)."""
    return [n for n, _ in a] == [n for n, _ in b] and all(
        subscribed_topics(x) == subscribed_topics(y) for (_, x), (_, y) in zip(a, b, strict=True)
    )
