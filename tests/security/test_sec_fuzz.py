"""Garbage on every socket of a secured broker leaves every process up and serving.

For each server endpoint (broker, node, coordinator) the test throws, from one seeded RNG
(``KVLOG_FUZZ_SEED`` replays a run; the seed is in every failure message):

1. raw TCP garbage: random bytes over a plain socket;
2. fuzzed ZMTP handshakes: truncated greetings, greetings with random versions and
   mechanisms (NULL, PLAIN, CURVE, junk), then random or CURVE-shaped command frames
   (HELLO/INITIATE with random boxes, absurd frame lengths);
3. a ZeroMQ NULL (plaintext) DEALER and a CURVE DEALER with a random, unknown key, each
   sending random multipart messages;
4. an *authorized* CURVE DEALER (a principal with read/write on one topic and read on one
   group) sending random frames, random CBOR, and requests for every op with random field
   values: these get past the handshake and reach the request handlers.

Afterwards every kvlog process still runs with the same pid, no handler crashed on the
input (no ``request failed`` traceback in the logs), and an authorized client produces
and consumes normally.
"""

from __future__ import annotations

import os
import random
import re
import socket
import struct
import time
from typing import Any

import cbor2
import pytest
import zmq
from sectest_util import RawDealer, pid_alive, unique, wait_until

import kvlog
from kvlog.batch import build_batch
from kvlog.errors import ErrorCode
from kvlog.types import TopicPartition
from kvlog.workers.acl import OP_PERMISSIONS

SEED = int(os.environ.get("KVLOG_FUZZ_SEED", random.SystemRandom().randrange(1 << 32)))
TOPIC = unique("fuzz")
GROUP = unique("fuzz-group")
PRINCIPAL = "alice"

FIELDS = (
    "topic", "partitions", "partition", "offset", "offsets", "acks", "timeout_ms",
    "max_wait_ms", "min_bytes", "max_bytes", "replica_id", "leader_epoch", "timestamp",
    "group_id", "group_ids", "member_id", "group_instance_id", "generation",
    "generation_id", "protocol_type", "protocols", "assignments", "assignment",
    "session_timeout_ms", "rebalance_timeout_ms", "topics", "name", "config", "count",
    "replication_factor", "version", "wait_ms", "node_id", "pid", "principal",
    "resource_type", "operation", "isr", "metadata", "assignor", "reason", "id", "v",
)  # fmt: skip
OPS = (*sorted(OP_PERMISSIONS), "", "nope", "op_produce", "__init__", "close", "dispatch")
EDGE_INTS = (0, 1, -1, 2, 7, 255, 1 << 20, (1 << 31) - 1, 1 << 31, -(1 << 31), (1 << 63) - 1,
             -(1 << 63), 1 << 64, -(1 << 70))  # fmt: skip


def _ctx(rng: random.Random) -> str:
    return f"seed {SEED} (KVLOG_FUZZ_SEED={SEED} replays it)"


# -- random values ------------------------------------------------------------------------------


def rand_bytes(rng: random.Random, max_len: int = 256) -> bytes:
    return rng.randbytes(rng.choice((0, 1, 2, rng.randrange(max_len + 1))))


def rand_scalar(rng: random.Random) -> Any:
    kind = rng.randrange(9)
    if kind == 0:
        return rng.choice(EDGE_INTS)
    if kind == 1:
        return rng.randrange(-1000, 1000)
    if kind == 2:
        return rng.choice((0.5, -1.0, float("nan"), float("inf"), 1e300))
    if kind == 3:
        return rng.choice((TOPIC, GROUP, "", "x" * 300, "\u00e9\u2603", "*", "kvlog", "../x"))
    if kind == 4:
        return rand_bytes(rng, 64)
    if kind == 5:
        return rng.choice((None, True, False))
    if kind == 6:
        return cbor2.CBORTag(rng.randrange(0, 300), rng.randrange(100))
    if kind == 7:
        return "".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(12)))
    return cbor2.undefined


def rand_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind < 6:
        return rand_scalar(rng)
    if kind < 8:
        return [rand_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rand_key(rng): rand_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def rand_key(rng: random.Random) -> Any:
    if rng.random() < 0.8:
        return rng.choice(FIELDS)
    return rand_scalar(rng) if rng.random() < 0.5 else f"k{rng.randrange(10)}"


def rand_partition(rng: random.Random) -> Any:
    choice = rng.randrange(4)
    if choice == 0:
        return [TOPIC, rng.choice((0, 1, -1, 1 << 20, 1 << 40))]
    if choice == 1:
        return {
            "topic": rng.choice((TOPIC, "other")),
            "partition": rng.choice((0, 1, -1, 99)),
            "offset": rng.choice((0, 1, -5, 1 << 62)),
            "max_bytes": rng.choice((1, 0, -1, 1 << 20)),
            "timestamp": rng.choice((-1, -2, 0, 1 << 62)),
            "leader_epoch": rng.choice((-1, 0, 5)),
        }
    if choice == 2:
        return {rand_key(rng): rand_value(rng, 2) for _ in range(rng.randrange(4))}
    return rand_value(rng, 2)


def rand_request(rng: random.Random, rid: int) -> list[bytes]:
    """A request for a real op with random fields, plus random (or valid) batch frames."""
    header: dict[Any, Any] = {"v": 1 if rng.random() < 0.9 else rand_scalar(rng), "id": rid}
    header["op"] = rng.choice(OPS) if rng.random() < 0.95 else rand_scalar(rng)
    for _ in range(rng.randrange(7)):
        header[rand_key(rng)] = rand_value(rng)
    if rng.random() < 0.5:
        header["partitions"] = [rand_partition(rng) for _ in range(rng.randrange(4))]
    if rng.random() < 0.3:
        header["group_id"] = GROUP
    if rng.random() < 0.2:
        header["max_wait_ms"] = rng.choice((0, 1, 50))  # keep long polls short
    frames = []
    for _ in range(rng.randrange(3)):
        if rng.random() < 0.3:
            frames.append(
                build_batch(
                    [(None, rand_bytes(rng, 32))],
                    producer_id=rng.choice((-1, 0, 7, 1 << 40)),
                    producer_epoch=rng.choice((-1, 0, 3)),
                    base_sequence=rng.choice((-1, 0, 5)),
                )
            )
        else:
            frames.append(rand_bytes(rng, 512))
    try:
        encoded = cbor2.dumps(header)
    except Exception:
        encoded = cbor2.dumps({"v": 1, "id": rid, "op": "ping"})
    if rng.random() < 0.1:  # corrupt a byte of an otherwise well-formed header
        pos = rng.randrange(len(encoded))
        encoded = encoded[:pos] + bytes([rng.randrange(256)]) + encoded[pos + 1 :]
    return [encoded, *frames]


def rand_message(rng: random.Random, rid: int) -> list[bytes]:
    kind = rng.randrange(6)
    if kind == 0:
        return [rand_bytes(rng, 2048) for _ in range(rng.randrange(1, 5))]
    if kind == 1:
        return [cbor2.dumps(rand_value(rng))]
    if kind == 2:
        return [b""]
    if kind == 3 and rng.random() < 0.2:
        return [rng.randbytes(1 << 20)]  # one big frame
    return rand_request(rng, rid)


# -- ZMTP-level garbage ---------------------------------------------------------------------------


def greeting(rng: random.Random, mechanism: bytes, major: int = 3) -> bytes:
    return (
        b"\xff"
        + rng.randbytes(8)
        + b"\x7f"
        + bytes([major, rng.choice((0, 1))])
        + mechanism.ljust(20, b"\x00")[:20]
        + bytes([rng.choice((0, 1))])
        + b"\x00" * 31
    )


def command(name: bytes, body: bytes, long: bool = False) -> bytes:
    data = bytes([len(name)]) + name + body
    if long or len(data) > 255:
        return b"\x06" + struct.pack(">Q", len(data)) + data
    return b"\x04" + bytes([len(data)]) + data


def zmtp_garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(8)
    mech = rng.choice((b"NULL", b"CURVE", b"PLAIN", b"GSSAPI", rand_bytes(rng, 20)))
    full = greeting(rng, mech, rng.choice((3, 3, 3, 1, 2, 255)))
    if kind == 0:  # truncated greeting
        return full[: rng.randrange(1, len(full))]
    if kind == 1:  # a greeting, then random bytes
        return full + rand_bytes(rng, 1024)
    if kind == 2:  # CURVE HELLO with a random box
        hello = b"\x01\x00" + b"\x00" * 72 + rng.randbytes(32 + 8 + 80)
        return greeting(rng, b"CURVE") + command(b"HELLO", hello)
    if kind == 3:  # CURVE INITIATE/MESSAGE without a HELLO
        name = rng.choice((b"INITIATE", b"MESSAGE", b"WELCOME", b"READY", b"ERROR"))
        return greeting(rng, b"CURVE") + command(name, rand_bytes(rng, 400))
    if kind == 4:  # NULL READY with junk properties
        return greeting(rng, b"NULL") + command(b"READY", rand_bytes(rng, 200))
    if kind == 5:  # an absurd frame length
        return full + b"\x06" + struct.pack(">Q", rng.choice((1 << 62, (1 << 64) - 1, 1 << 40)))
    if kind == 6:  # a ZMTP 1.0-style greeting
        return b"\x01\x00" + rand_bytes(rng, 300)
    return rng.randbytes(rng.randrange(1, 4096))


def tcp_address(endpoint: str) -> tuple[str, int]:
    host, port = endpoint[len("tcp://") :].rsplit(":", 1)
    return host, int(port)


def throw_bytes(endpoint: str, payload: bytes) -> None:
    """Connect, send ``payload`` (what goes through), read a little, close."""
    with socket.create_connection(tcp_address(endpoint), timeout=2.0) as sock:
        sock.settimeout(0.05)
        try:
            sock.sendall(payload)
            sock.recv(4096)
        except OSError:
            pass  # the server closing on us is the expected outcome


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_target(secured: Any) -> Any:
    with secured.admin() as admin:
        admin.create_topic(TOPIC, 2)
        for op in ("read", "write"):
            admin.add_acl(PRINCIPAL, "topic", TOPIC, op)
        admin.add_acl(PRINCIPAL, "group", GROUP, "read")
    return secured


def test_garbage_on_every_socket_leaves_every_process_up(fuzz_target: Any, ring: Any) -> None:
    secured = fuzz_target
    rng = random.Random(SEED)
    pids = secured.pids()
    endpoints = secured.endpoints()
    assert set(endpoints) == {"broker", "node0", "coordinator"}
    answered = 0
    for role, endpoint in sorted(endpoints.items()):
        # 1. raw TCP garbage and 2. fuzzed handshakes
        for _ in range(25):
            throw_bytes(endpoint, rng.randbytes(rng.randrange(1, 3000)))
        for _ in range(40):
            throw_bytes(endpoint, zmtp_garbage(rng))
        # 3. a plaintext DEALER and a CURVE DEALER with an unknown key
        public, secret = zmq.curve_keypair()
        unknown = {**ring.curve("alice"), zmq.CURVE_PUBLICKEY: public, zmq.CURVE_SECRETKEY: secret}
        for options in ({}, unknown):
            with RawDealer(endpoint, options) as raw:
                for i in range(40):
                    raw.send_raw(rand_message(rng, i))
                got = raw.recv_all(0.3)
                assert got == [], f"{role} answered an unauthenticated client: {got[:3]}"
        # 4. an authorized client sending garbage: gets error replies, never a crash
        with RawDealer(endpoint, ring.curve(PRINCIPAL)) as raw:
            for i in range(300):
                raw.send_raw(rand_message(rng, i))
            answered += len(raw.recv_all(0.5))
            reply = raw.request("ping", timeout_s=10)
            assert reply is not None, f"{role} stopped answering after the garbage ({_ctx(rng)})"
        for name, pid in pids.items():
            assert pid_alive(pid), f"{name} (pid {pid}) died during garbage to {role}; {_ctx(rng)}"
    assert answered > 0, "the authorized garbage never reached a handler"
    assert secured.pids() == pids, f"a process was restarted; {_ctx(rng)}"
    restarts = {c.role: c.restarts for c in secured.broker.children}
    assert not any(restarts.values()), f"restarts {restarts}; {_ctx(rng)}"
    _assert_still_serves(secured)


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d ")
_FRAME = re.compile(
    r'^\s+File "(?:.*/)?(workers/\w+\.py|ipc/\w+\.py|kvlog/\w+\.py)", '
    r"line \d+, in (\w+)"
)


def handler_crashes(log_text: str) -> list[tuple[str, str, str]]:
    """(process, innermost kvlog frame, exception line) of every ``request failed``."""
    out = []
    current: list[str] | None = None
    process = frame = ""
    for line in [*log_text.splitlines(), "0000-00-00 end"]:
        if _LOG_LINE.match(line):
            if current is not None:
                out.append((process, frame, current[-1] if current else "?"))
            current = None
            if "request failed" in line:
                current, process, frame = [], line.split(" ")[2], ""
        elif current is not None:
            match = _FRAME.match(line)
            if match:
                frame = f"{match.group(1)}:{match.group(2)}"
            elif line and not line.startswith((" ", "Traceback")):
                current.append(line.strip())
    return out


def test_handlers_never_crash_on_garbage(fuzz_target: Any, ring: Any) -> None:
    """Bad input gets an error reply naming what is wrong, never UNKNOWN_SERVER_ERROR (a
    handler that raised something unexpected: a bug). What it found so far is pinned by
    the deterministic tests below."""
    secured = fuzz_target
    rng = random.Random(SEED + 1)
    log_start = len(secured.log_text())
    unknown_errors = 0
    for endpoint in secured.endpoints().values():
        with RawDealer(endpoint, ring.curve(PRINCIPAL)) as raw:
            for i in range(400):
                raw.send_raw(rand_request(rng, i))
            for parts in raw.recv_all(0.5):
                header = cbor2.loads(parts[0])  # replies are always well-formed CBOR
                assert isinstance(header, dict) and "id" in header, header
                unknown_errors += header.get("error") == -1

    # Every crash is logged with its traceback; wait until each of them is.
    def logged() -> list[tuple[str, str, str]] | None:
        found = handler_crashes(secured.log_text()[log_start:])
        return found if len(found) >= unknown_errors else None

    crashes = wait_until(logged, 10, what="crash tracebacks") if unknown_errors else []
    found = sorted(set(crashes))
    assert not found, f"handlers crashed on garbage ({_ctx(rng)}): {found[:10]}"


def _reply(secured: Any, ring: Any, role: str, header: dict[Any, Any]) -> dict[str, Any]:
    with RawDealer(secured.endpoints()[role], ring.curve(PRINCIPAL)) as raw:
        raw.send_raw([cbor2.dumps({"v": 1, "id": 77, **header})])
        reply = raw.recv(10)
    assert reply is not None, f"{role} did not answer {header}"
    return reply[0]


@pytest.mark.parametrize(
    ("role", "op", "field"),
    [
        ("node0", "produce", "partitions"),
        ("node0", "fetch", "partitions"),
        ("coordinator", "offset_commit", "offsets"),
        ("broker", "describe_groups", "group_ids"),
    ],
)
def test_acl_check_of_a_non_array_field(
    fuzz_target: Any, ring: Any, role: str, op: str, field: str
) -> None:
    reply = _reply(fuzz_target, ring, role, {"op": op, "group_id": GROUP, field: 5})
    assert reply.get("error") == ErrorCode.INVALID_REQUEST, reply


def test_forwarded_request_with_a_non_text_key(fuzz_target: Any, ring: Any) -> None:
    reply = _reply(fuzz_target, ring, "broker", {"op": "offset_fetch", "group_id": GROUP, 7: 1})
    assert reply.get("error") == ErrorCode.INVALID_REQUEST, reply


def _assert_still_serves(secured: Any) -> None:
    topic = unique("after-fuzz")
    with secured.admin() as admin:
        admin.create_topic(topic, 1)
    values = [b"after-%d" % i for i in range(200)]
    with kvlog.Producer(**secured.config("admin")) as producer:
        futures = [producer.send(topic, v) for v in values]
        producer.flush(30)
        assert [f.get(1).offset for f in futures] == list(range(len(values)))
    consumer = kvlog.Consumer(**secured.config("admin", auto_offset_reset="earliest"))
    try:
        consumer.assign([TopicPartition(topic, 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < len(values) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                got.extend(r.value for r in records)
    finally:
        consumer.close()
    assert got == values
    # The fuzzing principal's own topic still works for it too.
    with kvlog.Producer(**secured.config(PRINCIPAL)) as producer:
        wait_until(lambda: producer.send(TOPIC, b"ok", partition=0).get(10), 10)
