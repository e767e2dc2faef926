"""The client I/O thread when a server's endpoint is down (ipc/rpc.py).

A request sent with ``fail_fast`` (the producer's produce, the consumer's fetch) to an
endpoint that refuses connections fails at once with NETWORK_EXCEPTION, the endpoint counts
as down (drivers hold their requests for it) until a handshake succeeds again, and the
failed request is never delivered later to a server that comes back at that address (the
client retried it elsewhere). Other requests still wait for the server, as before.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from typing import Any

import pytest
import zmq
from brokertest_util import wait_until

from kvlog.errors import ErrorCode, KvlogError
from kvlog.ipc import wire
from kvlog.ipc.rpc import IOThread


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class _Outcome:
    """One request's reply or error, and when it came."""

    def __init__(self) -> None:
        self.sent_at = time.monotonic()
        self.done = threading.Event()
        self.header: dict[str, Any] | None = None
        self.error: KvlogError | None = None
        self.at = 0.0

    def __call__(
        self, header: dict[str, Any] | None, frames: list[bytes], error: KvlogError | None
    ) -> None:
        self.header, self.error, self.at = header, error, time.monotonic()
        self.done.set()

    @property
    def seconds(self) -> float:
        return self.at - self.sent_at


class _SendingDriver:
    """Sends queued requests from the I/O thread, as the producer's Sender does, and
    records what ``endpoint_down`` says on each turn."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.queue: collections.deque[tuple[str, bool, float, _Outcome]] = collections.deque()
        self.down: bool | None = None

    def send(self, io: IOThread, op: str, *, fail_fast: bool, timeout_ms: float) -> _Outcome:
        outcome = _Outcome()
        self.queue.append((op, fail_fast, timeout_ms, outcome))
        io.wake()
        return outcome

    def run(self, io: IOThread, now: float) -> float | None:
        while self.queue:
            op, fail_fast, timeout_ms, outcome = self.queue.popleft()
            outcome.sent_at = time.monotonic()
            io.send_now(self.endpoint, op, {}, outcome, timeout_ms=timeout_ms, fail_fast=fail_fast)
        self.down = io.endpoint_down(self.endpoint)
        return now + 0.02


class _EchoServer:
    """A ROUTER on a thread answering every request (except ``hold``) with its op;
    remembers the ops."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.ops: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(20):
                continue
            peer, frame, *_ = self.sock.recv_multipart()
            header = wire.decode_header(frame)
            self.ops.append(header["op"])
            if header["op"] == "hold":
                continue
            reply = wire.ok_reply(header["id"], op=header["op"])
            self.sock.send_multipart([peer, wire.encode(reply)])

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self.thread.join(5)
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.mark.timeout(30)
def test_fail_fast_request_to_a_refused_endpoint_fails_at_once_and_others_wait() -> None:
    endpoint = _free_endpoint()
    driver = _SendingDriver(endpoint)
    io = IOThread("endpoint-down-test", request_timeout_ms=20_000, driver=driver)
    server: _EchoServer | None = None
    try:
        # Nobody listens: a fail_fast request fails with NETWORK_EXCEPTION long before
        # its 15 s timeout, and the endpoint is down from then on.
        first = driver.send(io, "first", fail_fast=True, timeout_ms=15_000)
        assert first.done.wait(5), "a fail_fast request to a refused endpoint did not fail"
        assert first.error is not None and first.error.code is ErrorCode.NETWORK_EXCEPTION, (
            first.error
        )
        assert first.error.retriable
        assert first.seconds < 1.0, f"failing took {first.seconds:.2f} s"
        assert io.endpoint_down(endpoint)
        wait_until(lambda: driver.down is True, 5, what="the driver to see the endpoint down")

        # A request without fail_fast waits for the server, as a request queued on a
        # reconnecting socket always did.
        patient = driver.send(io, "patient", fail_fast=False, timeout_ms=15_000)
        assert not patient.done.wait(1.0), f"a patient request ended: {patient.error}"
        assert io.endpoint_down(endpoint)

        server = _EchoServer(endpoint)
        assert patient.done.wait(10), "the patient request got no answer from the new server"
        assert patient.error is None and patient.header is not None
        assert patient.header["op"] == "patient"
        wait_until(
            lambda: not io.endpoint_down(endpoint) and driver.down is False,
            5,
            what="the endpoint to count as up after a handshake",
        )
        again = driver.send(io, "again", fail_fast=True, timeout_ms=5_000)
        assert again.done.wait(5) and again.error is None, again.error
        time.sleep(0.2)
        # The failed request was never delivered to the server that came back: the client
        # dropped the socket that held it (a producer retried it on another leader).
        assert server.ops == ["patient", "again"], server.ops
    finally:
        io.close()
        if server is not None:
            server.close()
    assert not io.alive


@pytest.mark.timeout(30)
def test_a_dropped_connection_fails_pending_requests_and_marks_the_endpoint_down() -> None:
    endpoint = _free_endpoint()
    driver = _SendingDriver(endpoint)
    io = IOThread("endpoint-drop-test", request_timeout_ms=20_000, driver=driver)
    server = _EchoServer(endpoint)
    try:
        hello = driver.send(io, "hello", fail_fast=True, timeout_ms=5_000)
        assert hello.done.wait(5) and hello.error is None, hello.error
        assert not io.endpoint_down(endpoint)
        held = driver.send(io, "hold", fail_fast=False, timeout_ms=15_000)
        wait_until(lambda: "hold" in server.ops, 5, what="the server to get the request")
        closed_at = time.monotonic()
        server.close()  # the server dies with a request of ours unanswered
        # The dropped connection fails it at once (with or without fail_fast).
        assert held.done.wait(5), "a request on a dropped connection was not failed"
        assert held.error is not None and held.error.code is ErrorCode.NETWORK_EXCEPTION
        assert held.at - closed_at < 2.0, f"failing took {held.at - closed_at:.2f} s"
        assert io.endpoint_down(endpoint)
        server = _EchoServer(endpoint)
        wait_until(lambda: not io.endpoint_down(endpoint), 5, what="the endpoint back up")
        back = driver.send(io, "back", fail_fast=True, timeout_ms=5_000)
        assert back.done.wait(5) and back.error is None, back.error
        time.sleep(0.2)
        assert server.ops == ["back"], server.ops
    finally:
        io.close()
        server.close()
