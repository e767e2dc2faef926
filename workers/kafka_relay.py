"""Relaying the Kafka requests a node does not serve to the coordinator's Kafka listener.

Shell side, no policy. Kafka clients send some requests to whichever broker they like
best (Metadata, FindCoordinator, InitProducerId, DescribeConfigs and AlterConfigs of
topics, ...), and a node is a broker like any other to them. A node answers its data
path itself (:mod:`workers.kafka_node_shell`); everything else it relays to the
coordinator process, which serves every other API, the way Kafka's brokers forward
admin requests to their controller (KIP-590): the decoded request is framed again under
the relay's own correlation id on one connection to the coordinator's Kafka listener,
and the response, decoded, goes back to the client's connection under the client's.
The coordinator decides every answer; its Metadata is the one function both listeners
share.

A request that cannot be relayed (the coordinator's Kafka address not known yet, the
connection failing, no response within ``timeout_s``) closes its client's connection,
logged: a Kafka client then retries, at this broker or another, as after any broker
failure. Principals are not relayed: without SASL every Kafka connection is ANONYMOUS
on both listeners (KIP-590's envelope would carry it once SASL exists).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvlog.ipc.kafka.codec import decode_response, encode_request
from kvlog.ipc.kafka.connection import KafkaRequest
from kvlog.ipc.kafka.framing import DEFAULT_MAX_REQUEST_BYTES, FrameReader, KafkaProtocolError

from .kafka_addresses import split_host_port
from .kafka_listener import PollHandle

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
_RECV_BYTES = 256 * 1024
_RESPONSE_HEADER_BYTES = 4  # the correlation id


@dataclass(slots=True)
class _InFlight:
    token: Any
    api_key: int
    api_version: int
    deadline: float


class KafkaRelay:
    """One connection to the coordinator's Kafka listener, for one node's loop. The loop
    polls :meth:`fileno` (readable when the connection is) and calls :meth:`on_ready`,
    and :meth:`expire` at :meth:`next_deadline`. Single-threaded; not thread-safe."""

    def __init__(
        self,
        name: str,
        deliver: Callable[[Any, Any], None],
        fail: Callable[[Any, str], None],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.deliver = deliver  # (token, response): the client's response
        self.fail = fail  # (token, reason): the request could not be relayed
        self.timeout_s = timeout_s
        self.clock = clock
        self.target: str | None = None
        self._selector = selectors.DefaultSelector()
        self._sock: socket.socket | None = None
        self._connected = False
        self._out = bytearray()
        self._reader = FrameReader(DEFAULT_MAX_REQUEST_BYTES, _RESPONSE_HEADER_BYTES)
        self._inflight: dict[int, _InFlight] = {}
        self._ids = itertools.count(1)
        self.relayed = 0

    def fileno(self) -> int:
        return self._selector.fileno()  # type: ignore[attr-defined]

    def poll_handle(self) -> PollHandle:
        """What to give ``Server.add_socket`` (see ``kafka_listener.PollHandle``)."""
        return PollHandle(self.fileno(), self)  # type: ignore[arg-type]

    # -- requests --------------------------------------------------------------------------

    def forward(self, token: Any, request: KafkaRequest, target: str | None) -> None:
        """Relay ``request`` to the coordinator's Kafka listener at ``target``."""
        if target is None:
            self.fail(token, "the coordinator's Kafka address is not known yet")
            return
        if target != self.target:
            self._drop(f"the coordinator's Kafka address is now {target}")
            self.target = target
        if self._sock is None and not self._connect():
            self.fail(token, f"cannot connect to the coordinator's Kafka listener {target}")
            return
        correlation_id = next(self._ids)
        self._out += encode_request(
            request.body, request.api_version, correlation_id, request.client_id
        )
        self._inflight[correlation_id] = _InFlight(
            token, request.api_key, request.api_version, self.clock() + self.timeout_s
        )
        self.relayed += 1
        if self._connected:
            self._flush()

    def _connect(self) -> bool:
        assert self.target is not None
        host, port = split_host_port("coordinator kafka endpoint", self.target)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            log.info("%s: connecting to %s failed: %s", self.name, self.target, os_error(code))
            return False
        self._sock = sock
        self._connected = code == 0
        self._selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        return True

    # -- the loop's calls ------------------------------------------------------------------

    def on_ready(self) -> None:
        for key, events in self._selector.select(0):
            if key.fileobj is not self._sock:
                continue
            if events & selectors.EVENT_WRITE:
                if not self._connected and not self._finish_connect():
                    continue
                self._flush()
            if events & selectors.EVENT_READ and self._sock is not None:
                self._read()

    def next_deadline(self) -> float | None:
        """When the oldest relayed request times out (on ``clock``), or None."""
        return min((f.deadline for f in self._inflight.values()), default=None)

    def expire(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        late = [cid for cid, f in self._inflight.items() if f.deadline <= now]
        if late:
            # A lost response leaves the connection's order unknown: start over.
            self._drop(f"no response within {self.timeout_s:g} s")

    def close(self, linger: int | None = None) -> None:
        """Close the connection (its requests fail) and the selector; idempotent."""
        self._drop("the node is stopping")
        with contextlib.suppress(OSError, ValueError):
            self._selector.close()

    # -- the connection --------------------------------------------------------------------

    def _finish_connect(self) -> bool:
        """The socket became writable: the connection is made, or it failed."""
        assert self._sock is not None
        code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._drop(f"cannot connect to {self.target}: {os_error(code)}")
            return False
        self._connected = True
        return True

    def _flush(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while self._out:
            try:
                sent = sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._drop(f"write to {self.target} failed: {exc}")
                return
            del self._out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._out else 0)
        self._selector.modify(sock, events)

    def _read(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            data = sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(f"read from {self.target} failed: {exc}")
            return
        if not data:
            self._drop(f"{self.target} closed the connection")
            return
        try:
            frames = self._reader.feed(data)
            for frame in frames:
                self._on_frame(frame)
        except KafkaProtocolError as exc:
            self._drop(f"bad response from {self.target}: {exc}")

    def _on_frame(self, frame: bytearray) -> None:
        correlation_id = int.from_bytes(frame[:4], "big", signed=True)
        inflight = self._inflight.pop(correlation_id, None)
        if inflight is None:
            raise KafkaProtocolError(f"response to no request (correlation id {correlation_id})")
        _, response = decode_response(frame, inflight.api_key, inflight.api_version)
        self.deliver(inflight.token, response)

    def _drop(self, reason: str) -> None:
        """Close the connection; every request on it fails (its client's connection
        closes, and the client retries)."""
        inflight, self._inflight = self._inflight, {}
        self._out.clear()
        self._reader = FrameReader(DEFAULT_MAX_REQUEST_BYTES, _RESPONSE_HEADER_BYTES)
        sock, self._sock = self._sock, None
        self._connected = False
        if sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()
            if inflight:
                log.info("%s: relay to the coordinator dropped: %s", self.name, reason)
        for entry in inflight.values():
            self.fail(entry.token, f"relay to the coordinator failed: {reason}")


def os_error(code: int) -> str:
    return errno.errorcode.get(code, str(code))


__all__ = ["KafkaRelay"]
