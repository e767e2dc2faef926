"""A compacted topic on Kafka's wire: batches that Kafka clients wrote are compacted in
Kafka's own format, and unmodified Kafka clients read the compacted log (sparse offsets
inside batches, whole batches gone) from offset 0 and rebuild the table of latest values.

confluent-kafka (librdkafka, idempotent, lz4) and kafka-python write; both read; kvlog's
own consumer reads the same log through the ZeroMQ wire."""

from __future__ import annotations

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
from kvlog import batch as batch_format
from kvlog.lmdb_store import LogDir
from kvlog.types import TopicPartition
from kvlog.workers import compact_requests

KEYS = [f"user-{i}".encode() for i in range(25)]
ROUNDS = 12


@pytest.fixture(scope="module")
def broker(kafka_broker: Any) -> Any:
    return kafka_broker  # shared (tests/kafka/conftest.py); default config


def _write(broker: Any, topic: str) -> dict[bytes, bytes | None]:
    """Half the rounds from librdkafka, half from kafka-python; some tombstones."""
    expected: dict[bytes, bytes | None] = {}
    ck = CKProducer(
        {
            "bootstrap.servers": broker.kafka_bootstrap,
            "enable.idempotence": True,
            "compression.type": "lz4",
            "linger.ms": 5,
        }
    )
    kp = KafkaProducer(
        bootstrap_servers=broker.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    try:
        for r in range(ROUNDS):
            for i, key in enumerate(KEYS):
                value = None if (r + i) % 9 == 0 else f"{key.decode()}={r}".encode()
                if r % 2:
                    kp.send(topic, key=key, value=value)
                else:
                    ck.produce(topic, key=key, value=value)
                expected[key] = value
            kp.flush(30)
            assert ck.flush(30) == 0
        # A last round for half the keys: the round before it is only partly superseded.
        for key in KEYS[::2]:
            ck.produce(topic, key=key, value=b"last")
            expected[key] = b"last"
        assert ck.flush(30) == 0
        # The log's last batch is never compacted (nor in the map): one more after it.
        kp.send(topic, key=b"marker", value=b"end").get(30)
        expected[b"marker"] = b"end"
    finally:
        kp.close()
    return expected


def _compact(broker: Any, topic: str) -> dict[str, Any]:
    request = compact_requests.submit(broker.data_dir, topic, int(time.time() * 1000))
    answer = compact_requests.wait(broker.data_dir, request, 60)
    assert answer is not None and not answer.get("error"), answer
    return answer


def _ck_table(broker: Any, topic: str, end: int) -> tuple[dict[bytes, Any], list[int]]:
    consumer = CKConsumer(
        {
            "bootstrap.servers": broker.kafka_bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    table: dict[bytes, Any] = {}
    offsets: list[int] = []
    try:
        consumer.assign([CKTopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 30
        while (not offsets or offsets[-1] < end - 1) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                assert msg.error() is None, msg.error()
                table[msg.key()] = msg.value()
                offsets.append(msg.offset())
    finally:
        consumer.close()
    return table, offsets


def _kp_table(broker: Any, topic: str, end: int) -> tuple[dict[bytes, Any], list[int]]:
    consumer = KafkaConsumer(bootstrap_servers=broker.kafka_bootstrap, enable_auto_commit=False)
    table: dict[bytes, Any] = {}
    offsets: list[int] = []
    try:
        tp = KTopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        deadline = time.monotonic() + 30
        while (not offsets or offsets[-1] < end - 1) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    table[rec.key] = rec.value
                    offsets.append(rec.offset)
    finally:
        consumer.close()
    return table, offsets


def test_kafka_clients_read_a_compacted_log_from_offset_zero(broker: Any) -> None:
    topic = f"profiles-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, **{"cleanup.policy": "compact"})
    expected = _write(broker, topic)
    produced = ROUNDS * len(KEYS) + len(KEYS[::2]) + 1
    [part] = _compact(broker, topic)["partitions"]
    assert part["records_removed"] > produced // 2

    # Kafka-format batches stayed Kafka-format batches, and kept their producer fields.
    tp = TopicPartition(topic, 0)
    store = LogDir(part["log_dir"], readonly=True)
    try:
        with store.reader() as r:
            end = r.offsets(tp).high_watermark
            headers = [h for _b, _s, h in r.headers(tp)]
    finally:
        store.close()
    assert headers and all(h.magic == batch_format.KAFKA_MAGIC for h in headers)
    assert any(h.record_count < h.last_offset_delta + 1 for h in headers)  # rewritten
    assert all(h.producer_id >= 0 and h.base_sequence >= 0 for h in headers)
    assert end == produced

    for read in (_ck_table, _kp_table):
        table, offsets = read(broker, topic, end)
        assert table == expected, read.__name__
        assert offsets == sorted(set(offsets)) and len(offsets) < produced // 2

    consumer = kvlog.Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    try:
        consumer.assign([tp])
        table = {}
        deadline = time.monotonic() + 30
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                table.update((rec.key, rec.value) for rec in records)
    finally:
        consumer.close()
    assert table == expected


def test_a_compacted_topic_refuses_records_without_a_key_on_both_wires(broker: Any) -> None:
    """As Kafka does (INVALID_RECORD): compaction keeps the latest record per key, so a
    keyless record could only be dropped later, silently."""
    topic = f"keyed-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, **{"cleanup.policy": "compact"})
    kp = KafkaProducer(bootstrap_servers=broker.kafka_bootstrap, acks="all", retries=0)
    try:
        with pytest.raises(Exception) as refused:
            kp.send(topic, key=None, value=b"no key").get(30)
        assert "InvalidRecord" in type(refused.value).__name__, refused.value
        kp.send(topic, key=b"k", value=b"kafka-python").get(30)
    finally:
        kp.close()

    errors: list[Any] = []
    ck = CKProducer({"bootstrap.servers": broker.kafka_bootstrap})
    # Separately: a batch is refused whole, as in Kafka.
    ck.produce(topic, value=b"no key", on_delivery=lambda err, _msg: errors.append(err))
    ck.flush(30)
    ck.produce(topic, key=b"k", value=b"librdkafka", on_delivery=lambda e, _m: errors.append(e))
    ck.flush(30)
    assert errors[0] is not None and errors[0].name() == "INVALID_RECORD", errors
    assert errors[1] is None, errors

    producer = kvlog.Producer(bootstrap_servers=broker.bootstrap)
    try:
        with pytest.raises(kvlog.errors.InvalidRecordError, match="has no key"):
            producer.send(topic, value=b"no key").get(30)
        producer.send(topic, key=b"k", value=b"kvlog").get(30)
    finally:
        producer.close()

    consumer = kvlog.Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        seen: list[Any] = []
        deadline = time.monotonic() + 30
        while len(seen) < 3 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                seen.extend((rec.key, rec.value) for rec in records)
    finally:
        consumer.close()
    assert seen == [(b"k", b"kafka-python"), (b"k", b"librdkafka"), (b"k", b"kvlog")]
