"""A committed offset past the log end (a topic deleted and created again under a group,
retention, a truncation) must not wedge a group: OFFSET_OUT_OF_RANGE applies
auto.offset.reset once and the consumer reads on; with ``none`` it raises naming the
partition and both offsets; ``kvlog groups describe`` shows the problem, not lag 0.
Regression tests through a real broker (issue 13, bug 1)."""

from __future__ import annotations

import json
import time
from typing import Any

import on_group_broker
import pytest
from brokertest_util import unique_topic
from click.testing import CliRunner

import kvlog
from kvlog.errors import OffsetOutOfRangeError
from kvlog.tools.cli import main
from kvlog.types import TopicPartition

# New groups here start after 100 ms, not Kafka's 3 s (tests/broker/conftest.py).
broker, admin = on_group_broker.broker, on_group_broker.admin


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    with kvlog.Producer(bootstrap_servers=bootstrap, linger_ms=0) as producer:
        for value in values:
            producer.send(topic, value=value, partition=0)
        producer.flush(30)


def _read(consumer: Any, count: int, timeout_s: float = 20.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            got.extend(records)
    return got


def test_a_committed_offset_past_the_log_end_resets_once_and_reads_on(
    broker: Any, admin: Any
) -> None:
    topic, group = unique_topic("oor"), unique_topic("oor-group")
    tp = TopicPartition(topic, 0)
    admin.create_topic(topic, partitions=1)
    _produce(broker.bootstrap, topic, [b"r%d" % i for i in range(10)])
    admin.alter_group_offsets(group, {tp: 50})  # as a deleted and recreated topic leaves it

    consumer = kvlog.Consumer(
        topic, group_id=group, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
    )
    try:
        got = _read(consumer, 10)
        assert [r.offset for r in got] == list(range(10)), "the group never read past offset 50"
        consumer.commit()
        assert consumer.committed(tp) == 10
    finally:
        consumer.close()


def test_a_topic_deleted_and_created_again_under_a_reading_group(broker: Any, admin: Any) -> None:
    """The issue's scenario: the group read 50 records, the topic is deleted and created
    again, 10 records are produced: the group reads them."""
    topic, group = unique_topic("recreated"), unique_topic("recreated-group")
    admin.create_topic(topic, partitions=1)
    _produce(broker.bootstrap, topic, [b"old%d" % i for i in range(50)])
    consumer = kvlog.Consumer(
        topic, group_id=group, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
    )
    try:
        assert len(_read(consumer, 50)) == 50
        consumer.commit()
        admin.delete_topic(topic)
        admin.create_topic(topic, partitions=1)
        _produce(broker.bootstrap, topic, [b"new%d" % i for i in range(10)])
        got = _read(consumer, 10, timeout_s=30)
        assert [r.value for r in got] == [b"new%d" % i for i in range(10)]
    finally:
        consumer.close()


def test_auto_offset_reset_none_names_the_partition_and_both_offsets(
    broker: Any, admin: Any
) -> None:
    topic, group = unique_topic("oor-none"), unique_topic("oor-none-group")
    tp = TopicPartition(topic, 0)
    admin.create_topic(topic, partitions=1)
    _produce(broker.bootstrap, topic, [b"x"] * 10)
    admin.alter_group_offsets(group, {tp: 50})
    consumer = kvlog.Consumer(
        topic, group_id=group, bootstrap_servers=broker.bootstrap, auto_offset_reset="none"
    )
    try:
        deadline = time.monotonic() + 20
        with pytest.raises(OffsetOutOfRangeError) as info:
            while time.monotonic() < deadline:
                consumer.poll(timeout_ms=200)
        message = str(info.value)
        assert f"position 50 of {tp}" in message, message
        assert "log end offset 10" in message and "log start offset 0" in message, message
        with pytest.raises(OffsetOutOfRangeError):  # again, until the application seeks
            consumer.poll(timeout_ms=200)
        consumer.seek(tp, 3)
        assert [r.offset for r in _read(consumer, 7)] == list(range(3, 10))
    finally:
        consumer.close()


def test_groups_describe_shows_a_committed_offset_past_the_log_end(broker: Any, admin: Any) -> None:
    topic, group = unique_topic("oor-describe"), unique_topic("oor-describe-group")
    tp = TopicPartition(topic, 0)
    admin.create_topic(topic, partitions=1)
    _produce(broker.bootstrap, topic, [b"x"] * 10)
    admin.alter_group_offsets(group, {tp: 50})
    args = ["groups", "describe", group, "--bootstrap-server", broker.bootstrap]
    result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)[0]["partitions"]
    assert (row["committed_offset"], row["log_end_offset"], row["lag"]) == (50, 10, None)
    assert "past the log end offset 10" in row["problem"], row
    text = CliRunner().invoke(main, args, catch_exceptions=False)
    assert text.exit_code == 0, text.output
    assert "out of range" in text.output and "past the log end offset 10" in text.output
