"""Transactions with a Kafka client (confluent-kafka / librdkafka) against kvlog's Kafka
listener (issue 17): a transactional producer commits and aborts across 3 partitions, a
read_committed confluent-kafka consumer sees exactly the committed records, and kvlog's own
read_committed consumer reads the same (the mixed case); a second transactional producer
fences the first."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import KafkaException
from confluent_kafka import Producer as CKProducer
from confluent_kafka import TopicPartition as CKTopicPartition
from node_kafka_util import create_topic

import kvlog
from kvlog.types import TopicPartition


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    data_dir = tmp_path_factory.mktemp("kafka-txn")
    b = kvlog.Broker(data_dir, "tcp://127.0.0.1:0", kafka_listen="127.0.0.1:0")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def _producer(broker: Any, tid: str) -> CKProducer:
    return CKProducer(
        {
            "bootstrap.servers": broker.kafka_bootstrap,
            "transactional.id": tid,
            "transaction.timeout.ms": 10_000,
        }
    )


def _ck_read_committed(broker: Any, topic: str, partitions: int) -> list[bytes]:
    consumer = CKConsumer(
        {
            "bootstrap.servers": broker.kafka_bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        consumer.assign([CKTopicPartition(topic, p, 0) for p in range(partitions)])
        out: list[bytes] = []
        eof: set[int] = set()
        deadline = time.monotonic() + 30
        while len(eof) < partitions and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is not None:
                    assert msg.error().code() == -191, msg.error()  # _PARTITION_EOF
                    eof.add(msg.partition())
                    continue
                eof.discard(msg.partition())
                out.append(msg.value())
        assert len(eof) == partitions, "the consumer did not reach every partition's end"
        return sorted(out)
    finally:
        consumer.close()


def _kvlog_read(broker: Any, topic: str, partitions: int, level: str) -> list[bytes]:
    consumer = kvlog.Consumer(
        bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest", isolation_level=level
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        out: list[bytes] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, "reading back timed out"
            for records in consumer.poll(500).values():
                out.extend(r.value for r in records)
        return sorted(out)
    finally:
        consumer.close()


def test_confluent_kafka_commits_and_aborts_across_partitions(broker: Any) -> None:
    topic = f"cktxn-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, partitions=3)
    producer = _producer(broker, topic)
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(30):
        producer.produce(topic, value=b"c%02d" % i, partition=i % 3)
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(30):
        producer.produce(topic, value=b"a%02d" % i, partition=i % 3)
    producer.flush(30)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"z", partition=1)
    producer.commit_transaction(30)
    committed = sorted([b"c%02d" % i for i in range(30)] + [b"z"])
    assert _ck_read_committed(broker, topic, 3) == committed
    # Mixed: kvlog's consumer reads the Kafka client's transactions the same way.
    assert _kvlog_read(broker, topic, 3, "read_committed") == committed
    assert len(_kvlog_read(broker, topic, 3, "read_uncommitted")) == 61


def test_a_new_confluent_kafka_producer_fences_the_old(broker: Any) -> None:
    topic = f"ckfence-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, partitions=1)
    old = _producer(broker, topic)
    old.init_transactions(30)
    old.begin_transaction()
    old.produce(topic, value=b"zombie", partition=0)
    old.flush(30)
    new = _producer(broker, topic)
    new.init_transactions(30)
    new.begin_transaction()
    new.produce(topic, value=b"live", partition=0)
    new.commit_transaction(30)
    with pytest.raises(KafkaException) as raised:
        old.commit_transaction(30)
    assert raised.value.args[0].fatal() or "fenced" in str(raised.value).lower()
    assert _ck_read_committed(broker, topic, 1) == [b"live"]
