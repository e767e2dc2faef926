"""Helpers for the CLI tests: ``kvlog serve`` as a real subprocess, the CLI in-process
(click's CliRunner), and waiting with deadlines."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from click.testing import CliRunner, Result

from kvlog.tools.cli import main

T = TypeVar("T")
READY = re.compile(r"kvlog broker ready on (\S+)")
KAFKA = re.compile(r"^  Kafka bootstrap +(\S+)")


def kvlog_cmd(*args: str) -> list[str]:
    """The ``kvlog`` command line as a subprocess (the installed console script's code)."""
    return [sys.executable, "-m", "kvlog.tools.cli", *args]


def cli(*args: str, input: bytes | str | None = None) -> Result:
    """Run ``kvlog ARGS`` in-process; exceptions other than SystemExit propagate."""
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(predicate: Callable[[], T], timeout_s: float = 10.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Serve:
    """A ``kvlog serve`` subprocess in its own session, on a free port (its Kafka
    listener too: ``kafka_listen`` auto follows ``--listen`` to free ports). ``banner``
    holds the lines printed after the ready line, ``kafka_bootstrap`` the Kafka address
    (None when off)."""

    def __init__(self, data_dir: Path, *args: str, timeout_s: float = 60.0) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            kvlog_cmd("serve", "--data-dir", str(data_dir), "--listen", "tcp://127.0.0.1:0", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()
        self.bootstrap = self._await_ready(timeout_s)
        self.banner = self._read_banner()
        found = [m.group(1) for m in map(KAFKA.match, self.banner) if m]
        self.kafka_bootstrap = found[0] if found and found[0] != "off:" else None

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _await_ready(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = READY.search(line)
            if match:
                return match.group(1)
        self.kill()
        raise AssertionError(f"kvlog serve did not become ready:\n{''.join(self.stderr)[-3000:]}")

    def _read_banner(self, timeout_s: float = 10.0) -> list[str]:
        """The lines after the ready line, up to the data dir line that ends them."""
        lines: list[str] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            lines.append(line.rstrip("\n"))
            if line.startswith("  data dir "):
                return lines
        raise AssertionError(f"kvlog serve printed no data dir line after ready: {lines}")

    def status(self) -> list[dict[str, Any]]:
        result = cli("status", "--data-dir", str(self.data_dir), "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    def pids(self) -> list[int]:
        return [self.proc.pid, *(entry["pid"] for entry in self.status())]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        """Signal the supervisor; returns its exit code (kills the session on timeout)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


def run_kvlog(
    args: Sequence[str],
    *,
    input: str | None = None,
    timeout_s: float = 60.0,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``kvlog ARGS`` as a real subprocess."""
    return subprocess.run(
        kvlog_cmd(*args),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
    )
