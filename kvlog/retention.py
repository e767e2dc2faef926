"""Retention: which batches go (a pure policy) and a sweeper that applies it.

Kafka's rules, per partition, applied to whole batches from the head of the log:

- ``retention.ms``: a batch whose newest record (max timestamp) is older than
  ``now - retention.ms`` goes;
- ``retention.bytes``: the oldest batch goes while the partition would still hold at least
  ``retention.bytes`` without it;
- only batches below the high watermark go, and deletion stops at the first batch that
  neither rule removes (the log stays a contiguous suffix);
- ``-1`` disables a rule. Consuming never deletes anything;
- only topics whose ``cleanup.policy`` has ``delete`` (``delete`` or ``compact,delete``);
  a ``compact`` topic keeps its records until the cleaner (:mod:`kvlog.cleaner`) removes
  superseded ones.

The sweeper reads batch headers (never payloads), decides with :func:`retention_cutoff`,
and deletes in short write transactions of at most ``max_batches_per_txn`` batches,
moving the log start offset in the same transaction as the delete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import KvlogError
from .log import LogStore
from .topic_config import UNLIMITED, cleanup_policies, effective_topic_config
from .types import TopicPartition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchInfo:
    base_offset: int
    next_offset: int
    size_bytes: int
    max_timestamp: int


def retention_cutoff(
    batches: Iterable[BatchInfo],
    *,
    total_bytes: int,
    high_watermark: int,
    retention_ms: int,
    retention_bytes: int,
    now_ms: int,
) -> int | None:
    """The new log start offset, or None when nothing goes. ``batches`` oldest first;
    it is consumed only as far as needed."""
    if retention_ms == UNLIMITED and retention_bytes == UNLIMITED:
        return None
    expired_before = now_ms - retention_ms
    remaining = total_bytes
    cutoff = None
    for info in batches:
        if info.next_offset > high_watermark:
            break
        too_old = retention_ms != UNLIMITED and info.max_timestamp < expired_before
        too_big = retention_bytes != UNLIMITED and remaining - info.size_bytes >= retention_bytes
        if not (too_old or too_big):
            break
        remaining -= info.size_bytes
        cutoff = info.next_offset
    return cutoff


@dataclass(frozen=True)
class SweepResult:
    tp: TopicPartition
    old_log_start: int
    new_log_start: int
    bytes_freed: int


ConfigLookup = Callable[[str], Mapping[str, Any] | None]


class Sweeper:
    """Applies retention to one log store. ``config_for(topic)`` returns the topic's
    config overrides (None when the topic is unknown: its partitions are left alone)."""

    def __init__(
        self,
        store: LogStore,
        config_for: ConfigLookup,
        *,
        max_batches_per_txn: int = 1000,
    ) -> None:
        self.store = store
        self.config_for = config_for
        self.max_batches_per_txn = max_batches_per_txn

    def sweep(self, now_ms: int) -> list[SweepResult]:
        """One pass over every partition; returns what moved."""
        results = []
        for tp in self.store.partitions():
            overrides = self.config_for(tp.topic)
            if overrides is None:
                continue
            config = effective_topic_config(overrides)
            if "delete" not in cleanup_policies(config):
                continue  # cleanup.policy=compact: the cleaner's, never deleted by age or size
            try:
                result = self.sweep_partition(
                    tp, now_ms, config["retention.ms"], config["retention.bytes"]
                )
            except KvlogError as exc:  # a partition dropped meanwhile, a full disk, ...
                log.warning("retention of %s skipped: %s", tp, exc)
                continue
            if result is not None:
                results.append(result)
        return results

    def sweep_partition(
        self, tp: TopicPartition, now_ms: int, retention_ms: int, retention_bytes: int
    ) -> SweepResult | None:
        first: int | None = None
        freed = 0
        while True:
            with self.store.reader() as r:
                state = r.offsets(tp)
                if first is None:
                    first = state.log_start_offset
                infos = (
                    BatchInfo(base, base + h.last_offset_delta + 1, size, h.max_timestamp)
                    for base, size, h in r.headers(tp)
                )
                cutoff = retention_cutoff(
                    _bounded(infos, self.max_batches_per_txn),
                    total_bytes=state.size_bytes,
                    high_watermark=state.high_watermark,
                    retention_ms=retention_ms,
                    retention_bytes=retention_bytes,
                    now_ms=now_ms,
                )
            if cutoff is None or cutoff <= state.log_start_offset:
                break
            new = self.store.write(lambda w, c=cutoff: w.delete_before(tp, c))
            freed += state.size_bytes - new.size_bytes
            log.info("retention: %s log start %d -> %d", tp, state.log_start_offset, cutoff)
        if first is None or freed == 0:
            return None
        with self.store.reader() as r:
            return SweepResult(tp, first, r.offsets(tp).log_start_offset, freed)


def _bounded(items: Iterable[BatchInfo], limit: int) -> Iterable[BatchInfo]:
    for n, item in enumerate(items):
        if n >= limit:
            return
        yield item
