"""The Producer: kafka-python's API over kvlog's wire.

``send()`` serializes, picks the partition (Kafka's murmur2 for keyed records, sticky
batches for unkeyed ones), appends to the accumulator and returns a future: with the C
extension all of that is one C call (ipc/accumulator.py). A background I/O thread (the
:class:`Sender`) asks the broker for metadata and a producer id, sends full or lingered
batches straight to each partition's leader node (every ready batch of a node in one
request, up to ``max.in.flight.requests.per.connection`` requests per node and batches
per partition), and resolves futures as acknowledgements arrive. Retriable failures are
retried with backoff within ``delivery.timeout.ms``; with idempotence (the default) the
leader drops duplicates and refuses gaps, so retries never duplicate or reorder.

The producer is safe to share between threads.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from time import monotonic, time_ns
from typing import Any

from kvlog.errors import (
    InvalidConfigError,
    InvalidTxnStateError,
    KafkaTimeoutError,
    ProducerClosedError,
    UnknownTopicOrPartitionError,
)
from kvlog.types import TopicPartition

from . import kafka_client
from .accumulator import RecordAccumulator, check_timestamp
from .client_args import record_serializers
from .config import PRODUCER_SETTINGS, resolve
from .futures import BatchSendResult, FutureRecordMetadata, RecordMetadata
from .metadata import ClusterMetadata
from .rpc import IOThread
from .security import client_header_fields, client_socket_options
from .sender import Sender
from .transactions import TransactionManager
from .wire import split_bootstrap

log = logging.getLogger(__name__)

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
        self._max_block_s = cfg["max_block_ms"] / 1000
        self.metadata = ClusterMetadata()
        self._accumulator = RecordAccumulator(
            batch_size=cfg["batch_size"],
            linger_ms=cfg["linger_ms"],
            buffer_memory=cfg["buffer_memory"],
            max_block_ms=cfg["max_block_ms"],
            delivery_timeout_ms=cfg["delivery_timeout_ms"],
            hooks=_Hooks(self),
            # Without a serializer, bytes and None pass through untouched (no call per
            # record); with one, every key/value goes through it, as in kafka-python.
            **record_serializers(cfg),
            # More closed batches than the sender can have in flight for a partition:
            # send() lets the I/O thread have the GIL (ipc/accumulator.py).
            yield_batches=cfg["max_in_flight_requests_per_connection"],
        )
        self._closed = False
        self._txn: TransactionManager | None = None
        if cfg["transactional_id"] is not None:
            if not cfg["enable_idempotence"] or cfg["acks"] != -1:
                raise InvalidConfigError(
                    "a transactional producer is idempotent with acks=all (transactional.id "
                    "needs enable.idempotence=True and acks='all')"
                )
            self._txn = TransactionManager(
                cfg["transactional_id"],
                cfg["transaction_timeout_ms"],
                lambda: self._io,
                self.metadata,
                self._bootstrap,
                self._max_block_s,
                cfg["retry_backoff_ms"] / 1000,
                gate=self._accumulator.gate,
                settled=lambda: not self._accumulator.incomplete(),
                restart_sequences=lambda pid, epoch: self._sender.set_producer(pid, epoch),
            )
        self._sender = Sender(self)
        self._io = IOThread(
            f"producer-{cfg['client_id']}",
            request_timeout_ms=cfg["request_timeout_ms"],
            driver=self._sender,
            socket_options=client_socket_options(cfg),
            header_fields=client_header_fields(cfg),
        )
        if type(self).send is Producer.send:
            # The accumulator's send() is the whole per-record path; calling it directly
            # saves a Python frame per record (a subclass that overrides send keeps it).
            # A transactional producer's too: the transaction's state closes the
            # accumulator's send gate outside a transaction (ipc/accumulator.py), and the
            # hooks say why (_Hooks.topic_partitions).
            self.send = self._accumulator.send  # type: ignore[method-assign]

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
        """Queue one record; returns a future resolving to its RecordMetadata. A
        transactional producer sends inside a transaction only (InvalidTxnStateError)."""
        return self._accumulator.send(topic, value, key, headers, partition, timestamp_ms)

    def send_batch(
        self,
        topic: str,
        values: Sequence[Any],
        keys: Sequence[Any] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> BatchSendResult:
        """Queue many records at once: the fast path (one call for all, per-record work
        in C). Keyed records go where ``send`` would put them; unkeyed ones fill the
        sticky partition batch by batch. All get one timestamp.

        Returns a :class:`BatchSendResult`; ``.get(timeout)`` gives every record's
        RecordMetadata in the order given.
        """
        if self._closed:
            raise ProducerClosedError("send_batch() on a closed producer; create a new one")
        if self._txn is not None:
            self._txn.check_send()
        ts = time_ns() // 1_000_000 if timestamp_ms is None else check_timestamp(timestamp_ms)
        batches, batch_of, deltas = self._accumulator.append_records(
            topic, values, keys, partition, ts, monotonic()
        )
        return BatchSendResult.of_columns(topic, ts, batches, batch_of, deltas)

    def _topic_partitions(self, topic: str) -> tuple[list[TopicPartition], int]:
        """The topic's partitions (waiting for its metadata up to max.block.ms) and the
        metadata version they are from."""
        version = self.metadata.version
        count = self.metadata.partition_count(topic)
        if count is None:
            count = self._wait_for_topic(topic)
        return [TopicPartition(topic, p) for p in range(count)], version

    def _choose_sticky(self, topic: str, count: int, current: int) -> int:
        """Kafka's sticky partitioner: a random available partition, another one than
        ``current`` once its batch filled."""
        available = [p for p in self.metadata.available_partitions(topic) if p < count]
        choices = [p for p in available if p != current]
        if not choices:
            choices = [p for p in range(count) if p != current] or [current]
        return random.choice(choices)

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

    # -- transactions (transactional.id) ----------------------------------------------------

    def _transactions(self) -> TransactionManager:
        if self._txn is None:
            raise InvalidTxnStateError("this producer has no transactional_id")
        if self._closed:
            raise ProducerClosedError("the producer is closed")
        return self._txn

    def init_transactions(self) -> None:
        """Register ``transactional_id`` with the coordinator: a producer id and a new
        epoch, which fences every older producer of the id (their next call raises
        ProducerFencedError) after their open transaction is aborted."""
        txn = self._transactions()
        producer_id, epoch = txn.init()
        self._sender.set_producer(producer_id, epoch)
        self._io.wake()

    def begin_transaction(self) -> None:
        self._transactions().begin()

    def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, Any], group_metadata: Any
    ) -> None:
        """Commit a consumer group's ``offsets`` (TopicPartition -> OffsetAndMetadata or
        int: the next offset to read) with the transaction: they become the group's
        committed offsets if and only if it commits. ``group_metadata``:
        ``Consumer.group_metadata()`` (or the group id)."""
        self._transactions().send_offsets(offsets, group_metadata)

    def commit_transaction(self) -> None:
        """Send every record of the transaction, then commit it: read_committed consumers
        see all of it (and the offsets sent with it are committed), or, if this raises,
        call abort_transaction()."""
        self._transactions().end(True, self.flush)

    def abort_transaction(self) -> None:
        """Abort the transaction: read_committed consumers never see its records."""
        self._transactions().end(False, self.flush)

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``), then stop; records still unsent fail."""
        if self._closed:
            return
        self._closed = True
        self._accumulator.refuse()
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


class _Hooks:
    """What the accumulator asks of its producer (ipc/accumulator_py.AccumulatorHooks)."""

    __slots__ = ("_producer",)

    def __init__(self, producer: Producer) -> None:
        self._producer = producer

    def topic_partitions(self, topic: str) -> tuple[list[TopicPartition], int]:
        txn = self._producer._txn
        if txn is not None:
            # Asked on every send() while the transaction's send gate is closed.
            txn.check_send()
        return self._producer._topic_partitions(topic)

    def choose_sticky(self, topic: str, count: int, current: int) -> int:
        return self._producer._choose_sticky(topic, count, current)

    def wake(self) -> None:
        self._producer._io.wake()
