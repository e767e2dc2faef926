"""Kafka clients follow a leader election: replication factor 3 over three log dirs, an
idempotent acks=all confluent-kafka producer, a kafka-python consumer and a
confluent-kafka one (librdkafka validates its position with OffsetForLeaderEpoch after a
leader change) running while the partition's leader node is SIGKILLed. Every
acknowledged record is read back once, in order, by both Kafka consumers, which followed
the new leader, and by kvlog's own."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import Producer as CKProducer
from confluent_kafka import TopicPartition as CKTopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KTopicPartition

import kvlog
from kvlog.types import TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "broker"))
from brokertest_util import read_partitions, wait_until


def _leader_with_full_isr(admin: Any, topic: str) -> int | None:
    part = admin.describe_topic(topic).partitions[0]
    return part.leader if part.leader >= 0 and len(part.isr) == 3 else None


@pytest.mark.timeout(180)
def test_kafka_clients_follow_a_leader_election_without_loss(tmp_path: Path) -> None:
    topic = f"elected-{uuid.uuid4().hex[:8]}"
    log_dirs = [tmp_path / "logs" / name for name in ("a", "b", "c")]
    with (
        kvlog.Broker(
            tmp_path / "data",
            "tcp://127.0.0.1:0",
            console_listen="none",
            log_dirs=log_dirs,
            kafka_listen="127.0.0.1:0",
        ) as broker,
        kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin,
    ):
        admin.create_topic(topic, 1, 3, config={"min.insync.replicas": 2})
        wait_until(lambda: _leader_with_full_isr(admin, topic) is not None, 60, what="a full ISR")
        acked: list[int] = []
        failed: list[Any] = []
        stop = threading.Event()
        flushed = threading.Event()  # the producer has every answer it will get
        producer = CKProducer(
            {
                "bootstrap.servers": broker.kafka_bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
            }
        )

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(err)
            else:
                acked.append(int(msg.value()))

        def produce() -> None:
            i = 0
            while not stop.is_set():
                try:
                    producer.produce(topic, value=b"%d" % i, partition=0, on_delivery=delivered)
                    i += 1
                except BufferError:
                    pass
                producer.poll(0.002)
            producer.flush(60)
            flushed.set()

        consumed: list[int] = []

        def consume() -> None:
            consumer = KafkaConsumer(
                bootstrap_servers=broker.kafka_bootstrap,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            tp = KTopicPartition(topic, 0)
            consumer.assign([tp])
            deadline = time.monotonic() + 170
            try:
                while not (flushed.is_set() and len(consumed) >= len(acked)):
                    for records in consumer.poll(timeout_ms=200).values():
                        consumed.extend(int(r.value) for r in records)
                    if time.monotonic() > deadline:
                        break
            finally:
                consumer.close()

        ck_consumed: list[int] = []

        def ck_consume() -> None:
            consumer = CKConsumer(
                {
                    "bootstrap.servers": broker.kafka_bootstrap,
                    "group.id": "unused",
                    "enable.auto.commit": False,
                }
            )
            consumer.assign([CKTopicPartition(topic, 0, 0)])
            deadline = time.monotonic() + 170
            try:
                while not (flushed.is_set() and len(ck_consumed) >= len(acked)):
                    for msg in consumer.consume(1000, 0.2):
                        if msg.error() is None:
                            ck_consumed.append(int(msg.value()))
                    if time.monotonic() > deadline:
                        break
            finally:
                consumer.close()

        writer = threading.Thread(target=produce)
        readers = [threading.Thread(target=consume), threading.Thread(target=ck_consume)]
        writer.start()
        for reader in readers:
            reader.start()
        try:
            wait_until(lambda: len(acked) > 500, 30, what="acknowledged produces")
            leader = _leader_with_full_isr(admin, topic)
            assert leader is not None
            [node] = [c for c in broker.children if c.role == "node" and c.node_id == leader]
            before = len(acked)
            os.kill(node.pid, signal.SIGKILL)
            wait_until(
                lambda: admin.describe_topic(topic).partitions[0].leader not in (-1, leader),
                30,
                what="a new leader",
            )
            wait_until(lambda: len(acked) > before + 500, 60, what="produces on the new leader")
            wait_until(lambda: _leader_with_full_isr(admin, topic) is not None, 60, what="ISR back")
        finally:
            stop.set()
            writer.join(90)
            for reader in readers:
                reader.join(60)
        assert not failed, failed[:3]
        assert sorted(acked) == list(range(len(acked))), "acknowledged out of order or twice"
        assert consumed[: len(acked)] == list(range(len(acked))), "kafka-python lost some"
        assert ck_consumed[: len(acked)] == list(range(len(acked))), "librdkafka lost some"
        tp = TopicPartition(topic, 0)
        stored = [int(r.value) for r in read_partitions(broker.bootstrap, [tp])[tp]]
        assert stored[: len(acked)] == list(range(len(acked))), "stored once each, in order"
