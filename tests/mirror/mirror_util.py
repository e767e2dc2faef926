"""Helpers for the mirror tests: a target kvlog on fixed ports (so it comes back where it
was after a stop), ``kvlog mirror`` as a process of its own, reading partitions whole."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import kvlog
from kvlog.errors import UnknownTopicOrPartitionError
from kvlog.types import TopicPartition

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def consecutive_free_ports(count: int) -> int:
    """A port P such that P .. P + count - 1 are free on 127.0.0.1 now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count >= 60000:
            continue
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise AssertionError("no run of free ports")


class FixedBroker:
    """A kvlog broker that stops and starts again on the same ports and data dir: the
    target of a mirror whose link is cut."""

    def __init__(self, data_dir: Path, **kwargs: Any) -> None:
        base = consecutive_free_ports(4)
        self.data_dir = data_dir
        self.listen = f"tcp://127.0.0.1:{base}"
        self.kafka_listen = f"127.0.0.1:{base + 1}"  # +1 coordinator, +2 node 0
        # A fixed listen port would give the console and the metrics endpoint their fixed
        # default ports (7180, 9645): another broker of the run may hold them.
        kwargs.setdefault("console_listen", None)
        kwargs.setdefault("metrics_listen", None)
        self.kwargs = kwargs
        self.broker: Any = None

    @property
    def kafka(self) -> str:
        return "kafka://" + self.kafka_listen

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def start(self) -> FixedBroker:
        self.broker = kvlog.Broker(
            self.data_dir, self.listen, kafka_listen=self.kafka_listen, **self.kwargs
        ).start()
        return self

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def pids(self, role: str) -> list[int]:
        return [p["pid"] for p in self.broker.processes() if p["role"] == role]


class MirrorProcess:
    """``kvlog mirror ...`` in a process of its own (SIGKILL-able), restarted on demand."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvlog.tools.cli", "mirror", *self.args, "--log-level", "INFO"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.starts += 1

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""


def read_all(
    bootstrap: str, tps: Iterable[TopicPartition], **config: Any
) -> dict[TopicPartition, list[Any]]:
    """Every record of each partition (log start to end), with any kvlog client."""
    tps = list(tps)
    consumer = kvlog.Consumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", **config)
    try:
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        out: dict[TopicPartition, list[Any]] = {tp: [] for tp in tps}
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, "reading partitions back timed out"
            for tp, records in consumer.poll(timeout_ms=500, max_records=50_000).items():
                out[tp].extend(records)
        return out
    finally:
        consumer.close()


def end_offsets(bootstrap: str, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    """The partitions' end offsets; {} while a topic does not exist yet (a mirror has
    not created it)."""
    consumer = kvlog.Consumer(bootstrap_servers=bootstrap)
    try:
        return consumer.end_offsets(list(tps))
    except UnknownTopicOrPartitionError:
        return {}
    finally:
        consumer.close()


def strip_marker(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """A mirrored record's headers without the mirror's own (the last record of each
    batch carries one)."""
    return [(k, v) for k, v in headers if k != "kvlog.mirror"]


class ServeProcess:
    """``kvlog serve`` in a session of its own on fixed ports: its whole process group
    (supervisor and children) can be SIGKILLed and started again on the same data dir."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        *,
        kafka: bool = False,
        config: dict[str, int] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.config = config or {}  # broker config keys (integers), in a --config file
        base = consecutive_free_ports(4)
        self.bootstrap = f"tcp://127.0.0.1:{base}"
        # With a Kafka listener: base + 1, the coordinator's + 2, node 0's + 3.
        self.kafka_listen = f"127.0.0.1:{base + 1}" if kafka else "none"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def kafka(self) -> str:
        return "kafka://" + self.kafka_listen

    def start(self, timeout_s: float = 60.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        config: list[str] = []
        if self.config:
            path = self.log_path.with_suffix(".toml")
            path.write_text("".join(f'"{k}" = {v}\n' for k, v in self.config.items()))
            config = ["--config", str(path)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "kvlog.tools.cli", "serve"),
                *("--data-dir", str(self.data_dir), "--listen", self.bootstrap),
                *("--kafka-listen", self.kafka_listen),
                *("--metrics-listen", "none", "--console-listen", "none"),
                *config,
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(
            lambda: self._run_file().get("supervisor_pid") == self.proc.pid, timeout_s, "serve"
        )

    def _run_file(self) -> dict[str, Any]:
        import json

        with contextlib.suppress(OSError, ValueError):
            return json.loads((self.data_dir / "run" / "processes.json").read_text())
        return {}

    def pid(self, role: str) -> int | None:
        """The pid of the process of ``role`` the supervisor last recorded."""
        pids = [p["pid"] for p in self._run_file().get("processes", []) if p["role"] == role]
        return pids[0] if pids else None

    def kill_group(self) -> None:
        """SIGKILL the supervisor and every child at once (a power cut of the broker)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill_group()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # children a stop left behind
