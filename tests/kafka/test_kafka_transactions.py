"""Transactions with Kafka clients (confluent-kafka / librdkafka, kafka-python) against
kvlog's Kafka listener (issue 17): a transactional producer commits and aborts across 3
partitions, a read_committed consumer of the same client sees exactly the committed
records, and kvlog's own read_committed consumer reads the same (the mixed case); a
second transactional producer fences the first; offsets sent with a transaction carry the
consumer's group metadata (TxnOffsetCommit v3, KIP-447), which fences a zombie consumer's
producer and commits a live one's offsets with the transaction."""

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
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata
from kafka import TopicPartition as KPTopicPartition
from kafka.errors import CommitFailedError
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


# -- kafka-python's transactional producer (kafka-python 3.0) --------------------------------


def _kp_producer(broker: Any, tid: str) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=broker.kafka_bootstrap,
        transactional_id=tid,
        transaction_timeout_ms=10_000,
        max_block_ms=30_000,
    )


def _kp_read_committed(broker: Any, topic: str, partitions: int) -> list[bytes]:
    consumer = KafkaConsumer(
        bootstrap_servers=broker.kafka_bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        tps = [KPTopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)  # read_committed: the LSOs
        out: list[bytes] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, "reading back timed out"
            for records in consumer.poll(500).values():
                out.extend(r.value for r in records)
        return sorted(out)
    finally:
        consumer.close()


def test_kafka_python_commits_and_aborts_across_partitions(broker: Any) -> None:
    topic = f"kptxn-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, partitions=3)
    producer = _kp_producer(broker, topic)
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(30):
            producer.send(topic, b"c%02d" % i, partition=i % 3)
        producer.commit_transaction()
        producer.begin_transaction()
        for i in range(30):
            producer.send(topic, b"a%02d" % i, partition=i % 3)
        producer.flush()
        producer.abort_transaction()
        producer.begin_transaction()
        producer.send(topic, b"z", partition=2)
        producer.commit_transaction()
    finally:
        producer.close()
    committed = sorted([b"c%02d" % i for i in range(30)] + [b"z"])
    assert _kp_read_committed(broker, topic, 3) == committed
    assert _kvlog_read(broker, topic, 3, "read_committed") == committed
    assert len(_kvlog_read(broker, topic, 3, "read_uncommitted")) == 61


def _kp_joined(broker: Any, topic: str, group: str) -> KafkaConsumer:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    deadline = time.monotonic() + 30
    while not consumer.assignment():
        assert time.monotonic() < deadline, "the consumer never got its partitions"
        consumer.poll(200)
    return consumer


def test_kafka_python_offsets_of_a_zombie_consumer_are_fenced(broker: Any) -> None:
    """TxnOffsetCommit v3 (KIP-447): the zombie's group metadata is refused (the
    producer's transaction becomes abortable), the live member's commits its offsets."""
    topic = f"kp447-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, partitions=1)
    group = f"{topic}-g"
    zombie = _kp_joined(broker, topic, group)
    stale = zombie.group_metadata()
    zombie.close()  # leaves: the group rebalances without it
    live = _kp_joined(broker, topic, group)
    tp = KPTopicPartition(topic, 0)
    producer = _kp_producer(broker, topic)
    try:
        current = live.group_metadata()
        assert current.generation_id > stale.generation_id
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, b"zombie's", partition=0)
        with pytest.raises(CommitFailedError, match=r"UnknownMemberId|IllegalGeneration"):
            producer.send_offsets_to_transaction({tp: OffsetAndMetadata(5, "", -1)}, stale)
        producer.abort_transaction()
        producer.begin_transaction()
        producer.send(topic, b"live", partition=0)
        producer.send_offsets_to_transaction({tp: OffsetAndMetadata(1, "", -1)}, current)
        producer.commit_transaction()
        # As in Kafka, EndTxn answers once the commit is decided; the offsets show once
        # its markers are written (an OffsetFetch without require_stable may come first).
        deadline = time.monotonic() + 10
        while live.committed(tp) != 1:
            assert time.monotonic() < deadline, f"committed offset {live.committed(tp)}"
            time.sleep(0.05)
    finally:
        producer.close()
        live.close()
    assert _kp_read_committed(broker, topic, 1) == [b"live"]


def test_confluent_kafka_sends_offsets_with_its_group_metadata(broker: Any) -> None:
    """librdkafka sends TxnOffsetCommit v3 with the consumer's group metadata: a live
    member's offsets commit with the transaction."""
    topic = f"ck447-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, partitions=1)
    consumer = CKConsumer(
        {
            "bootstrap.servers": broker.kafka_bootstrap,
            "group.id": f"{topic}-g",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    producer = _producer(broker, topic)
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            assert time.monotonic() < deadline, "the consumer never got its partition"
            consumer.poll(0.2)
        producer.init_transactions(30)
        producer.begin_transaction()
        producer.produce(topic, value=b"out", partition=0)
        offsets = [CKTopicPartition(topic, 0, 7)]
        producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)
        [committed] = consumer.committed([CKTopicPartition(topic, 0)], 30)
        assert committed.offset == 7
    finally:
        consumer.close()
