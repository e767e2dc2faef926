"""Kafka's framing: 4-byte big-endian length, then that many bytes (one request or response).

:class:`FrameReader` turns received bytes into whole frames, byte by byte or megabytes at
a time; :func:`frame` puts the length in front of a response's buffers. The first 8 bytes
of every request header (api key, api version, correlation id) are the same in all
header versions: :func:`peek_request` reads them before anything else is decoded, so even
a request that cannot be decoded can be logged by name.

:class:`KafkaProtocolError` is the one error the Kafka wire raises for bad input: the
peer broke the protocol and its connection closes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

Buffer = bytes | bytearray | memoryview

DEFAULT_MAX_REQUEST_BYTES = 100 * 1024 * 1024  # Kafka's socket.request.max.bytes default
_LENGTH = struct.Struct(">i")
_PEEK = struct.Struct(">hhi")
MIN_REQUEST_BYTES = _PEEK.size + 2  # api key, version, correlation id, client id length


class KafkaProtocolError(Exception):
    """The peer broke Kafka's protocol (bad length, undecodable request, unknown API,
    version not served); the connection must close. Owned by nothing: raised by the
    framing and connection objects, caught by whoever drives the socket."""


class FrameReader:
    """Cuts a byte stream into frames. Owned by one connection; not thread-safe.

    A frame's buffer is allocated once its length is known (at most ``max_frame_bytes``,
    Kafka's ``socket.request.max.bytes``) and filled in place, so a large request costs
    one copy whatever the chunk sizes it arrives in."""

    __slots__ = ("_frame", "_head", "_need", "max_frame_bytes", "min_frame_bytes")

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        min_frame_bytes: int = MIN_REQUEST_BYTES,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.min_frame_bytes = min_frame_bytes  # responses: 4 (their correlation id)
        self._head = bytearray()  # bytes of the length prefix received so far
        self._frame: bytearray | None = None  # the frame being filled
        self._need = 0  # bytes of the frame still missing

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame (its length prefix included) held so far."""
        if self._frame is None:
            return len(self._head)
        return _LENGTH.size + len(self._frame) - self._need

    def feed(self, data: Buffer) -> list[bytearray]:
        """The frames that ``data`` completes (possibly none, possibly several).

        Raises KafkaProtocolError for a negative length or one over the limit; the reader
        is unusable afterwards (the stream has no recoverable frame boundary)."""
        view = memoryview(data).cast("B")
        frames = []
        pos, end = 0, len(view)
        while pos < end:
            if self._frame is None:
                take = min(_LENGTH.size - len(self._head), end - pos)
                self._head += view[pos : pos + take]
                pos += take
                if len(self._head) < _LENGTH.size:
                    break
                (length,) = _LENGTH.unpack(self._head)
                self._head.clear()
                self._check_length(length)
                self._frame = bytearray(length)
                self._need = length
            frame = self._frame
            take = min(self._need, end - pos)
            start = len(frame) - self._need
            frame[start : start + take] = view[pos : pos + take]
            pos += take
            self._need -= take
            if not self._need:
                frames.append(frame)
                self._frame = None
        return frames

    def _check_length(self, length: int) -> None:
        if length < 0:
            raise KafkaProtocolError(f"frame length {length} is negative")
        if length > self.max_frame_bytes:
            raise KafkaProtocolError(
                f"frame of {length} bytes is over socket.request.max.bytes={self.max_frame_bytes}"
            )
        if length < self.min_frame_bytes:
            raise KafkaProtocolError(
                f"frame of {length} bytes is shorter than any header ({self.min_frame_bytes} bytes)"
            )


def peek_request(frame: Buffer) -> tuple[int, int, int]:
    """``(api_key, api_version, correlation_id)`` of a request frame (without its length
    prefix); the caller made sure it holds at least :data:`MIN_REQUEST_BYTES`."""
    return _PEEK.unpack_from(frame)


def frame(parts: Sequence[Buffer]) -> list[Buffer]:
    """``parts`` (one response, split or not) behind their 4-byte length, as buffers for
    ``sendmsg``: nothing is joined or copied."""
    return [_LENGTH.pack(sum(nbytes(p) for p in parts)), *parts]


def nbytes(buffer: Buffer) -> int:
    """Length in bytes (a memoryview's ``len`` counts items, not bytes)."""
    return buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)
