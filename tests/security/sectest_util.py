"""Helpers for the security tests: key rings, a secured broker whose processes log to a
file, raw DEALER sockets (plaintext or CURVE) with a handshake monitor, and polling.

Every test here runs real kvlog processes. A secured broker's processes inherit the
stderr the test process has while it starts them; :func:`start_secured_broker` points
fd 2 at a log file for that moment, so the tests can read what the broker logged
(refused keys) while pytest keeps capturing its own output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cbor2
import zmq
from zmq.utils.monitor import recv_monitor_message

import kvlog
from kvlog.ipc import wire
from kvlog.ipc.security import generate_keys, load_keys

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
SERVER_ROLES = ("broker", "node", "coordinator")


def wait_until(
    predicate: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.05, what: str = ""
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


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- keys ------------------------------------------------------------------------------------


@dataclass
class KeyRing:
    """Key files of one test module: ``root/keys`` holds every pair, ``root/authorized``
    the public keys the broker lets in."""

    root: Path
    keys: Path = field(init=False)
    authorized: Path = field(init=False)
    server_public: Path = field(init=False)
    server_secret: Path = field(init=False)

    def __post_init__(self) -> None:
        self.keys = self.root / "keys"
        self.authorized = self.root / "authorized"
        self.authorized.mkdir(parents=True, exist_ok=True)
        self.server_public, self.server_secret = generate_keys(self.keys, "server")

    def create(self, name: str, *, authorize: bool = True) -> Path:
        """A new key pair for principal ``name``; its public key is authorized unless
        ``authorize`` is False. Returns the secret key file."""
        public, secret = generate_keys(self.keys, name)
        if authorize:
            shutil.copy(public, self.authorized / public.name)
        return secret

    def authorize(self, name: str) -> None:
        shutil.copy(self.keys / f"{name}.key", self.authorized / f"{name}.key")

    def revoke(self, name: str) -> None:
        (self.authorized / f"{name}.key").unlink()

    def secret(self, name: str) -> Path:
        return self.keys / f"{name}.key_secret"

    def public_z85(self, name: str) -> str:
        return load_keys(self.keys / f"{name}.key").public.decode()

    def curve(self, name: str) -> dict[int, Any]:
        """ZeroMQ options of a CURVE client socket using ``name``'s key pair."""
        keys = load_keys(self.secret(name))
        return {
            zmq.CURVE_SERVERKEY: load_keys(self.server_public).public,
            zmq.CURVE_PUBLICKEY: keys.public,
            zmq.CURVE_SECRETKEY: keys.secret,
        }

    def client_config(self, bootstrap: str, name: str, **extra: Any) -> dict[str, Any]:
        return {
            "bootstrap_servers": bootstrap,
            "security_protocol": "curve",
            "curve_server_key": str(self.server_public),
            "curve_secret_key": str(self.secret(name)),
            **extra,
        }


# -- a secured broker ------------------------------------------------------------------------


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Point fd 2 at ``path`` (append) for the block: processes spawned inside inherit it."""
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


@dataclass
class SecuredBroker:
    broker: Any
    ring: KeyRing
    log_path: Path

    @property
    def bootstrap(self) -> str:
        return str(self.broker.bootstrap)

    def config(self, name: str, **extra: Any) -> dict[str, Any]:
        return self.ring.client_config(self.bootstrap, name, **extra)

    def admin(self, name: str = "admin", **extra: Any) -> Any:
        return kvlog.Admin(**self.config(name, **extra))

    def children(self) -> list[dict[str, Any]]:
        return [c for c in self.broker.processes() if c["role"] in SERVER_ROLES]

    def endpoints(self) -> dict[str, str]:
        """{"broker": ..., "node0": ..., "coordinator": ...} of every server process."""
        out = {}
        for c in self.children():
            name = c["role"] if c["node_id"] is None else f"{c['role']}{c['node_id']}"
            out[name] = c["endpoint"]
        return out

    def pids(self) -> dict[str, int]:
        return {
            (c["role"] if c["node_id"] is None else f"{c['role']}{c['node_id']}"): c["pid"]
            for c in self.broker.processes()
        }

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.broker.stop()


def await_topic_acl(secured: SecuredBroker, principal: str, topic: str) -> None:
    """Wait until the node leading ``topic`` (partition 0) lets ``principal`` describe it:
    nodes and the broker pick ACL changes up within a moment, not at once."""
    node = secured.endpoints()["node0"]
    with RawDealer(node, secured.ring.curve(principal)) as raw:

        def allowed() -> bool:
            reply = raw.request(
                "list_offsets",
                {"partitions": [{"topic": topic, "partition": 0, "timestamp": -1}]},
            )
            return reply is not None and "error" not in reply

        wait_until(allowed, 10, what=f"the node loading {principal}'s ACL on {topic}")


def start_secured_broker(
    root: Path,
    ring: KeyRing,
    *,
    config: dict[str, Any] | None = None,
    super_users: Sequence[str] = ("admin",),
    log_level: str = "INFO",
    **broker_kwargs: Any,
) -> SecuredBroker:
    """``broker_kwargs``: more ``kvlog.Broker`` keywords (the Kafka listener's security)."""
    log_path = root / "broker.log"
    # No web console unless asked: no test here uses it (its process costs CPU at start and
    # up to 2 s at stop).
    broker_kwargs.setdefault("console_listen", "none")
    broker = kvlog.Broker(
        root / "data",
        "tcp://127.0.0.1:0",
        curve_secret_key=ring.server_secret,
        curve_authorized_keys=ring.authorized,
        super_users=list(super_users),
        config=config or {},
        log_level=log_level,
        **broker_kwargs,
    )
    with stderr_to(log_path):
        broker.start()
    return SecuredBroker(broker, ring, log_path)


def stop_and_check(secured: SecuredBroker) -> None:
    """Stop the broker; every one of its processes must be gone afterwards."""
    pids = list(secured.pids().values())
    secured.stop()
    # A straggler Broker.stop() SIGKILLed may still be dying when it returns (on a loaded
    # machine, in the middle of an fsync): left behind means alive seconds later.
    deadline = time.monotonic() + 10
    while (left := [pid for pid in pids if pid_alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left behind by Broker.stop(): {left}"


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def sighup(pids: Sequence[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGHUP)


# -- raw sockets -------------------------------------------------------------------------------


class RawDealer:
    """A DEALER socket speaking kvlog frames directly, with a handshake monitor.

    ``options`` are extra socket options (the CURVE client keys, or nothing for a
    plaintext client)."""

    def __init__(self, endpoint: str, options: dict[int, Any] | None = None) -> None:
        self.endpoint = endpoint
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        # A refused handshake drops the connection for good: a blocking send would then
        # wait forever for a peer, so sends give up (zmq.Again) after 5 s.
        self.sock.setsockopt(zmq.SNDTIMEO, 5000)
        for option, value in (options or {}).items():
            self.sock.setsockopt(option, value)
        self.monitor = self.sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        self.events: list[int] = []
        self.sock.connect(endpoint)
        self._next_id = 0

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send_request(self, op: str, fields: dict[str, Any] | None = None, frames=()) -> int:
        rid = self.next_id()
        header = wire.request_header(op, rid, **(fields or {}))
        self.sock.send_multipart([cbor2.dumps(header), *frames], copy=True)
        return rid

    def send_raw(self, parts: Sequence[bytes]) -> bool:
        """Send without blocking; False when ZeroMQ has nowhere to queue it (no peer: a
        refused handshake drops the connection for good)."""
        try:
            self.sock.send_multipart(list(parts), flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def recv(self, timeout_s: float) -> tuple[dict[str, Any], list[bytes]] | None:
        if not self.sock.poll(timeout_s * 1000):
            return None
        parts = self.sock.recv_multipart()
        return wire.decode_header(parts[0]), parts[1:]

    def recv_all(self, quiet_s: float) -> list[list[bytes]]:
        """Every message that arrives until none came for ``quiet_s``."""
        out = []
        while self.sock.poll(quiet_s * 1000):
            out.append(self.sock.recv_multipart())
        return out

    def call(
        self, op: str, fields: dict[str, Any] | None = None, frames=(), timeout_s: float = 5.0
    ) -> tuple[dict[str, Any], list[bytes]] | None:
        """Send one request; its reply header and frames (None: no reply in time)."""
        rid = self.send_request(op, fields, frames)
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self.recv(max(0.0, deadline - time.monotonic()))
            if reply is None or reply[0].get("id") == rid:
                return reply

    def request(
        self, op: str, fields: dict[str, Any] | None = None, frames=(), timeout_s: float = 5.0
    ) -> dict[str, Any] | None:
        """Send one request and return its reply header (None: no reply in time)."""
        reply = self.call(op, fields, frames, timeout_s)
        return None if reply is None else reply[0]

    def handshake_events(self, timeout_s: float = 0.0) -> list[int]:
        """Handshake events seen so far (waits up to ``timeout_s`` for the first)."""
        if not self.events and timeout_s > 0:
            self.monitor.poll(timeout_s * 1000)
        while True:
            try:
                event = recv_monitor_message(self.monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return list(self.events)
            self.events.append(event["event"])

    def handshake_failed(self, timeout_s: float = 5.0) -> bool:
        failures = (
            zmq.EVENT_HANDSHAKE_FAILED_AUTH,
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if any(e in failures for e in self.handshake_events()):
                return True
            if zmq.EVENT_HANDSHAKE_SUCCEEDED in self.events:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.monitor.poll(min(left, 0.2) * 1000)

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)

    def __enter__(self) -> RawDealer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
