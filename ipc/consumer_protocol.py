"""The consumer protocol: what group members tell each other through the coordinator.

A member's JoinGroup carries, per assignor it supports, a *subscription*; the leader's
SyncGroup carries each member's *assignment*. kvlog's own format is a CBOR map
(PROTOCOL.md 6.8), which kvlog's consumer writes and the coordinator writes when it
assigns itself (workers/group_transitions.py). Kafka clients write Kafka's
ConsumerProtocol (big-endian structs behind a 2-byte version) in groups of protocol type
``consumer``. Every decoder here reads both, told apart by the first byte: a CBOR map
starts with 0xA0-0xBF, Kafka's version with 0x00. So kvlog's consumer understands a Kafka
leader's assignment and Kafka members' subscriptions, and the coordinator shows who owns
what whichever client a member is. kvlog's encoders write CBOR.

Groups may mix both kinds of client: the coordinator hands each member the other members'
subscriptions and its own assignment in its wire's format (:func:`for_kafka_member`,
:func:`for_kvlog_member`), so a Kafka leader reads kvlog members' subscriptions and a kvlog
leader's assignment reaches a Kafka member as Kafka's struct. Only the fields both formats
carry survive the translation (topics, owned partitions, generation; Kafka's user data and
rack do not), which is all the assignors both kinds of client share need.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import cbor2

from kvlog.types import TopicPartition

from .assignors import MemberSubscription

CONSUMER_PROTOCOL_TYPE = "consumer"


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


def _to_kafka_subscription(raw: bytes) -> bytes:
    from .kafka.codec import encode_consumer_subscription

    sub = decode_subscription("", None, raw)
    return encode_consumer_subscription(
        sub.topics, [(t, ps) for t, ps in _by_topic(sub.owned)], sub.generation
    )


def _to_kafka_assignment(raw: bytes) -> bytes:
    from .kafka.codec import encode_consumer_assignment

    return encode_consumer_assignment([(t, ps) for t, ps in _by_topic(decode_assignment(raw))])


def _to_kvlog_subscription(raw: bytes) -> bytes:
    sub = decode_subscription("", None, raw)
    return encode_subscription(sub.topics, sub.owned, sub.generation)


def _to_kvlog_assignment(raw: bytes) -> bytes:
    return encode_assignment(decode_assignment(raw))


def _translated(protocol_type: str | None, raw: bytes, want_kafka: bool, convert: Any) -> bytes:
    # Only groups of Kafka's consumer protocol have formats to translate (a Connect group's
    # bytes are its own); empty bytes mean "nothing" in both formats; bytes in neither
    # format reach the member as written (its own client decides what they mean).
    if protocol_type != CONSUMER_PROTOCOL_TYPE or not raw or is_kafka_format(raw) == want_kafka:
        return raw
    try:
        return convert(raw)
    except Exception:  # a malformed subscription or assignment is the client's to refuse
        return raw


class _Translation:
    """Subscription and assignment bytes as one wire's members read them."""

    def __init__(self, want_kafka: bool, subscription: Any, assignment: Any) -> None:
        self._want_kafka = want_kafka
        self._subscription = subscription
        self._assignment = assignment

    def subscription(self, protocol_type: str | None, raw: bytes) -> bytes:
        return _translated(protocol_type, raw, self._want_kafka, self._subscription)

    def assignment(self, protocol_type: str | None, raw: bytes) -> bytes:
        return _translated(protocol_type, raw, self._want_kafka, self._assignment)


#: For members on the Kafka listener: Kafka's ConsumerProtocol structs.
for_kafka_member = _Translation(True, _to_kafka_subscription, _to_kafka_assignment)
#: For members on kvlog's ZeroMQ wire: PROTOCOL.md 6.8's CBOR maps.
for_kvlog_member = _Translation(False, _to_kvlog_subscription, _to_kvlog_assignment)
