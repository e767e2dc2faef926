"""Lookups a consumer makes on the application's thread, waiting for the answer:
metadata for the topics it names, and Kafka's ListOffsets (earliest, latest, or by
timestamp) at each partition's leader, retried through leader moves until
``request.timeout.ms``."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from kvlog.errors import (
    KafkaTimeoutError,
    KvlogError,
    Recovery,
    UnknownTopicOrPartitionError,
    error_from_code,
)
from kvlog.types import TopicPartition

from .metadata import ClusterMetadata
from .rpc import IOThread


class Lookups:
    """Owned by one Consumer and used on its thread; requests go through its IOThread.
    ``interest`` names the topics whose metadata a retried offset lookup refreshes."""

    def __init__(
        self,
        io: IOThread,
        metadata: ClusterMetadata,
        bootstrap: list[str],
        request_timeout_ms: int,
        interest: Callable[[], list[str]],
    ) -> None:
        self._io = io
        self._metadata = metadata
        self._bootstrap = bootstrap
        self._request_timeout_ms = request_timeout_ms
        self._interest = interest

    def ensure_metadata(self, topics: list[str] | None) -> None:
        """Make sure the metadata knows ``topics`` (None: all); raises if one is missing."""
        deadline = time.monotonic() + self._request_timeout_ms / 1000
        while True:
            if topics is not None and all(t in self._metadata.topics for t in topics):
                return
            since = time.monotonic()
            try:
                fields: dict[str, Any] = {} if topics is None else {"topics": topics}
                header, _ = self._io.call(self._bootstrap[0], "metadata", fields)
            except KvlogError as exc:
                if not exc.retriable or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
                continue
            self._metadata.update(header, requested=topics)
            if topics is None:
                return
            missing = [t for t in topics if t in self._metadata.missing]
            for topic in missing:
                refused = self._metadata.topic_error(topic)
                if refused is not None:
                    raise refused
            if missing:
                raise UnknownTopicOrPartitionError(
                    f"topic(s) {', '.join(missing)} do not exist; create them first"
                )
            if self._metadata.updated_at > since and all(
                t in self._metadata.topics for t in topics
            ):
                return
            if time.monotonic() > deadline:
                raise KafkaTimeoutError(f"no metadata for {topics} within request.timeout.ms")

    def list_offsets(
        self, wanted: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, tuple[int, int]]:
        """Kafka's ListOffsets: {tp: timestamp (-2 earliest, -1 latest, or ms)} ->
        {tp: (offset, timestamp)}, asking each leader, retrying through leader moves."""
        out: dict[TopicPartition, tuple[int, int]] = {}
        todo = dict(wanted)
        deadline = time.monotonic() + self._request_timeout_ms / 1000
        while todo:
            self.ensure_metadata(sorted({tp.topic for tp in todo}))
            by_leader: dict[str, list[TopicPartition]] = {}
            for tp in todo:
                count = self._metadata.partition_count(tp.topic) or 0
                if tp.partition >= count:
                    raise UnknownTopicOrPartitionError(f"partition {tp} does not exist")
                endpoint = self._metadata.leader_endpoint(tp)
                if endpoint is not None:
                    by_leader.setdefault(endpoint, []).append(tp)
            retry = False
            for endpoint, tps in by_leader.items():
                fields = {
                    "partitions": [
                        {"topic": tp.topic, "partition": tp.partition, "timestamp": todo[tp]}
                        for tp in tps
                    ]
                }
                try:
                    header, _ = self._io.call(endpoint, "list_offsets", fields)
                except KvlogError as exc:
                    if not exc.retriable:
                        raise
                    retry = True
                    continue
                for tp, entry in zip(tps, header.get("partitions", []), strict=False):
                    code = entry.get("error", 0)
                    if code:
                        refused = error_from_code(code, entry.get("message"))
                        if refused.recovery is Recovery.FATAL:
                            raise refused
                        retry = True
                        continue
                    out[tp] = (entry["offset"], entry.get("timestamp", -1))
                    del todo[tp]
            if todo and (retry or not by_leader):
                if time.monotonic() > deadline:
                    raise KafkaTimeoutError(f"could not list offsets of {sorted(todo)} in time")
                self._metadata.mark_stale()
                time.sleep(0.05)
                self._refresh()
        return out

    def _refresh(self) -> None:
        topics = self._interest()
        header, _ = self._io.call(self._bootstrap[0], "metadata", {"topics": topics})
        self._metadata.update(header, requested=topics)
