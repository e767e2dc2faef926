"""Metrics of one broker process, written into prometheus_client's multiprocess files.

The supervisor gives every process the directory ``DATA_DIR/run/metrics`` (or none when
metrics are off). :func:`enable` points prometheus_client at it, before anything in the
process imports the library (its value class is chosen at import time), and builds the
metric families of docs/METRICS.md. The supervisor serves the files
(workers/metrics_http.py).

Hot paths never touch prometheus_client: a multiprocess value update takes a lock and
writes an mmap (a few microseconds), which at thousands of group commits a second would
cost more than the 3 % the metrics may. They add to plain counters per batch or per
request (:class:`Tally`, :class:`LocalHistogram`), and the process pushes those into
the files once a second from its loop (:class:`Pusher`). Gauges of state (offsets,
group state) are read from the process's own state at the same moment.

A gauge series that stops existing (a partition no longer hosted, a group gone) is set
to NaN: multiprocess files cannot drop a series, and the supervisor leaves NaN samples
out of what it serves.

Owned by each process's loop thread; not thread-safe. The counts it reads from other
objects are plain ints (the ZAP thread's refusals among them: reading one is safe).
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Iterable
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PUSH_INTERVAL_S = 1.0
NAN = float("nan")

# Latency buckets from 50 us (a fast fsync) to 30 s (a long poll's longest wait).
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    float("inf"),
)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, float("inf"))


def enable(directory: str) -> None:
    """Make this process write its metrics into ``directory``; call before importing
    prometheus_client anywhere in the process."""
    os.environ[MULTIPROC_ENV] = directory


class LocalHistogram:
    """A histogram's bucket counts and sum, kept in plain Python between pushes."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.total += value * times

    def push(self, child: Any) -> None:
        """Add what was observed since the last push to a prometheus_client Histogram
        child. The library has no bulk observe; its children keep one value per bucket
        (``_buckets``, not cumulative) and ``_sum``, which prometheus_client < 1 keeps
        stable (tests/broker/test_metrics_unit.py checks the outcome against observe)."""
        if not any(self.counts):
            return
        for i, count in enumerate(self.counts):
            if count:
                child._buckets[i].inc(count)
                self.counts[i] = 0
        child._sum.inc(self.total)
        self.total = 0.0


class Tally:
    """Per-label sums between pushes: ``add(label, n)`` per batch or per request."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[Any, float] = {}

    def add(self, key: Any, amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount

    def push(self, counter: Any, *prefix: str) -> None:
        values, self.values = self.values, {}
        for key, amount in values.items():
            labels = (*prefix, *key) if isinstance(key, tuple) else (*prefix, key)
            counter.labels(*labels).inc(amount)


NEW_SERIES_PER_UPDATE = 100  # per GaugeSet and push (once a second)


class GaugeSet:
    """One labelled gauge family whose series come and go: :meth:`update` sets the
    current series and sets those that went away to NaN."""

    def __init__(self, gauge: Any) -> None:
        self.gauge = gauge
        self.last: dict[tuple[str, ...], float] = {}
        # Each series' child, as labels() would return it: labels() validates and locks
        # on every call (~40 us), which a node with 1,000 partitions paid 5,000 times a
        # second (BENCHMARKS.md J).
        self.children: dict[tuple[str, ...], Any] = {}

    def update(self, values: dict[tuple[str, ...], float]) -> None:
        """Set the current series; at most :data:`NEW_SERIES_PER_UPDATE` new ones (each
        new child costs ~0.1 ms: a topic of 1,000 partitions would otherwise stall the
        node's loop ~0.5 s at its first push); the rest show at the next updates."""
        last, children = self.last, self.children
        shown: dict[tuple[str, ...], float] = {}
        budget = NEW_SERIES_PER_UPDATE
        for labels, value in values.items():
            child = children.get(labels)
            if child is None:
                if budget <= 0:
                    continue
                budget -= 1
                child = children[labels] = self.gauge.labels(*labels)
                child.set(value)
            elif last.get(labels) != value:
                child.set(value)
            shown[labels] = value
        for labels in last.keys() - shown.keys():
            children[labels].set(NAN)
        self.last = shown


class ProcessMetrics:
    """What every process counts: requests, bad requests, refused logins. Subclasses add
    their role's numbers in :meth:`collect`."""

    def __init__(self, role: str) -> None:
        from prometheus_client import Counter

        self.role = role
        self.due = 0.0
        self._pushed = {"requests": 0, "bad": 0, "zmq": 0, "kafka": 0}
        self.requests = Counter("kvlog_requests", "ZeroMQ requests handled", ["role"])
        self.bad_requests = Counter(
            "kvlog_bad_requests", "requests answered with an error", ["role"]
        )
        self.auth = Counter("kvlog_authentication_failures", "refused logins", ["role", "wire"])
        # The CPU time the pushes themselves took (the metrics' own overhead).
        self.push_seconds = Counter(
            "kvlog_metrics_push_seconds", "time spent pushing metrics", ["role"]
        )
        self._push_took = 0.0

    def maybe_push(self, server: Any, now: float) -> None:
        """From the loop, every turn: push at most once per :data:`PUSH_INTERVAL_S`."""
        if now < self.due:
            return
        self.due = now + PUSH_INTERVAL_S
        started = time.thread_time()  # CPU time: the cost, not the waits of a busy host
        self.push(server)
        self._push_took += time.thread_time() - started

    def push(self, server: Any) -> None:
        security = getattr(server, "security", None)
        kafka = getattr(server, "kafka", None)
        counts = {
            "requests": getattr(server, "requests_served", 0),
            "bad": getattr(server, "bad_requests", 0),
            "zmq": getattr(security, "refused", 0),  # CURVE keys ZAP refused
            "kafka": getattr(kafka, "auth_failures", 0),
        }
        pushed = self._pushed
        for key, family in (("requests", self.requests), ("bad", self.bad_requests)):
            if counts[key] > pushed[key]:
                family.labels(self.role).inc(counts[key] - pushed[key])
        for wire in ("zmq", "kafka"):
            if counts[wire] > pushed[wire]:
                self.auth.labels(self.role, wire).inc(counts[wire] - pushed[wire])
        self._pushed = counts
        if self._push_took:
            self.push_seconds.labels(self.role).inc(self._push_took)  # the previous pushes'
            self._push_took = 0.0
        self.collect(server)

    def collect(self, server: Any) -> None:
        """The role's own numbers (overridden)."""

    def attach(self, server: Any) -> None:
        """Start measuring ``server`` (overridden by roles that hook into it)."""


class SweeperMetrics(ProcessMetrics):
    def __init__(self) -> None:
        super().__init__("sweeper")
        from prometheus_client import Counter

        self.runs = Counter("kvlog_sweeper_runs", "retention/compaction passes", [])
        self._runs = 0

    def collect(self, server: Any) -> None:
        if server.passes > self._runs:
            self.runs.inc(server.passes - self._runs)
            self._runs = server.passes


def histogram(name: str, doc: str, labels: Iterable[str], buckets: tuple[float, ...]) -> Any:
    from prometheus_client import Histogram

    return Histogram(name, doc, list(labels), buckets=buckets)


def gauge(name: str, doc: str, labels: Iterable[str]) -> Any:
    from prometheus_client import Gauge

    # livesum: one live process writes each series (its labels name the node), and the
    # files of a dead process stop counting once the supervisor marks it dead.
    return Gauge(name, doc, list(labels), multiprocess_mode="livesum")


def process_metrics(role: str, node_id: int | None) -> ProcessMetrics:
    """The metrics object of a process of ``role`` (call after :func:`enable`)."""
    if role == "node":
        from .metrics_node import NodeMetrics

        return NodeMetrics(str(node_id))
    if role == "coordinator":
        from .metrics_coordinator import CoordinatorMetrics

        return CoordinatorMetrics()
    if role == "sweeper":
        return SweeperMetrics()
    if role == "mirror":
        from .metrics_mirror import MirrorMetrics

        return MirrorMetrics()
    return ProcessMetrics(role)
