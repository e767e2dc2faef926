"""A server's own client link: a DEALER to another kvlog process, polled by the server.

The node uses one to heartbeat the coordinator; the broker to watch metadata and forward
admin requests. Replies are matched to requests by correlation id; a request that gets
no reply within its timeout is answered locally with REQUEST_TIMED_OUT (the other
process may have died; ZeroMQ reconnects by itself when it comes back).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from kvlog.errors import InvalidRequestError, KvlogError, RequestTimedOutError
from kvlog.ipc import wire
from kvlog.ipc.wire import Frame

log = logging.getLogger(__name__)

ReplyCallback = Callable[[dict[str, Any] | None, list[bytes], KvlogError | None], None]


class PeerLink:
    """Owned by one server loop; not thread-safe."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        endpoint: str,
        *,
        name: str,
        options: dict[int, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` (seconds) times requests out: the caller's ``expire(now)`` and
        :meth:`next_deadline` are on it (a shell on one clock passes its own)."""
        self.endpoint = endpoint
        self.name = name
        self._clock = clock
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        for option, value in (options or {}).items():
            self.socket.setsockopt(option, value)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 50)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.socket.connect(endpoint)
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[ReplyCallback, float]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def request(
        self,
        op: str,
        fields: dict[str, Any],
        callback: ReplyCallback,
        *,
        timeout_ms: float,
        frames: Sequence[Frame] = (),
    ) -> int:
        rid = next(self._ids)
        header = wire.request_header(op, rid, **fields)
        self._pending[rid] = (callback, self._clock() + timeout_ms / 1000)
        try:
            self.socket.send_multipart([wire.encode(header), *frames], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            del self._pending[rid]
            callback(None, [], RequestTimedOutError(f"{self.name}: cannot send {op}: {exc}"))
        return rid

    def on_readable(self) -> None:
        while True:
            try:
                parts = self.socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                header = wire.decode_header(parts[0])
            except InvalidRequestError as exc:
                log.warning("%s: undecodable reply dropped: %s", self.name, exc)
                continue
            rid = wire.peek_id(header)
            entry = self._pending.pop(rid, None) if rid is not None else None
            if entry is None:
                continue  # a late reply to a request that already timed out
            callback, _ = entry
            callback(header, parts[1:], wire.reply_error(header))

    def next_deadline(self) -> float | None:
        return min((d for _, d in self._pending.values()), default=None)

    def expire(self, now: float) -> None:
        for rid in [r for r, (_, d) in self._pending.items() if d <= now]:
            callback, _ = self._pending.pop(rid)
            callback(None, [], RequestTimedOutError(f"{self.name}: no reply from {self.endpoint}"))

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.socket.close(linger=0)


def first_deadline(*deadlines: float | None) -> float | None:
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None


__all__ = ["PeerLink", "first_deadline"]
