"""The sweeper process's loop: retention and compaction over every log dir.

Retention (:class:`kvlog.retention.Sweeper`) runs every ``log.retention.check.interval.ms``;
the cleaner (:class:`kvlog.cleaner.Cleaner`) looks for partitions due for compaction every
``log.cleaner.backoff.ms`` and at once when ``kvlog topics compact`` leaves a request in
the run dir (:mod:`compact_requests`). Each log dir is its own LMDB environment, opened
here after spawn beside the node that owns it (LMDB's lock lets both write, one
transaction at a time); the coordinator's ``meta`` environment is opened read-only for
the topics' configs.

The process runs at the lowest CPU priority (``nice`` 19): compaction is background work
and yields the CPU to the nodes and clients (on a 2-core machine a compaction at +10
still took ~20% of a saturating producer's throughput; at 19, ~10%: BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvlog import clock
from kvlog.cleaner import Cleaner, CleanResult, TopicInfo
from kvlog.errors import KvlogError
from kvlog.lmdb_store import LogDir
from kvlog.metadata_store import get_topic
from kvlog.retention import Sweeper
from kvlog.topic_config import cleanup_policies, effective_topic_config

from . import compact_requests
from .settings import SweeperSettings

log = logging.getLogger("kvlog.sweeper")

NICENESS = 19  # the lowest CPU priority: measured, +10 still cost producers ~20%
_TICK_S = 0.1


class SweeperLoop:
    """Retention and compaction of every log dir of one data dir. Owned by the sweeper
    process; not thread-safe."""

    def __init__(self, settings: SweeperSettings, should_stop: Callable[[], bool]) -> None:
        self.settings = settings
        self.should_stop = should_stop
        self.stores: dict[str, LogDir] = {}
        self.meta: LogDir | None = None
        first = time.monotonic()
        self.next_retention = first + min(settings.interval_ms / 1000, 1.0)
        self.next_clean = first + min(settings.cleaner_backoff_ms / 1000, 1.0)

    # -- the topics -------------------------------------------------------------------------

    def topic_info(self, topic: str) -> TopicInfo | None:
        if self.meta is None:
            self.meta = LogDir(Path(self.settings.data_dir) / "meta", readonly=True)
        with self.meta.reader() as r:
            found = get_topic(r, topic)
        return None if found is None else TopicInfo(found.topic_id, found.config)

    def topic_config(self, topic: str) -> dict[str, Any] | None:
        info = self.topic_info(topic)
        return None if info is None else dict(info.config)

    def store(self, path: str) -> LogDir:
        found = self.stores.get(path)
        if found is None:
            found = self.stores[path] = LogDir(path)
        return found

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        with contextlib.suppress(OSError):
            os.nice(NICENESS)
        try:
            while not self.should_stop():
                if not self.step():
                    time.sleep(_TICK_S)
        finally:
            self.close()

    def step(self) -> bool:
        """Do what is due; False when nothing was."""
        requests = compact_requests.pending(self.settings.data_dir)
        now = time.monotonic()
        retention_due = now >= self.next_retention
        clean_due = self.settings.cleaner_enable and now >= self.next_clean
        if not (requests or retention_due or clean_due):
            return False
        try:
            if retention_due:
                self.next_retention = now + self.settings.interval_ms / 1000
                self.retention()
            if requests or clean_due:
                if clean_due:
                    self.next_clean = now + self.settings.cleaner_backoff_ms / 1000
                self.compaction(requests)
        except KvlogError as exc:
            log.warning("sweeper pass failed: %s", exc.message)
        compact_requests.forget_old(self.settings.data_dir, time.time())
        return True

    def retention(self) -> None:
        for path in self.settings.log_dirs:
            sweeper = Sweeper(self.store(path), self.topic_config)
            for result in sweeper.sweep(clock.now_ms()):
                log.info(
                    "retention freed %d bytes of %s (log start %d -> %d)",
                    result.bytes_freed,
                    result.tp,
                    result.old_log_start,
                    result.new_log_start,
                )

    def compaction(self, requests: list[tuple[str, str]]) -> None:
        forced = {topic for _, topic in requests}
        results: list[tuple[str, CleanResult]] = []
        for path in self.settings.log_dirs:
            cleaner = Cleaner(
                self.store(path),
                self.topic_info,
                dedupe_buffer_bytes=self.settings.dedupe_buffer_bytes,
                io_buffer_bytes=self.settings.io_buffer_bytes,
                should_stop=self.should_stop,
            )
            results += [(path, result) for result in cleaner.run(forced)]
        for request_id, topic in requests:
            compact_requests.complete(
                self.settings.data_dir, request_id, self.answer(topic, results)
            )

    def answer(self, topic: str, results: list[tuple[str, CleanResult]]) -> dict[str, Any]:
        """A forced compaction's answer for the CLI."""
        info = self.topic_info(topic) if topic else None
        if info is None:
            return {"topic": topic, "error": f"topic {topic!r} does not exist"}
        if "compact" not in cleanup_policies(effective_topic_config(info.config)):
            return {
                "topic": topic,
                "error": f"topic {topic!r} has cleanup.policy="
                f"{effective_topic_config(info.config)['cleanup.policy']}; "
                "only compacted topics are compacted (set cleanup.policy=compact)",
            }
        return {
            "topic": topic,
            "partitions": [
                {"log_dir": path, "partition": r.tp.partition, "complete": r.complete}
                | vars(r.last)
                for path, r in results
                if r.tp.topic == topic
            ],
        }

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
        self.stores.clear()
        if self.meta is not None:
            self.meta.close()
            self.meta = None


def run_sweeper(settings: SweeperSettings, should_stop: Callable[[], bool]) -> None:
    SweeperLoop(settings, should_stop).run()
