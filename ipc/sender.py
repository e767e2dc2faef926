"""The producer's sender: its driver on the I/O thread (ipc/rpc.py).

Each turn it refreshes metadata when it is stale, gets an idempotent producer id, fails
batches past ``delivery.timeout.ms``, and sends ready batches straight to each
partition's leader node: every ready batch of a node in one request (as many per
partition as the sequencer lets it have in flight), up to
``max.in.flight.requests.per.connection`` requests per node. Replies resolve the batches'
futures; retriable failures go back to the accumulator (ipc/sequencing.py keeps their
sequence numbers in order), and every request, retry and failure is counted in Kafka's
producer metrics (ipc/client_metrics.py).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from kvlog import batch as batch_format
from kvlog.errors import (
    KafkaTimeoutError,
    KvlogError,
    MessageSizeTooLargeError,
    Recovery,
    SerializationError,
    error_from_code,
)
from kvlog.types import TopicPartition

from .accumulator import ProducerBatch
from .acks import answers_produce
from .client_metrics import ProducerMetrics
from .metadata import MetadataRefresher
from .rpc import IOThread
from .sequencing import Sequencer, Verdict

if TYPE_CHECKING:
    from .producer import Producer

log = logging.getLogger(__name__)


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
        self.metrics = ProducerMetrics()
        self._moved = False  # batches taken or completed this turn (accumulator.progress)
        self._registered = False  # accumulator.sender_thread() called from the I/O thread
        self.txn = producer._txn  # None unless transactional (ipc/transactions.py)

    def want_topic(self, topic: str) -> None:
        with self._wanted_lock:
            self._wanted.add(topic)
        self.metadata.mark_stale()

    def set_producer(self, producer_id: int, epoch: int) -> None:
        """The transactional producer's id and epoch (init_transactions(), or KIP-360's
        bump after an abort); set while no batch is unsettled: every partition's
        sequence restarts at 0 under the epoch."""
        self.sequencer = Sequencer(
            idempotent=self.idempotent, max_in_flight=self.max_in_flight, producer_epoch=epoch
        )
        self.producer_id = producer_id

    def abort(self, error: KvlogError) -> None:
        self._aborted = error
        for batch in self.accumulator.abort_all():
            self._fail(batch, error)

    # -- the driver turn -------------------------------------------------------------------

    def run(self, io: IOThread, now: float) -> float | None:
        if not self._registered:
            self._registered = True
            self.accumulator.sender_thread()
        wake = now + 0.1
        self._refresh_metadata(io, now)
        if self.idempotent and self.producer_id < 0:
            # A transactional producer's id comes from init_transactions().
            if self.accumulator.has_unsent and self.txn is None:
                self._init_producer_id(io, now)
            return min(wake, now + 0.01)
        for batch in self.accumulator.expired(now):
            if batch.base_sequence >= 0:
                self.sequencer.on_expired(batch.tp, batch)
            self._fail(batch, self._timeout_error(batch))
        if self.txn is not None:
            # Partitions join the transaction as soon as they hold a batch (open ones
            # too), so the coordinator's round trip overlaps linger.ms and the sends.
            self.txn.register(io, {batch.tp for batch in self.accumulator.incomplete()}, now)
        ready, next_due = self.accumulator.ready(now)
        if ready and self._send_ready(io, ready, now):
            # Batches wait for a partition's leader: run again when metadata may be asked.
            refresh_at = self.refresher.due_at(now)
            if refresh_at is not None:
                wake = min(wake, refresh_at)
        if next_due is not None:
            wake = min(wake, next_due)
        if self._moved:
            # At the end of the turn: a send() that waits for it takes the GIL once this
            # thread goes back to polling.
            self._moved = False
            self.accumulator.progress()
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
            # send() asks the producer for a topic's partitions again after this.
            self.accumulator.set_version(self.metadata.version)

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
        if self.txn is not None:
            ready = self.txn.sendable(io, ready, now)  # each joins the transaction first
            if self.txn.fatal and self.txn.error is not None:
                for batch in self.accumulator.abort_all():  # fenced: nothing may go
                    self._fail(batch, self.txn.error)
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
        """Every batch the partitions may send now, in order per partition (as many as
        the sequencer lets each have in flight), up to max.request.size (at least one):
        the node commits what one request carries in one transaction, so a request per
        16 KiB batch would cost an fsync each."""
        batches: list[ProducerBatch] = []
        size = 0
        for tp in tps:
            while self.sequencer.may_send(tp):
                batch = self.accumulator.drain(tp, now)
                if batch is None:
                    break
                self.sequencer.on_send(tp, batch)
                if batch.encoded is None:
                    try:
                        batch.encoded = self._encode(batch)
                    except Exception as exc:  # a batch that cannot encode fails alone
                        error = SerializationError(f"batch for {tp} cannot be encoded: {exc}")
                        _, resend = self.sequencer.on_error(tp, batch, error, can_retry=False)
                        self._fail(batch, error)
                        self._requeue(resend, now)
                        continue
                batches.append(batch)
                self._moved = True
                size += len(batch.encoded)
                if size >= self.max_request_size:
                    return batches
        return batches

    def _encode(self, batch: ProducerBatch) -> bytes:
        # The accumulator built the columns' CBOR as records came in: per batch, only the
        # codec, the CRC and the header are left.
        return batch_format.encode_payload(
            batch.payload(),
            batch.record_count,
            first_timestamp=batch.first_timestamp,
            max_timestamp=batch.max_timestamp,
            codec=self.codec,
            producer_id=self.producer_id if self.idempotent else -1,
            producer_epoch=batch.producer_epoch if self.idempotent else -1,
            base_sequence=batch.base_sequence if self.idempotent else -1,
            transactional=self.txn is not None,
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
        sent_at = time.monotonic()
        self.metrics.sent(
            [len(frame) for frame in frames], sum(b.record_count for b in batches), sent_at
        )
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
            if header is not None:
                now = time.monotonic()
                self.metrics.answered(now - sent_at, now)
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
                refused = error_from_code(code, result.get("message"))
                if isinstance(refused, MessageSizeTooLargeError):
                    refused = self._too_large(batch, refused)
                self._on_batch_error(batch, refused)
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
            self.metrics.retried(batch.record_count, now)
            log.debug("retrying %s after %s", batch, error)
        self._requeue(resend, now)

    def _succeed(self, batch: ProducerBatch, base_offset: int, log_start_offset: int) -> None:
        self._moved = True
        resend = self.sequencer.on_success(batch.tp, batch)
        self.accumulator.complete(batch)
        batch.future.set_result(base_offset, log_start_offset)
        self._requeue(resend, time.monotonic())

    def _too_large(
        self, batch: ProducerBatch, error: MessageSizeTooLargeError
    ) -> MessageSizeTooLargeError:
        """The node's refusal, saying what helps: for one record, the exact command that
        raises the topic's limit (a smaller batch.size cannot help a record that alone is
        too large); for several, either."""
        size = len(batch.encoded or b"")
        topic = batch.tp.topic
        found = re.search(r"max\.message\.bytes=(\d+)", error.message)
        limit = f"max.message.bytes={found.group(1)}" if found else "max.message.bytes"
        raise_it = f"kvlog topics alter {topic} --config max.message.bytes={size}"
        if batch.record_count == 1:
            return MessageSizeTooLargeError(
                f"a record of {size} bytes (as a batch) for {batch.tp} exceeds the topic's "
                f"{limit}. Raise the limit: {raise_it}"
            )
        return MessageSizeTooLargeError(
            f"a batch of {batch.record_count} records, {size} bytes, for {batch.tp} exceeds "
            f"the topic's {limit}. Lower batch.size (now {self.accumulator.batch_size}) or "
            f"raise the limit: {raise_it}"
        )

    def _fail(self, batch: ProducerBatch, error: BaseException) -> None:
        self._moved = True
        if self.txn is not None:
            self.txn.batch_failed(error)
        self.metrics.failed(batch.record_count, time.monotonic())
        self.accumulator.complete(batch)
        batch.future.set_exception(error)

    def _requeue(self, resend: list[Any], now: float) -> None:
        if resend:
            self.accumulator.requeue_front(resend, now + self.backoff_s)
