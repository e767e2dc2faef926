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
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from time import monotonic, time_ns
from typing import Any

from kvlog import batch as batch_format
from kvlog.errors import (
    InvalidPartitionsError,
    InvalidTimestampError,
    KafkaTimeoutError,
    KvlogError,
    ProducerClosedError,
    Recovery,
    SerializationError,
    UnknownTopicOrPartitionError,
    error_from_code,
)
from kvlog.partitioner import group_by_partition, partition_for_key
from kvlog.types import TopicPartition

from .accumulator import ProducerBatch, RecordAccumulator
from .acks import answers_produce
from .config import PRODUCER_SETTINGS, resolve
from .futures import BatchFuture, BatchSendResult, FutureRecordMetadata, RecordMetadata
from .metadata import ClusterMetadata, MetadataRefresher
from .rpc import IOThread
from .security import client_socket_options
from .sequencing import Sequencer, Verdict
from .serializers import serializer
from .wire import split_bootstrap

log = logging.getLogger(__name__)
_INT64_MAX = (1 << 63) - 1

__all__ = ["BatchSendResult", "Producer", "RecordMetadata"]


class Producer:
    """Sends records to kvlog topics. See the module docstring."""

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

    def metrics(self) -> dict[str, Any]:
        return dict(self._sender.stats)


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


class Sender:
    """The producer's driver on the I/O thread. Not thread-safe (I/O thread only), except
    ``want_topic`` and ``abort``."""

    def __init__(self, producer: Producer) -> None:
        cfg = producer.config
        self.producer = producer
        self.metadata = producer.metadata
        self.accumulator = producer._accumulator
        self.bootstrap = producer._bootstrap
        self.acks: int = cfg["acks"]
        self.codec = cfg["compression_type"]
        self.idempotent: bool = cfg["enable_idempotence"]
        self.retries: int = cfg["retries"]
        self.backoff_s = cfg["retry_backoff_ms"] / 1000
        self.max_in_flight: int = cfg["max_in_flight_requests_per_connection"]
        self.max_request_size: int = cfg["max_request_size"]
        self.request_timeout_ms: int = cfg["request_timeout_ms"]
        self.metadata_max_age_s = cfg["metadata_max_age_ms"] / 1000
        self.sequencer = Sequencer(idempotent=self.idempotent, max_in_flight=self.max_in_flight)
        self.producer_id = -1
        self._pid_in_flight = False
        self._pid_retry_at = 0.0
        self._node_inflight: dict[str, int] = defaultdict(int)
        self.refresher = MetadataRefresher(self.metadata, self.bootstrap, self.backoff_s)
        self._wanted: set[str] = set()
        self._wanted_lock = threading.Lock()
        self._aborted: KvlogError | None = None
        self.stats: dict[str, int] = defaultdict(int)

    def want_topic(self, topic: str) -> None:
        with self._wanted_lock:
            self._wanted.add(topic)
        self.metadata.mark_stale()

    def abort(self, error: KvlogError) -> None:
        self._aborted = error
        for batch in self.accumulator.abort_all():
            self._fail(batch, error)

    # -- the driver turn -------------------------------------------------------------------

    def run(self, io: IOThread, now: float) -> float | None:
        wake = now + 0.1
        self._refresh_metadata(io, now)
        if self.idempotent and self.producer_id < 0:
            if self.accumulator.has_unsent:
                self._init_producer_id(io, now)
            return min(wake, now + 0.01)
        for batch in self.accumulator.expired(now):
            if batch.base_sequence >= 0:
                self.sequencer.on_expired(batch.tp, batch)
            self._fail(batch, self._timeout_error(batch))
        ready, next_due = self.accumulator.ready(now)
        if ready and self._send_ready(io, ready, now):
            # Batches wait for a partition's leader: run again when metadata may be asked.
            refresh_at = self.refresher.due_at(now)
            if refresh_at is not None:
                wake = min(wake, refresh_at)
        if next_due is not None:
            wake = min(wake, next_due)
        return wake

    def _timeout_error(self, batch: ProducerBatch) -> KafkaTimeoutError:
        return KafkaTimeoutError(
            f"{batch.record_count} record(s) for {batch.tp} expired after delivery.timeout.ms "
            f"({self.accumulator.delivery_timeout_s * 1000:.0f} ms) without acknowledgement"
        )

    def _refresh_metadata(self, io: IOThread, now: float) -> None:
        with self._wanted_lock:
            wanted = set(self._wanted)
        known = set(self.metadata.topics)
        # A topic send() waits for goes at once; stale metadata (a leader moved or its
        # connection dropped) is refreshed at most every retry.backoff.ms.
        urgent = not wanted <= known | self.metadata.missing
        due = self.metadata.stale or now - self.metadata.updated_at > self.metadata_max_age_s
        if not (due or urgent) or self.refresher.busy(now, urgent=urgent):
            return

        def updated() -> None:
            with self._wanted_lock:
                self._wanted -= set(self.metadata.topics) | self.metadata.missing

        self.refresher.request(io, sorted(known | wanted), updated)

    def _init_producer_id(self, io: IOThread, now: float) -> None:
        if self._pid_in_flight or now < self._pid_retry_at:
            return
        self._pid_in_flight = True
        endpoint = self.refresher.endpoint()

        def done(
            header: dict[str, Any] | None, frames: list[bytes], error: KvlogError | None
        ) -> None:
            self._pid_in_flight = False
            if header is not None and error is not None and not error.retriable:
                # Refused for good (e.g. not authorized): fail what waits, don't spin.
                log.error("the broker refused a producer id: %s", error.message)
                for batch in self.accumulator.abort_all():
                    self._fail(batch, error)
                self._pid_retry_at = time.monotonic() + 1.0
                return
            if header is None or error is not None:
                self.refresher.rotate()
                self._pid_retry_at = time.monotonic() + self.backoff_s
                log.debug("init_producer_id failed: %s", error)
                return
            self.producer_id = header["producer_id"]
            self.sequencer.producer_epoch = header["producer_epoch"]

        io.send_now(endpoint, "init_producer_id", {}, done)

    def _send_ready(self, io: IOThread, ready: list[TopicPartition], now: float) -> bool:
        """Send what the partitions' leaders can take; returns whether a partition waits
        for its leader (none known, or its connection dropped or was refused)."""
        by_endpoint: dict[str, list[TopicPartition]] = defaultdict(list)
        held = False
        for tp in ready:
            endpoint = self.metadata.leader_endpoint(tp)
            if endpoint is None or io.endpoint_down(endpoint):
                # Hold the batches and refresh until the metadata names a leader that can
                # be reached: sent to a dead leader's address they would wait there (ZeroMQ
                # queues them) until it restarts, while another replica already leads.
                held = True
                self.metadata.mark_stale()
                continue
            by_endpoint[endpoint].append(tp)
        for endpoint, tps in by_endpoint.items():
            while self._node_inflight[endpoint] < self.max_in_flight:
                batches = self._collect(tps, now)
                if not batches:
                    break
                self._send(io, endpoint, batches)
        return held

    def _collect(self, tps: list[TopicPartition], now: float) -> list[ProducerBatch]:
        """At most one batch per partition, up to max.request.size (at least one)."""
        batches: list[ProducerBatch] = []
        size = 0
        for tp in tps:
            if not self.sequencer.may_send(tp):
                continue
            batch = self.accumulator.drain(tp, now)
            if batch is None:
                continue
            self.sequencer.on_send(tp, batch)
            if batch.encoded is None:
                try:
                    batch.encoded = self._encode(batch)
                except Exception as exc:  # a record CBOR cannot encode: fail the batch
                    error = SerializationError(f"batch for {tp} cannot be encoded: {exc}")
                    _, resend = self.sequencer.on_error(tp, batch, error, can_retry=False)
                    self._fail(batch, error)
                    self._requeue(resend, now)
                    continue
            batches.append(batch)
            size += len(batch.encoded)
            if size >= self.max_request_size:
                break
        return batches

    def _encode(self, batch: ProducerBatch) -> bytes:
        ts = batch.ts_deltas
        return batch_format.encode(
            # One shared delta (a send_batch, or records sent in the same ms) encodes as one int.
            ts[0] if ts.count(ts[0]) == len(ts) else ts,
            batch.keys,
            batch.values,
            batch.headers,
            first_timestamp=batch.first_timestamp,
            max_timestamp=batch.max_timestamp,
            codec=self.codec,
            producer_id=self.producer_id if self.idempotent else -1,
            producer_epoch=batch.producer_epoch if self.idempotent else -1,
            base_sequence=batch.base_sequence if self.idempotent else -1,
        )

    def _send(self, io: IOThread, endpoint: str, batches: list[ProducerBatch]) -> None:
        for batch in batches:
            batch.attempts += 1
        fields = {
            "acks": self.acks,
            "timeout_ms": self.request_timeout_ms,
            "partitions": [[b.tp.topic, b.tp.partition] for b in batches],
        }
        frames = [b.encoded for b in batches if b.encoded is not None]
        self.stats["requests"] += 1
        self.stats["batches"] += len(batches)
        if not answers_produce(self.acks):
            io.send_now(endpoint, "produce", fields, None, frames=frames)
            for batch in batches:
                self._succeed(batch, -1, -1)
            return
        self._node_inflight[endpoint] += 1

        def done(
            header: dict[str, Any] | None, rframes: list[bytes], error: KvlogError | None
        ) -> None:
            self._node_inflight[endpoint] -= 1
            self._on_reply(batches, header, error)

        # fail_fast: a refused connection (the leader is down) fails the request at once,
        # so the batches go to the new leader rather than waiting for a restart here.
        io.send_now(endpoint, "produce", fields, done, frames=frames, fail_fast=True)

    def _on_reply(
        self, batches: list[ProducerBatch], header: dict[str, Any] | None, error: KvlogError | None
    ) -> None:
        results = (header or {}).get("results")
        if error is not None or not isinstance(results, list) or len(results) != len(batches):
            error = error or KvlogError("malformed produce reply")
            for batch in batches:
                self._on_batch_error(batch, error)
            return
        for batch, result in zip(batches, results, strict=True):
            code = result.get("error", 0)
            if code:
                self._on_batch_error(batch, error_from_code(code, result.get("message")))
            else:
                self._succeed(
                    batch, result.get("base_offset", -1), result.get("log_start_offset", -1)
                )

    def _on_batch_error(self, batch: ProducerBatch, error: KvlogError) -> None:
        now = time.monotonic()
        if error.recovery is Recovery.REFRESH_METADATA:
            self.metadata.mark_stale()
        can_retry = (
            self._aborted is None and batch.attempts <= self.retries and now < batch.deadline
        )
        verdict, resend = self.sequencer.on_error(batch.tp, batch, error, can_retry=can_retry)
        if verdict is Verdict.FAIL:
            if now >= batch.deadline:
                error = self._timeout_error(batch)
            self._fail(batch, error)
        else:
            self.stats["retries"] += 1
            log.debug("retrying %s after %s", batch, error)
        self._requeue(resend, now)

    def _succeed(self, batch: ProducerBatch, base_offset: int, log_start_offset: int) -> None:
        resend = self.sequencer.on_success(batch.tp, batch)
        self.accumulator.complete(batch)
        batch.future.set_result(base_offset, log_start_offset)
        self._requeue(resend, time.monotonic())

    def _fail(self, batch: ProducerBatch, error: BaseException) -> None:
        self.accumulator.complete(batch)
        batch.future.set_exception(error)

    def _requeue(self, resend: list[Any], now: float) -> None:
        if resend:
            self.accumulator.requeue_front(resend, now + self.backoff_s)
