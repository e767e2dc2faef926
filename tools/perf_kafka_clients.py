"""``kvlog perf produce|consume --client confluent-kafka|kafka-python``: Kafka's own clients
against kvlog's Kafka listener, measured the way kvlog's client is (tools/perf_client.py).

- produce: ``produce()`` (confluent-kafka) or ``send()`` (kafka-python) per record, as a
  Kafka user writes it, then ``flush()``; the clock runs from the first record to the end of
  the flush. Latency is send -> delivery report of every k-th record (k = records //
  100,000 or 1), through a per-record callback on those records only. ``--acks all`` turns
  the client's idempotence on (kvlog's producer is idempotent by default; librdkafka's is
  not), so the same work is measured.
- consume: the topic is filled first (untimed) by confluent-kafka's producer when it is
  installed (Kafka batches, stored as they came), else kafka-python's; then one consumer
  reads ``--records`` records from offset 0 of every partition with ``consume(N)`` /
  ``poll(max_records=N)``. Latency is the duration of the calls that returned records.
  librdkafka pauses a partition's fetches for ``fetch.queue.backoff.ms`` (1 s) once
  ``queued.min.messages`` are queued: its default is kept (it is what a user gets); pass
  ``--client-config fetch.queue.backoff.ms=5`` to see the client without it.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import click

from .perf_client import MAX_SAMPLES, Options, Result, Tick, payloads

CLIENTS = ("kvlog", "confluent-kafka", "kafka-python")


def _require(client: str) -> None:
    module = "confluent_kafka" if client == "confluent-kafka" else "kafka"
    try:
        __import__(module)
    except ImportError:
        raise click.ClickException(
            f"--client {client} needs the {client} package: pip install {client}"
        ) from None


def _bootstrap(options: Options) -> str:
    if options.kafka_bootstrap is None:
        raise click.ClickException(
            "--client needs the broker's Kafka listener: pass --kafka-bootstrap HOST:PORT "
            "with --bootstrap-server (the embedded broker's is found by itself)"
        )
    return options.kafka_bootstrap


def _confluent_producer_config(
    options: Options, measured: bool = True, **extra: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": _bootstrap(options),
        "acks": options.acks,
        "enable.idempotence": options.acks in ("all", "-1"),
        "compression.type": options.compression,
    }
    if options.batch_size is not None:
        config["batch.size"] = options.batch_size
    if options.linger_ms is not None:
        config["linger.ms"] = options.linger_ms
    if measured:  # --client-setting is for the client under test, not the fill's producer
        config.update(options.client_settings)
    config.update(extra)
    return config


def _kafka_python_producer(options: Options) -> Any:
    from kafka import KafkaProducer

    acks: Any = "all" if options.acks in ("all", "-1") else int(options.acks)
    config: dict[str, Any] = {
        "bootstrap_servers": _bootstrap(options),
        "acks": acks,
        "enable_idempotence": acks == "all",
        "compression_type": None if options.compression == "none" else options.compression,
    }
    if options.batch_size is not None:
        config["batch_size"] = options.batch_size
    if options.linger_ms is not None:
        config["linger_ms"] = options.linger_ms
    config.update({k.replace(".", "_"): v for k, v in options.client_settings.items()})
    return KafkaProducer(**config)


def run_produce(options: Options, tick: Tick) -> Result:
    """Per-record sends by a Kafka client; see the module docstring."""
    _require(options.client)
    n = options.records
    keys, values = payloads(options)
    topic = options.topic
    stride = max(1, n // MAX_SAMPLES)
    latency: Counter[int] = Counter()
    clock = time.perf_counter

    if options.client == "confluent-kafka":
        from confluent_kafka import Producer

        producer = Producer(_confluent_producer_config(options))
        produce, poll = producer.produce, producer.poll
        started = clock()
        for i in range(n):
            key, value = keys[i & 1023], values[i & 1023]
            while True:
                try:
                    if i % stride:
                        produce(topic, value, key)
                    else:
                        produce(topic, value, key, on_delivery=_confluent_report(latency, clock))
                    break
                except BufferError:  # the client's queue is full: let deliveries drain it
                    poll(0.001)
            if not i & 16383:
                tick(min(16384, n - i))
        if producer.flush(300) != 0:
            raise click.ClickException("confluent-kafka: records were still queued after 300 s")
    else:
        producer = _kafka_python_producer(options)
        send = producer.send
        started = clock()
        for i in range(n):
            future = send(topic, values[i & 1023], keys[i & 1023])
            if not i % stride:
                sent = clock()
                future.add_callback(lambda _meta, sent=sent: latency.update([_since(sent)]))
            if not i & 16383:
                tick(min(16384, n - i))
        producer.flush()
        producer.close()
    seconds = clock() - started
    payload = n * (options.key_size + options.record_size)
    result = Result("produce", n, seconds, payload, "send -> delivery report", latency)
    result.extra["client"] = options.client
    return result


def _since(sent: float) -> int:
    return int((time.perf_counter() - sent) * 1e6)


def _confluent_report(latency: Counter[int], clock: Any) -> Any:
    sent = clock()

    def delivered(err: Any, _msg: Any) -> None:
        if err is None:
            latency[int((clock() - sent) * 1e6)] += 1

    return delivered


def fill(options: Options, tick: Tick) -> None:
    """Store ``--records`` records as a Kafka client writes them (untimed)."""
    keys, values = payloads(options)
    n = options.records
    try:
        from confluent_kafka import Producer
    except ImportError:
        producer = _kafka_python_producer(options)
        for i in range(n):
            producer.send(options.topic, values[i & 1023], keys[i & 1023])
        producer.flush()
        producer.close()
        tick(n)
        return
    config = _confluent_producer_config(
        options, measured=False, acks="1", **{"enable.idempotence": False}
    )
    config.setdefault("linger.ms", 20)
    config.setdefault("batch.size", 1 << 20)
    producer = Producer(config)
    for i in range(n):
        while True:
            try:
                producer.produce(options.topic, values[i & 1023], keys[i & 1023])
                break
            except BufferError:
                producer.poll(0.001)
        if not i & 16383:
            tick(min(16384, n - i))
    if producer.flush(300) != 0:
        raise click.ClickException("confluent-kafka: the fill was still queued after 300 s")


def run_consume(options: Options, tick: Tick, max_poll_records: int, partitions: int) -> Result:
    """One Kafka consumer reads ``--records`` records from offset 0 of every partition."""
    _require(options.client)
    n = options.records
    durations: Counter[int] = Counter()
    received = 0
    clock = time.perf_counter
    if options.client == "confluent-kafka":
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": _bootstrap(options),
                "group.id": "kvlog-perf",
                "enable.auto.commit": False,
                **options.client_settings,
            }
        )
        consumer.assign([TopicPartition(options.topic, p, 0) for p in range(partitions)])

        def take(limit: int) -> int:
            return sum(1 for m in consumer.consume(limit, 1.0) if m.error() is None)
    else:
        from kafka import KafkaConsumer
        from kafka import TopicPartition as KafkaTopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=_bootstrap(options),
            enable_auto_commit=False,
            **{k.replace(".", "_"): v for k, v in options.client_settings.items()},
        )
        tps = [KafkaTopicPartition(options.topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)

        def take(limit: int) -> int:
            batch = consumer.poll(timeout_ms=1000, max_records=limit)
            return sum(len(records) for records in batch.values())

    started = idle_since = clock()
    try:
        while received < n:
            t = clock()
            got = take(min(max_poll_records, n - received))
            now = clock()
            if not got:
                if now - idle_since > 10:
                    raise click.ClickException(
                        f"only {received} of {n} records arrived (nothing for 10 s)"
                    )
                continue
            idle_since = now
            durations[int((now - t) * 1e6)] += 1
            received += got
            tick(got)
        seconds = clock() - started
    finally:
        consumer.close()
    payload = received * (options.key_size + options.record_size)
    call = "consume()" if options.client == "confluent-kafka" else "poll()"
    result = Result("consume", received, seconds, payload, f"{call} call duration", durations)
    result.extra["client"] = options.client
    return result
