"""The Producer: kafka-python's API over kvlog's wire.

``send()`` serializes, picks the partition (Kafka's murmur2 for keyed records, sticky
batches for unkeyed ones), appends to the accumulator and returns a future. A background
I/O thread (the :class:`Sender`) asks the broker for metadata and a producer id, sends
full or lingered batches straight to each partition's leader node (one batch per
partition per request, up to ``max.in.flight.requests.per.connection`` requests per node),
and resolves futures as acknowledgements arrive. Retriable failures are retried with
backoff within ``delivery.timeout.ms``; with idempotence (the default) the leader drops
duplicates and refuses gaps, so retries never duplicate or reorder.

The producer is safe to share between threads.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from time import monotonic, time_ns
from typing import Any

from kvlog.errors import (
    InvalidPartitionsError,
    InvalidTimestampError,
    KafkaTimeoutError,
    ProducerClosedError,
    SerializationError,
    UnknownTopicOrPartitionError,
)
from kvlog.partitioner import group_by_partition, partition_for_key
from kvlog.types import TopicPartition

from . import kafka_client
from .accumulator import RecordAccumulator
from .config import PRODUCER_SETTINGS, resolve
from .futures import BatchFuture, BatchSendResult, FutureRecordMetadata, RecordMetadata
from .metadata import ClusterMetadata
from .rpc import IOThread
from .security import client_socket_options
from .sender import Sender
from .serializers import serializer
from .wire import split_bootstrap

log = logging.getLogger(__name__)
_INT64_MAX = (1 << 63) - 1

__all__ = ["BatchSendResult", "Producer", "RecordMetadata"]


class Producer:
    """Sends records to kvlog topics. See the module docstring."""

    def __new__(cls, config: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        # Kafka mode (a kafka:// bootstrap server or protocol="kafka"): ipc/kafka_client/.
        if cls is Producer and kafka_client.wanted(config, kwargs):
            return kafka_client.make_producer(config, kwargs)
        return super().__new__(cls)

    def __init__(self, config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        cfg = resolve(PRODUCER_SETTINGS, config, kwargs)
        self.config = cfg
        self._bootstrap = split_bootstrap(cfg["bootstrap_servers"])
        self._key_serializer = serializer(cfg["key_serializer"], "key_serializer")
        self._value_serializer = serializer(cfg["value_serializer"], "value_serializer")
        # Without a serializer, bytes and None pass through untouched (no call per record);
        # with one, every key/value goes through it, as in kafka-python.
        self._raw_keys = cfg["key_serializer"] is None
        self._raw_values = cfg["value_serializer"] is None
        self._max_block_s = cfg["max_block_ms"] / 1000
        self.metadata = ClusterMetadata()
        self._accumulator = RecordAccumulator(
            batch_size=cfg["batch_size"],
            linger_ms=cfg["linger_ms"],
            buffer_memory=cfg["buffer_memory"],
            max_block_ms=cfg["max_block_ms"],
            delivery_timeout_ms=cfg["delivery_timeout_ms"],
        )
        self._sticky: dict[str, int] = {}
        self._topic_partitions: dict[str, list[TopicPartition]] = {}
        self._tps_version = -2
        self._sticky_lock = threading.Lock()
        self._closed = False
        self._sender = Sender(self)
        self._io = IOThread(
            f"producer-{cfg['client_id']}",
            request_timeout_ms=cfg["request_timeout_ms"],
            driver=self._sender,
            socket_options=client_socket_options(cfg),
        )

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<kvlog.Producer bootstrap={self._bootstrap}>"

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
        if self._closed:
            raise ProducerClosedError("send() on a closed producer; create a new one")
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
        header_list = None
        if headers:
            header_list = [[str(name), _header_value(hvalue)] for name, hvalue in headers]
        tps = self._topic_partitions.get(topic)
        if tps is None or self._tps_version != self.metadata.version:
            tps = self._partitions_of(topic)
        count = len(tps)
        if partition is not None:
            if not 0 <= partition < count:
                raise InvalidPartitionsError(
                    f"partition {partition} does not exist: topic {topic!r} has {count}"
                )
        elif key_bytes is not None:
            partition = partition_for_key(key_bytes, count)
        else:
            partition = self._sticky_partition(topic, count)
        ts = time_ns() // 1_000_000 if timestamp_ms is None else _check_timestamp(timestamp_ms)
        future, delta, filled = self._accumulator.append(
            tps[partition], ts, key_bytes, value_bytes, header_list, monotonic()
        )
        if filled:
            if key_bytes is None and self._sticky.get(topic) == partition:
                self._next_sticky(topic, count, partition)
            self._io.wake()
        elif delta == 0:
            self._io.wake()  # a new batch: the sender must start its linger.ms clock now
        return FutureRecordMetadata(
            future,
            delta,
            topic,
            partition,
            ts,
            -1 if key_bytes is None else len(key_bytes),
            -1 if value_bytes is None else len(value_bytes),
        )

    def send_batch(
        self,
        topic: str,
        values: Sequence[Any],
        keys: Sequence[Any] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> BatchSendResult:
        """Queue many records at once: the fast path (per-batch work, not a call, a lock
        and a future per record). Keyed records go where ``send`` would put them; unkeyed
        ones fill the sticky partition batch by batch. All get one timestamp.

        Returns a :class:`BatchSendResult`; ``.get(timeout)`` gives every record's
        RecordMetadata in the order given.
        """
        if self._closed:
            raise ProducerClosedError("send_batch() on a closed producer; create a new one")
        if self._raw_values and all(v is None or type(v) is bytes for v in values):
            vs = list(values)
        else:
            vs = [self._value_serializer(v) for v in values]
        if keys is None:
            ks: list[bytes | None] = [None] * len(vs)
        else:
            if len(keys) != len(vs):
                raise ValueError(f"send_batch: {len(keys)} keys for {len(vs)} values")
            if self._raw_keys and all(k is None or type(k) is bytes for k in keys):
                ks = list(keys)
            else:
                ks = [self._key_serializer(k) for k in keys]
        tps = self._topic_partitions.get(topic)
        if tps is None or self._tps_version != self.metadata.version:
            tps = self._partitions_of(topic)
        count = len(tps)
        if partition is not None and not 0 <= partition < count:
            raise InvalidPartitionsError(
                f"partition {partition} does not exist: topic {topic!r} has {count}"
            )
        ts = time_ns() // 1_000_000 if timestamp_ms is None else _check_timestamp(timestamp_ms)
        now = monotonic()
        segments: list[tuple[int, list[int], BatchFuture, int]] = []
        if partition is not None or count == 1:
            # One partition given, or the topic has one: nothing to hash.
            target = partition or 0
            landed = self._accumulator.append_many(tps[target], ts, ks, vs, now)
            _add_segments(segments, target, list(range(len(vs))), landed)
        elif keys is None:
            self._append_sticky(topic, tps, list(range(len(vs))), ks, vs, ts, now, segments)
        else:
            # Hashing and grouping in one C call, then every partition's share appended
            # under one lock: per-partition work, not per-record work, in Python.
            groups = group_by_partition(ks, vs, count)
            unkeyed = groups.pop(-1, None)
            appended = self._accumulator.append_partitioned(
                tps, [(p, g[1], g[2]) for p, g in groups.items()], ts, now
            )
            for (p, landed), group in zip(appended, groups.values(), strict=True):
                _add_segments(segments, p, group[0], landed)
            if unkeyed is not None:
                self._append_sticky(topic, tps, *unkeyed, ts, now, segments)
        self._io.wake()  # full batches go now; new ones start their linger.ms clock
        return BatchSendResult(topic, ts, len(vs), segments)

    def _append_sticky(
        self,
        topic: str,
        tps: list[TopicPartition],
        indices: list[int],
        keys: list[bytes | None],
        values: list[bytes | None],
        timestamp: int,
        now: float,
        segments: list[tuple[int, list[int], BatchFuture, int]],
    ) -> None:
        """Unkeyed records of send_batch: they fill the sticky partition, which moves on
        each time a batch fills (Kafka's sticky partitioner)."""
        count = len(tps)
        done = 0
        while done < len(values):
            target = self._sticky_partition(topic, count)
            landed = self._accumulator.append_many(
                tps[target], timestamp, keys[done:], values[done:], now
            )
            taken = 0
            for _future, _delta, n, filled in landed:
                taken += n
                if filled:
                    self._next_sticky(topic, count, target)
                    break
            _add_segments(segments, target, indices[done : done + taken], landed)
            done += taken

    def _partitions_of(self, topic: str) -> list[TopicPartition]:
        """The topic's TopicPartition objects, cached per metadata version (send() reuses
        them instead of building one per record)."""
        if self._tps_version != self.metadata.version:
            self._topic_partitions = {}
            self._tps_version = self.metadata.version
        count = self.metadata.partition_count(topic)
        if count is None:
            count = self._wait_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in range(count)]
        self._topic_partitions[topic] = tps
        return tps

    def _sticky_partition(self, topic: str, count: int) -> int:
        partition = self._sticky.get(topic)
        if partition is None or partition >= count:
            with self._sticky_lock:
                available = self.metadata.available_partitions(topic) or list(range(count))
                partition = self._sticky[topic] = random.choice(available)
        return partition

    def _next_sticky(self, topic: str, count: int, current: int) -> None:
        """Kafka's sticky partitioner: move on once a batch for the partition filled."""
        with self._sticky_lock:
            available = [p for p in self.metadata.available_partitions(topic) if p != current]
            if not available:
                available = [p for p in range(count) if p != current] or [current]
            self._sticky[topic] = random.choice(available)

    def _wait_for_topic(self, topic: str) -> int:
        deadline = time.monotonic() + self._max_block_s
        while True:
            since = time.monotonic()
            self._sender.want_topic(topic)
            self._io.wake()
            self.metadata.wait_for_update(since, max(0.0, deadline - time.monotonic()))
            count = self.metadata.partition_count(topic)
            if count is not None:
                return count
            if self.metadata.fatal_error is not None:
                raise self.metadata.fatal_error
            if topic in self.metadata.missing and self.metadata.updated_at > since:
                refused = self.metadata.topic_error(topic)
                if refused is not None:
                    raise refused
                raise UnknownTopicOrPartitionError(
                    f"topic {topic!r} does not exist; create it first (kvlog topics create "
                    f"{topic}, or Admin.create_topic)"
                )
            if time.monotonic() >= deadline:
                raise KafkaTimeoutError(
                    f"no metadata for topic {topic!r} after max.block.ms "
                    f"({self._max_block_s * 1000:.0f} ms); is the broker at "
                    f"{', '.join(self._bootstrap)} running?"
                )

    def partitions_for(self, topic: str) -> set[int]:
        if self.metadata.partition_count(topic) is None:
            self._wait_for_topic(topic)
        return self.metadata.partitions_for(topic) or set()

    # -- flush / close ---------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued so far and wait until each record is acknowledged or
        failed (failures surface through the records' futures)."""
        pending = self._accumulator.incomplete()
        if not pending:
            return
        self._accumulator.begin_flush()
        try:
            self._io.wake()
            deadline = None if timeout is None else time.monotonic() + timeout
            for batch in pending:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not batch.future.wait(left):
                    raise KafkaTimeoutError(f"flush did not finish within {timeout} s")
        finally:
            self._accumulator.end_flush()

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
            self._accumulator.close()
            self._sender.abort(ProducerClosedError("the producer was closed before sending"))
            self._io.close()

    def metrics(self, raw: bool = False) -> dict[str, dict[str, Any]]:
        """Kafka's producer metrics (``record-send-rate``, ``request-latency-avg``, ...)
        as kafka-python returns them: ``{"producer-metrics": {name: value}}``. ``raw`` is
        accepted for kafka-python's signature and changes nothing."""
        return self._sender.metrics.snapshot()


def _add_segments(
    segments: list[tuple[int, list[int], BatchFuture, int]],
    partition: int,
    indices: list[int],
    landed: list[tuple[BatchFuture, int, int, bool]],
) -> None:
    """Record where a run of send_batch's records landed: (partition, caller indices,
    batch future, first offset delta) per batch."""
    if len(landed) == 1:
        future, delta, _n, _filled = landed[0]
        segments.append((partition, indices, future, delta))
        return
    placed = 0
    for future, delta, n, _filled in landed:
        segments.append((partition, indices[placed : placed + n], future, delta))
        placed += n


def _header_value(value: Any) -> bytes:
    """Header values are bytes, as in Kafka. (``bytes(5)`` would silently give five zero
    bytes, and ``bytes("text")`` a bare TypeError.)"""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise SerializationError(
        f"header values must be bytes, got {type(value).__name__} {value!r:.40}; encode it "
        "first (e.g. str.encode())"
    )


def _check_timestamp(timestamp_ms: Any) -> int:
    """A record timestamp: ms since the epoch, non-negative and within int64 (as Kafka
    requires). Refused here: the batch header could not hold it, and its encoding would
    fail on the I/O thread, leaving the record unsent and flush() waiting forever."""
    if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int):
        raise InvalidTimestampError(
            f"timestamp_ms must be an integer (ms since the epoch), got {timestamp_ms!r}"
        )
    if not 0 <= timestamp_ms <= _INT64_MAX:
        raise InvalidTimestampError(
            f"timestamp_ms={timestamp_ms} is invalid: a timestamp is ms since the epoch, "
            "non-negative (or None for now)"
        )
    return timestamp_ms
