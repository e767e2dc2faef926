"""Kafka clients against one kvlog node, beside kvlog's own client, in one run (not a test).

    PYTHONPATH=$PWD python tests/kafka/bench_kafka_clients.py [records] [--kafka-python]

One broker (one log dir, fsync before every acknowledgement), one partition per run,
100-byte values with 16-byte keys:

- confluent-kafka: ``produce()`` per record, acks=all, idempotent, linger at its default;
  then ``consume(batch)`` of the same records from offset 0, first at librdkafka's
  defaults, then with ``fetch.queue.backoff.ms=5`` (librdkafka >= 2.4 pauses a partition's
  fetches for 1 s once ``queued.min.messages`` are queued);
- a partition written by kvlog's producer (native batches, converted per batch in C for
  a Kafka fetch), consumed by confluent-kafka the same way;
- kvlog's own producer (``send()`` per record, acks=all) and consumer, for comparison;
- with ``--kafka-python``: kafka-python's producer and consumer too (pure Python).

Set KVLOG_PROFILE_DIR to cProfile every server process (the node's file shows where the
node's time went).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from confluent_kafka import Consumer, Producer, TopicPartition
from node_kafka_util import create_topic

import kvlog

VALUE, KEY = b"v" * 100, b"k" * 16


def confluent_produce(bootstrap: str, topic: str, records: int) -> float:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    started = time.perf_counter()
    for _ in range(records):
        while True:
            try:
                producer.produce(topic, VALUE, KEY, partition=0)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.001)
    assert producer.flush(120) == 0
    return records / (time.perf_counter() - started)


def confluent_consume(bootstrap: str, topic: str, records: int, **extra: object) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench",
            "enable.auto.commit": False,
            **extra,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    got = 0
    started = time.perf_counter()
    while got < records:
        got += len(consumer.consume(10_000, 1.0))
    took = time.perf_counter() - started
    consumer.close()
    return records / took


def kvlog_produce(bootstrap: str, topic: str, records: int) -> float:
    producer = kvlog.Producer(bootstrap_servers=bootstrap, acks="all")
    started = time.perf_counter()
    for _ in range(records):
        producer.send(topic, VALUE, key=KEY, partition=0)
    producer.flush()
    took = time.perf_counter() - started
    producer.close()
    return records / took


def kvlog_consume(bootstrap: str, topic: str, records: int) -> float:
    consumer = kvlog.Consumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    consumer.assign([kvlog.TopicPartition(topic, 0)])
    got = 0
    started = time.perf_counter()
    while got < records:
        got += sum(len(r) for r in consumer.poll(timeout_ms=1000).values())
    took = time.perf_counter() - started
    consumer.close()
    return records / took


def kafka_python(bootstrap: str, topic: str, records: int) -> tuple[float, float]:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTP

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    started = time.perf_counter()
    for _ in range(records):
        producer.send(topic, VALUE, key=KEY, partition=0)
    producer.flush()
    produce = records / (time.perf_counter() - started)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    consumer.assign([KTP(topic, 0)])
    consumer.seek(KTP(topic, 0), 0)
    got = 0
    started = time.perf_counter()
    while got < records:
        got += sum(len(r) for r in consumer.poll(timeout_ms=1000, max_records=100_000).values())
    consume = records / (time.perf_counter() - started)
    consumer.close()
    return produce, consume


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 1_000_000
    with tempfile.TemporaryDirectory() as data_dir:
        broker = kvlog.Broker(data_dir, "tcp://127.0.0.1:0", kafka_listen="127.0.0.1:0")
        with broker:
            kafka = broker.kafka_bootstrap
            assert kafka is not None
            for topic in ("ck", "native", "kv", "kp"):
                create_topic(broker, topic)
            boot = broker.bootstrap
            tuned = {"fetch.queue.backoff.ms": 5}
            steps: list[tuple[str, Callable[[], float]]] = [
                ("confluent-kafka produce() acks=all idempotent",
                 lambda: confluent_produce(kafka, "ck", records)),
                ("confluent-kafka consume(), Kafka batches, defaults",
                 lambda: confluent_consume(kafka, "ck", records)),
                ("confluent-kafka consume(), Kafka batches, fetch.queue.backoff.ms=5",
                 lambda: confluent_consume(kafka, "ck", records, **tuned)),
                ("kvlog Producer.send() acks=all",
                 lambda: kvlog_produce(boot, "native", records)),
                ("kvlog Consumer.poll(), native batches",
                 lambda: kvlog_consume(boot, "native", records)),
                ("confluent-kafka consume(), native batches, fetch.queue.backoff.ms=5",
                 lambda: confluent_consume(kafka, "native", records, **tuned)),
                ("kvlog Consumer.poll(), Kafka batches",
                 lambda: kvlog_consume(boot, "ck", records)),
            ]  # fmt: skip
            rows = [(name, step()) for name, step in steps]
            if "--kafka-python" in sys.argv:
                small = max(1, records // 10)
                produce, consume = kafka_python(kafka, "kp", small)
                rows += [
                    (f"kafka-python send() acks=all idempotent ({small:,})", produce),
                    (f"kafka-python poll() ({small:,})", consume),
                ]
    for name, rate in rows:
        print(f"{name:72s} {rate:>12,.0f} records/s")


if __name__ == "__main__":
    main()
