"""The loop every kvlog server process runs: poll -> drain -> dispatch -> commit -> timers.

A :class:`Server` owns one ROUTER socket for clients plus any other sockets a process
needs (a DEALER to the coordinator, ...), all polled from one thread. Each turn it drains
up to ``max_drain`` waiting requests, dispatches them to ``op_<name>`` handlers, then
calls :meth:`after_drain` once: that is where the node puts every produce request of the
turn into one write transaction (group commit). Timers run last.

A handler returns a reply (``dict`` of fields, or ``(fields, frames)``) or ``None`` when it
will answer later through :meth:`reply`. Nothing a client sends can stop the loop:
undecodable frames, unknown ops, wrong field types and handler failures all become an
error reply with a code and a message, and a log line.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from kvlog.errors import (
    AuthorizationError,
    InvalidRequestError,
    KvlogError,
    UnauthenticatedError,
    UnknownServerError,
    UnsupportedVersionError,
)
from kvlog.ipc import wire
from kvlog.ipc.wire import Frame, Request

from .acl import INTERNAL_PRINCIPAL, acting_principal, authorize
from .config import broker_default
from .security import ServerSecurity

log = logging.getLogger(__name__)

Reply = dict[str, Any] | tuple[dict[str, Any], Sequence[Frame]] | None
Handler = Callable[[Request, bytes], Reply]

DEFAULT_MAX_FRAME_BYTES: int = broker_default("max.frame.bytes")


def bind_router(
    ctx: zmq.Context[Any],
    endpoint: str,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    security: ServerSecurity | None = None,
) -> tuple[zmq.Socket[Any], str]:
    """A ROUTER bound to ``endpoint`` (port 0 picks a free port); returns it and the
    endpoint actually bound."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    # ZeroMQ drops a connection that sends a larger frame; below this size, requests
    # over message.max.bytes get a MESSAGE_TOO_LARGE reply instead.
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    if security is not None:
        security.secure_server(sock)
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        endpoint = endpoint[:-2] + ":*"
    sock.bind(endpoint)
    bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return sock, bound


class Server:
    """Base of the broker, node and coordinator loops. Single-threaded."""

    name = "server"
    max_drain = 2000
    # Ops a drain dispatches before the others it read (in arrival order within each
    # group): see _drain_router. Empty: every request in arrival order.
    first_ops: frozenset[str] = frozenset()

    def __init__(
        self,
        ctx: zmq.Context[Any],
        router: zmq.Socket[Any],
        security: ServerSecurity | None = None,
    ) -> None:
        self.ctx = ctx
        self.router = router
        self.security = security
        self.principal = INTERNAL_PRINCIPAL  # of the request being handled
        self.reload_requested = False  # set by SIGHUP
        self._next_acl_refresh = 0.0
        self.poller = zmq.Poller()
        self.poller.register(router, zmq.POLLIN)
        self._socket_handlers: dict[zmq.Socket[Any], Callable[[], None]] = {}
        self.handlers: dict[str, Handler] = {
            attr[3:]: getattr(self, attr) for attr in dir(self) if attr.startswith("op_")
        }
        self._connection_monitor = None  # set by limit_connections
        self.stopping = False
        self.requests_served = 0
        self.bad_requests = 0
        # This process's metrics (workers/metrics.py), set by workers/runtime.py; None
        # when metrics are off. ``turn_started``: when this turn's poll returned.
        self.metrics: Any = None
        self.turn_started = 0.0

    # -- sockets and replies ---------------------------------------------------------------

    def limit_connections(self, limit: int) -> None:
        """Keep at most ``limit`` client connections (broker config max.connections).

        ZeroMQ has no such option; its socket monitor reports each accepted connection
        with its file descriptor. A connection over the limit is shut down through a
        duplicate of that descriptor (libzmq's own stays open; it sees the peer go and
        cleans up), so the client backs off and retries until a place frees up.

        The monitor's event can come after the connection's first requests (its
        handshake and the monitor are separate queues), so every request is also checked
        against the admitted connections by the descriptor it arrived on (ZeroMQ's
        SRCFD): one from a connection over the cap is dropped unanswered. A connection
        with no ACCEPTED event (accepted before the monitor existed, or its event lost)
        is admitted on its first request while there is room."""
        if limit <= 0:
            return
        self._max_connections = limit
        self._connections: set[int] = set()
        self._refused_at = 0.0
        monitor = self.router.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._connection_monitor: zmq.Socket[Any] | None = monitor
        self.add_socket(monitor, lambda: self._on_connection_event(monitor))

    def _admitted(self, frame: zmq.Frame) -> bool:
        """Whether the connection a message arrived on is within max.connections."""
        fd = frame.get(zmq.SRCFD)
        if fd in self._connections:
            return True
        monitor = self._connection_monitor
        if monitor is not None:
            self._on_connection_event(monitor)  # its ACCEPTED event may be waiting
        if fd in self._connections:
            return True
        # No ACCEPTED event will ever come for a connection accepted before the monitor
        # existed: the router binds before the server is built and its cap set up, and
        # clients reconnecting to a restarted process land in between. Admit it while
        # there is room (else every request on it would be dropped, for good).
        if len(self._connections) < self._max_connections:
            self._connections.add(fd)
            return True
        return False

    def _on_connection_event(self, monitor: zmq.Socket[Any]) -> None:
        while True:
            try:
                event = recv_monitor_message(monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            fd = event["value"]
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self._connections.discard(fd)
                continue
            if fd in self._connections or len(self._connections) < self._max_connections:
                self._connections.add(fd)
                continue
            with contextlib.suppress(OSError):
                extra = socket.socket(fileno=os.dup(fd))
                extra.shutdown(socket.SHUT_RDWR)
                extra.close()
            now = time.monotonic()
            if now - self._refused_at > 10.0:
                self._refused_at = now
                log.warning(
                    "%s: refused a connection: %d open is max.connections",
                    self.name,
                    self._max_connections,
                )

    def add_socket(self, sock: zmq.Socket[Any], on_readable: Callable[[], None]) -> None:
        self._socket_handlers[sock] = on_readable
        self.poller.register(sock, zmq.POLLIN)

    def reply(
        self,
        peer: bytes,
        request_id: int | None,
        fields: dict[str, Any],
        frames: Sequence[Frame] = (),
    ) -> None:
        header = {"v": wire.PROTOCOL_VERSION, "id": request_id, **fields}
        try:
            self.router.send_multipart([peer, wire.encode(header), *frames], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("%s: reply to a slow client dropped (send queue full)", self.name)
        except zmq.ZMQError as exc:
            log.warning("%s: reply could not be sent: %s", self.name, exc)

    def reply_error(self, peer: bytes, request_id: int | None, exc: KvlogError) -> None:
        self.reply(peer, request_id, exc.to_wire())

    # -- the loop --------------------------------------------------------------------------

    def next_timeout_ms(self, now: float) -> float:
        """Milliseconds until the next timer; subclasses with timers override."""
        return 100.0

    def on_timers(self, now: float) -> None:
        """Run due timers (heartbeats, expired long polls, ...)."""

    def after_drain(self) -> None:
        """Called once per turn after the drained requests were dispatched."""

    def run_once(self, timeout_ms: float | None = None) -> None:
        now = time.monotonic()
        if timeout_ms is None:
            timeout_ms = max(0.0, self.next_timeout_ms(now))
        # Whole milliseconds, rounded up: pyzmq truncates, so a timer 0.4 ms away would poll
        # with 0 and spin until it is due.
        ready = self.poller.poll(math.ceil(timeout_ms))
        self.turn_started = time.perf_counter()
        # The other sockets first, the clients' requests last: a node's landed commit
        # (its committer's pipe) sends its replies and answers its parked fetches before
        # a drain of new requests, which only stage for the next commit anyway.
        drain = False
        for sock, _ in ready:
            if sock is self.router:
                drain = True
            else:
                self._socket_handlers[sock]()
        if drain:
            self._drain_router()
        self.after_drain()
        now = time.monotonic()
        if self.security is not None:
            if self.reload_requested:
                self.reload_requested = False
                self.security.reload_keys()
            if now >= self._next_acl_refresh:
                self._next_acl_refresh = now + 0.2
                self.refresh_acls()
        self.on_timers(now)
        if self.metrics is not None:
            self.metrics.maybe_push(self, now)

    def serve_forever(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        while not self.stopping and not should_stop():
            self.run_once()

    def refresh_acls(self) -> None:
        """Reload ACLs if they changed (the coordinator overrides: it owns the store)."""
        if self.security is not None:
            self.security.refresh_acls()

    def _drain_router(self) -> None:
        """Read the waiting requests (up to ``max_drain``) and dispatch them.

        With ``first_ops`` (the node: ``fetch``) the drain reads every waiting request
        first and dispatches those ops before the others: a fetch answered from data
        already committed need not wait behind the decoding and staging of produce
        requests that arrived just before it (they only stage for the commit after the
        drain, so what the fetch can see is the same in either order)."""
        later: list[tuple[list[bytes], str, dict[str, Any] | None]] | None = (
            [] if self.first_ops else None
        )
        secure = self.security is not None
        capped = self._connection_monitor is not None
        for _ in range(self.max_drain):
            try:
                if not (secure or capped):
                    parts = self.router.recv_multipart(flags=zmq.NOBLOCK, copy=True)
                else:  # frames, for their properties: the source fd, ZAP's User-Id
                    frames = self.router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            principal = INTERNAL_PRINCIPAL
            if secure or capped:
                if capped and not self._admitted(frames[-1]):
                    continue  # over max.connections: its connection is being shut
                parts = [f.bytes for f in frames]
                if secure:
                    # ZAP put the authenticated principal on every message of the connection.
                    principal = frames[-1].get("User-Id") or "unknown"
                    if not self.security.still_authorized(principal):
                        # ZAP checks keys only at the handshake; a key removed since then
                        # must not keep its connection's rights.
                        self.principal = principal
                        self._refuse_revoked(parts, principal)
                        continue
            if later is None:
                self.principal = principal
                self.dispatch(parts)
                continue
            header = None
            if len(parts) > 1:
                with contextlib.suppress(KvlogError):
                    header = wire.decode_header(parts[1])  # dispatch reports a bad one
            op = header.get("op") if header is not None else None
            if isinstance(op, str) and op in self.first_ops:
                self.principal = principal
                self.dispatch(parts, header)
            else:
                later.append((parts, principal, header))
        for parts, principal, header in later or ():
            self.principal = principal
            self.dispatch(parts, header)

    def _refuse_revoked(self, parts: list[bytes], principal: str) -> None:
        request_id = None
        with contextlib.suppress(KvlogError):
            request_id = wire.peek_id(wire.decode_header(parts[1])) if len(parts) > 1 else None
        self.reply_error(
            parts[0],
            request_id,
            UnauthenticatedError(
                f"principal {principal!r} is no longer authorized (its key was removed); "
                "reconnect with an authorized key"
            ),
        )

    def dispatch(self, parts: list[bytes], header: dict[str, Any] | None = None) -> None:
        """Handle one ROUTER message ``[peer, header, *frames]``; never raises.
        ``header``: frame 1 already decoded (by the drain)."""
        peer = parts[0]
        if len(parts) < 2:
            self.bad_requests += 1
            self.reply_error(peer, None, InvalidRequestError("empty message: frame 0 is missing"))
            return
        request_id = None
        try:
            if header is None:
                header = wire.decode_header(parts[1])
            request_id = wire.peek_id(header)
            request = Request(header, parts[2:])
            handler = self.handlers.get(request.op)
            if self.security is not None:
                self.principal = acting_principal(self.principal, request.header)
                authorize(self.security.authorizer, self.principal, request.op, request.header)
            if handler is None:
                raise UnsupportedVersionError(
                    f"unknown op {request.op!r} for the {self.name}; known ops: "
                    f"{', '.join(sorted(self.handlers))}"
                )
            result = handler(request, peer)
        except KvlogError as exc:
            self.bad_requests += 1
            if isinstance(exc, InvalidRequestError | UnsupportedVersionError):
                log.info("%s: bad request from client: %s", self.name, exc.message)
            elif isinstance(exc, AuthorizationError):
                log.info("%s: refused: %s", self.name, exc.message)
            self.reply_error(peer, request_id, exc)
            return
        except Exception as exc:  # a bug must not take the process down
            log.exception("%s: request failed", self.name)
            self.reply_error(peer, request_id, UnknownServerError(f"{type(exc).__name__}: {exc}"))
            return
        self.requests_served += 1
        if result is None:
            return
        if isinstance(result, tuple):
            fields, frames = result
            self.reply(peer, request_id, fields, frames)
        else:
            self.reply(peer, request_id, result)

    def close(self) -> None:
        if self.security is not None:
            self.security.close()
        with contextlib.suppress(zmq.ZMQError):
            self.router.close(linger=0)
        for sock in self._socket_handlers:
            with contextlib.suppress(zmq.ZMQError):
                sock.close(linger=0)
