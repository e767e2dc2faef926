"""ConsumerPool: N consumer processes of one group running a handler, with a DLQ.

::

    def handle(record):            # module-level, so worker processes can import it
        process(record.value)

    with kvlog.ConsumerPool(handle, ["orders"], group_id="billing", workers=4,
                            bootstrap_servers="127.0.0.1:7092") as pool:
        pool.join()                # or do other work; stop() or leaving the block stops it

Each worker (a ``multiprocess`` spawn process) runs a Consumer in the group, calls the
handler per record (or per partition batch with ``per="batch"``), and commits a
partition's offset only after the handler succeeded for the records before it, so a
crash means redelivery, never loss (at-least-once). A record whose handler keeps failing
is retried with exponential backoff ``max_retries`` times, then written to the
dead-letter topic (default ``<topic>.DLQ``) with headers naming the original topic,
partition, offset, error and attempts; the worker then moves on. A worker that dies is
restarted; meanwhile the group gives its partitions to the others.

Retries happen inside the poll loop: keep ``max_retries`` x backoff well below
``max.poll.interval.ms`` or the worker is removed from the group while retrying.

A pool is a work queue: a new group starts at the earliest offset
(``auto_offset_reset="earliest"`` unless given), so jobs produced before the pool started
are processed, not skipped. A record whose key or value cannot be deserialized never
reaches the handler: it goes to the dead-letter topic as it was stored (raw key and value
bytes) and the worker moves past it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import multiprocess

from kvlog.allocator import tune_allocator
from kvlog.errors import (
    InvalidConfigError,
    KvlogError,
    RecordDeserializationError,
    TopicAlreadyExistsError,
)

log = logging.getLogger("kvlog.pool")

DLQ_SUFFIX = ".DLQ"
# Counters each worker keeps in shared memory: processed, retried, dead-lettered, failed
# commits.
_STATS = ("processed", "retries", "dead_lettered", "commit_failures")


def resolve_handler(handler: Callable[..., Any] | str) -> Callable[..., Any]:
    """A callable, or ``"module:function"`` (as ``kvlog consume --handler`` takes it)."""
    if callable(handler):
        return handler
    module_name, sep, attr = str(handler).partition(":")
    if not sep or not module_name or not attr:
        raise InvalidConfigError(
            f"handler {handler!r} must be 'module:function' (e.g. 'myapp.jobs:handle')"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidConfigError(f"cannot import handler module {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InvalidConfigError(f"{module_name!r} has no callable {attr!r}")
    return fn


def dlq_headers(record: Any, error: BaseException, attempts: int) -> list[tuple[str, bytes]]:
    """The original record's headers plus where it came from and why it failed."""
    return [
        *list(record.headers or []),
        ("kvlog.dlq.topic", record.topic.encode()),
        ("kvlog.dlq.partition", str(record.partition).encode()),
        ("kvlog.dlq.offset", str(record.offset).encode()),
        ("kvlog.dlq.timestamp", str(record.timestamp).encode()),
        ("kvlog.dlq.error", f"{type(error).__name__}: {error}".encode()[:4096]),
        ("kvlog.dlq.attempts", str(attempts).encode()),
    ]


@dataclass
class PoolSettings:
    handler: Any
    topics: list[str]
    group_id: str
    consumer_config: dict[str, Any]
    per: str = "record"
    max_retries: int = 3
    retry_backoff_ms: int = 100
    max_retry_backoff_ms: int = 5000
    dlq_topic: str | None = None  # None: <topic>.DLQ
    poll_timeout_ms: int = 500


class Worker:
    """The loop one worker process runs (also usable in-process, for tests)."""

    def __init__(self, settings: PoolSettings, stop: Any, stats: Any, index: int) -> None:
        from kvlog.ipc.consumer import Consumer
        from kvlog.ipc.producer import Producer

        self.settings = settings
        self.stop = stop
        self.stats = stats
        self.index = index
        self.handler = resolve_handler(settings.handler)
        config = dict(settings.consumer_config)
        config["enable_auto_commit"] = False  # commits follow handler success
        config.setdefault("client_id", f"pool-{settings.group_id}-{index}")
        self.consumer = Consumer(group_id=settings.group_id, **config)
        producer_keys = (
            "bootstrap_servers",
            "request_timeout_ms",
            "security_protocol",
            "curve_server_key",
            "curve_secret_key",
        )
        self.producer = Producer(
            acks="all",
            **{k: v for k, v in config.items() if k in producer_keys},
        )
        self.consumer.subscribe(settings.topics)

    def _count(self, name: str, n: int = 1) -> None:
        if self.stats is not None:
            with self.stats.get_lock():
                self.stats[self.index * len(_STATS) + _STATS.index(name)] += n

    def _backoff(self, attempt: int) -> None:
        s = self.settings
        delay = min(s.retry_backoff_ms * 2 ** (attempt - 1), s.max_retry_backoff_ms) / 1000
        self.stop.wait(delay)

    def _call(self, fn: Callable[[], Any]) -> BaseException | None:
        """Run with retries; the last error, or None on success."""
        attempts = 0
        while True:
            try:
                fn()
                return None
            except Exception as exc:
                attempts += 1
                if attempts > self.settings.max_retries or self.stop.is_set():
                    return exc
                self._count("retries")
                log.info(
                    "handler failed (attempt %d of %d): %s",
                    attempts,
                    self.settings.max_retries + 1,
                    exc,
                )
                self._backoff(attempts)

    def _dead_letter(self, record: Any, error: BaseException, attempts: int | None = None) -> None:
        topic = self.settings.dlq_topic or record.topic + DLQ_SUFFIX
        attempts = self.settings.max_retries + 1 if attempts is None else attempts
        log.warning(
            "record %s-%d@%d failed %d times, sent to %s: %s",
            record.topic,
            record.partition,
            record.offset,
            attempts,
            topic,
            "".join(traceback.format_exception_only(type(error), error)).strip(),
        )
        key = record.key if isinstance(record.key, bytes | None) else str(record.key).encode()
        value = (
            record.value if isinstance(record.value, bytes | None) else str(record.value).encode()
        )
        # Durable in the DLQ before the offset is committed past the record.
        self.producer.send(
            topic, value=value, key=key, headers=dlq_headers(record, error, attempts)
        ).get(timeout=60)
        self._count("dead_lettered")

    def _process(self, records: list[Any]) -> None:
        if self.settings.per == "batch":
            error = self._call(lambda: self.handler(records))
            if error is None:
                self._count("processed", len(records))
                return
            # Find the records that fail on their own; the rest succeed.
        for record in records:
            error = self._call(lambda r=record: self.handler(r))
            if error is None:
                self._count("processed")
            else:
                self._dead_letter(record, error)

    def _undecodable(self, error: RecordDeserializationError) -> None:
        """A record the deserializers refuse: to the DLQ with its raw bytes (retrying
        cannot help), then past it."""
        from kvlog.ipc.consumer import OffsetAndMetadata
        from kvlog.ipc.records import ConsumerRecord

        tp = error.topic_partition
        raw = ConsumerRecord(
            tp.topic, tp.partition, error.offset, error.timestamp, error.key, error.value,
            error.headers,
        )  # fmt: skip
        self._dead_letter(raw, error, attempts=1)
        self.consumer.seek(tp, error.offset + 1)
        try:
            self.consumer.commit({tp: OffsetAndMetadata(error.offset + 1)})
        except KvlogError as exc:
            self._count("commit_failures")
            log.warning("worker %d: %s", self.index, exc.message)

    def run(self) -> None:
        from kvlog.ipc.consumer import OffsetAndMetadata

        try:
            while not self.stop.is_set():
                try:
                    batch = self.consumer.poll(timeout_ms=self.settings.poll_timeout_ms)
                except RecordDeserializationError as exc:
                    self._undecodable(exc)
                    continue
                except KvlogError as exc:
                    log.warning("worker %d: poll: %s", self.index, exc.message)
                    continue
                for tp, records in batch.items():
                    self._process(records)
                    try:
                        self.consumer.commit({tp: OffsetAndMetadata(records[-1].offset + 1)})
                    except KvlogError as exc:
                        # The partition moved: its new owner redoes the uncommitted records.
                        self._count("commit_failures")
                        log.warning("worker %d: %s", self.index, exc.message)
        finally:
            self.consumer.close(autocommit=False)
            self.producer.close(timeout=10)


def _worker_main(settings: PoolSettings, stop: Any, stats: Any, index: int, level: str) -> None:
    from .runtime import _die_with_parent, setup_logging

    _die_with_parent()
    tune_allocator()
    setup_logging(f"pool-worker{index}", level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    Worker(settings, stop, stats, index).run()


class ConsumerPool:
    """A group of N worker processes; see the module docstring. Owned by one thread."""

    def __init__(
        self,
        handler: Callable[..., Any] | str,
        topics: Iterable[str] | str,
        group_id: str,
        workers: int = 2,
        *,
        per: str = "record",
        max_retries: int = 3,
        retry_backoff_ms: int = 100,
        dlq_topic: str | None = None,
        create_dlq: bool = True,
        config: Mapping[str, Any] | None = None,
        log_level: str = "WARNING",
        **consumer_config: Any,
    ) -> None:
        if per not in ("record", "batch"):
            raise InvalidConfigError(f"per must be 'record' or 'batch', got {per!r}")
        if workers < 1:
            raise InvalidConfigError(f"workers must be at least 1, got {workers}")
        if isinstance(handler, str):
            resolve_handler(handler)  # fail here, not in every worker
        from kvlog.ipc.config import CONSUMER_SETTINGS, resolve

        merged = resolve(CONSUMER_SETTINGS, config, consumer_config)
        defaults = {key.attr: key.default for key in CONSUMER_SETTINGS.values()}
        given = {k: v for k, v in merged.items() if v != defaults.get(k)}
        given.pop("group_id", None)
        named = {
            found.attr
            for spelled in [*(config or {}), *consumer_config]
            if (found := CONSUMER_SETTINGS.lookup(spelled)) is not None
        }
        if "auto_offset_reset" not in named:
            given["auto_offset_reset"] = "earliest"  # a work queue: waiting jobs count
        topic_list = [topics] if isinstance(topics, str) else list(topics)
        self.settings = PoolSettings(
            handler=handler,
            topics=topic_list,
            group_id=group_id,
            consumer_config={"bootstrap_servers": merged["bootstrap_servers"], **given},
            per=per,
            max_retries=max_retries,
            retry_backoff_ms=retry_backoff_ms,
            dlq_topic=dlq_topic,
        )
        self.workers = workers
        self.create_dlq = create_dlq
        self.log_level = log_level
        self._ctx = multiprocess.get_context("spawn")
        self._stop = self._ctx.Event()
        self._stats = self._ctx.Array("q", workers * len(_STATS))
        self._procs: list[Any] = [None] * workers
        self.restarts = 0
        self._monitor: threading.Thread | None = None
        self._stopping = threading.Event()

    def __enter__(self) -> ConsumerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ensure_dlq_topics(self) -> None:
        from kvlog.ipc.admin import Admin

        names = (
            [self.settings.dlq_topic]
            if self.settings.dlq_topic
            else [t + DLQ_SUFFIX for t in self.settings.topics]
        )
        admin_keys = (
            "bootstrap_servers",
            "request_timeout_ms",
            "security_protocol",
            "curve_server_key",
            "curve_secret_key",
        )
        cfg = {k: v for k, v in self.settings.consumer_config.items() if k in admin_keys}
        with Admin(**cfg) as admin:
            existing = set(admin.list_topics())
            for name in names:
                if name not in existing:
                    with contextlib.suppress(TopicAlreadyExistsError):
                        admin.create_topic(name, partitions=1)
                        log.info("created dead-letter topic %s", name)

    def start(self) -> ConsumerPool:
        if self.create_dlq:
            self._ensure_dlq_topics()
        from .supervised import main_module_hidden

        for i in range(self.workers):
            self._spawn(i, main_module_hidden)
        self._monitor = threading.Thread(target=self._watch, name="kvlog-pool", daemon=True)
        self._monitor.start()
        return self

    def _spawn(self, index: int, hidden: Any) -> None:
        proc = self._ctx.Process(
            target=_worker_main,
            args=(self.settings, self._stop, self._stats, index, self.log_level),
            name=f"kvlog-pool-{index}",
            daemon=True,
        )
        with hidden():
            proc.start()
        self._procs[index] = proc

    def _watch(self) -> None:
        from .supervised import main_module_hidden

        while not self._stopping.wait(0.2):
            for i, proc in enumerate(self._procs):
                if proc is not None and not proc.is_alive() and not self._stop.is_set():
                    log.warning(
                        "pool worker %d (pid %s) died (exit code %s); restarting",
                        i,
                        proc.pid,
                        proc.exitcode,
                    )
                    self.restarts += 1
                    self._spawn(i, main_module_hidden)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None]

    def stats(self) -> dict[str, int]:
        """Totals over all workers: processed, retries, dead_lettered, commit_failures."""
        values = list(self._stats)
        return {
            name: sum(values[i * len(_STATS) + j] for i in range(self.workers))
            for j, name in enumerate(_STATS)
        }

    def join(self, timeout: float | None = None) -> None:
        """Wait until stop() (or the timeout)."""
        self._stopping.wait(timeout)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ask every worker to finish its batch, commit and leave; kill stragglers."""
        self._stopping.set()
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=2)
        deadline = time.monotonic() + timeout_s
        for proc in self._procs:
            if proc is not None:
                proc.join(max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    log.warning("pool worker pid %d did not stop; killing it", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.join(2)
