"""Kafka mode's Producer: kvlog's Producer API over confluent-kafka's.

``send()`` serializes and places a record as kvlog's producer does (murmur2 of the key;
unkeyed records stick to one partition until a ``batch.size`` worth went there), hands it
to librdkafka and returns the same :class:`~ipc.futures.FutureRecordMetadata`; a daemon
thread serves librdkafka's delivery reports, which resolve the futures (callbacks run
there, as on kvlog's I/O thread). ``send_batch`` returns a
:class:`~ipc.futures.BatchSendResult`. Sending to a topic that does not exist fails at
once, as in kvlog mode (the producer never asks a cluster to auto-create topics).

Differences a program may notice: idempotence needs ``acks="all"`` on Kafka (with acks 0
or 1 it is off), and a record's partition count comes from the cluster's metadata,
refreshed every ``metadata.max.age.ms``.

Safe to share between threads.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kvlog.errors import (
    InvalidPartitionsError,
    KafkaTimeoutError,
    KvlogError,
    ProducerClosedError,
    UnknownTopicOrPartitionError,
)
from kvlog.partitioner import partition_for_key

from ..client_args import check_timestamp, header_value, record_serializers
from ..client_metrics import ProducerMetrics
from ..futures import BatchFuture, BatchSendResult, FutureRecordMetadata
from .errors import kafka_errors, to_kvlog
from .settings import kafka_settings

log = logging.getLogger(__name__)


class KafkaModeProducer:
    """Sends records to a Kafka cluster with kvlog's Producer API (module docstring)."""

    def __init__(self, config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        from confluent_kafka import Producer as _RdProducer

        settings = kafka_settings("producer", config, kwargs)
        cfg = self.config = settings.kvlog
        self._bootstrap = settings.bootstrap
        serializers = record_serializers(cfg)
        self._key_serializer = serializers["key_serializer"]
        self._value_serializer = serializers["value_serializer"]
        self._raw_keys = serializers["raw_keys"]
        self._raw_values = serializers["raw_values"]
        self._max_block_s = cfg["max_block_ms"] / 1000
        self._timeout_s = cfg["request_timeout_ms"] / 1000
        self._batch_size = cfg["batch_size"]
        self._metadata_age_s = cfg["metadata_max_age_ms"] / 1000
        self._counts: dict[str, tuple[int, float]] = {}  # topic -> (partitions, when)
        self._sticky: dict[str, list[int]] = {}  # topic -> [partition, bytes sent there]
        self._lock = threading.Lock()
        self._fatal: KvlogError | None = None
        self._warned: set[int] = set()
        self._metrics = ProducerMetrics()
        rd = {
            **settings.librdkafka,
            "allow.auto.create.topics": False,
            "error_cb": self._on_error,
        }
        with kafka_errors("cannot create the Kafka producer: "):
            self._producer = _RdProducer(rd)
        self._closed = False
        self._stop = threading.Event()
        self._poller = threading.Thread(
            target=self._serve_reports, name=f"kafka-producer-{cfg['client_id']}", daemon=True
        )
        self._poller.start()

    def __enter__(self) -> KafkaModeProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<kvlog.Producer kafka bootstrap={self._bootstrap}>"

    # -- librdkafka's callbacks ------------------------------------------------------------

    def _serve_reports(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def _on_error(self, error: Any) -> None:
        if error.fatal():
            self._fatal = to_kvlog(error, "the Kafka producer failed: ")
            log.error("%s", self._fatal.message)
        elif error.code() not in self._warned:
            self._warned.add(error.code())  # librdkafka repeats these; once is enough
            log.warning("Kafka producer: %s", error.str())

    @staticmethod
    def _delivered(future: FutureRecordMetadata, error: Any, message: Any) -> None:
        if error is not None:
            future._batch.set_exception(to_kvlog(error, f"record to {future.topic}: "))
        else:  # the partition was placed before produce(); acks=0 has no offset (-1)
            offset = message.offset()
            future._batch.set_result(-1 if offset is None or offset < 0 else offset)

    # -- placement -------------------------------------------------------------------------

    def _partition_count(self, topic: str) -> int:
        known = self._counts.get(topic)
        if known is not None and time.monotonic() - known[1] < self._metadata_age_s:
            return known[0]
        with kafka_errors(f"metadata of {topic!r}: "):
            found = self._producer.list_topics(topic, timeout=self._max_block_s)
        entry = found.topics.get(topic)
        error = entry.error if entry is not None else None
        if entry is None or (error is not None and error.code() in (3, -188)):
            raise UnknownTopicOrPartitionError(
                f"topic {topic!r} does not exist; create it first (kvlog topics create "
                f"{topic} --bootstrap-server kafka://..., or Admin.create_topic)"
            )
        if error is not None:
            raise to_kvlog(error, f"topic {topic!r}: ")
        count = len(entry.partitions)
        self._counts[topic] = (count, time.monotonic())
        return count

    def _place(self, topic: str, key: bytes | None, partition: int | None, size: int) -> int:
        count = self._partition_count(topic)
        if partition is not None:
            if not 0 <= partition < count:
                raise InvalidPartitionsError(
                    f"partition {partition} does not exist: topic {topic!r} has {count}"
                )
            return partition
        if key is not None:
            return partition_for_key(key, count)
        with self._lock:  # kvlog's sticky partitioner: move on after a batch.size worth
            sticky = self._sticky.get(topic)
            if sticky is None or sticky[0] >= count or sticky[1] >= self._batch_size:
                choices = [p for p in range(count) if sticky is None or p != sticky[0]]
                sticky = self._sticky[topic] = [random.choice(choices or [0]), 0]
            sticky[1] += size
            return int(sticky[0])

    # -- sending ---------------------------------------------------------------------------

    def send(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        headers: Iterable[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> FutureRecordMetadata:
        """Queue one record; returns a future resolving to its RecordMetadata."""
        self._check_open("send()")
        key_bytes = (
            key
            if self._raw_keys and (key is None or type(key) is bytes)
            else self._key_serializer(key)
        )
        value_bytes = (
            value
            if self._raw_values and (value is None or type(value) is bytes)
            else self._value_serializer(value)
        )
        header_list = [(str(n), header_value(v)) for n, v in headers] if headers else None
        ts = time.time_ns() // 1_000_000 if timestamp_ms is None else check_timestamp(timestamp_ms)
        size = len(value_bytes or b"") + len(key_bytes or b"")
        where = self._place(topic, key_bytes, partition, size)
        future = FutureRecordMetadata(
            BatchFuture(),
            0,
            topic,
            where,
            ts,
            -1 if key_bytes is None else len(key_bytes),
            -1 if value_bytes is None else len(value_bytes),
        )
        self._produce(topic, value_bytes, key_bytes, where, ts, header_list, future)
        return future

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int,
        ts: int,
        headers: list[tuple[str, bytes]] | None,
        future: FutureRecordMetadata,
    ) -> None:
        deadline = time.monotonic() + self._max_block_s
        callback = functools.partial(self._delivered, future)
        while True:
            try:
                self._producer.produce(
                    topic,
                    value,
                    key,
                    partition=partition,
                    timestamp=ts,
                    headers=headers,
                    on_delivery=callback,
                )
                return
            except BufferError:
                # buffer.memory is full: wait for deliveries, as kvlog's send() blocks.
                if time.monotonic() >= deadline:
                    raise KafkaTimeoutError(
                        f"the producer's buffer stayed full for max.block.ms "
                        f"({self._max_block_s * 1000:.0f} ms); is the Kafka cluster at "
                        f"{', '.join(self._bootstrap)} reachable?"
                    ) from None
                self._producer.poll(0.05)
            except Exception as exc:
                from confluent_kafka import KafkaException

                if isinstance(exc, KafkaException):
                    raise to_kvlog(exc, f"send to {topic}: ") from None
                raise

    def send_batch(
        self,
        topic: str,
        values: Sequence[Any],
        keys: Sequence[Any] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> BatchSendResult:
        """Queue many records; all get one timestamp. ``.get(timeout)`` gives every
        record's RecordMetadata in the order given (kvlog mode's contract)."""
        self._check_open("send_batch()")
        if keys is not None and len(keys) != len(values):
            raise ValueError(f"send_batch: {len(keys)} keys for {len(values)} values")
        ts = time.time_ns() // 1_000_000 if timestamp_ms is None else check_timestamp(timestamp_ms)
        segments: list[tuple[int, list[int], BatchFuture, int]] = []
        for i, value in enumerate(values):
            future = self.send(
                topic,
                value=value,
                key=None if keys is None else keys[i],
                partition=partition,
                timestamp_ms=ts,
            )
            segments.append((future.partition, [i], future._batch, 0))
        return BatchSendResult(topic, ts, len(values), segments)

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ProducerClosedError(f"{what} on a closed producer; create a new one")
        if self._fatal is not None:
            raise self._fatal

    def partitions_for(self, topic: str) -> set[int]:
        return set(range(self._partition_count(topic)))

    # -- flush / close ---------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued so far and wait until each record is acknowledged or
        failed (failures surface through the records' futures)."""
        left = self._producer.flush(-1 if timeout is None else timeout)
        if left:
            raise KafkaTimeoutError(f"flush did not finish within {timeout} s ({left} left)")

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``), then stop; records still unsent fail."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(timeout)
        except KafkaTimeoutError:
            log.warning("producer closed with records still unacknowledged")
        finally:
            self._producer.purge()  # what is left fails its futures through the reports
            self._producer.flush(1)
            self._stop.set()
            self._poller.join(2)

    def metrics(self, raw: bool = False) -> dict[str, dict[str, Any]]:
        """Kafka's producer metric names, as in kvlog mode (librdkafka's own statistics
        are in its ``statistics.interval.ms`` callback)."""
        return self._metrics.snapshot()
