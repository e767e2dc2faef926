"""Helpers for the broker tests: polling with deadlines, reading partitions back, a raw
DEALER client, and a kvlog process group started as a separate process group."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import cbor2
import zmq

import kvlog
from kvlog.ipc import wire
from kvlog.ipc.rpc import blocking_call
from kvlog.types import TopicPartition

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]


def wait_until(
    predicate: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.02, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        time.sleep(interval_s)


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def read_partitions(
    bootstrap: str,
    tps: Iterable[TopicPartition],
    *,
    timeout_s: float = 30.0,
    start: int | None = None,
    **consumer_config: Any,
) -> dict[TopicPartition, list[Any]]:
    """Every record of each partition from ``start`` (default: its log start offset) up
    to its end offset as it is when the call starts."""
    tps = list(tps)
    consumer = kvlog.Consumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", **consumer_config
    )
    try:
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        begins = consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, begins[tp] if start is None else start)
        out: dict[TopicPartition, list[Any]] = {tp: [] for tp in tps}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                got = {str(tp): len(v) for tp, v in out.items()}
                raise AssertionError(f"reading {tps} back timed out; got {got}, ends {ends}")
            for tp, records in consumer.poll(timeout_ms=500, max_records=100_000).items():
                out[tp].extend(records)
        return out
    finally:
        consumer.close()


def end_offsets(bootstrap: str, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = kvlog.Consumer(bootstrap_servers=bootstrap)
    try:
        return consumer.end_offsets(list(tps))
    finally:
        consumer.close()


def metadata(bootstrap: str, topics: list[str] | None = None) -> dict[str, Any]:
    fields = {} if topics is None else {"topics": topics}
    return blocking_call(bootstrap, "metadata", fields)


def leader_endpoint(bootstrap: str, tp: TopicPartition) -> str:
    reply = metadata(bootstrap, [tp.topic])
    nodes = {n["node_id"]: n["endpoint"] for n in reply["nodes"]}
    topic = next(t for t in reply["topics"] if t["name"] == tp.topic)
    return nodes[topic["partitions"][tp.partition]["leader"]]


class RawClient:
    """One DEALER socket speaking frames directly; strictly one request at a time."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.ctx = zmq.Context.instance()
        self.sock = self._connect()
        self._next_id = 1

    def _connect(self) -> zmq.Socket[Any]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        return sock

    def reconnect(self) -> None:
        self.sock.close(linger=0)
        self.sock = self._connect()

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send_parts(self, parts: Sequence[bytes]) -> None:
        self.sock.send_multipart(list(parts))

    def recv(self, timeout_s: float) -> tuple[dict[str, Any], list[bytes]] | None:
        if not self.sock.poll(timeout_s * 1000):
            return None
        parts = self.sock.recv_multipart()
        return wire.decode_header(parts[0]), parts[1:]

    def request(
        self,
        op: str,
        fields: dict[str, Any] | None = None,
        frames: Sequence[bytes] = (),
        timeout_s: float = 5.0,
    ) -> tuple[dict[str, Any], list[bytes]]:
        rid = self.next_id()
        header = wire.request_header(op, rid, **(fields or {}))
        self.send_parts([cbor2.dumps(header), *frames])
        reply = self.recv(timeout_s)
        assert reply is not None, f"no reply to {op} from {self.endpoint} within {timeout_s} s"
        assert reply[0].get("id") == rid, f"reply id {reply[0].get('id')} != request id {rid}"
        return reply

    def close(self) -> None:
        self.sock.close(linger=0)


# -- a process group in its own session -------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, pgrp) of a live process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead: it holds nothing)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
                out.append(int(entry))
    return out


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # ints and strings: JSON spells them as TOML does


class ServedBroker:
    """``kvlog serve`` in a child process that leads its own session (process group), so
    ``kill`` can SIGKILL the supervisor and every process it spawned at once."""

    def __init__(self, data_dir: Path, config: dict[str, Any] | None = None) -> None:
        self.data_dir = data_dir
        self.config = config or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.bootstrap = ""
        self.log_path = data_dir.parent / f"{data_dir.name}-serve.log"

    def start(self, timeout_s: float = 60.0) -> ServedBroker:
        args = ["serve", "--data-dir", str(self.data_dir), "--listen", "tcp://127.0.0.1:0"]
        args += ["--log-level", "WARNING"]
        if self.config:
            conf = self.data_dir.parent / f"{self.data_dir.name}-serve.toml"
            conf.write_text("".join(f'"{k}" = {_toml_value(v)}\n' for k, v in self.config.items()))
            args += ["--config", str(conf)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvlog.tools.cli", *args],
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                env=env,
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        out = b""
        while b"kvlog broker ready on " not in out or not out.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.kill()
                raise AssertionError(
                    f"kvlog serve did not start; its log:\n{self.log_path.read_text()[-4000:]}"
                )
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if ready:
                out += os.read(self.proc.stdout.fileno(), 65536)
        line = out.split(b"kvlog broker ready on ", 1)[1].split(b"\n", 1)[0]
        self.bootstrap = line.decode().strip()
        return self

    def processes(self) -> list[dict[str, Any]]:
        """What ``kvlog status`` shows: the group's processes (run/processes.json)."""
        path = self.data_dir / "run" / "processes.json"
        return list(json.loads(path.read_text())["processes"])

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # start_new_session: the child leads its own group

    def kill(self, timeout_s: float = 10.0) -> None:
        """SIGKILL the whole process group and wait until none of it runs."""
        if self.proc is None:
            return
        try:
            pids = [p["pid"] for p in self.processes()]
        except (OSError, ValueError, KeyError):
            pids = []
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout_s)
        wait_until(
            lambda: not group_members(self.pgid) and not any(pid_alive(p) for p in pids),
            timeout_s,
            what="the killed process group to disappear",
        )
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None
