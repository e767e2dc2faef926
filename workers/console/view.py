"""What each console page shows, gathered through kvlog's clients as the CLI does.

Every read and change goes through :class:`kvlog.Admin` (topics, groups, offsets) or a
group-less :class:`kvlog.Consumer` (log start/end offsets, offsets for times, reading
records for the message browser): the same requests ``kvlog topics``, ``kvlog groups``
and ``kvlog consume`` send, so the broker checks them exactly as it checks the CLI's. Only
the overview reads two local facts the CLI reads too: the data dir's run file (``kvlog
status``) and the log dirs' disk use.

Owned by the console process; safe from any thread (the app calls it from Starlette's
thread pool): the Admin is thread-safe, and each Consumer is used under its own lock.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kvlog.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    GroupIdNotFoundError,
)
from kvlog.ipc.admin import Admin
from kvlog.ipc.cluster_reports import (
    Ranges,
    check_reset,
    describe_or_empty,
    group_report,
    log_ranges,
    partition_rows,
    plan_reset,
)
from kvlog.ipc.consumer import Consumer
from kvlog.types import TopicPartition

from ..data_dir import STATUS_FILE, read_status
from .records import render_record

BROWSE_LIMIT_MAX = 200
REQUEST_TIMEOUT_MS = 10_000
_BROWSE_WAIT_S = 2.0


def _dir_bytes(path: Path) -> int:
    """Bytes a directory tree takes on disk (allocated blocks: LMDB files are sparse)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def _run_file(data_dir: Path) -> dict[str, Any]:
    """The supervisor's run file (``kvlog status``'s): Kafka bootstrap, metrics URL."""
    try:
        found = json.loads((data_dir / "run" / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _partitions_of(described: list[dict[str, Any]]) -> list[TopicPartition]:
    """Every partition of ``Admin.describe_topics()`` entries."""
    return [
        TopicPartition(t["name"], p["partition_index"]) for t in described for p in t["partitions"]
    ]


class ClusterView:
    """The console's window on one broker. See the module docstring for thread safety."""

    def __init__(
        self,
        bootstrap: str,
        *,
        data_dir: str,
        log_dirs: list[str],
        client_config: Mapping[str, Any] | None = None,
        group_lister: Admin | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        # The console's own Admin (not this view's principal's): lists the groups this
        # view then keeps those of that its principal may describe. Not owned here.
        self.group_lister = group_lister
        self.data_dir = Path(data_dir)
        self.log_dirs = [Path(d) for d in log_dirs]
        # A page waits at most this long for the broker (the clients' default is 30 s).
        common = {
            "bootstrap_servers": bootstrap,
            "request_timeout_ms": REQUEST_TIMEOUT_MS,
            **dict(client_config or {}),
        }
        self.admin = Admin({**common, "client_id": "kvlog-console"})
        self._offsets = Consumer({**common, "client_id": "kvlog-console", "group_id": None})
        self._offsets_lock = threading.Lock()
        self._browser = Consumer(
            {
                **common,
                "client_id": "kvlog-console-browser",
                "group_id": None,
                "enable_auto_commit": False,
            }
        )
        self._browser_lock = threading.Lock()

    def close(self) -> None:
        self._browser.close(autocommit=False)
        self._offsets.close(autocommit=False)
        self.admin.close()

    @contextmanager
    def _offsets_client(self) -> Iterator[Consumer]:
        with self._offsets_lock:
            yield self._offsets

    def _log_ranges(self, tps: list[TopicPartition]) -> Ranges:
        """(log start, log end) of each partition; None where the broker did not say."""
        with self._offsets_client() as consumer:
            return log_ranges(consumer, tps)

    def _ranges(self, tps: list[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        """(log start, log end) of each partition (0 where the broker did not say)."""
        return {tp: (start or 0, end or 0) for tp, (start, end) in self._log_ranges(tps).items()}

    # -- overview ------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        cluster = self.admin.describe_cluster()
        topics = self.admin.describe_topics()
        under = [
            {
                "topic": t["name"],
                "partition": p["partition_index"],
                "leader": p["leader_id"],
                "replicas": p["replica_nodes"],
                "isr": p["isr_nodes"],
            }
            for t in topics
            for p in t["partitions"]
            if len(p["isr_nodes"]) < len(p["replica_nodes"])
        ]
        log_dirs = []
        for path in self.log_dirs:
            usage = shutil.disk_usage(path) if path.exists() else None
            log_dirs.append(
                {
                    "path": str(path),
                    "used_bytes": _dir_bytes(path),
                    "disk_total": usage.total if usage else None,
                    "disk_free": usage.free if usage else None,
                }
            )
        run = _run_file(self.data_dir)
        return {
            "bootstrap": self.bootstrap,
            "kafka_bootstrap": run.get("kafka_bootstrap"),
            "metrics_url": run.get("metrics"),
            "processes": read_status(self.data_dir),
            "nodes": cluster.get("nodes", []),
            "log_dirs": log_dirs,
            "topic_count": len(topics),
            "partition_count": sum(len(t["partitions"]) for t in topics),
            "under_replicated": under,
        }

    # -- topics --------------------------------------------------------------------------

    def topics(self) -> list[dict[str, Any]]:
        described = sorted(self.admin.describe_topics(), key=lambda t: t["name"])
        tps = _partitions_of(described)
        ranges = self._ranges(tps)
        out = []
        for t in described:
            parts = t["partitions"]
            spans = [
                ranges.get(TopicPartition(t["name"], p["partition_index"]), (0, 0)) for p in parts
            ]
            out.append(
                {
                    "name": t["name"],
                    "partitions": len(parts),
                    "replication_factor": len(parts[0]["replica_nodes"]) if parts else 0,
                    "under_replicated": sum(
                        len(p["isr_nodes"]) < len(p["replica_nodes"]) for p in parts
                    ),
                    "records": sum(end - start for start, end in spans),
                    "end_offsets": sum(end for _, end in spans),
                    "internal": t["is_internal"],
                }
            )
        return out

    def topic(self, name: str) -> dict[str, Any]:
        desc = self.admin.describe_topic(name)
        tps = [TopicPartition(name, p.partition) for p in desc.partitions]
        ranges = self._ranges(tps)
        return {
            "name": name,
            "topic_id": desc.topic_id,
            "replication_factor": desc.replication_factor,
            "partitions": [
                {
                    **row,
                    "start": ranges[TopicPartition(name, row["partition"])][0],
                    "end": ranges[TopicPartition(name, row["partition"])][1],
                }
                for row in partition_rows(desc)
            ],
            "config": [
                {"key": k, "value": v, "override": k in desc.overrides}
                for k, v in sorted(desc.config.items())
            ],
        }

    def create_topic(
        self, name: str, partitions: int, replication_factor: int, config: dict[str, str]
    ) -> str:
        return self.admin.create_topic(name, partitions, replication_factor, config)

    def delete_topic(self, name: str) -> None:
        self.admin.delete_topic(name)

    def throughput_sample(self) -> dict[str, Any]:
        """Each topic's summed log end offset now (two samples make a records/s rate),
        and how long the requests for them took."""
        began = time.perf_counter()
        described = self.admin.describe_topics()
        middle = time.perf_counter()
        tps = _partitions_of(described)
        with self._offsets_client() as consumer:
            ends = consumer.end_offsets(tps) if tps else {}
        done = time.perf_counter()
        totals: dict[str, int] = {t["name"]: 0 for t in described}
        for tp, end in ends.items():
            totals[tp.topic] += end
        return {
            "t": int(time.time() * 1000),
            "topics": totals,
            # What the console itself waited for, as any client would: the broker's
            # metadata answer, and the log end offsets (a request to each leader node).
            "latency_ms": {
                "metadata": round((middle - began) * 1000, 2),
                "list offsets": round((done - middle) * 1000, 2),
            },
        }

    # -- messages ------------------------------------------------------------------------

    def browse(
        self,
        topic: str,
        partition: int,
        *,
        offset: int | None = None,
        timestamp_ms: int | None = None,
        limit: int = 20,
    ) -> dict[str, Any]:
        """Up to ``limit`` records of one partition from ``offset`` (default: the last
        ``limit`` records) or from the first record at or after ``timestamp_ms``."""
        tp = TopicPartition(topic, partition)
        limit = max(1, min(limit, BROWSE_LIMIT_MAX))
        start, end = self._ranges([tp])[tp]
        if timestamp_ms is not None:
            with self._offsets_client() as consumer:
                found = consumer.offsets_for_times({tp: timestamp_ms}).get(tp)
            offset = end if found is None else found.offset
        elif offset is None:
            offset = max(start, end - limit)
        offset = min(max(offset, start), end)
        records: list[dict[str, Any]] = []
        if offset < end:
            with self._browser_lock:
                self._browser.assign([tp])
                self._browser.seek(tp, offset)
                deadline = time.monotonic() + _BROWSE_WAIT_S
                while len(records) < limit and time.monotonic() < deadline:
                    batch = self._browser.poll(timeout_ms=200, max_records=limit - len(records))
                    for record in batch.get(tp, []):
                        records.append(render_record(record))
                    if records and records[-1]["offset"] >= end - 1:
                        break
                self._browser.assign([])
        return {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "start": start,
            "end": end,
            "records": records[:limit],
        }

    # -- consumer groups -----------------------------------------------------------------

    def groups(self) -> list[dict[str, Any]]:
        try:
            found = self.admin.list_groups()
        except ClusterAuthorizationFailedError:
            if self.group_lister is None:
                raise
            # A principal without describe on the cluster still sees the groups it may
            # describe (as Kafka's ListGroups filters them): kvlog's list_groups needs the
            # cluster's describe, so the console lists as itself and keeps only the groups
            # the broker lets this principal describe.
            found = [g for g in self.group_lister.list_groups() if self._may_describe(g)]
        found = sorted(found, key=lambda g: g.get("group_id", ""))
        return [
            {
                "group_id": g.get("group_id", ""),
                "state": g.get("state", ""),
                "protocol_type": g.get("protocol_type") or "",
            }
            for g in found
        ]

    def _may_describe(self, listed: dict[str, Any]) -> bool:
        try:
            self.admin.describe_groups([listed.get("group_id", "")])
        except GroupAuthorizationFailedError:
            return False
        except GroupIdNotFoundError:
            pass
        return True

    def group(self, group_id: str) -> dict[str, Any]:
        """Members, assignments and, per partition, committed offset, log end and lag (a
        committed offset outside the log: no lag, a ``problem`` instead), as ``kvlog
        groups describe --json`` reports them; ``t``: when (ms)."""
        report = group_report(self.admin, self._log_ranges, group_id)
        return {**report, "t": int(time.time() * 1000)}

    def plan_reset(
        self, group_id: str, topic: str, strategy: str, value: int | None
    ) -> list[dict[str, Any]]:
        """New committed offsets of every partition of ``topic`` for ``group_id``, clamped
        to [log start, log end] (``kvlog groups reset-offsets``' rules). ``value``: the
        offset, the timestamp (ms) or the shift."""
        check_reset(strategy, value)
        desc = self.admin.describe_topic(topic)
        tps = [TopicPartition(topic, p.partition) for p in desc.partitions]
        ranges = self._ranges(tps)
        committed = self.admin.list_group_offsets(group_id)

        def offsets_for_times(times: dict[TopicPartition, int]) -> dict[TopicPartition, Any]:
            with self._offsets_client() as consumer:
                return consumer.offsets_for_times(times)

        plan = plan_reset(strategy, value, ranges, committed, offsets_for_times)
        return [
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "current": committed.get(tp),
                "new": new,
            }
            for tp, new in plan.items()
        ]

    def apply_reset(self, group_id: str, rows: list[dict[str, Any]]) -> None:
        """Store a plan's offsets; the broker refuses while the group has members."""
        members = describe_or_empty(self.admin, group_id).get("members") or []
        if members:
            raise ValueError(
                f"group {group_id} has {len(members)} active member(s); stop its consumers "
                "first: offsets can only be reset while a group is empty"
            )
        self.admin.alter_group_offsets(
            group_id, {TopicPartition(r["topic"], r["partition"]): r["new"] for r in rows}
        )
