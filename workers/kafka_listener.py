"""The TCP half of a Kafka shell: accept, read, write, close; one KafkaConnection each.

A process shell owns one :class:`KafkaListener` beside its ZeroMQ sockets, in the same
single-threaded loop. The listener keeps its sockets in its own ``selectors`` object
(epoll on Linux) and shows the loop one file descriptor, the selector's, which is
readable whenever any Kafka socket is ready. So it plugs into ``zmq_server.Server`` with
the call that already exists, and nothing there changes::

    listener = KafkaListener({ApiKey.ApiVersions: on_api_versions, ...}, port=9092)
    listener.start()
    server.add_socket(listener.poll_handle(), listener.on_ready)
    # in next_timeout_ms: min(..., listener.next_deadline(now) - now)
    # in on_timers:       listener.expire_idle(now)

A handler is ``handler(request, token) -> response | DEFERRED``: a kafka.protocol
response object now, or :data:`DEFERRED` and later ``listener.respond(token, response)``
(a long poll, an acks=all produce). Tokens are opaque to cores, as ``core_result`` asks.

Security (``security``, a :class:`workers.kafka_security.ListenerSecurity`; None:
PLAINTEXT, every principal ANONYMOUS) is carried out here, for every process's listener
alike: TLS through :class:`workers.kafka_tls.TlsSession` (ciphertext on the socket,
plaintext to the connection), SASL through one :class:`kvlog.ipc.kafka.sasl.SaslServer`
per connection, which sees each request before any handler until the login is done (a
connection that has not authenticated can send ApiVersions, SaslHandshake and
SaslAuthenticate, and frames of at most 512 KiB; anything else closes it). The
connection's principal (the SCRAM user, or the client certificate's CN on an SSL
listener) is on every :class:`KafkaToken` the handlers get, for their ACL checks and
quotas. A connection whose SCRAM user is removed is closed at its next request. SASL
requests on a connection that is not in a SASL exchange get ILLEGAL_SASL_STATE.

What closes a connection (each logged once, at INFO with the peer's address): a protocol
error (:class:`KafkaProtocolError`: see ``ipc/kafka/connection.py`` for the list), an
advertised API this listener has no handler for (another process serves it), a handler
that raised (a bug: logged with its traceback; no generic Kafka error response exists),
a failed TLS handshake or login (``connection.failed.authentication.delay.ms`` after its
error response, where SASL has one),
``connections.max.idle.ms`` without traffic while owed nothing, more connections than
``max.connections``, and the peer closing. Nothing a client sends raises out of
:meth:`on_ready`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kvlog.ipc.kafka.codec import api_name
from kvlog.ipc.kafka.connection import (
    CLOSED,
    DEFAULT_MAX_PENDING,
    NEED_DATA,
    PAUSED,
    KafkaConnection,
    KafkaRequest,
    RawToken,
)
from kvlog.ipc.kafka.framing import DEFAULT_MAX_REQUEST_BYTES, KafkaProtocolError
from kvlog.ipc.kafka.sasl import (
    MAX_UNAUTHENTICATED_BYTES,
    PASS,
    SASL_APIS,
    Refuse,
    Respond,
    SaslServer,
    illegal_state,
)
from kvlog.ipc.kafka.versions import SERVED, VersionTable

from .acl import ANONYMOUS, RESERVED_PRINCIPALS
from .kafka_security import SSL, ListenerSecurity
from .kafka_tls import TlsError, TlsSession, certificate_principal

log = logging.getLogger(__name__)


class _Deferred:
    def __repr__(self) -> str:
        return "DEFERRED"


DEFERRED: Any = _Deferred()  # a handler's "I will respond later through respond()"

Handler = Callable[[KafkaRequest, "KafkaToken"], Any]

DEFAULT_CONNECTIONS_MAX_IDLE_MS = 600_000  # Kafka's connections.max.idle.ms
DEFAULT_FAILED_AUTHENTICATION_DELAY_MS = 100  # connection.failed.authentication.delay.ms
DEFAULT_MAX_CONNECTIONS = 1000
_RECV_BYTES = 256 * 1024
_READS_PER_TURN = 16  # per connection and on_ready call: others get their turn
_ACCEPTS_PER_TURN = 64
_MAX_UNSENT = 4 * 1024 * 1024  # stop reading a client that does not read its responses
_IOV_MAX = 1024  # sendmsg's buffer count limit on Linux


@dataclass(frozen=True, slots=True)
class KafkaToken:
    """Where a deferred response goes: the connection and its request; and who sent it
    (the connection's authenticated principal, ANONYMOUS without security)."""

    connection_id: int
    request: KafkaRequest
    principal: str = ANONYMOUS


class PollHandle(int):
    """The listener's descriptor, shaped for ``zmq_server.Server.add_socket``.

    ``zmq.Poller`` reports a native descriptor as the int it polled, and ``Server`` looks
    its handlers up by what the poller reports and closes what was registered with
    ``close(linger=0)``: an int that can close satisfies both, so the Server needs no
    change. Owned by the Server it is registered with."""

    listener: KafkaListener

    def __new__(cls, fd: int, listener: KafkaListener) -> PollHandle:
        handle = super().__new__(cls, fd)
        handle.listener = listener
        return handle

    def close(self, linger: int | None = None) -> None:
        self.listener.close()


class _Client:
    """One accepted connection: socket, protocol state, unsent bytes, who it is. The
    listener's."""

    __slots__ = (
        "close_at",
        "closing",
        "conn",
        "id",
        "interest",
        "last_active",
        "out",
        "peer",
        "principal",
        "sasl",
        "scram_user",
        "sock",
        "tls",
        "unsent",
    )

    def __init__(self, cid: int, sock: socket.socket, peer: str, conn: KafkaConnection) -> None:
        self.id = cid
        self.sock = sock
        self.peer = peer
        self.conn = conn
        self.out: deque[memoryview] = deque()
        self.unsent = 0
        self.interest = 0  # selector events registered (0: not registered)
        self.last_active = 0.0
        self.principal = ANONYMOUS
        self.tls: TlsSession | None = None
        self.sasl: SaslServer | None = None  # until the login is done
        self.scram_user: str | None = None  # its removal closes the connection
        self.closing: str | None = None  # close, for this reason, once out is sent
        self.close_at = 0.0  # and not before (a failed login's delay)


class KafkaListener:
    """A non-blocking Kafka listener for one process's loop. Single-threaded: every call
    comes from the loop that polls :meth:`fileno`."""

    def __init__(
        self,
        handlers: Mapping[int, Handler],
        *,
        host: str = "127.0.0.1",
        port: int = 9092,
        table: VersionTable = SERVED,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_pending: int = DEFAULT_MAX_PENDING,
        connections_max_idle_ms: int = DEFAULT_CONNECTIONS_MAX_IDLE_MS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        failed_authentication_delay_ms: int = DEFAULT_FAILED_AUTHENTICATION_DELAY_MS,
        clock: Callable[[], float] = time.monotonic,
        name: str = "kafka",
        security: ListenerSecurity | None = None,
    ) -> None:
        undeclared = [api_name(k) for k in handlers if k not in table]
        if undeclared:
            raise ValueError(f"handlers for APIs the versions table does not serve: {undeclared}")
        self.handlers = dict(handlers)
        self.host, self.port = host, port
        self.table = table
        self.max_request_bytes = max_request_bytes
        self.max_pending = max_pending
        self.auth_failures = 0  # SASL logins refused (metrics)
        self.idle_s = connections_max_idle_ms / 1000
        self.failed_login_delay_s = failed_authentication_delay_ms / 1000
        self.max_connections = max_connections
        self.clock = clock
        self.name = name
        self.security = security
        self._selector = selectors.DefaultSelector()
        self._server: socket.socket | None = None
        self._clients: dict[int, _Client] = {}
        self._ids = itertools.count(1)
        self._scratch = bytearray(_RECV_BYTES)
        self.requests_served = 0
        self.protocol_errors = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Bind and listen; returns the address bound (port 0 picks a free one)."""
        server = socket.create_server((self.host, self.port), backlog=128, reuse_port=False)
        server.setblocking(False)
        self._server = server
        self._selector.register(server, selectors.EVENT_READ, None)
        self.host, self.port = server.getsockname()[:2]
        return self.host, self.port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def fileno(self) -> int:
        """The selector's descriptor: readable while any Kafka socket is ready."""
        return self._selector.fileno()  # type: ignore[attr-defined]

    def poll_handle(self) -> PollHandle:
        """What to give ``Server.add_socket``: see :class:`PollHandle`."""
        return PollHandle(self.fileno(), self)

    @property
    def connections(self) -> int:
        return len(self._clients)

    def close(self, linger: int | None = None) -> None:
        """Close every connection and the listening socket; idempotent. ``linger`` is
        ignored: it is there because ``Server.close`` closes its sockets that way."""
        for client in list(self._clients.values()):
            self._close(client, None)
        if self._server is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._server)
            self._server.close()
            self._server = None
            self._selector.close()

    # -- the loop's calls ------------------------------------------------------------------

    def on_ready(self) -> None:
        """Serve every socket that is ready now; never blocks, never raises for input."""
        for key, events in self._selector.select(0):
            client = key.data
            if client is None:
                self._accept()
                continue
            if client.id not in self._clients:
                continue  # closed earlier in this turn
            if events & selectors.EVENT_WRITE:
                self._flush(client)
            if events & selectors.EVENT_READ and client.id in self._clients:
                self._read(client)
            if client.id in self._clients:
                self._service(client)

    def respond(self, token: KafkaToken, response: Any) -> bool:
        """Give a deferred request its response; False when its connection is gone."""
        client = self._clients.get(token.connection_id)
        if client is None:
            return False
        try:
            client.conn.send_response(token.request, response)
        except Exception:  # a handler's bad response object: a bug, not the client's
            log.exception("%s: response to %s could not be encoded", self.name, client.peer)
            self._close(client, None)
            return False
        self._service(client)
        return client.id in self._clients

    def peer_of(self, token: KafkaToken) -> str | None:
        """The ``host:port`` a request's connection comes from (None: it is gone)."""
        client = self._clients.get(token.connection_id)
        return None if client is None else client.peer

    def close_connection(self, token: KafkaToken, reason: str) -> None:
        """Close a request's connection (Kafka's answer to a failed acks=0 produce)."""
        client = self._clients.get(token.connection_id)
        if client is not None:
            self._close(client, reason)

    def next_deadline(self) -> float | None:
        """When the next idle connection expires or failed login closes (on ``clock``),
        or None."""
        idle = [c.last_active for c in self._clients.values() if not c.conn.pending]
        closes = [c.close_at for c in self._clients.values() if c.closing is not None]
        deadlines = ([min(idle) + self.idle_s] if idle else []) + closes
        return min(deadlines) if deadlines else None

    def expire_idle(self, now: float | None = None) -> int:
        """Close connections silent for ``connections.max.idle.ms`` and owed nothing
        (a request half sent and then stalled ends here too); returns how many."""
        now = self.clock() if now is None else now
        for client in [c for c in self._clients.values() if c.closing is not None]:
            self._flush(client)  # closes it once its delay is over and its output sent
        stale = [
            c
            for c in self._clients.values()
            if not c.conn.pending and now - c.last_active >= self.idle_s
        ]
        for client in stale:
            self._close(client, f"idle for {self.idle_s:g} s (connections.max.idle.ms)")
        return len(stale)

    # -- sockets ---------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._server is not None
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                sock, addr = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, try again next turn
                log.warning("%s: accept failed: %s", self.name, exc)
                return
            peer = f"{addr[0]}:{addr[1]}"
            if len(self._clients) >= self.max_connections:
                log.warning(
                    "%s: refused %s: %d connections open is max.connections",
                    self.name,
                    peer,
                    self.max_connections,
                )
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = KafkaConnection(
                self.table, max_request_bytes=self.max_request_bytes, max_pending=self.max_pending
            )
            client = _Client(next(self._ids), sock, peer, conn)
            client.last_active = self.clock()
            self._secure(client)
            self._clients[client.id] = client
            self._set_interest(client)

    def _secure(self, client: _Client) -> None:
        """Give a new connection its TLS session and SASL exchange, as the listener's
        security says."""
        security = self.security
        if security is None:
            return
        if security.ssl_context is not None:
            client.tls = TlsSession(security.ssl_context)
        if security.sasl:
            client.sasl = SaslServer(security.mechanisms, security.lookup, security.decoys)
            client.conn.max_request_bytes = min(self.max_request_bytes, MAX_UNAUTHENTICATED_BYTES)

    def _read(self, client: _Client) -> None:
        view = memoryview(self._scratch)
        for _ in range(_READS_PER_TURN):
            if not self._wants_read(client):
                return
            try:
                n = client.sock.recv_into(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._close(client, f"read failed: {exc}")
                return
            client.last_active = self.clock()
            if client.tls is None:
                client.conn.receive_data(view[:n])  # copied into the frame being filled
            elif not self._receive_tls(client, view[:n]):
                return
            if not n:
                return

    def _receive_tls(self, client: _Client, ciphertext: memoryview) -> bool:
        """Decrypt into the connection; False when the connection was closed."""
        tls = client.tls
        assert tls is not None
        was_done = tls.handshake_done
        try:
            plaintext = tls.receive(ciphertext) if len(ciphertext) else []
        except TlsError as exc:
            self._close(client, str(exc))
            return False
        self._queue(client, [tls.pending_output()])  # the handshake's answers
        if tls.handshake_done and not was_done and not self._tls_established(client):
            return False
        for chunk in plaintext:
            client.conn.receive_data(chunk)
        if not len(ciphertext) or tls.closed_by_peer:
            client.conn.receive_data(b"")
        return True

    def _tls_established(self, client: _Client) -> bool:
        """The handshake just completed: on an SSL listener the certificate is the login."""
        assert client.tls is not None and self.security is not None
        if self.security.protocol != SSL:
            return True
        cert = client.tls.peer_certificate()
        principal = None if cert is None else certificate_principal(cert)
        if principal is None or principal in RESERVED_PRINCIPALS:
            self._close(client, f"client certificate names no usable principal (CN {principal!r})")
            return False
        client.principal = principal
        log.info(
            "%s: %s authenticated as %r (TLS client certificate)", self.name, client.peer, principal
        )
        return True

    def _service(self, client: _Client) -> None:
        """Hand out decoded requests, send what is due, and set what to wait for next.
        Sending can unpause the connection, so both repeat until neither moves."""
        conn = client.conn
        while client.id in self._clients:
            dispatched = 0
            while client.id in self._clients and client.closing is None:
                try:
                    event = conn.next_event()
                except KafkaProtocolError as exc:
                    self.protocol_errors += 1
                    self._flush(client)  # answers to the requests before the bad one
                    self._close(client, f"protocol error: {exc}")
                    return
                if event is NEED_DATA or event is PAUSED:
                    break
                if event is CLOSED:
                    self._close(client, None)
                    return
                self._dispatch(client, event)  # type: ignore[arg-type]
                dispatched += 1
            if client.id in self._clients:
                self._flush(client)
            if not dispatched:
                break
        if client.id in self._clients:
            self._set_interest(client)

    def _dispatch(self, client: _Client, request: KafkaRequest | RawToken) -> None:
        if self._sasl_handled(client, request):
            return
        assert isinstance(request, KafkaRequest)
        user, security = client.scram_user, self.security
        if user is not None and security is not None and not security.user_exists(user):
            self._close(client, f"SCRAM user {user!r} was removed")
            return
        handler = self.handlers.get(request.api_key)
        if handler is None:
            self._close(client, f"{request.api_name} is advertised but not served here")
            return
        try:
            response = handler(request, KafkaToken(client.id, request, client.principal))
            if response is DEFERRED or not request.expects_response:
                return
            client.conn.send_response(request, response)
        except Exception:  # a bug in a handler must not take the process down
            log.exception(
                "%s: %s v%d from %s failed",
                self.name,
                request.api_name,
                request.api_version,
                client.peer,
            )
            self._close(client, None)
            return
        self.requests_served += 1

    # -- SASL ------------------------------------------------------------------------------

    def _sasl_handled(self, client: _Client, request: KafkaRequest | RawToken) -> bool:
        """Whether the SASL layer took the request (answered it, or closed the
        connection); False: dispatch it to its handler."""
        sasl = client.sasl
        if sasl is None:
            if isinstance(request, RawToken):  # only a v0 handshake makes these
                self._close(client, "a bare SASL token outside a SASL handshake")
                return True
            if request.api_key not in SASL_APIS:
                return False
            message = "SASL is not in progress on this connection (not a SASL listener, or done)"
            client.conn.send_response(request, illegal_state(request, message))
            return True
        if isinstance(request, RawToken):
            decision = sasl.on_raw_token(request.data)
        else:
            decision = sasl.on_request(request)
        if decision is PASS:
            return False
        if isinstance(decision, Refuse):
            self.auth_failures += 1
            self._close_later(client, decision.reason)
            return True
        assert isinstance(decision, Respond)
        try:
            if isinstance(request, RawToken):
                client.conn.send_raw(request, decision.response)
            else:
                client.conn.send_response(request, decision.response)
        except Exception:  # a bad response object: a bug, not the client's
            log.exception("%s: SASL response to %s could not be encoded", self.name, client.peer)
            self._close(client, None)
            return True
        client.conn.raw_tokens = decision.raw_tokens
        if decision.principal is not None:
            client.principal = client.scram_user = decision.principal
            client.sasl = None
            client.conn.max_request_bytes = self.max_request_bytes
            log.info(
                "%s: %s authenticated as %r (%s)",
                self.name,
                client.peer,
                decision.principal,
                sasl.mechanism,
            )
        if decision.close_reason is not None:
            self.auth_failures += 1
            self._close_later(client, decision.close_reason)
        return True

    def _close_later(self, client: _Client, reason: str) -> None:
        """A failed login: stop reading, send what is owed, close after Kafka's
        ``connection.failed.authentication.delay.ms``. Closing at once let the client's
        read see the end of the stream with the error response (kafka-python then drops
        the response and reports a disconnection instead of the failed login)."""
        client.closing = reason
        client.close_at = self.clock() + self.failed_login_delay_s

    # -- output ----------------------------------------------------------------------------

    def _queue(self, client: _Client, buffers: list[Any]) -> None:
        for buf in buffers:
            view = memoryview(buf).cast("B")
            if len(view):
                client.out.append(view)
                client.unsent += len(view)

    def _flush(self, client: _Client) -> None:
        plaintext = client.conn.data_to_send()
        if client.tls is None:
            self._queue(client, plaintext)
        elif plaintext or client.tls.handshake_done:
            try:
                self._queue(client, [client.tls.encrypt(plaintext)])
            except TlsError as exc:
                self._close(client, str(exc))
                return
        while client.out:
            batch = list(itertools.islice(client.out, _IOV_MAX))
            try:
                sent = client.sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._close(client, f"write failed: {exc}")
                return
            client.last_active = self.clock()
            client.unsent -= sent
            while sent:
                head = client.out[0]
                if sent >= len(head):
                    sent -= len(head)
                    client.out.popleft()
                else:
                    client.out[0] = head[sent:]
                    sent = 0
        if client.closing is not None and not client.out and self.clock() >= client.close_at:
            self._close(client, client.closing)

    def _wants_read(self, client: _Client) -> bool:
        return client.conn.wants_data and client.unsent < _MAX_UNSENT and client.closing is None

    def _set_interest(self, client: _Client) -> None:
        # Level-triggered: a readable socket we do not want to read yet (paused, or
        # responses unsent) must leave the selector, or the loop would spin on it.
        interest = (selectors.EVENT_READ if self._wants_read(client) else 0) | (
            selectors.EVENT_WRITE if client.out else 0
        )
        if interest == client.interest:
            return
        if client.interest == 0:
            self._selector.register(client.sock, interest, client)
        elif interest == 0:
            self._selector.unregister(client.sock)
        else:
            self._selector.modify(client.sock, interest, client)
        client.interest = interest

    def _close(self, client: _Client, reason: str | None) -> None:
        if self._clients.pop(client.id, None) is None:
            return
        if reason is not None:
            log.info("%s: closing %s: %s", self.name, client.peer, reason)
        if client.interest:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(client.sock)
        client.interest = 0
        with contextlib.suppress(OSError):
            client.sock.close()
