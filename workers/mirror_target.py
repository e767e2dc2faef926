"""The mirror's target side, IO only: the target cluster's brokers over kvlog's Kafka batch
client (ipc/kafka_client/wire.py): metadata, the idempotent producer id, produce
requests (one per broker per turn, pipelined), end offsets and reading a partition's tail
(the ``kvlog.mirror`` header of each record says its source partition and offset).

What a produce answer means for the mirror (:func:`classify`) is a small table; every
decision about it is the core's (workers/mirror_core.py).

Owned by the mirror shell's thread; not thread-safe.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kvlog import kafka_batch
from kvlog.errors import ErrorCode, KvlogError, NetworkError, UnknownTopicOrPartitionError
from kvlog.ipc.kafka.codec import ApiKey
from kvlog.ipc.kafka_client.wire import (
    EARLIEST,
    LATEST,
    ClusterView,
    Connection,
    WireSecurity,
    fetch_request,
    fetch_result,
    init_producer_id_request,
    list_offsets_request,
    list_offsets_results,
    metadata_request,
    produce_request,
    produce_results,
    read_metadata,
)
from kvlog.types import TopicPartition

from .mirror_core import Failure
from .mirror_model import read_header

log = logging.getLogger(__name__)

_PREFIX = struct.Struct(">qi")
_RESYNC = {
    ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
    ErrorCode.UNKNOWN_PRODUCER_ID,
    ErrorCode.INVALID_PRODUCER_EPOCH,
    ErrorCode.PRODUCER_FENCED,
}
_TOO_LARGE = {ErrorCode.MESSAGE_TOO_LARGE, ErrorCode.RECORD_LIST_TOO_LARGE}


def classify(code: int, base_offset: int) -> str | None:
    """None: stored (at ``base_offset``); else the :class:`Failure` kind."""
    if code == 0:
        return None
    if code == ErrorCode.DUPLICATE_SEQUENCE_NUMBER:
        # Stored before (a retry): fine when the target says where, else start again.
        return None if base_offset >= 0 else Failure.RESYNC
    try:
        known = ErrorCode(code)
    except ValueError:
        return Failure.FATAL
    if known in _RESYNC:
        return Failure.RESYNC
    if known in _TOO_LARGE:
        return Failure.TOO_LARGE
    return Failure.RETRY if known.retriable else Failure.FATAL


@dataclass
class Completion:
    """What came back for one sent batch: ``kind`` None means stored at ``base_offset``."""

    batch_id: int
    kind: str | None
    base_offset: int
    message: str


class TargetLink:
    """See the module docstring."""

    def __init__(
        self,
        bootstrap: list[str],
        settings: dict[str, Any],
        *,
        client_id: str,
        timeout_s: float,
    ) -> None:
        self.bootstrap = bootstrap
        self.security = WireSecurity.from_settings(settings)
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.view = ClusterView({}, {}, {}, {})
        self._conns: dict[int | str, Connection] = {}
        # broker -> [(correlation id, [(batch id, tp)])], in request order
        self._inflight: dict[int, list[tuple[int, list[tuple[int, TopicPartition]]]]] = {}
        self.producer_id = -1
        self.producer_epoch = -1
        self.stale = True  # refresh metadata before the next send

    # -- connections -----------------------------------------------------------------------

    def _connection(self, key: int | str, address: str) -> Connection:
        conn = self._conns.get(key)
        if conn is None or not conn.connected:
            conn = Connection(
                address, client_id=self.client_id, security=self.security, timeout_s=self.timeout_s
            )
            conn.connect()
            self._conns[key] = conn
        return conn

    def _any(self) -> Connection:
        """A connection to some broker (a known one, else a bootstrap server)."""
        error: KvlogError | None = None
        candidates: list[tuple[int | str, str]] = [
            *((k, c.address) for k, c in self._conns.items() if c.connected),
            *self.view.brokers.items(),
            *((f"bootstrap:{a}", a) for a in self.bootstrap),
        ]
        for key, address in candidates:
            try:
                return self._connection(key, address)
            except NetworkError as exc:
                error = exc
        raise error or NetworkError("no Kafka broker to connect to")

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        self._inflight.clear()

    # -- metadata and producer id ----------------------------------------------------------

    def refresh(self, topics: Iterable[str]) -> ClusterView:
        response = self._any().call(metadata_request(sorted(set(topics))), ApiKey.Metadata)
        self.view = read_metadata(response)
        self.stale = False
        return self.view

    def leader(self, tp: TopicPartition) -> int:
        leader = self.view.leaders.get((tp.topic, tp.partition), -1)
        if leader < 0 or leader not in self.view.brokers:
            raise UnknownTopicOrPartitionError(f"no leader known for {tp} on the target")
        return leader

    def init_producer(self, near: TopicPartition) -> tuple[int, int]:
        """A new idempotent producer id, asked of ``near``'s leader (any Kafka broker
        answers; kvlog's bootstrap process does not, its nodes do)."""
        leader = self.leader(near)
        conn = self._connection(leader, self.view.brokers[leader])
        response = conn.call(init_producer_id_request(), ApiKey.InitProducerId)
        if response.error_code:
            raise KvlogError(f"InitProducerId on the target: Kafka error {response.error_code}")
        self.producer_id, self.producer_epoch = response.producer_id, response.producer_epoch
        return self.producer_id, self.producer_epoch

    # -- offsets and reading ---------------------------------------------------------------

    def offsets(self, tps: Iterable[TopicPartition], which: int) -> dict[TopicPartition, int]:
        """EARLIEST or LATEST (the high watermark) of each partition, from its leader."""
        by_leader: dict[int, list[TopicPartition]] = {}
        for tp in tps:
            by_leader.setdefault(self.leader(tp), []).append(tp)
        out: dict[TopicPartition, int] = {}
        for broker, group in by_leader.items():
            conn = self._connection(broker, self.view.brokers[broker])
            request = list_offsets_request((tp.topic, tp.partition, which) for tp in group)
            for (topic, partition), offset in list_offsets_results(
                conn.call(request, ApiKey.ListOffsets)
            ).items():
                out[TopicPartition(topic, partition)] = offset
        return out

    def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return self.offsets(tps, LATEST)

    def start_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return self.offsets(tps, EARLIEST)

    def read(
        self, tp: TopicPartition, start: int, end: int, *, max_bytes: int = 8 << 20
    ) -> list[tuple[int, int, tuple[int, int] | None]]:
        """The batches of ``tp`` that hold [start, end): (base offset, record count, the
        (source partition, source offset) of its last record's ``kvlog.mirror`` header,
        or None)."""
        out: list[tuple[int, int, tuple[int, int] | None]] = []
        position = start
        leader = self.leader(tp)
        conn = self._connection(leader, self.view.brokers[leader])
        while position < end:
            response = conn.call(
                fetch_request(tp.topic, tp.partition, position, max_bytes=max_bytes),
                ApiKey.Fetch,
            )
            code, _high, _start, records = fetch_result(response)
            if code:
                raise KvlogError(f"reading {tp} on the target at {position}: Kafka error {code}")
            before = position
            for base, stored in _batches(records):
                header, cols = kafka_batch.decode(stored, verify=False)
                last = base + header.last_offset_delta
                if last < position:
                    continue
                marker = read_header(cols.headers[-1]) if cols.headers else None
                out.append((base, header.record_count, marker))
                position = last + 1
            if position == before:
                break  # nothing more below the high watermark
        return out

    # -- producing -------------------------------------------------------------------------

    def send(
        self, batches: list[tuple[int, TopicPartition, bytes]], timeout_ms: int
    ) -> list[Completion]:
        """Send each (batch id, partition, record set) to its leader, one request per
        broker; what fails at once comes back as completions (RETRY)."""
        by_leader: dict[int, list[tuple[int, TopicPartition, bytes]]] = {}
        failed: list[Completion] = []
        for batch_id, tp, payload in batches:
            try:
                by_leader.setdefault(self.leader(tp), []).append((batch_id, tp, payload))
            except KvlogError as exc:
                self.stale = True
                failed.append(Completion(batch_id, Failure.RETRY, -1, exc.message))
        for broker, group in by_leader.items():
            request = produce_request(
                ((tp.topic, tp.partition, payload) for _, tp, payload in group),
                timeout_ms=timeout_ms,
            )
            try:
                conn = self._connection(broker, self.view.brokers[broker])
                correlation_id = conn.send(request, ApiKey.Produce)
            except KvlogError as exc:
                self.stale = True
                failed += [Completion(b, Failure.RETRY, -1, exc.message) for b, _, _ in group]
                continue
            self._inflight.setdefault(broker, []).append(
                (correlation_id, [(b, tp) for b, tp, _ in group])
            )
        return failed

    @property
    def in_flight(self) -> bool:
        return any(self._inflight.values())

    def poll(self, timeout_s: float) -> list[Completion]:
        """Completions of the batches in flight (waiting up to ``timeout_s``); a broken
        connection fails everything in flight on it (RETRY)."""
        out: list[Completion] = []
        waiting = [b for b, reqs in self._inflight.items() if reqs]
        for i, broker in enumerate(waiting):
            conn = self._conns.get(broker)
            reqs = self._inflight[broker]
            try:
                if conn is None:
                    raise NetworkError(f"no connection to broker {broker}")
                answers = conn.receive(timeout_s if i == 0 else 0.0)
            except NetworkError as exc:
                self.stale = True
                for _, items in reqs:
                    out += [Completion(b, Failure.RETRY, -1, exc.message) for b, _ in items]
                reqs.clear()
                continue
            for correlation_id, response in answers:
                sent_id, items = reqs.pop(0)
                assert sent_id == correlation_id
                results = produce_results(response)
                for batch_id, tp in items:
                    code, base, message = results.get((tp.topic, tp.partition), (-1, -1, None))
                    kind = classify(code, base)
                    text = message or (f"Kafka error {code}" if code else "")
                    if kind == Failure.RETRY:
                        self.stale = True  # a leader moved, or the topic is not there yet
                    out.append(Completion(batch_id, kind, base, f"{tp}: {text}"))
        return out


def _batches(records: bytes) -> list[tuple[int, memoryview]]:
    """A fetched record set as (base offset, stored form) per whole batch."""
    out = []
    view = memoryview(records)
    pos = 0
    while pos + _PREFIX.size <= len(view):
        base, length = _PREFIX.unpack_from(view, pos)
        start = pos + _PREFIX.size
        if start + length > len(view):
            break  # a partial batch at the end of a fetch
        out.append((base, view[start : start + length]))
        pos = start + length
    return out


def record_set(stored: bytes) -> bytes:
    """A batch in kvlog's stored form as a Produce record set (base offset 0)."""
    return kafka_batch.kafka_prefix(0, stored) + stored
