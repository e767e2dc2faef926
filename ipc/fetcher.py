"""The consumer's fetcher: long-poll fetches with prefetch, on the I/O thread.

For every leader node of the assigned partitions it keeps one ``fetch`` in flight (a long
poll: the node answers as soon as ``fetch.min.bytes`` are there or ``fetch.max.wait.ms``
passes), covering each assigned, unpaused partition whose buffer is below its limit, so
the next ``poll()`` usually finds records waiting. Responses are buffered as raw batches;
``poll()`` decodes them on the caller's thread, only as many as it returns.

Each partition has a *fetch epoch* that ``seek()`` bumps: a response for an older epoch
is dropped, so a seek never returns records from before it.

A position that left the log (OFFSET_OUT_OF_RANGE: retention, DeleteRecords, a truncation,
or a topic deleted and created again under a committed offset) is handed to the consumer,
which applies ``auto.offset.reset`` once (``reset_pending``: not the committed offset,
which would only lead back out of range).

Which fetched batches the consumer sees (transaction markers, aborted transactions):
ipc/fetch_visibility.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvlog.batch import next_offset
from kvlog.errors import (
    ErrorCode,
    KvlogError,
    OffsetOutOfRangeError,
    Recovery,
    error_from_code,
)
from kvlog.types import TopicPartition

from .client_metrics import ConsumerMetrics
from .fetch_visibility import hidden_tail, visible_batches
from .metadata import ClusterMetadata, MetadataRefresher
from .rpc import IOThread

log = logging.getLogger(__name__)


@dataclass
class PartitionFetchState:
    """What the consumer knows about one assigned partition (lock held to touch)."""

    position: int | None = None  # next offset poll() returns; None: to be resolved
    fetch_offset: int | None = None  # next offset to fetch (ahead of position)
    epoch: int = 0
    paused: bool = False
    inflight: bool = False
    buffered: deque[tuple[int, bytes]] = field(default_factory=deque)
    buffered_bytes: int = 0
    high_watermark: int = -1
    log_start_offset: int = -1
    error: KvlogError | None = None
    retry_at: float = 0.0
    # The position left the log: poll() applies auto.offset.reset (never the committed
    # offset, which would only lead back out of range) or, with "none", raises.
    reset_pending: bool = False
    # (from, to): what a fetch dropped at its end (transaction markers, aborted records);
    # a position that reaches ``from`` with nothing buffered moves to ``to``.
    skip: tuple[int, int] | None = None


class Fetcher:
    """The consumer's driver; shares ``lock``-protected state with ``poll()``."""

    def __init__(
        self,
        metadata: ClusterMetadata,
        *,
        bootstrap: list[str],
        fetch_max_wait_ms: int,
        fetch_min_bytes: int,
        fetch_max_bytes: int,
        max_partition_fetch_bytes: int,
        backoff_s: float,
        metadata_max_age_s: float,
        on_out_of_range: Callable[[TopicPartition, KvlogError], None],
        metrics: ConsumerMetrics,
        read_committed: bool = False,
    ) -> None:
        self.read_committed = read_committed
        self.metadata = metadata
        self.bootstrap = bootstrap
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.fetch_max_bytes = fetch_max_bytes
        self.max_partition_fetch_bytes = max_partition_fetch_bytes
        self.buffer_limit = 2 * max_partition_fetch_bytes
        self.backoff_s = backoff_s
        self.metadata_max_age_s = metadata_max_age_s
        self.on_out_of_range = on_out_of_range
        self.metrics = metrics
        self.lock = threading.Condition()
        self.states: dict[TopicPartition, PartitionFetchState] = {}
        self.topics_wanted: set[str] = set()
        self._node_inflight: set[str] = set()
        self.refresher = MetadataRefresher(metadata, bootstrap, backoff_s)

    # -- driver ----------------------------------------------------------------------------

    def run(self, io: IOThread, now: float) -> float | None:
        self._refresh_metadata(io, now)
        by_node: dict[str, list[tuple[TopicPartition, int, int]]] = {}
        wake = now + 0.1
        with self.lock:
            for tp, state in self.states.items():
                if (
                    state.paused
                    or state.inflight
                    or state.fetch_offset is None
                    or state.reset_pending
                    or state.error is not None
                    or state.buffered_bytes >= self.buffer_limit
                ):
                    continue
                if state.retry_at > now:
                    wake = min(wake, state.retry_at)
                    continue
                endpoint = self.metadata.leader_endpoint(tp)
                if endpoint is None or io.endpoint_down(endpoint):
                    # No leader, or its connection dropped or was refused: refresh (every
                    # retry.backoff.ms) until the metadata names a reachable leader, rather
                    # than parking a fetch on a dead address until it restarts.
                    self.metadata.mark_stale()
                    refresh_at = self.refresher.due_at(now)
                    if refresh_at is not None:
                        wake = min(wake, refresh_at)
                    continue
                if endpoint in self._node_inflight:
                    continue
                by_node.setdefault(endpoint, []).append((tp, state.fetch_offset, state.epoch))
            for endpoint, parts in by_node.items():
                for tp, _, _ in parts:
                    self.states[tp].inflight = True
                self._node_inflight.add(endpoint)
        for endpoint, parts in by_node.items():
            self._send_fetch(io, endpoint, parts)
        return wake

    def _refresh_metadata(self, io: IOThread, now: float) -> None:
        if self.refresher.busy(now):
            return
        with self.lock:
            topics = sorted({tp.topic for tp in self.states} | self.topics_wanted)
        if not topics:
            return
        fresh = now - self.metadata.updated_at < self.metadata_max_age_s
        if not self.metadata.stale and fresh and all(t in self.metadata.topics for t in topics):
            return

        def updated() -> None:
            with self.lock:
                self.lock.notify_all()

        self.refresher.request(io, topics, updated)

    def _send_fetch(
        self, io: IOThread, endpoint: str, parts: list[tuple[TopicPartition, int, int]]
    ) -> None:
        fields = {
            "max_wait_ms": self.fetch_max_wait_ms,
            "min_bytes": self.fetch_min_bytes,
            "max_bytes": self.fetch_max_bytes,
            "isolation_level": 1 if self.read_committed else 0,
            "partitions": [
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "offset": offset,
                    "max_bytes": self.max_partition_fetch_bytes,
                }
                for tp, offset, _ in parts
            ],
        }

        sent_at = time.monotonic()

        def done(
            header: dict[str, Any] | None, frames: list[bytes], error: KvlogError | None
        ) -> None:
            if header is not None and error is None:
                now = time.monotonic()
                self.metrics.fetched(sum(map(len, frames)), now - sent_at, now)
            self._on_fetch(endpoint, parts, header, frames, error)

        # fail_fast: a refused connection (the leader is down) fails the fetch at once.
        io.send_now(
            endpoint,
            "fetch",
            fields,
            done,
            timeout_ms=self.fetch_max_wait_ms + 30_000,
            fail_fast=True,
        )

    def _on_fetch(
        self,
        endpoint: str,
        parts: list[tuple[TopicPartition, int, int]],
        header: dict[str, Any] | None,
        frames: list[bytes],
        error: KvlogError | None,
    ) -> None:
        now = time.monotonic()
        out_of_range: list[tuple[TopicPartition, KvlogError]] = []
        with self.lock:
            self._node_inflight.discard(endpoint)
            entries = (header or {}).get("partitions")
            if error is not None or not isinstance(entries, list) or len(entries) != len(parts):
                if error is None or error.recovery is not Recovery.FATAL:
                    self.metadata.mark_stale()
                for tp, _, _ in parts:
                    state = self.states.get(tp)
                    if state is not None:
                        state.inflight = False
                        state.retry_at = now + self.backoff_s
                self.lock.notify_all()
                return
            cursor = 0
            for (tp, offset, epoch), entry in zip(parts, entries, strict=True):
                bases = entry.get("bases") or []
                batches = frames[cursor : cursor + len(bases)]
                cursor += len(bases)
                state = self.states.get(tp)
                if state is None:
                    continue  # unassigned meanwhile
                state.inflight = False
                if state.epoch != epoch or state.fetch_offset != offset:
                    continue  # a seek happened: this data is from before it
                code = entry.get("error", 0)
                if code:
                    exc = error_from_code(code, entry.get("message"))
                    if exc.code is ErrorCode.OFFSET_OUT_OF_RANGE:
                        out_of_range.append((tp, exc))
                    elif exc.recovery is Recovery.FATAL:
                        state.error = exc
                    else:
                        self.metadata.mark_stale()
                        state.retry_at = now + self.backoff_s
                    continue
                state.high_watermark = entry.get("high_watermark", state.high_watermark)
                state.log_start_offset = entry.get("log_start_offset", state.log_start_offset)
                aborted = entry.get("aborted_transactions") if self.read_committed else None
                kept = visible_batches(bases, batches, aborted)
                for base, raw in kept:
                    state.buffered.append((base, raw))
                    state.buffered_bytes += len(raw)
                if batches:
                    state.fetch_offset = max(offset, next_offset(bases[-1], batches[-1]))
                    # Markers or aborted records at the end: the position steps over
                    # them once it reaches them (Consumer.poll).
                    tail = hidden_tail(offset, kept, state.fetch_offset)
                    if tail is not None:
                        state.skip = tail
            self.lock.notify_all()
        for tp, exc in out_of_range:
            self.on_out_of_range(tp, exc)

    # -- used by the consumer, lock held ---------------------------------------------------

    def reset_state(self, state: PartitionFetchState, offset: int | None) -> None:
        """Seek: new position, empty buffer, newer epoch (drops in-flight results)."""
        state.position = offset
        state.fetch_offset = offset
        state.epoch += 1
        state.buffered.clear()
        state.buffered_bytes = 0
        state.skip = None
        state.error = None
        state.retry_at = 0.0
        state.reset_pending = False


def out_of_range_message(tp: TopicPartition, position: int | None, start: int, end: int) -> str:
    """Which partition, the position that left the log, and the log's bounds."""
    return (
        f"position {position} of {tp} is out of range: the log holds offsets {start} to {end} "
        f"(log start offset {start}, log end offset {end})"
    )


__all__ = ["Fetcher", "OffsetOutOfRangeError", "PartitionFetchState", "out_of_range_message"]
