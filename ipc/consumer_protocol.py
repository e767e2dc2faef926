"""The consumer protocol: what group members tell each other through the coordinator.

A member's JoinGroup carries, per assignor it supports, a *subscription*; the leader's
SyncGroup carries each member's *assignment*. kvlog's own format is a CBOR map
(PROTOCOL.md 6.8), which kvlog's consumer writes and the coordinator writes when it
assigns itself (workers/group_transitions.py). Kafka clients write Kafka's
ConsumerProtocol (big-endian structs behind a 2-byte version) in groups of protocol type
``consumer``. Every decoder here reads both, told apart by the first byte: a CBOR map
starts with 0xA0-0xBF, Kafka's version with 0x00. So kvlog's consumer understands a Kafka
leader's assignment and Kafka members' subscriptions, and the coordinator shows who owns
what whichever client a member is. Encoding stays CBOR: PROTOCOL.md's clients read only
that (see PROTOCOL.md 6.8 for what this means for groups that mix both kinds of client).
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


def is_kafka_format(raw: bytes) -> bool:
    """Whether consumer-protocol bytes are Kafka's (a version's first byte) or kvlog's."""
    return bool(raw) and raw[0] == 0


def encode_subscription(
    topics: Iterable[str], owned: Iterable[TopicPartition], generation: int
) -> bytes:
    """``{"topics": [...], "owned": [[topic, [partitions]], ...], "generation": n}``."""
    return cbor2.dumps(
        {"topics": sorted(topics), "owned": _by_topic(owned), "generation": generation}
    )


def decode_subscription(member_id: str, instance_id: str | None, raw: bytes) -> MemberSubscription:
    """A subscription in either format (ValueError or a CBOR error for one in neither)."""
    if is_kafka_format(raw):
        from .kafka.codec import decode_consumer_subscription  # kafka-python: only if needed

        topics, owned, generation = decode_consumer_subscription(raw)
        return MemberSubscription(
            member_id,
            topics,
            [TopicPartition(t, p) for t, ps in owned for p in ps],
            generation,
            instance_id,
        )
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
    """An assignment in either format (ValueError or a CBOR error for one in neither)."""
    if not raw:
        return set()
    if is_kafka_format(raw):
        from .kafka.codec import decode_consumer_assignment

        return {TopicPartition(t, p) for t, ps in decode_consumer_assignment(raw) for p in ps}
    data = cbor2.loads(raw)
    return {TopicPartition(t, p) for t, ps in data.get("partitions", []) for p in ps}


def subscribed_topics(metadata: bytes) -> Any:
    """The topics of a subscription, in either format (the raw bytes if it is neither)."""
    if is_kafka_format(metadata):
        try:
            return sorted(decode_subscription("", None, metadata).topics)
        except ValueError:
            return metadata
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
