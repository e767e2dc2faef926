"""Byte-rate quotas and request limits, without sockets (Kafka's client quotas).

A principal over its produce or fetch byte rate is *throttled*, not failed: the node
still writes (or reads) the request, then holds the reply back for the time the bytes
should have taken (``throttle_time_ms`` in the reply). A producer with a bounded number
of requests in flight, or a consumer with one fetch in flight per node, therefore slows
to the quota; other principals are not held up, because only that principal's replies
wait (the node's loop never sleeps).

The rate is measured over a short window with a token bucket whose burst is one second
of quota; ``-1`` disables a quota.
"""

from __future__ import annotations

from dataclasses import dataclass

UNLIMITED = -1
MAX_THROTTLE_MS = 30_000


@dataclass
class TokenBucket:
    rate: float  # bytes per second
    tokens: float
    updated: float

    def charge(self, nbytes: int, now: float) -> float:
        """Take ``nbytes``; returns how long (s) the caller should wait to stay at rate."""
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= nbytes
        if self.tokens >= 0:
            return 0.0
        return min(-self.tokens / self.rate, MAX_THROTTLE_MS / 1000)


class Quotas:
    """Per-principal produce and fetch buckets. Owned by one node's loop."""

    def __init__(self, produce_bytes_per_s: int, fetch_bytes_per_s: int) -> None:
        self.rates = {"produce": produce_bytes_per_s, "fetch": fetch_bytes_per_s}
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return any(rate != UNLIMITED for rate in self.rates.values())

    def throttle(self, kind: str, principal: str, nbytes: int, now: float) -> float:
        """Seconds to hold back the reply to ``principal`` for ``nbytes`` of ``kind``."""
        rate = self.rates[kind]
        if rate == UNLIMITED or nbytes <= 0:
            return 0.0
        key = (kind, principal)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(float(rate), float(rate), now)
        return bucket.charge(nbytes, now)


class InflightLimit:
    """At most ``limit`` requests of one client (ZeroMQ peer) parked at a time."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count: dict[bytes, int] = {}

    def try_acquire(self, peer: bytes) -> bool:
        count = self._count.get(peer, 0)
        if count >= self.limit:
            return False
        self._count[peer] = count + 1
        return True

    def release(self, peer: bytes) -> None:
        count = self._count.get(peer, 0) - 1
        if count <= 0:
            self._count.pop(peer, None)
        else:
            self._count[peer] = count
