"""Unmodified Kafka clients on the nodes' Kafka listeners (after Metadata through the
bootstrap): kafka-python 3.0 and confluent-kafka (librdkafka) producing idempotently
with acks=all and every codec, keyed placement equal to kvlog's, records crossing
between Kafka's clients and kvlog's (headers included), offsets_for_times, seek and
seek_to_end, and kcat (Debian's, librdkafka 2.0.2) producing and consuming."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import Producer as CKProducer
from confluent_kafka import TopicPartition as CKTopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition
from node_kafka_util import create_topic

import kvlog
from kvlog.partitioner import partition_for_key
from kvlog.types import TopicPartition

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
KCAT = shutil.which("kcat") or "/usr/bin/kcat"


@pytest.fixture(scope="module")
def broker(kafka_broker: Any) -> Any:
    return kafka_broker  # shared (tests/kafka/conftest.py); default config


def topic_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def kvlog_records(broker: Any, tp: TopicPartition, count: int) -> list[Any]:
    consumer = kvlog.Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    try:
        consumer.assign([tp])
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while len(out) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out += records
        return out
    finally:
        consumer.close()


def ck_consume(bootstrap: str, topic: str, partition: int, count: int) -> list[Any]:
    consumer = CKConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.assign([CKTopicPartition(topic, partition, 0)])
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while len(out) < count and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                assert msg.error() is None, msg.error()
                out.append(msg)
        return out
    finally:
        consumer.close()


def kp_consume(bootstrap: str, topic: str, partition: int, count: int) -> list[Any]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        tp = KTopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while len(out) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out += records
        return out
    finally:
        consumer.close()


# -- producing -------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_idempotent_acks_all(broker: Any, codec: str) -> None:
    topic = topic_name(f"kp-{codec}")
    create_topic(broker, topic)
    producer = KafkaProducer(
        bootstrap_servers=broker.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type=None if codec == "none" else codec,
        linger_ms=5,
    )
    sent = []
    for i in range(300):
        headers = [("i", b"%d" % i)] if i % 3 else []
        future = producer.send(topic, value=b"v%d" % i * 20, key=b"k%d" % i, headers=headers)
        sent.append((b"k%d" % i, b"v%d" % i * 20, headers))
    producer.flush()
    assert future.get(10).offset == 299
    producer.close()
    records = kvlog_records(broker, TopicPartition(topic, 0), 300)
    assert [(r.key, r.value, list(r.headers)) for r in records] == sent
    assert [r.offset for r in records] == list(range(300))


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_kafka_idempotent_acks_all(broker: Any, codec: str) -> None:
    topic = topic_name(f"ck-{codec}")
    create_topic(broker, topic)
    producer = CKProducer(
        {
            "bootstrap.servers": broker.kafka_bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "compression.codec": codec,
        }
    )
    errors: list[Any] = []
    sent = []
    for i in range(300):
        headers = [("i", b"%d" % i)] if i % 3 else None
        producer.produce(
            topic,
            value=b"v%d" % i * 20,
            key=b"k%d" % i,
            headers=headers,
            on_delivery=lambda err, msg: errors.append(err) if err else None,
        )
        sent.append((b"k%d" % i, b"v%d" % i * 20, headers or []))
    assert producer.flush(30) == 0 and not errors
    records = kvlog_records(broker, TopicPartition(topic, 0), 300)
    assert [(r.key, r.value, list(r.headers)) for r in records] == sent


def test_keyed_placement_equals_kvlogs(broker: Any) -> None:
    topic = topic_name("keyed")
    partitions = 6
    create_topic(broker, topic, partitions=partitions)
    keys = [b"key-%d" % i for i in range(60)]
    kp = KafkaProducer(bootstrap_servers=broker.kafka_bootstrap, acks="all")
    placed_kp = {k: kp.send(topic, value=b"kp", key=k).get(10).partition for k in keys}
    kp.close()
    ck = CKProducer({"bootstrap.servers": broker.kafka_bootstrap, "partitioner": "murmur2_random"})
    placed_ck: dict[bytes, int] = {}
    for k in keys:
        ck.produce(
            topic,
            value=b"ck",
            key=k,
            on_delivery=lambda e, m: placed_ck.update({m.key(): m.partition()}),
        )
    ck.flush(30)
    expected = {k: partition_for_key(k, partitions) for k in keys}
    assert placed_kp == expected
    assert placed_ck == expected


def test_kvlog_records_reach_kafka_consumers_with_headers(broker: Any) -> None:
    topic = topic_name("to-kafka")
    create_topic(broker, topic)
    producer = kvlog.Producer(bootstrap_servers=broker.bootstrap, compression_type="lz4")
    sent = []
    for i in range(50):
        headers = [("n", b"%d" % i), ("x", b"")] if i % 2 else []
        producer.send(topic, b"value-%d" % i, key=b"key-%d" % i, headers=headers)
        sent.append((b"key-%d" % i, b"value-%d" % i, headers))
    producer.flush()
    producer.close()
    got = ck_consume(broker.kafka_bootstrap, topic, 0, 50)
    assert [(m.key(), m.value(), m.headers() or []) for m in got] == sent
    got = kp_consume(broker.kafka_bootstrap, topic, 0, 50)
    assert [(r.key, r.value, list(r.headers)) for r in got] == sent


# -- positions -------------------------------------------------------------------------------


def test_offsets_for_times_seek_and_seek_to_end(broker: Any) -> None:
    topic = topic_name("times")
    create_topic(broker, topic)
    producer = KafkaProducer(bootstrap_servers=broker.kafka_bootstrap, acks="all")
    base = 1_700_000_000_000
    for i in range(10):
        producer.send(topic, value=b"%d" % i, timestamp_ms=base + 1000 * i)
    producer.flush()
    producer.close()
    tp = KTopicPartition(topic, 0)
    consumer = KafkaConsumer(bootstrap_servers=broker.kafka_bootstrap, enable_auto_commit=False)
    try:
        consumer.assign([tp])
        found = consumer.offsets_for_times({tp: base + 4500})
        assert (found[tp].offset, found[tp].timestamp) == (5, base + 5000)
        assert consumer.offsets_for_times({tp: base + 99_000})[tp] is None
        assert consumer.beginning_offsets([tp]) == {tp: 0}
        assert consumer.end_offsets([tp]) == {tp: 10}
        consumer.seek(tp, 7)
        records = consumer.poll(timeout_ms=5000)[tp]
        assert [r.offset for r in records][:1] == [7]
        consumer.seek_to_end(tp)
        assert consumer.position(tp) == 10
    finally:
        consumer.close()
    ck = CKConsumer({"bootstrap.servers": broker.kafka_bootstrap, "group.id": "times-ck"})
    try:
        [found_ck] = ck.offsets_for_times([CKTopicPartition(topic, 0, base + 4500)], 10)
        assert found_ck.offset == 5
        low, high = ck.get_watermark_offsets(CKTopicPartition(topic, 0), 10)
        assert (low, high) == (0, 10)
        ck.assign([CKTopicPartition(topic, 0, 8)])
        msg = None
        deadline = time.monotonic() + 10
        while msg is None and time.monotonic() < deadline:
            msg = ck.poll(0.5)
        assert msg is not None and msg.offset() == 8 and msg.value() == b"8"
    finally:
        ck.close()


# -- kcat (librdkafka 2.0.2) ----------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("kcat"), reason="kcat is not installed (apt-get install kcat)")
@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_kcat_produces_and_consumes(broker: Any, codec: str) -> None:
    topic = topic_name(f"kcat-{codec}")
    create_topic(broker, topic)
    lines = [f"line-{i}" for i in range(100)]
    produced = subprocess.run(
        [KCAT, "-b", broker.kafka_bootstrap, "-P", "-t", topic, "-p", "0", "-z", codec,
         "-X", "acks=all"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    consumed = subprocess.run(
        [KCAT, "-b", broker.kafka_bootstrap, "-C", "-t", topic, "-e", "-o", "beginning"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.splitlines() == lines
    listed = subprocess.run(
        [KCAT, "-b", broker.kafka_bootstrap, "-L", "-t", topic],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0 and "partition 0, leader 0" in listed.stdout, listed.stdout
