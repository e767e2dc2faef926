"""The client I/O engine: one background thread that owns every ZeroMQ socket.

ZeroMQ sockets are not thread-safe, so a client (Producer, Consumer, Admin) runs one
:class:`IOThread`: it owns a DEALER per server endpoint, sends requests queued by any
thread, matches replies by correlation id, fails requests that time out, and calls each
request's callback on the I/O thread. Requests to one endpoint are pipelined and stay in
order. A *driver* (the producer's sender, the consumer's fetcher) gets a turn on every
loop iteration to issue more requests and say when it next needs to run.

A socket monitor tells the thread when an endpoint's connection drops (the server died)
or is refused. Its requests then fail at once with NETWORK_EXCEPTION, the socket is
replaced (so ZeroMQ does not deliver the failed requests later, to a server restarted at
the same address) and the endpoint counts as *down* until a handshake succeeds again:
drivers ask :meth:`IOThread.endpoint_down` and hold their requests for it, refreshing
metadata, instead of parking them on a dead address until it comes back.

Losing a server the client was talking to is logged once as a warning, and once more
when a connection is back, so an application whose ``poll()`` returns nothing can tell
why. A client that has never reached any of its bootstrap servers and finds all of them
refusing for :data:`CONNECT_GRACE_S` gives up with NoBrokersAvailable
(:meth:`IOThread.bootstrap_call`, ipc/metadata.py's refresher): nothing listens there.
What the monitor's events mean for an endpoint (down, refused, reached):
ipc/endpoint_health.py.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import zmq
from zmq.utils.monitor import recv_monitor_message

from kvlog.errors import (
    KafkaTimeoutError,
    KvlogError,
    NetworkError,
    NoBrokersAvailable,
    RequestTimedOutError,
)

from . import wire
from .endpoint_health import (
    MONITORED_EVENTS,
    EndpointHealth,
    HandshakeRefused,
    Lost,
    RefusedConnectionError,
    refused_error,
)
from .wire import Frame

log = logging.getLogger(__name__)

CLOSE_LINGER_MS = 1000
# How long a client that never reached a bootstrap server keeps retrying refused
# connections before NoBrokersAvailable: long enough for a broker that is starting (kvlog
# serve binds its socket within a second), short enough to tell a user at once that
# nothing listens there.
CONNECT_GRACE_S = 1.0

Callback = Callable[[dict[str, Any] | None, list[bytes], KvlogError | None], None]


def display_address(endpoint: str) -> str:
    """``tcp://host:port`` -> ``host:port`` (how users write bootstrap.servers)."""
    return endpoint[len("tcp://") :] if endpoint.startswith("tcp://") else endpoint


def no_brokers(endpoints: Sequence[str]) -> NoBrokersAvailable:
    where = ", ".join(display_address(e) for e in endpoints)
    return NoBrokersAvailable(
        f"no kvlog broker at {where} (connection refused); is `kvlog serve` running?"
    )


class Driver(Protocol):
    def run(self, io: IOThread, now: float) -> float | None:
        """Do pending work on the I/O thread; return the monotonic time to run again."""
        ...


class _Pending:
    __slots__ = ("callback", "deadline", "endpoint", "fail_fast", "op")

    def __init__(
        self, callback: Callback, deadline: float, endpoint: str, op: str, fail_fast: bool
    ) -> None:
        self.callback = callback
        self.deadline = deadline
        self.endpoint = endpoint
        self.op = op
        self.fail_fast = fail_fast


class IOThread:
    """Owned by one client object; ``submit``/``call``/``wake`` are thread-safe."""

    def __init__(
        self,
        name: str,
        *,
        request_timeout_ms: int = 30_000,
        driver: Driver | None = None,
        socket_options: dict[int, Any] | None = None,
        header_fields: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        # Added to every request's header (``as_principal``: PROTOCOL.md 1.4).
        self.header_fields = header_fields or {}
        self.request_timeout_ms = request_timeout_ms
        self.driver = driver
        self.socket_options = socket_options or {}
        # What each endpoint's connection is known to be: ipc/endpoint_health.py.
        self._health = EndpointHealth(name)
        self._ctx = zmq.Context()
        self._sockets: dict[str, zmq.Socket[Any]] = {}
        self._by_socket: dict[zmq.Socket[Any], str] = {}
        self._monitors: dict[zmq.Socket[Any], str] = {}
        self._poller = zmq.Poller()
        self._inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._woken = False
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"kvlog-{name}-io", daemon=True)
        self._thread.start()

    # -- any thread ------------------------------------------------------------------------

    def wake(self) -> None:
        if not self._woken:
            self._woken = True
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"\x01")

    def submit(
        self,
        endpoint: str,
        op: str,
        fields: dict[str, Any],
        callback: Callback,
        *,
        frames: Sequence[Frame] = (),
        timeout_ms: float | None = None,
        expect_reply: bool = True,
        fail_fast: bool = False,
    ) -> None:
        """Queue a request; ``callback`` runs on the I/O thread with the reply. With
        ``fail_fast`` see :meth:`send_now`."""
        if self._closing:
            callback(None, [], KvlogError("the client is closed"))
            return
        self._inbox.append(
            (endpoint, op, fields, frames, callback, timeout_ms, expect_reply, fail_fast)
        )
        if threading.current_thread() is not self._thread:
            self.wake()

    def call(
        self,
        endpoint: str,
        op: str,
        fields: dict[str, Any],
        *,
        frames: Sequence[Frame] = (),
        timeout_ms: float | None = None,
        fail_fast: bool = False,
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Send a request and wait for its reply; raises its error as an exception."""
        done = threading.Event()
        box: list[Any] = []

        def callback(
            header: dict[str, Any] | None, rframes: list[bytes], error: KvlogError | None
        ) -> None:
            box.append((header, rframes, error))
            done.set()

        self.submit(
            endpoint,
            op,
            fields,
            callback,
            frames=frames,
            timeout_ms=timeout_ms,
            fail_fast=fail_fast,
        )
        limit = (timeout_ms if timeout_ms is not None else self.request_timeout_ms) / 1000
        if not done.wait(limit + 5.0):
            raise KafkaTimeoutError(f"{op} to {endpoint}: no answer within {limit:.1f} s")
        header, rframes, error = box[0]
        if error is not None:
            raise error
        return header, rframes

    def bootstrap_call(
        self,
        endpoints: Sequence[str],
        op: str,
        fields: dict[str, Any],
        *,
        timeout_ms: float | None = None,
        deadline: float | None = None,
    ) -> tuple[dict[str, Any], list[bytes]]:
        """A request to the bootstrap servers, first ``endpoints[0]``: a refused connection
        (the request was not delivered, so a retry is safe) moves on to the next server,
        until one answers, ``timeout_ms`` (default request.timeout.ms) or the monotonic
        ``deadline`` passes (KafkaTimeoutError), or every server has refused for
        CONNECT_GRACE_S and none was ever reached (NoBrokersAvailable)."""
        limit_ms = self.request_timeout_ms if timeout_ms is None else timeout_ms
        give_up = time.monotonic() + limit_ms / 1000
        if deadline is not None:
            give_up = min(give_up, deadline)
        attempt = 0
        while True:
            endpoint = endpoints[attempt % len(endpoints)]
            attempt += 1
            # Within the deadline, but long enough for a broker's usual answer (ms).
            wait_ms = max(100.0, (give_up - time.monotonic()) * 1000)
            try:
                return self.call(endpoint, op, fields, timeout_ms=wait_ms, fail_fast=True)
            except RefusedConnectionError:
                since = self.unreachable_since(endpoints)
                now = time.monotonic()
                if since is not None and now - since >= CONNECT_GRACE_S:
                    raise no_brokers(endpoints) from None
                if now >= give_up:
                    raise KafkaTimeoutError(
                        f"{op}: no bootstrap server answered in time "
                        f"({', '.join(map(display_address, endpoints))} refused the connection)"
                    ) from None
                if attempt % len(endpoints) == 0:
                    time.sleep(min(0.05, max(0.0, give_up - now)))

    def unreachable_since(self, endpoints: Sequence[str]) -> float | None:
        """When all of ``endpoints`` had refused connections, if this client never reached
        any of them (None otherwise: one was reached once, or one was not tried yet)."""
        return self._health.unreachable_since(endpoints)

    def close(self, timeout_s: float = 5.0) -> None:
        self._closing = True
        self.wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the I/O thread --------------------------------------------------------------------

    def socket_for(self, endpoint: str) -> zmq.Socket[Any]:
        sock = self._sockets.get(endpoint)
        if sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 50)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.setsockopt(zmq.RCVHWM, 100_000)
            for option, value in self.socket_options.items():
                sock.setsockopt(option, value)
            # A refused handshake (unknown CURVE key, CURVE vs plaintext) or a dropped
            # connection (the server died) never answers the requests sent on it: watch for
            # both, so callers hear at once instead of after a timeout.
            monitor = sock.get_monitor_socket(MONITORED_EVENTS)
            self._monitors[monitor] = endpoint
            self._poller.register(monitor, zmq.POLLIN)
            sock.connect(endpoint)
            self._sockets[endpoint] = sock
            self._by_socket[sock] = endpoint
            self._poller.register(sock, zmq.POLLIN)
        return sock

    def endpoint_down(self, endpoint: str) -> bool:
        """Whether the endpoint's connection dropped or was refused and has not completed
        a handshake since (I/O thread). Its socket keeps reconnecting in the background."""
        return self._health.is_down(endpoint)

    def _read_monitor(self, monitor: zmq.Socket[Any]) -> None:
        """Handshake and connection events of one endpoint's socket, judged by
        ipc/endpoint_health.py: a lost connection fails the requests sent on it at once
        and replaces the socket; a refused handshake fails them with UNAUTHENTICATED."""
        endpoint = self._monitors[monitor]
        while True:
            try:
                event = recv_monitor_message(monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            verdict = self._health.on_event(
                endpoint,
                event["event"],
                event["value"],
                time.monotonic(),
                closing=self._closing,
                fail_fast_waiting=lambda: any(
                    p.fail_fast for p in self._pending.values() if p.endpoint == endpoint
                ),
            )
            if isinstance(verdict, Lost):
                self._went_down(endpoint, verdict.error, refused=verdict.refused)
                return  # the monitor was replaced with the socket
            if isinstance(verdict, HandshakeRefused):
                self._fail_endpoint(endpoint, verdict.error)
                # Start afresh on the next request.
                self._drop_socket(endpoint)
                return

    def _went_down(self, endpoint: str, error: KvlogError, *, refused: bool = False) -> None:
        """The endpoint's connection dropped or was refused: fail what was sent to it and
        replace its socket.

        The old socket may still hold requests ZeroMQ has not written yet; it would send
        them when a server comes back at that address, after the client failed them and
        retried them elsewhere (the partition's new leader). Closing it discards them. The
        new socket is opened at once, empty, so that a handshake tells when the endpoint
        is back (drivers hold their requests for it meanwhile).
        """
        self._drop_socket(endpoint)
        self._fail_endpoint(endpoint, error)
        if not self._closing:
            self.socket_for(endpoint)
            self._health.mark_down(endpoint, refused)

    def _drop_socket(self, endpoint: str) -> None:
        # Without a socket nothing would tell when the endpoint is back: the next request
        # opens a new one (and finds out).
        self._health.forget_socket(endpoint)
        sock = self._sockets.pop(endpoint, None)
        if sock is None:
            return
        self._by_socket.pop(sock, None)
        self._poller.unregister(sock)
        # The monitor first, then its reading end: libzmq sends an event (a reconnect
        # attempt, from its own I/O thread) with a blocking send under the monitor's lock,
        # so an event sent after the reading end closed would block forever, and
        # disable_monitor() with it.
        with contextlib.suppress(zmq.ZMQError):
            sock.disable_monitor()
        for monitor, ep in list(self._monitors.items()):
            if ep == endpoint:
                del self._monitors[monitor]
                self._poller.unregister(monitor)
                monitor.close(linger=0)
        sock.close(linger=0)

    def _fail_endpoint(self, endpoint: str, error: KvlogError) -> None:
        for rid in [r for r, p in self._pending.items() if p.endpoint == endpoint]:
            self._complete(self._pending.pop(rid), None, [], error)

    def send_now(
        self,
        endpoint: str,
        op: str,
        fields: dict[str, Any],
        callback: Callback | None,
        *,
        frames: Sequence[Frame] = (),
        timeout_ms: float | None = None,
        fail_fast: bool = False,
    ) -> None:
        """Send from the I/O thread itself (drivers use this). With ``fail_fast`` the
        request fails with NETWORK_EXCEPTION (RefusedConnectionError) as soon as its
        endpoint refuses the connection, or at once while it is known to refuse them,
        instead of waiting for the server to come back (or the timeout)."""
        if fail_fast and self._health.is_refused(endpoint) and endpoint in self._sockets:
            if callback is not None:
                callback(None, [], refused_error(endpoint))
            return
        rid = next(self._ids)
        header = wire.request_header(op, rid, **self.header_fields, **fields)
        try:
            # Never block the I/O thread: a socket with no usable connection refuses at once.
            self.socket_for(endpoint).send_multipart(
                [wire.encode(header), *frames], flags=zmq.NOBLOCK
            )
        except zmq.ZMQError as exc:
            if callback is not None:
                callback(None, [], NetworkError(f"cannot send {op} to {endpoint}: {exc}"))
            return
        if callback is not None:
            limit = self.request_timeout_ms if timeout_ms is None else timeout_ms
            self._pending[rid] = _Pending(
                callback, time.monotonic() + limit / 1000, endpoint, op, fail_fast
            )

    def _run(self) -> None:
        next_driver = 0.0
        try:
            while not self._closing:
                now = time.monotonic()
                wait = 0.1
                if self._pending:
                    wait = min(wait, min(p.deadline for p in self._pending.values()) - now)
                if self.driver is not None:
                    wait = min(wait, next_driver - now)
                # Whole ms, rounded up: pyzmq truncates a float timeout, so a wake-up due
                # in under 1 ms would poll with 0 and spin until it is due.
                events = dict(self._poller.poll(math.ceil(max(0.0, wait) * 1000)))
                if self._wake_r in events:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    # Cleared after the pipe is drained, never before: a wake() between
                    # a clear and the read would have its byte drained with the flag
                    # left set, and no wake() would write again: every later send()
                    # waited for this loop's 100 ms tick (e2e p99 100 ms, issue 14).
                    # A wake() before the clear writes nothing; this turn sees its work.
                    self._woken = False
                for sock in list(events):
                    if sock is self._wake_r:
                        continue
                    if sock in self._monitors:
                        self._read_monitor(sock)
                    elif sock in self._by_socket:  # not dropped by a monitor event just now
                        self._read_replies(sock)
                self._drain_inbox()
                now = time.monotonic()
                if self.driver is not None:
                    try:
                        nxt = self.driver.run(self, now)
                    except Exception:  # a driver bug must not kill the I/O thread
                        log.exception("%s: driver failed", self.name)
                        nxt = now + 0.1
                    next_driver = nxt if nxt is not None else now + 0.1
                self._expire(time.monotonic())
        finally:
            self._shutdown()

    def _drain_inbox(self) -> None:
        while self._inbox:
            endpoint, op, fields, frames, callback, timeout_ms, expect, fail_fast = (
                self._inbox.popleft()
            )
            self.send_now(
                endpoint,
                op,
                fields,
                callback if expect else None,
                frames=frames,
                timeout_ms=timeout_ms,
                fail_fast=fail_fast,
            )
            if not expect:
                callback({}, [], None)

    def _read_replies(self, sock: zmq.Socket[Any]) -> None:
        for _ in range(10_000):
            try:
                parts = sock.recv_multipart(flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            try:
                header = wire.decode_header(parts[0])
            except KvlogError as exc:
                log.warning(
                    "%s: undecodable reply from %s: %s", self.name, self._by_socket.get(sock), exc
                )
                continue
            rid = wire.peek_id(header)
            pending = self._pending.pop(rid, None) if rid is not None else None
            if pending is None:
                continue  # the request timed out already
            self._complete(pending, header, parts[1:], wire.reply_error(header))

    def _complete(
        self,
        pending: _Pending,
        header: dict[str, Any] | None,
        frames: list[bytes],
        error: KvlogError | None,
    ) -> None:
        try:
            pending.callback(header, frames, error)
        except Exception:
            log.exception("%s: callback for %s failed", self.name, pending.op)

    def _expire(self, now: float) -> None:
        if not self._pending:
            return
        expired = [rid for rid, p in self._pending.items() if p.deadline <= now]
        for rid in expired:
            pending = self._pending.pop(rid)
            self._complete(
                pending,
                None,
                [],
                RequestTimedOutError(
                    f"{pending.op} to {pending.endpoint} got no answer within the request "
                    "timeout (request.timeout.ms); is the broker running?"
                ),
            )

    def _shutdown(self) -> None:
        for pending in self._pending.values():
            with contextlib.suppress(Exception):
                pending.callback(None, [], KvlogError("the client was closed"))
        self._pending.clear()
        while self._inbox:
            *_, callback, _timeout, _expect, _fail_fast = self._inbox.popleft()
            with contextlib.suppress(Exception):
                callback(None, [], KvlogError("the client was closed"))
        for sock in self._sockets.values():  # before their monitors close: see _drop_socket
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
        for monitor in self._monitors:
            monitor.close(linger=0)
        for sock in self._sockets.values():
            # Messages still queued (acks=0 produce, a last commit) get a moment to leave:
            # a fire-and-forget send handed to ZeroMQ must not vanish on close().
            sock.close(linger=CLOSE_LINGER_MS)
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)


def blocking_call(
    endpoint: str,
    op: str,
    fields: dict[str, Any],
    *,
    timeout_s: float = 5.0,
    frames: Sequence[Frame] = (),
    socket_options: dict[int, Any] | None = None,
) -> dict[str, Any]:
    """One request on a throwaway socket (tools, health checks); raises its error."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for option, value in (socket_options or {}).items():
        sock.setsockopt(option, value)
    try:
        sock.connect(wire.normalize_endpoint(endpoint))
        sock.send_multipart([wire.encode(wire.request_header(op, 1, **fields)), *frames])
        if not sock.poll(timeout_s * 1000):
            raise KafkaTimeoutError(f"{op} to {endpoint}: no answer within {timeout_s:.1f} s")
        parts = sock.recv_multipart()
    finally:
        sock.close(linger=0)
    header = wire.decode_header(parts[0])
    error = wire.reply_error(header)
    if error is not None:
        raise error
    return header
