"""A record that cannot be deserialized (issue 13, bug 4): the error names the topic,
partition and offset and holds the raw bytes (Java's RecordDeserializationException),
the position stays on the record, the message says how to skip it, and a ConsumerPool
dead-letters it with its raw bytes and goes on. And a pool is a work queue (bug 5): it
starts at the earliest offset, and a group that starts at the end says what it skips.
Through a real broker and real pool worker processes."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import on_group_broker
import pytest
from brokertest_util import read_partitions, unique_topic, wait_until

import kvlog
from kvlog.errors import RecordDeserializationError, SerializationError
from kvlog.types import TopicPartition

# New groups here start after 100 ms, not Kafka's 3 s (tests/broker/conftest.py).
broker, admin = on_group_broker.broker, on_group_broker.admin

VALUES = [b'{"n": 0}', b'{"n": 1}', b"not json", b'{"n": 3}']


def _topic_with(admin: Any, bootstrap: str, values: list[bytes], partitions: int = 1) -> str:
    topic = unique_topic("undecodable")
    admin.create_topic(topic, partitions=partitions)
    with kvlog.Producer(bootstrap_servers=bootstrap, linger_ms=0) as producer:
        for value in values:
            producer.send(topic, value=value, key=b"k", partition=0)
        producer.flush(30)
    return topic


def _poll_until(consumer: Any, what: Any, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = what(consumer.poll(timeout_ms=200))
        if found:
            return found
    raise AssertionError("nothing came")


def test_the_error_names_the_record_keeps_its_bytes_and_the_position_stays(
    broker: Any, admin: Any
) -> None:
    topic = _topic_with(admin, broker.bootstrap, VALUES)
    tp = TopicPartition(topic, 0)
    consumer = kvlog.Consumer(
        bootstrap_servers=broker.bootstrap, value_deserializer="json", auto_offset_reset="earliest"
    )
    try:
        consumer.assign([tp])
        records = _poll_until(consumer, lambda batch: batch.get(tp))
        assert [r.value for r in records] == [{"n": 0}, {"n": 1}], "the records before it come"
        for _ in range(2):  # every poll raises it again, until the application seeks
            with pytest.raises(RecordDeserializationError) as info:
                consumer.poll(timeout_ms=1000)
            error = info.value
            assert isinstance(error, SerializationError)
            assert (error.topic_partition, error.offset) == (tp, 2)
            assert (error.key, error.value) == (b"k", b"not json")
            message = str(error)
            assert f"offset 2 of {tp}" in message and "value" in message, message
            assert f"consumer.seek({tp!r}, 3)" in message, message
            assert consumer.position(tp) == 2
        consumer.seek(tp, error.offset + 1)
        records = _poll_until(consumer, lambda batch: batch.get(tp))
        assert [(r.offset, r.value) for r in records] == [(3, {"n": 3})]
    finally:
        consumer.close()


def test_a_group_member_is_told_the_reset_offsets_command(broker: Any, admin: Any) -> None:
    topic = _topic_with(admin, broker.bootstrap, [b"not json"])
    group = unique_topic("undecodable-group")
    consumer = kvlog.Consumer(
        topic,
        group_id=group,
        bootstrap_servers=broker.bootstrap,
        value_deserializer="json",
        auto_offset_reset="earliest",
    )
    try:
        deadline = time.monotonic() + 20
        with pytest.raises(RecordDeserializationError) as info:
            while time.monotonic() < deadline:
                consumer.poll(timeout_ms=200)
        expected = (
            f"kvlog groups reset-offsets --group {group} --topic {topic}:0 --to-offset 1 --execute"
        )
        assert expected in str(info.value), str(info.value)
    finally:
        consumer.close()


HANDLER = """
import json
from pathlib import Path

OUT = Path({out!r})


def handle(record):
    with OUT.open("a") as f:
        f.write(json.dumps(record.value) + "\\n")
"""


@pytest.fixture
def handler(tmp_path: Path) -> Any:
    """A handler module the pool's worker processes can import, and its output file."""
    name = unique_topic("pool_handler").replace("-", "_")
    out = tmp_path / "handled.txt"
    (tmp_path / f"{name}.py").write_text(HANDLER.format(out=str(out)))
    sys.path.insert(0, str(tmp_path))  # spawned workers inherit sys.path
    try:
        yield f"{name}:handle", out
    finally:
        sys.path.remove(str(tmp_path))


def _handled(out: Path) -> list[str]:
    return out.read_text().splitlines() if out.exists() else []


def test_a_pool_dead_letters_an_undecodable_record_with_its_raw_bytes(
    broker: Any, admin: Any, handler: Any
) -> None:
    spec, out = handler
    topic = _topic_with(admin, broker.bootstrap, VALUES)
    with kvlog.ConsumerPool(
        spec,
        [topic],
        group_id=unique_topic("pool"),
        workers=1,
        bootstrap_servers=broker.bootstrap,
        value_deserializer="json",
    ) as pool:
        wait_until(lambda: len(_handled(out)) == 3, 40, what="the pool to handle the rest")
        wait_until(lambda: pool.stats()["dead_lettered"] == 1, 10, what="the dead letter")
    assert _handled(out) == ['{"n": 0}', '{"n": 1}', '{"n": 3}']
    dlq = TopicPartition(f"{topic}.DLQ", 0)
    [dead] = read_partitions(broker.bootstrap, [dlq])[dlq]
    assert (dead.key, dead.value) == (b"k", b"not json")
    headers = dict(dead.headers)
    assert headers["kvlog.dlq.offset"] == b"2"
    assert b"RecordDeserializationError" in headers["kvlog.dlq.error"]


def test_a_pool_started_after_the_jobs_processes_them(
    broker: Any, admin: Any, handler: Any
) -> None:
    """README's pool, started after 200 jobs were produced: every job is handled."""
    spec, out = handler
    topic = unique_topic("jobs")
    admin.create_topic(topic, partitions=2)
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, value_serializer="json") as p:
        p.send_batch(topic, [{"job": i} for i in range(200)])
        p.flush(30)
    with kvlog.ConsumerPool(
        spec,
        [topic],
        group_id=unique_topic("billing"),
        workers=2,
        bootstrap_servers=broker.bootstrap,
        value_deserializer="json",
    ):
        wait_until(lambda: len(_handled(out)) >= 200, 60, what="200 jobs handled")
    assert sorted(_handled(out)) == sorted(f'{{"job": {i}}}' for i in range(200))


def test_a_group_that_starts_at_the_end_says_what_it_skips(
    broker: Any, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique_topic("skipped")
    admin.create_topic(topic, partitions=1)
    with kvlog.Producer(bootstrap_servers=broker.bootstrap) as p:
        p.send_batch(topic, [b"x"] * 7)
        p.flush(30)
    caplog.set_level(logging.WARNING, logger="kvlog.ipc.positions")
    group = unique_topic("late")
    consumer = kvlog.Consumer(topic, group_id=group, bootstrap_servers=broker.bootstrap)
    try:
        wait_until(lambda: consumer.poll(timeout_ms=100) == {} and consumer.assignment(), 20)
        consumer.position(TopicPartition(topic, 0))
        for _ in range(3):
            consumer.poll(timeout_ms=100)
    finally:
        consumer.close()
    said = [r.getMessage() for r in caplog.records if "skips" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert f"{topic}-0" in said[0] and "skips the 7 record(s)" in said[0], said[0]
    assert "auto.offset.reset='earliest'" in said[0] and group in said[0], said[0]
