"""What a client's I/O thread knows of each endpoint's connection.

Every socket of :class:`ipc.rpc.IOThread` has a ZeroMQ monitor; its events (a TCP
connection made, a handshake done or failed, a connection dropped, a reconnect attempt)
come here, one at a time, and :meth:`EndpointHealth.on_event` says what the I/O thread
must do about them:

- a dropped connection that had completed its handshake: :class:`Lost` (the server died;
  the client reconnects and retries);
- a refused connection (nothing listens: the server is down or restarting): the endpoint
  counts as down; :class:`Lost` (refused) only if a request sent there asked to fail
  fast, others wait for the server to come back;
- a refused CURVE key: :class:`HandshakeRefused`, UNAUTHENTICATED;
- other handshake failures are ambiguous (a server dying mid-connect fails one, a
  security mismatch fails every reconnect): three in a row count as a refusal.

An endpoint is *down* from a drop or refusal until a handshake succeeds again; a client
that never reached any of its bootstrap servers can tell how long they all refused
(:meth:`EndpointHealth.unreachable_since`). Losing an established connection is logged
once as a warning, and once more when a connection is back.

No sockets here: events in, verdicts out (the I/O thread acts on them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import zmq

from kvlog.errors import KvlogError, NetworkError, UnauthenticatedError

# The I/O thread's logger: its connection lines keep the name they always had.
log = logging.getLogger("kvlog.ipc.rpc")

#: The monitor events :meth:`EndpointHealth.on_event` reads.
MONITORED_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_CONNECTED
)


class RefusedConnectionError(NetworkError):
    """The endpoint refused the connection (nothing listens there): the request was never
    delivered, so sending it again cannot apply it twice."""


def refused_error(endpoint: str) -> RefusedConnectionError:
    return RefusedConnectionError(
        f"the connection to {endpoint} was refused (is the server running?); the client retries"
    )


@dataclass(frozen=True)
class Lost:
    """The endpoint's connection dropped or was refused: fail what was sent there and
    replace its socket with a new, empty one (then :meth:`EndpointHealth.mark_down`)."""

    error: KvlogError
    refused: bool = False


@dataclass(frozen=True)
class HandshakeRefused:
    """The security handshake is refused: fail what was sent there and drop the socket
    (libzmq does not reconnect after a refused CURVE key; the next request opens a new
    one, and the key may be authorized by then)."""

    error: KvlogError


class EndpointHealth:
    """The connection state of every endpoint of one IOThread. Owned by that IOThread and
    used on its I/O thread only; not thread-safe."""

    def __init__(self, name: str) -> None:
        self.name = name  # the client's, for log lines
        self._handshake_failures: dict[str, int] = {}
        # Endpoints whose current socket completed a handshake (and has not dropped since).
        self._connected: set[str] = set()
        # Endpoints whose connection dropped or was refused, with no handshake since.
        self._down: set[str] = set()
        # Endpoints whose last connection attempt was refused (nothing listens there), and
        # those where a TCP connection was made since the last attempt (something listens:
        # a failure after it is the handshake's, not a refusal).
        self._refused: set[str] = set()
        self._tcp_up: set[str] = set()
        # Endpoints this client completed a handshake with at least once.
        self._reached: set[str] = set()
        # Endpoint -> when it first refused a connection (never reached, no handshake since).
        self._refused_since: dict[str, float] = {}
        # Endpoints whose established connection dropped: logged once, then "back" once.
        self._lost: set[str] = set()

    def is_down(self, endpoint: str) -> bool:
        """Whether the endpoint's connection dropped or was refused and has not completed
        a handshake since."""
        return endpoint in self._down

    def is_refused(self, endpoint: str) -> bool:
        """Whether the endpoint's last connection attempt was refused (nothing listens)."""
        return endpoint in self._refused

    def unreachable_since(self, endpoints: Sequence[str]) -> float | None:
        """When all of ``endpoints`` had refused connections, if this client never reached
        any of them (None otherwise: one was reached once, or one was not tried yet)."""
        if any(e in self._reached for e in endpoints):
            return None
        starts = [self._refused_since.get(e) for e in endpoints]
        if any(s is None for s in starts):
            return None
        return max(s for s in starts if s is not None)

    def forget_socket(self, endpoint: str) -> None:
        """The endpoint's socket is closed: what its connection said no longer holds."""
        self._connected.discard(endpoint)
        self._down.discard(endpoint)
        self._refused.discard(endpoint)
        self._tcp_up.discard(endpoint)

    def mark_down(self, endpoint: str, refused: bool) -> None:
        """A new socket replaced one that was :class:`Lost`: down until a handshake."""
        self._down.add(endpoint)
        if refused:
            self._refused.add(endpoint)

    def on_event(
        self,
        endpoint: str,
        kind: int,
        value: int,
        now: float,
        *,
        closing: bool,
        fail_fast_waiting: Callable[[], bool],
    ) -> Lost | HandshakeRefused | None:
        """One monitor event of ``endpoint``'s socket (``now``: monotonic seconds;
        ``closing``: the client closes; ``fail_fast_waiting``: whether a request sent
        there asked to fail fast). None: nothing to do; read the next event."""
        if kind == zmq.EVENT_CONNECTED:
            self._tcp_up.add(endpoint)
            self._refused.discard(endpoint)
            return None
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._handshake_failures[endpoint] = 0
            self._connected.add(endpoint)
            self._down.discard(endpoint)
            self._refused.discard(endpoint)
            self._reached.add(endpoint)
            self._refused_since.pop(endpoint, None)
            if self._lost:
                log.warning("%s: connected to %s again; kvlog is reachable", self.name, endpoint)
                self._lost.clear()
            return None
        if kind == zmq.EVENT_DISCONNECTED:
            if endpoint not in self._connected:
                return None
            if not self._lost and not closing:
                log.warning(
                    "%s: lost the connection to %s (the kvlog process there stopped "
                    "or restarts); retrying until it is back",
                    self.name,
                    endpoint,
                )
            self._lost.add(endpoint)
            return Lost(
                NetworkError(
                    f"the connection to {endpoint} dropped; the client reconnects and retries"
                )
            )
        if kind == zmq.EVENT_CONNECT_RETRIED:
            if endpoint in self._connected:
                return None  # a stale event: the socket is connected
            self._down.add(endpoint)
            if endpoint in self._tcp_up:
                # A server took the connection and it failed after (its handshake, or it
                # went away): not a refusal. The handshake failures say more.
                self._tcp_up.discard(endpoint)
                return None
            self._refused.add(endpoint)
            if endpoint not in self._reached:
                self._refused_since.setdefault(endpoint, now)
            if fail_fast_waiting():
                return Lost(refused_error(endpoint), refused=True)
            return None
        failures = self._handshake_failures.get(endpoint, 0) + 1
        self._handshake_failures[endpoint] = failures
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            reason = (
                f"the server at {endpoint} refused this client's CURVE key; ask its admin "
                "to add your .key file to its authorized keys (then kvlog acls reload)"
            )
        elif failures >= 3 or value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            reason = (
                f"the security handshake with {endpoint} keeps failing: the server expects "
                "another security_protocol (curve or plaintext) or other keys"
            )
        else:
            return None  # maybe a server going away mid-connect: libzmq reconnects
        self._handshake_failures[endpoint] = 0
        return HandshakeRefused(UnauthenticatedError(reason))


__all__ = [
    "MONITORED_EVENTS",
    "EndpointHealth",
    "HandshakeRefused",
    "Lost",
    "RefusedConnectionError",
    "refused_error",
]
