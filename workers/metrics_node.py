"""A node process's metrics (docs/METRICS.md, "Topics and requests", "Partitions and
log dirs").

The node shell calls the ``on_*`` methods from its loop: once per loop turn that
committed, once per reply, once per durable commit (the store's ``on_commit`` hook).
Each adds to plain counters; :meth:`NodeMetrics.collect` pushes them, and reads the
hosted partitions' offsets and the log dir's LMDB and disk numbers, once a second.

Owned by the node's loop thread; not thread-safe.
"""

from __future__ import annotations

import os
from typing import Any

from kvlog import batch as batch_format

from .metrics import (
    COUNT_BUCKETS,
    LATENCY_BUCKETS,
    GaugeSet,
    LocalHistogram,
    ProcessMetrics,
    Tally,
    gauge,
    histogram,
)
from .node_model import FetchResponse

_PARTITION = ("topic", "partition", "node")
_LOG_DIR = ("node", "log_dir")


class NodeMetrics(ProcessMetrics):
    """Metrics of one node (``node`` is its id, as text)."""

    def __init__(self, node: str) -> None:
        super().__init__("node")
        from prometheus_client import Counter

        self.node = node
        self.records_in = Tally()
        self.bytes_in = Tally()
        self.records_out = Tally()
        self.bytes_out = Tally()
        self.throttle = Tally()
        self.throttled = Tally()
        self.produce_requests = 0
        self.fetch_requests = 0
        self.queue = LocalHistogram(LATENCY_BUCKETS)
        self.commit = LocalHistogram(LATENCY_BUCKETS)
        self.reply = LocalHistogram(LATENCY_BUCKETS)
        self.fetch = LocalHistogram(LATENCY_BUCKETS)
        self.fsync = LocalHistogram(LATENCY_BUCKETS)
        self.commit_size = LocalHistogram(COUNT_BUCKETS)

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Any:
            return Counter(name, doc, list(labels))

        self.f_records_in = counter("kvlog_topic_records_in", "records appended", ("topic",))
        self.f_bytes_in = counter("kvlog_topic_bytes_in", "batch bytes appended", ("topic",))
        self.f_records_out = counter("kvlog_topic_records_out", "records fetched", ("topic",))
        self.f_bytes_out = counter("kvlog_topic_bytes_out", "batch bytes fetched", ("topic",))
        self.f_produce = counter("kvlog_produce_requests", "produce requests", ("node",))
        self.f_fetch = counter("kvlog_fetch_requests", "consumer fetch requests", ("node",))
        self.f_throttle = counter(
            "kvlog_throttle_seconds", "time replies were held by quotas", ("node", "kind")
        )
        self.f_throttled = counter(
            "kvlog_throttled_requests", "replies held by quotas", ("node", "kind")
        )
        self.h_queue = histogram(
            "kvlog_produce_queue_seconds", "produce: read to commit", ["node"], LATENCY_BUCKETS
        )
        self.h_commit = histogram(
            "kvlog_produce_commit_seconds", "produce: group commit", ["node"], LATENCY_BUCKETS
        )
        self.h_reply = histogram(
            "kvlog_produce_reply_seconds", "produce: commit to reply", ["node"], LATENCY_BUCKETS
        )
        self.h_fetch = histogram(
            "kvlog_fetch_seconds", "consumer fetch: request to reply", ["node"], LATENCY_BUCKETS
        )
        self.h_fsync = histogram(
            "kvlog_fsync_seconds", "durable LMDB commits", ["node"], LATENCY_BUCKETS
        )
        self.h_commit_size = histogram(
            "kvlog_group_commit_batches", "batches per group commit", ["node"], COUNT_BUCKETS
        )
        self.offsets = {
            name: GaugeSet(gauge(f"kvlog_{name}", doc, _PARTITION))
            for name, doc in (
                ("log_start_offset", "first stored offset"),
                ("log_end_offset", "next offset to write"),
                ("high_watermark", "committed (readable) offset"),
                ("log_size_bytes", "bytes stored"),
                ("partition_leader", "1 while this node leads"),
            )
        }
        self.log_dir = {
            name: gauge(f"kvlog_{name}", doc, _LOG_DIR)
            for name, doc in (
                ("lmdb_map_size_bytes", "LMDB map size"),
                ("lmdb_used_pages", "LMDB pages in use"),
                ("lmdb_page_size_bytes", "LMDB page size"),
                ("disk_free_bytes", "free bytes on the log dir's filesystem"),
            )
        }

    # -- from the loop ---------------------------------------------------------------------

    def on_commit(self, seconds: float) -> None:
        """Every durable commit of the node's log dir (LogDir.on_commit)."""
        self.fsync.observe(seconds)

    def on_turn(
        self, turn_started: float, flush_started: float, flush_ended: float, replied: float
    ) -> None:
        """A loop turn whose group commit wrote produce requests (weighted by them)."""
        stats = self.core_stats
        requests = stats.commit_requests
        if not requests:
            return
        stats.commit_requests = 0
        self.produce_requests += requests
        self.queue.observe(max(0.0, flush_started - turn_started), requests)
        self.commit.observe(flush_ended - flush_started, requests)
        self.reply.observe(replied - flush_ended, requests)
        self.commit_size.observe(stats.commit_batches)

    def on_fetched(self, body: FetchResponse, seconds: float | None) -> None:
        """A fetch reply; follower fetches count nowhere here."""
        if body.replica_id >= 0:
            return
        self.fetch_requests += 1
        if seconds is not None:
            self.fetch.observe(seconds)
        for part in body.partitions:
            if part.batches:
                topic = part.tp.topic
                self.records_out.add(
                    topic, sum(batch_format.next_offset(0, b) for _, b in part.batches)
                )
                self.bytes_out.add(topic, sum(len(b) for _, b in part.batches))

    def on_throttled(self, kind: str, seconds: float) -> None:
        self.throttle.add(kind, seconds)
        self.throttled.add(kind)

    # -- once a second ---------------------------------------------------------------------

    def collect(self, server: Any) -> None:
        node = self.node
        for topic, (records, nbytes) in self.core_stats.take_appended().items():
            self.records_in.add(topic, records)
            self.bytes_in.add(topic, nbytes)
        self.records_in.push(self.f_records_in)
        self.bytes_in.push(self.f_bytes_in)
        self.records_out.push(self.f_records_out)
        self.bytes_out.push(self.f_bytes_out)
        self.throttle.push(self.f_throttle, node)
        self.throttled.push(self.f_throttled, node)
        if self.produce_requests:
            self.f_produce.labels(node).inc(self.produce_requests)
            self.produce_requests = 0
        if self.fetch_requests:
            self.f_fetch.labels(node).inc(self.fetch_requests)
            self.fetch_requests = 0
        for local, family in (
            (self.queue, self.h_queue),
            (self.commit, self.h_commit),
            (self.reply, self.h_reply),
            (self.fetch, self.h_fetch),
            (self.fsync, self.h_fsync),
            (self.commit_size, self.h_commit_size),
        ):
            local.push(family.labels(node))
        self._partitions(server)
        self._log_dir(server)

    def _partitions(self, server: Any) -> None:
        leader = server.core.leader
        values: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in self.offsets}
        try:
            with leader.store.reader() as r:
                for tp in leader.hosted:
                    try:
                        state = r.offsets(tp)
                    except Exception:  # not created yet, or the log dir is offline
                        continue
                    labels = (tp.topic, str(tp.partition), self.node)
                    values["log_start_offset"][labels] = state.log_start_offset
                    values["log_end_offset"][labels] = state.log_end_offset
                    values["high_watermark"][labels] = state.high_watermark
                    values["log_size_bytes"][labels] = state.size_bytes
                    values["partition_leader"][labels] = 1 if tp in leader.leaders else 0
        except Exception:  # an offline log dir: keep the last values
            return
        for name, gauges in self.offsets.items():
            gauges.update(values[name])

    def _log_dir(self, server: Any) -> None:
        store = server.core.leader.store
        path = str(store.path)
        labels = (self.node, path)
        try:
            info = store.env.info()
            psize = store.env.stat()["psize"]
            fs = os.statvfs(path)
        except Exception:  # closed or offline: leave the last values
            return
        self.log_dir["lmdb_map_size_bytes"].labels(*labels).set(info["map_size"])
        self.log_dir["lmdb_used_pages"].labels(*labels).set(info["last_pgno"] + 1)
        self.log_dir["lmdb_page_size_bytes"].labels(*labels).set(psize)
        self.log_dir["disk_free_bytes"].labels(*labels).set(fs.f_bavail * fs.f_frsize)

    def attach(self, server: Any) -> None:
        """Start measuring ``server`` (a NodeServer): its core's stats and store."""
        self.core_stats = server.core.leader.stats
        server.core.leader.store.on_commit = self.on_commit
