"""Lookups a consumer makes on the application's thread, waiting for the answer:
metadata for the topics it names, and Kafka's ListOffsets (earliest, latest, or by
timestamp) at each partition's leader, retried through leader moves until
``request.timeout.ms``.

Inside ``poll(timeout_ms)`` the lookups also stop at the poll's deadline (a monotonic
time) with KafkaTimeoutError, which poll() takes as "nothing yet": a refused connection
fails a lookup at once (``fail_fast``), so while the broker is down a poll returns when
its timeout ends instead of waiting for the broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from kvlog.errors import (
    KafkaTimeoutError,
    KvlogError,
    NoBrokersAvailable,
    Recovery,
    UnknownTopicOrPartitionError,
    error_from_code,
)
from kvlog.types import TopicPartition

from .metadata import ClusterMetadata
from .rpc import IOThread

_RETRY_S = 0.05


class Lookups:
    """Owned by one Consumer and used on its thread; requests go through its IOThread.
    ``interest`` names the topics whose metadata a retried offset lookup refreshes
    (with the topics it looks up)."""

    def __init__(
        self,
        io: IOThread,
        metadata: ClusterMetadata,
        bootstrap: list[str],
        request_timeout_ms: int,
        interest: Callable[[], list[str]],
        read_committed: bool = False,
    ) -> None:
        self.read_committed = read_committed  # "latest" is the last stable offset then
        self._io = io
        self._metadata = metadata
        self._bootstrap = bootstrap
        self._request_timeout_ms = request_timeout_ms
        self._interest = interest

    def _give_up_at(self, deadline: float | None) -> float:
        limit = time.monotonic() + self._request_timeout_ms / 1000
        return limit if deadline is None else min(limit, deadline)

    def ensure_metadata(self, topics: list[str] | None, deadline: float | None = None) -> None:
        """Make sure the metadata knows ``topics`` (None: all); raises if one is missing,
        KafkaTimeoutError at ``deadline`` (or request.timeout.ms), NoBrokersAvailable
        when nothing listens at any bootstrap server."""
        give_up = self._give_up_at(deadline)
        while True:
            if topics is not None and all(t in self._metadata.topics for t in topics):
                return
            since = time.monotonic()
            try:
                fields: dict[str, Any] = {} if topics is None else {"topics": topics}
                header, _ = self._io.bootstrap_call(
                    self._bootstrap, "metadata", fields, deadline=give_up
                )
            except NoBrokersAvailable:
                raise
            except KvlogError as exc:
                if not exc.retriable or time.monotonic() >= give_up:
                    raise
                time.sleep(min(_RETRY_S, max(0.0, give_up - time.monotonic())))
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
            if time.monotonic() >= give_up:
                raise KafkaTimeoutError(f"no metadata for {topics} within request.timeout.ms")

    def list_offsets(
        self, wanted: Mapping[TopicPartition, int], deadline: float | None = None
    ) -> dict[TopicPartition, tuple[int, int]]:
        """Kafka's ListOffsets: {tp: timestamp (-2 earliest, -1 latest, or ms)} ->
        {tp: (offset, timestamp)}, asking each leader, retrying through leader moves until
        request.timeout.ms or ``deadline`` (KafkaTimeoutError)."""
        out: dict[TopicPartition, tuple[int, int]] = {}
        todo = dict(wanted)
        give_up = self._give_up_at(deadline)
        while todo:
            self.ensure_metadata(sorted({tp.topic for tp in todo}), give_up)
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
                    ],
                    "isolation_level": 1 if self.read_committed else 0,
                }
                try:
                    # fail_fast: a leader that is down answers nothing; ask the metadata
                    # who leads now rather than waiting for it.
                    header, _ = self._io.call(endpoint, "list_offsets", fields, fail_fast=True)
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
                if time.monotonic() >= give_up:
                    raise KafkaTimeoutError(f"could not list offsets of {sorted(todo)} in time")
                self._metadata.mark_stale()
                time.sleep(min(_RETRY_S, max(0.0, give_up - time.monotonic())))
                self._refresh(give_up, {tp.topic for tp in todo})
        return out

    def _refresh(self, give_up: float, looked_up: set[str]) -> None:
        # The looked-up topics too: a lookup may name partitions the consumer neither
        # subscribes to nor is assigned, and their leaders move as well.
        topics = sorted(set(self._interest()) | looked_up)
        try:
            header, _ = self._io.bootstrap_call(
                self._bootstrap, "metadata", {"topics": topics}, deadline=give_up
            )
        except NoBrokersAvailable:
            raise
        except KvlogError as exc:
            if not exc.retriable:
                raise
            return  # the loop retries (or gives up at its deadline)
        self._metadata.update(header, requested=topics)
