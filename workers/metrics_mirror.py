"""Metrics of a mirror run under the supervisor (``kvlog serve --mirror-config``).

The mirror's status (workers/mirror_core.py ``status``, or mirror_files.py's
``waiting_status`` while the target is away) is what ``kvlog mirror status`` shows; the
same dict, at the same moments (at most once a second while forwarding, once per backoff
attempt while waiting), becomes the gauges and counters of docs/METRICS.md's "Mirrors"
section, written into the multiprocess files like every other process's
(workers/metrics.py).

Owned by the mirror's loop thread; not thread-safe.
"""

from __future__ import annotations

import time
from typing import Any

from .metrics import GaugeSet, ProcessMetrics, gauge


class MirrorMetrics(ProcessMetrics):
    def __init__(self) -> None:
        super().__init__("mirror")
        from prometheus_client import Counter

        self.lag = GaugeSet(
            gauge(
                "kvlog_mirror_lag_records",
                "source records not yet acknowledged by the target",
                ["mirror", "topic", "partition"],
            )
        )
        self.age = GaugeSet(
            gauge(
                "kvlog_mirror_oldest_unforwarded_age_seconds",
                "age of the oldest source record not yet forwarded (0 when caught up)",
                ["mirror", "topic", "partition"],
            )
        )
        self.target_up = GaugeSet(
            gauge("kvlog_mirror_target_up", "1 while the target answers", ["mirror"])
        )
        self.forwarded = Counter(
            "kvlog_mirror_forwarded_records", "records the target acknowledged", ["mirror"]
        )
        self.gaps = Counter(
            "kvlog_mirror_gaps", "records deleted on the source before forwarding", ["mirror"]
        )
        # What this process has added to the counters (the status's counts are the
        # process's own, from 0 at its start).
        self._counted = {"forwarded": 0, "gaps_total": 0}

    def observe(self, status: dict[str, Any]) -> None:
        """Set the metrics from a status the mirror just wrote."""
        started = time.thread_time()
        name = str(status.get("name", ""))
        lag: dict[tuple[str, ...], float] = {}
        age: dict[tuple[str, ...], float] = {}
        for feed in status.get("feeds", []):
            topic, _, partition = str(feed["source"]).rpartition("/")
            labels = (name, topic, partition)
            if feed.get("lag_records") is not None:  # None: the source's end not known yet
                lag[labels] = float(feed["lag_records"])
            age[labels] = (feed.get("age_ms") or 0) / 1000
        self.lag.update(lag)
        self.age.update(age)
        self.target_up.update({(name,): 1.0 if status.get("target_reachable") else 0.0})
        # Both counts only grow in one process (a waiting status has no gaps_total).
        for key, family in (("forwarded", self.forwarded), ("gaps_total", self.gaps)):
            count = int(status.get(key) or 0)
            if count > self._counted[key]:
                family.labels(name).inc(count - self._counted[key])
                self._counted[key] = count
        self._push_took += time.thread_time() - started
        self.push(None)  # the process-wide counters and the push's own cost
