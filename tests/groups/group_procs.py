"""Helpers for the group integration tests: consumer child processes, waiting with
deadlines, producing numbered records (not a test module)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kvlog
from kvlog.types import TopicPartition

CHILD = Path(__file__).with_name("_group_child.py")
ROOT = Path(__file__).resolve().parents[2]
BROKER_CONFIG = {"group.min.session.timeout.ms": 100, "group.initial.rebalance.delay.ms": 0}


def wait_until(what: str, predicate: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.02)


def poll_until(
    what: str,
    consumers: list[kvlog.Consumer],
    predicate: Callable[[], Any],
    timeout_s: float = 20.0,
    sink: dict[Any, list[Any]] | None = None,
) -> Any:
    """Poll every consumer (one thread, short timeouts) until ``predicate()`` holds; the
    records each poll returns go to ``sink[consumer]``."""
    deadline = time.monotonic() + timeout_s
    while True:
        for c in consumers:
            batch = c.poll(timeout_ms=50)
            if sink is not None:
                sink.setdefault(c, []).extend(r for rs in batch.values() for r in rs)
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def produce(bootstrap: str, topic: str, count: int, *, partitions: int, start: int = 0) -> None:
    """``count`` records spread evenly: value ``b"<n>"``, partition ``n % partitions``."""
    producer = kvlog.Producer(bootstrap_servers=bootstrap, linger_ms=0)
    try:
        for n in range(start, start + count):
            producer.send(topic, value=str(n).encode(), partition=n % partitions)
        producer.flush(timeout=30)
    finally:
        producer.close()


def consumer(bootstrap: str, group: str, **config: Any) -> kvlog.Consumer:
    settings = {
        "auto_offset_reset": "earliest",
        "session_timeout_ms": 3000,
        "heartbeat_interval_ms": 200,
        "enable_auto_commit": False,
        **config,
    }
    return kvlog.Consumer(bootstrap_servers=bootstrap, group_id=group, **settings)


class Recorder(kvlog.ConsumerRebalanceListener):
    """Keeps every callback in order: ("assigned" | "revoked" | "lost", set, time)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, set[TopicPartition], float]] = []

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.calls.append(("assigned", set(assigned), time.monotonic()))

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.calls.append(("revoked", set(revoked), time.monotonic()))

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.calls.append(("lost", set(lost), time.monotonic()))

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.calls]


class ChildConsumer:
    """A consumer in its own process (``_group_child.py``) and the events it printed."""

    def __init__(self, name: str, spec: dict[str, Any], log_dir: Path) -> None:
        self.name = name
        self.stderr = (log_dir / f"{name}.stderr").open("wb")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), json.dumps({"name": name, **spec})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
        )
        self.events: list[dict[str, Any]] = []
        self.ended_at: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["ev"] == kind]

    def send(self, command: str) -> None:
        self.proc.stdin.write((command + "\n").encode())
        self.proc.stdin.flush()

    def assignment(self) -> set[tuple[str, int]]:
        """What it owns now, replaying its listener callbacks."""
        owned: set[tuple[str, int]] = set()
        for e in list(self.events):
            parts = {tuple(tp) for tp in e.get("tps", [])}
            if e["ev"] == "assigned":
                owned |= parts
            elif e["ev"] in ("revoked", "lost"):
                owned -= parts
        return owned

    def offsets(self, tp: tuple[str, int]) -> list[int]:
        return [o for e in self.of("records") if tuple(e["tp"]) == tp for o in e["offsets"]]

    def generation(self) -> int:
        assigned = self.of("assigned")
        return assigned[-1]["gen"] if assigned else -1

    def kill(self) -> None:
        """SIGKILL: no LeaveGroup, no commit; its session has to run out."""
        self.ended_at = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self, timeout_s: float = 20.0) -> None:
        self.send("close")
        wait_until(f"{self.name} to close", lambda: self.of("closed"), timeout_s)
        self.ended_at = self.of("closed")[0]["t"]
        self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.stderr.close()
