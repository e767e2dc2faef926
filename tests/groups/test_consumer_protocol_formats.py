"""The consumer protocol's two formats: kvlog's CBOR maps and Kafka's ConsumerProtocol,
told apart by the first byte and both read by every decoder (kvlog's consumer and the
coordinator)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvlog.ipc.consumer_protocol import (
    decode_assignment,
    decode_subscription,
    encode_assignment,
    encode_subscription,
    is_kafka_format,
    same_subscription,
    subscribed_topics,
)
from kvlog.ipc.kafka import codec
from kvlog.ipc.kafka.codec import encode_consumer_assignment
from kvlog.types import TopicPartition as TP

topics = st.lists(st.text("abcxyz.-_", min_size=1, max_size=8), max_size=4, unique=True)


def kafka_subscription(version: int, names: list[str], owned: list, generation: int) -> bytes:
    # kafka-python's own encoder (through the codec adapter, which loads it quietly).
    sub = codec.ConsumerProtocolSubscription(
        version=version,
        topics=names,
        user_data=None,
        owned_partitions=owned,
        generation_id=generation,
        rack_id=None,
    )
    return bytes(sub.encode())


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_a_kafka_subscription_is_read(version: int) -> None:
    raw = kafka_subscription(version, ["b", "a"], [("a", [1, 0])], 7)
    assert is_kafka_format(raw)
    sub = decode_subscription("m", "i", raw)
    assert sub.topics == ["b", "a"]
    assert sub.owned == ([TP("a", 1), TP("a", 0)] if version >= 1 else [])
    assert sub.generation == (7 if version >= 2 else -1)
    assert subscribed_topics(raw) == ["a", "b"]


@given(names=topics, parts=st.lists(st.integers(0, 50), max_size=5, unique=True))
def test_assignments_in_either_format_name_the_same_partitions(names, parts) -> None:
    tps = {TP(t, p) for t in names for p in parts}
    kafka = encode_consumer_assignment([(t, sorted(parts)) for t in names])
    assert decode_assignment(kafka) == tps == decode_assignment(encode_assignment(tps))
    assert not is_kafka_format(encode_assignment(tps))


def test_subscriptions_compare_across_formats_by_topics() -> None:
    kvlog_one = [("range", encode_subscription(["a", "b"], [TP("a", 0)], 3))]
    kafka_one = [("range", kafka_subscription(1, ["b", "a"], [], -1))]
    assert same_subscription(kvlog_one, kafka_one)
    other = [("range", kafka_subscription(1, ["c"], [], -1))]
    assert not same_subscription(kvlog_one, other)


def test_bytes_in_neither_format_are_refused() -> None:
    with pytest.raises(ValueError):
        decode_assignment(b"\x00\x00\x00\x00\x00\x09ab")
    assert subscribed_topics(b"\x00\x07junk") == b"\x00\x07junk"
