"""Client metrics under Kafka's names, in kafka-python's ``metrics()`` shape:
``{group: {name: value}}`` (``producer-metrics``, ``consumer-fetch-manager-metrics``,
``consumer-coordinator-metrics``), so dashboards and scripts written for Kafka's clients
find the numbers where they look for them.

Rates are per second over a sliding window of :data:`WINDOW_S` (Kafka samples 2 x 30 s);
totals count since the client started; averages and maxima cover the window. Everything
is recorded per request or per batch, never per record, so the hot paths stay per-batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

WINDOW_S = 30.0


class _Window:
    """Per-second buckets of (sum, count, max) over the last WINDOW_S seconds."""

    __slots__ = ("_buckets", "started")

    def __init__(self, now: float) -> None:
        self.started = now
        self._buckets: deque[list[float]] = deque()  # [second, sum, count, max]

    def add(self, value: float, now: float) -> None:
        second = float(int(now))
        if self._buckets and self._buckets[-1][0] == second:
            bucket = self._buckets[-1]
            bucket[1] += value
            bucket[2] += 1
            bucket[3] = max(bucket[3], value)
        else:
            self._buckets.append([second, value, 1, value])
            self._prune(now)

    def _prune(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] <= now - WINDOW_S - 1:
            self._buckets.popleft()

    def totals(self, now: float) -> tuple[float, float, float]:
        """(sum, count, max) within the window."""
        self._prune(now)
        live = [b for b in self._buckets if b[0] > now - WINDOW_S - 1]
        if not live:
            return 0.0, 0.0, 0.0
        return sum(b[1] for b in live), sum(b[2] for b in live), max(b[3] for b in live)

    def elapsed(self, now: float) -> float:
        """The window's length so far, at least a second (a young client's rate is not
        divided by a few milliseconds)."""
        return max(1.0, min(WINDOW_S, now - self.started))


class Meter:
    """A count (records, bytes, requests): its total and its rate per second."""

    __slots__ = ("_window", "total")

    def __init__(self, now: float) -> None:
        self.total = 0
        self._window = _Window(now)

    def record(self, amount: float, now: float) -> None:
        self.total += amount
        self._window.add(amount, now)

    def rate(self, now: float) -> float:
        return self._window.totals(now)[0] / self._window.elapsed(now)


class Stat:
    """A measured value (latency, size): its average and maximum over the window."""

    __slots__ = ("_window",)

    def __init__(self, now: float) -> None:
        self._window = _Window(now)

    def record(self, value: float, now: float) -> None:
        self._window.add(value, now)

    def avg(self, now: float) -> float:
        total, count, _ = self._window.totals(now)
        return total / count if count else 0.0

    def max(self, now: float) -> float:
        return self._window.totals(now)[2]


class ProducerMetrics:
    """Owned by a producer's Sender: recorded on the I/O thread, read by any thread
    (``lock`` guards both)."""

    def __init__(self) -> None:
        now = time.monotonic()
        self.lock = threading.Lock()
        self.records = Meter(now)
        self.bytes = Meter(now)
        self.requests = Meter(now)
        self.retries = Meter(now)
        self.errors = Meter(now)
        self.latency_ms = Stat(now)
        self.batch_size = Stat(now)
        self.records_per_request = Stat(now)

    def sent(self, batch_sizes: list[int], records: int, now: float) -> None:
        """One produce request of these batches (bytes) holding ``records`` records."""
        with self.lock:
            self.requests.record(1, now)
            self.records.record(records, now)
            self.bytes.record(sum(batch_sizes), now)
            self.records_per_request.record(records, now)
            for size in batch_sizes:
                self.batch_size.record(size, now)

    def answered(self, latency_s: float, now: float) -> None:
        with self.lock:
            self.latency_ms.record(latency_s * 1000, now)

    def retried(self, records: int, now: float) -> None:
        with self.lock:
            self.retries.record(records, now)

    def failed(self, records: int, now: float) -> None:
        with self.lock:
            self.errors.record(records, now)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        with self.lock:
            return {
                "producer-metrics": {
                    "record-send-rate": self.records.rate(now),
                    "record-send-total": self.records.total,
                    "record-retry-rate": self.retries.rate(now),
                    "record-retry-total": self.retries.total,
                    "record-error-rate": self.errors.rate(now),
                    "record-error-total": self.errors.total,
                    "request-rate": self.requests.rate(now),
                    "request-total": self.requests.total,
                    "request-latency-avg": self.latency_ms.avg(now),
                    "request-latency-max": self.latency_ms.max(now),
                    "outgoing-byte-rate": self.bytes.rate(now),
                    "outgoing-byte-total": self.bytes.total,
                    "batch-size-avg": self.batch_size.avg(now),
                    "batch-size-max": self.batch_size.max(now),
                    "records-per-request-avg": self.records_per_request.avg(now),
                }
            }


class ConsumerMetrics:
    """Owned by a consumer: fetches are recorded on the I/O thread, consumed records on
    the application's thread; ``lock`` guards both."""

    def __init__(self) -> None:
        now = time.monotonic()
        self.lock = threading.Lock()
        self.fetches = Meter(now)
        self.fetch_bytes = Meter(now)
        self.fetch_latency_ms = Stat(now)
        self.records = Meter(now)

    def fetched(self, nbytes: int, latency_s: float, now: float) -> None:
        with self.lock:
            self.fetches.record(1, now)
            self.fetch_bytes.record(nbytes, now)
            self.fetch_latency_ms.record(latency_s * 1000, now)

    def consumed(self, records: int, now: float) -> None:
        with self.lock:
            self.records.record(records, now)

    def snapshot(self, lags: dict[Any, int], assigned: int) -> dict[str, dict[str, Any]]:
        """``lags``: high watermark - position of each partition whose both are known."""
        now = time.monotonic()
        with self.lock:
            return {
                "consumer-fetch-manager-metrics": {
                    "records-lag-max": max(lags.values(), default=0),
                    "records-consumed-rate": self.records.rate(now),
                    "records-consumed-total": self.records.total,
                    "bytes-consumed-rate": self.fetch_bytes.rate(now),
                    "bytes-consumed-total": self.fetch_bytes.total,
                    "fetch-rate": self.fetches.rate(now),
                    "fetch-total": self.fetches.total,
                    "fetch-latency-avg": self.fetch_latency_ms.avg(now),
                    "fetch-latency-max": self.fetch_latency_ms.max(now),
                },
                "consumer-coordinator-metrics": {"assigned-partitions": assigned},
            }
