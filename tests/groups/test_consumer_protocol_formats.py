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
    for_kafka_member,
    for_kvlog_member,
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


owned_parts = st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 9)), max_size=8)


@given(topics, owned_parts, st.integers(-1, 50))
def test_a_subscription_reaches_each_wire_in_its_format(names, owned, generation) -> None:
    owned_tps = [TP(t, p) for t, p in set(owned)]
    kvlog_sub = encode_subscription(names, owned_tps, generation)
    as_kafka = for_kafka_member.subscription("consumer", kvlog_sub)
    assert is_kafka_format(as_kafka)
    # Kafka's own decoder reads it (what a Kafka group leader does).
    sub = codec.ConsumerProtocolSubscription.decode(as_kafka)
    assert sorted(sub.topics) == sorted(names)
    back = for_kvlog_member.subscription("consumer", as_kafka)
    assert not is_kafka_format(back) and back == kvlog_sub
    # Already in the member's format: passed through unchanged.
    assert for_kafka_member.subscription("consumer", as_kafka) == as_kafka
    assert for_kvlog_member.subscription("consumer", kvlog_sub) == kvlog_sub


@given(topics, st.sets(st.integers(0, 20), max_size=6))
def test_an_assignment_reaches_each_wire_in_its_format(names, parts) -> None:
    tps = {TP(t, p) for t in names for p in parts}
    as_kafka = for_kafka_member.assignment("consumer", encode_assignment(tps))
    assert is_kafka_format(as_kafka)
    assert decode_assignment(as_kafka) == tps
    expected = [(t, sorted(parts)) for t in sorted(names)] if parts else []
    assert codec.decode_consumer_assignment(as_kafka) == expected
    assert for_kvlog_member.assignment("consumer", as_kafka) == encode_assignment(tps)


def test_other_protocol_types_and_unreadable_bytes_pass_through() -> None:
    kvlog_sub = encode_subscription(["a"], [], -1)
    # A Connect group's (or any other protocol type's) bytes are its own.
    assert for_kafka_member.subscription("connect", kvlog_sub) == kvlog_sub
    kafka_asg = encode_consumer_assignment([("a", [0])])
    assert for_kvlog_member.assignment("connect", kafka_asg) == kafka_asg
    assert for_kvlog_member.assignment(None, kafka_asg) == kafka_asg
    # Bytes that claim a format and are not one reach the member as written.
    for junk in (b"\x00\x09garbage", b"\xa1\xff"):
        assert for_kvlog_member.subscription("consumer", junk) == junk
        assert for_kafka_member.assignment("consumer", junk) == junk
    assert for_kafka_member.assignment("consumer", b"") == b""
