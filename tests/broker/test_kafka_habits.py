"""What kafka-python users write works on kvlog (issue 13): OffsetAndMetadata(offset,
None), auto_offset_reset smallest/largest, PLAINTEXT:// bootstrap servers, api_version
(ignored, said once), consumer.highwater() and metrics(), Kafka's producer metric names,
the error names kafka-python programs catch, create_topics with NewTopic, and the
command an oversized record needs. Against the module's shared broker."""

from __future__ import annotations

import logging
import time
from typing import Any

import on_group_broker
import pytest
from brokertest_util import unique_topic

import kvlog
from kvlog.errors import (
    KafkaError,
    KafkaTimeoutError,
    KvlogError,
    MessageSizeTooLargeError,
    NoBrokersAvailable,
    TopicAlreadyExistsError,
)
from kvlog.types import TopicPartition

# New groups here start after 100 ms, not Kafka's 3 s (tests/broker/conftest.py).
broker, admin = on_group_broker.broker, on_group_broker.admin


def _fill(bootstrap: str, topic: str, count: int) -> None:
    with kvlog.Producer(bootstrap_servers=bootstrap) as producer:
        producer.send_batch(topic, [b"v%d" % i for i in range(count)], partition=0)
        producer.flush(30)


def _read(consumer: Any, count: int) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + 20
    while len(got) < count and time.monotonic() < deadline:
        got += [r for rs in consumer.poll(timeout_ms=200).values() for r in rs]
    return got


def test_error_names_kafka_python_programs_catch() -> None:
    assert KafkaError is KvlogError
    assert issubclass(NoBrokersAvailable, KafkaError)
    assert issubclass(KafkaTimeoutError, KafkaError)
    assert issubclass(TopicAlreadyExistsError, KafkaError)


def test_commit_offset_and_metadata_with_none_metadata(broker: Any, admin: Any) -> None:
    topic, group = unique_topic("oam"), unique_topic("oam-group")
    tp = TopicPartition(topic, 0)
    admin.create_topic(topic, partitions=1)
    _fill(broker.bootstrap, topic, 3)
    consumer = kvlog.Consumer(
        topic,
        group_id=group,
        bootstrap_servers=f"PLAINTEXT://{broker.bootstrap.removeprefix('tcp://')}",
        auto_offset_reset="smallest",
        enable_auto_commit=False,
    )
    try:
        records = _read(consumer, 3)
        assert [r.offset for r in records] == [0, 1, 2], "smallest is earliest"
        consumer.commit({tp: kvlog.OffsetAndMetadata(records[-1].offset + 1, None)})
        assert consumer.committed(tp) == 3
    finally:
        consumer.close()


def test_largest_is_latest_and_highwater_and_metrics(broker: Any, admin: Any) -> None:
    topic = unique_topic("largest")
    tp = TopicPartition(topic, 0)
    admin.create_topic(topic, partitions=1)
    _fill(broker.bootstrap, topic, 5)
    consumer = kvlog.Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="largest")
    try:
        consumer.assign([tp])
        assert consumer.highwater(tp) is None, "no fetch yet"
        assert consumer.position(tp) == 5, "largest is latest"
        consumer.seek(tp, 0)
        assert len(_read(consumer, 5)) == 5
        assert consumer.highwater(tp) == 5
        consumer.seek(tp, 2)
        consumer.poll(timeout_ms=0, max_records=1)
        fetch = consumer.metrics()["consumer-fetch-manager-metrics"]
        assert fetch["records-consumed-total"] >= 5
        assert fetch["fetch-total"] >= 1 and fetch["fetch-latency-avg"] >= 0
        assert fetch["records-lag-max"] >= 0
        assert consumer.metrics()["consumer-coordinator-metrics"]["assigned-partitions"] == 1
        with pytest.raises(KvlogError, match="not assigned"):
            consumer.highwater(TopicPartition(topic, 7))
    finally:
        consumer.close()


def test_producer_metrics_have_kafkas_names(broker: Any, admin: Any) -> None:
    topic = unique_topic("metrics")
    admin.create_topic(topic, partitions=1)
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, linger_ms=0) as producer:
        for i in range(10):
            producer.send(topic, value=b"m%d" % i).get(timeout=10)
        metrics = producer.metrics()["producer-metrics"]
    assert metrics["record-send-total"] == 10
    assert metrics["record-send-rate"] > 0
    assert metrics["request-total"] >= 1
    assert metrics["request-latency-avg"] > 0
    assert metrics["record-error-total"] == 0 and metrics["record-retry-total"] == 0
    assert metrics["outgoing-byte-total"] > 0 and metrics["batch-size-avg"] > 0


def test_api_version_is_accepted_and_ignored_with_one_warning(
    broker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import kvlog.ipc.config as client_config

    client_config._API_VERSION_WARNED = False  # once per process: start this test afresh
    caplog.set_level(logging.WARNING, logger="kvlog.ipc.config")
    for _ in range(2):
        kvlog.Producer(bootstrap_servers=broker.bootstrap, api_version=(2, 0, 2)).close()
    said = [r for r in caplog.records if "api_version" in r.getMessage()]
    assert len(said) == 1, caplog.text


def test_create_topics_with_new_topic_and_topic_already_exists(broker: Any, admin: Any) -> None:
    name = unique_topic("created")
    result = admin.create_topics([kvlog.NewTopic(name=name, num_partitions=3)])
    assert [(t["name"], t["error_code"]) for t in result["topics"]] == [(name, 0)]
    [described] = admin.describe_topics([name])
    assert described["name"] == name and len(described["partitions"]) == 3
    assert {p["partition_index"] for p in described["partitions"]} == {0, 1, 2}
    # A script run twice: the second run catches TopicAlreadyExistsError.
    with pytest.raises(TopicAlreadyExistsError):
        admin.create_topics([kvlog.NewTopic(name, 3, 1)])
    other = unique_topic("created-too")
    result = admin.create_topics([name, other], raise_errors=False)
    assert [(t["name"], t["error_code"]) for t in result["topics"]] == [(name, 36), (other, 0)]
    with pytest.raises(TopicAlreadyExistsError):
        admin.create_topic(name)


def test_create_topics_validate_only_creates_nothing(admin: Any) -> None:
    name = unique_topic("validated")
    result = admin.create_topics([kvlog.NewTopic(name, 2, 1)], validate_only=True)
    assert [(t["name"], t["error_code"]) for t in result["topics"]] == [(name, 0)]
    assert name not in admin.list_topics()


def test_an_oversized_record_names_the_command_that_raises_the_limit(
    broker: Any, admin: Any
) -> None:
    topic = unique_topic("big")
    admin.create_topic(topic, partitions=1, config={"max.message.bytes": 1000})
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, linger_ms=0) as producer:
        future = producer.send(topic, value=b"x" * 3000)
        with pytest.raises(MessageSizeTooLargeError) as info:
            future.get(timeout=20)
    message = str(info.value)
    assert f"kvlog topics alter {topic} --config max.message.bytes=" in message, message
    assert "batch.size" not in message, message
    size = int(message.rsplit("max.message.bytes=", 1)[1].split()[0].rstrip("."))
    assert size > 3000
    admin.alter_topic_config(topic, {"max.message.bytes": size})
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, linger_ms=0) as producer:
        assert producer.send(topic, value=b"x" * 3000).get(timeout=20).offset == 0
