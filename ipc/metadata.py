"""The client's picture of the cluster: topics, partition leaders, node endpoints.

Filled from ``metadata`` replies of the broker (the bootstrap endpoint). Clients then send
produce and fetch requests straight to each partition's leader node, as Kafka clients
do. On NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION and network errors a client
marks its metadata stale and refreshes it before retrying.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvlog.errors import ErrorCode, KvlogError, NoBrokersAvailable, error_from_code
from kvlog.types import TopicPartition

from .rpc import CONNECT_GRACE_S, IOThread, RefusedConnectionError, no_brokers


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    leader: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]

    @classmethod
    def from_wire(cls, entry: dict[str, Any]) -> PartitionInfo:
        """One ``topics[].partitions[]`` entry of a metadata reply."""
        return cls(
            entry["partition"],
            entry["leader"],
            entry.get("leader_epoch", 0),
            tuple(entry.get("replicas", ())),
            tuple(entry.get("isr", ())),
        )


@dataclass
class TopicInfo:
    name: str
    topic_id: str
    partitions: list[PartitionInfo]
    config: dict[str, Any] = field(default_factory=dict)
    replication_factor: int = 1


class ClusterMetadata:
    """Thread-safe: written by the I/O thread, read by user threads."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.topics: dict[str, TopicInfo] = {}
        self.missing: set[str] = set()
        # Topics the broker answered with an error other than "does not exist" (e.g. not
        # authorized): (code, message).
        self.topic_errors: dict[str, tuple[int, str]] = {}
        self.nodes: dict[int, str] = {}
        self.coordinator: str | None = None
        self.version = -1
        self.updated_at = 0.0
        self.stale = True
        self.fatal_error: KvlogError | None = None  # e.g. the handshake was refused

    def update(self, reply: dict[str, Any], *, requested: list[str] | None = None) -> None:
        with self._lock:
            self.nodes = {
                n["node_id"]: n["endpoint"] for n in reply.get("nodes", []) if n.get("alive", True)
            }
            self.coordinator = reply.get("coordinator") or self.coordinator
            self.version = reply.get("version", self.version)
            seen = set()
            for entry in reply.get("topics", []):
                name = entry["name"]
                seen.add(name)
                code = entry.get("error", 0)
                if code:
                    self.topics.pop(name, None)
                    self.missing.add(name)
                    if code != int(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION):
                        self.topic_errors[name] = (code, entry.get("message") or "")
                    continue
                self.missing.discard(name)
                self.topic_errors.pop(name, None)
                self.topics[name] = TopicInfo(
                    name=name,
                    topic_id=entry.get("topic_id", ""),
                    partitions=[PartitionInfo.from_wire(p) for p in entry.get("partitions", [])],
                    config=entry.get("config") or {},
                    replication_factor=entry.get("replication_factor", 1),
                )
            if requested is None:  # a full listing: anything not in it is gone
                for name in list(self.topics):
                    if name not in seen:
                        del self.topics[name]
            self.updated_at = time.monotonic()
            self.stale = False
            self.fatal_error = None
            self._lock.notify_all()

    def topic_error(self, topic: str) -> KvlogError | None:
        """The error the broker gave for this topic (other than "does not exist")."""
        found = self.topic_errors.get(topic)
        return None if found is None else error_from_code(found[0], found[1] or None)

    def failed(self, error: KvlogError) -> None:
        """A metadata request failed; a fatal failure (or no broker at all) wakes whoever
        waits for metadata."""
        with self._lock:
            self.stale = True
            if not error.retriable or isinstance(error, NoBrokersAvailable):
                self.fatal_error = error
                self._lock.notify_all()

    def mark_stale(self) -> None:
        with self._lock:
            self.stale = True

    def wait_for_update(self, since: float, timeout_s: float) -> bool:
        """Block until an update newer than ``since`` (monotonic) or the timeout."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self.updated_at <= since and self.fatal_error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    def partition_count(self, topic: str) -> int | None:
        info = self.topics.get(topic)
        return None if info is None else len(info.partitions)

    def leader_endpoint(self, tp: TopicPartition) -> str | None:
        info = self.topics.get(tp.topic)
        if info is None or tp.partition >= len(info.partitions):
            return None
        leader = info.partitions[tp.partition].leader
        return self.nodes.get(leader) if leader >= 0 else None

    def partitions_for(self, topic: str) -> set[int] | None:
        info = self.topics.get(topic)
        return None if info is None else {p.partition for p in info.partitions}

    def available_partitions(self, topic: str) -> list[int]:
        info = self.topics.get(topic)
        if info is None:
            return []
        return [p.partition for p in info.partitions if p.leader in self.nodes]


class MetadataRefresher:
    """At most one metadata request in flight for a client: bootstrap servers are tried
    in turn and a failure backs off. Used on the client's I/O thread only.

    Refreshes are also spaced ``backoff_s`` apart (Kafka's ``retry.backoff.ms`` for
    metadata): a client waiting for a partition's leader to move asks again every
    ``backoff_s`` rather than in a loop (the first answer after a leader's connection drops
    often still names it: the controller moves leadership a few ms later). ``urgent``
    requests (a topic the client knows nothing about yet) skip that spacing.

    A refused connection fails a request at once (``fail_fast``); when every bootstrap
    server has refused for CONNECT_GRACE_S and none was ever reached, the metadata fails
    with NoBrokersAvailable, which a producer waiting for a topic raises.
    """

    def __init__(self, metadata: ClusterMetadata, bootstrap: list[str], backoff_s: float) -> None:
        self.metadata = metadata
        self.bootstrap = bootstrap
        self.backoff_s = backoff_s
        self.in_flight = False
        self.retry_at = 0.0  # after a failure
        self.next_at = 0.0  # after a success
        self._index = 0

    def endpoint(self) -> str:
        """The bootstrap server to ask now (other bootstrap requests use it too)."""
        return self.bootstrap[self._index % len(self.bootstrap)]

    def rotate(self) -> None:
        """The current bootstrap server failed: ask the next one next time."""
        self._index += 1

    def busy(self, now: float, *, urgent: bool = False) -> bool:
        """Whether a request may not go now."""
        if self.in_flight or now < self.retry_at:
            return True
        return not urgent and now < self.next_at

    def due_at(self, now: float) -> float | None:
        """When a refresh may go (for a driver's next wake-up); None while one is in
        flight (its reply wakes the driver)."""
        return None if self.in_flight else max(now, self.retry_at, self.next_at)

    def request(
        self, io: IOThread, topics: list[str], on_update: Callable[[], None] | None = None
    ) -> None:
        """Ask for ``topics``; ``on_update`` runs after a successful update."""
        self.in_flight = True

        def done(
            header: dict[str, Any] | None, frames: list[bytes], error: KvlogError | None
        ) -> None:
            self.in_flight = False
            if header is None or error is not None:
                self.rotate()
                self.retry_at = time.monotonic() + self.backoff_s
                if isinstance(error, RefusedConnectionError):
                    since = io.unreachable_since(self.bootstrap)
                    if since is not None and time.monotonic() - since >= CONNECT_GRACE_S:
                        error = no_brokers(self.bootstrap)
                if error is not None:
                    self.metadata.failed(error)
                return
            self.metadata.update(header, requested=topics)
            self.next_at = time.monotonic() + self.backoff_s
            if on_update is not None:
                on_update()

        io.send_now(self.endpoint(), "metadata", {"topics": topics}, done, fail_fast=True)
