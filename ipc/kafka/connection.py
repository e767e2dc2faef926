"""One Kafka client connection, server side, sans-IO (h11's shape): bytes in, request
events out; responses in, bytes out. It never touches a socket or a clock.

Theory of operation::

    conn.receive_data(chunk)            # b"" when the peer closed its side
    while True:
        event = conn.next_event()       # KafkaRequest | NEED_DATA | PAUSED | CLOSED
        ...                             # a KafkaRequest goes to its handler
    conn.send_response(request, resp)   # now, or later (a long poll): any order
    sock.sendmsg(conn.data_to_send())   # responses leave in request order

Kafka clients match responses to requests in order, so a response given early waits for
those before it. ``max_pending`` bounds the requests owed a response; past it the
connection is PAUSED and the driver stops reading its socket (Kafka mutes a channel with
a request in flight; kvlog lets a few through so one client's pipelined produces can
share a group commit, and still answers in order). Frames are decoded one at a time, as
``next_event`` hands them out.

What bad input does, exactly (each raises :class:`KafkaProtocolError` from
``next_event``, after the requests that came before it; the connection is then dead and
the driver closes it, which is also what Kafka does in each case):

- a length prefix that is negative, over ``socket.request.max.bytes``, or too short for a
  request header;
- an API key this broker does not serve (known to Kafka or not), or a version outside its
  advertised range, except ApiVersions above its range: that is answered (KIP-511, with
  UNSUPPORTED_VERSION) from a request event whose ``body`` is None;
- a header or body that does not decode, or leaves bytes over;
- the peer closing in the middle of a frame.

A frame whose length promises more than ever arrives waits for it: the driver's idle
timeout (``connections.max.idle.ms``) closes such a connection.

SASL (:mod:`.sasl`) is the driver's business, with two hooks here: ``max_request_bytes``
can be lowered while the peer is unauthenticated, and after a SaslHandshake v0 the driver
sets ``raw_tokens``: frames then come out as :class:`RawToken` (bare SASL bytes, no request
header) and are answered with :meth:`KafkaConnection.send_raw`, in order with the rest.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .codec import ApiKey, api_name, decode_request, encode_response, expects_response
from .framing import (
    DEFAULT_MAX_REQUEST_BYTES,
    MIN_REQUEST_BYTES,
    Buffer,
    FrameReader,
    KafkaProtocolError,
    peek_request,
)
from .framing import frame as length_prefixed
from .versions import SERVED, VersionTable

DEFAULT_MAX_PENDING = 5  # clients' max.in.flight.requests.per.connection default


class _Sentinel(type):
    def __repr__(cls) -> str:
        return cls.__name__


class NEED_DATA(metaclass=_Sentinel):
    """No whole request yet: feed more bytes."""


class PAUSED(metaclass=_Sentinel):
    """``max_pending`` requests await a response: stop reading until some are sent."""


class CLOSED(metaclass=_Sentinel):
    """The peer closed its side at a frame boundary, and every request was handed out."""


@dataclass(eq=False, slots=True)
class KafkaRequest:
    """One decoded request; the handle its response is given back with. ``body`` is the
    kafka.protocol request, or None for ApiVersions above the served range (KIP-511)."""

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body: Any
    size: int  # bytes of the frame
    expects_response: bool = True
    response: list[Buffer] | None = field(default=None, repr=False)

    @property
    def api_name(self) -> str:
        return api_name(self.api_key)


@dataclass(eq=False, slots=True)
class RawToken:
    """A bare SASL token (a frame after SaslHandshake v0): no header, no correlation id."""

    data: bytes
    expects_response: bool = True
    response: list[Buffer] | None = field(default=None, repr=False)

    @property
    def api_name(self) -> str:
        return "SASL token"


class KafkaConnection:
    """The protocol state of one client connection. Owned by the loop that drives its
    socket; not thread-safe."""

    def __init__(
        self,
        table: VersionTable = SERVED,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self.table = table
        self.max_pending = max_pending
        self._reader = FrameReader(max_request_bytes)
        self._frames: deque[bytearray] = deque()
        self._pending: deque[KafkaRequest | RawToken] = deque()  # owed a response, in order
        self._error: KafkaProtocolError | None = None  # raised once earlier frames are out
        self._dead = False
        self._raw_tokens = False
        self.they_closed = False
        self.requests = 0

    @property
    def max_request_bytes(self) -> int:
        """The largest frame accepted (Kafka's ``socket.request.max.bytes``)."""
        return self._reader.max_frame_bytes

    @max_request_bytes.setter
    def max_request_bytes(self, value: int) -> None:
        self._reader.max_frame_bytes = value

    @property
    def raw_tokens(self) -> bool:
        """Whether the next frames are bare SASL tokens (set by the driver)."""
        return self._raw_tokens

    @raw_tokens.setter
    def raw_tokens(self, value: bool) -> None:
        self._raw_tokens = value
        self._reader.min_frame_bytes = 1 if value else MIN_REQUEST_BYTES

    # -- input -----------------------------------------------------------------------------

    def receive_data(self, data: Buffer) -> None:
        """Bytes from the peer; ``b""`` means it closed its side."""
        if self._dead or self._error is not None:
            return
        if not data:
            self.they_closed = True
            if self._reader.buffered:
                self._error = KafkaProtocolError(
                    f"peer closed the connection inside a frame "
                    f"({self._reader.buffered} bytes of it received)"
                )
            return
        try:
            self._frames.extend(self._reader.feed(data))
        except KafkaProtocolError as exc:
            self._error = exc

    @property
    def wants_data(self) -> bool:
        """Whether the driver should read the socket: no whole request waits, the
        connection is not paused and not finished."""
        return not (
            self._dead
            or self.they_closed
            or self._error is not None
            or self._frames
            or len(self._pending) >= self.max_pending
        )

    def next_event(
        self,
    ) -> KafkaRequest | RawToken | type[NEED_DATA] | type[PAUSED] | type[CLOSED]:
        """The next request, or what stands in its way. Raises KafkaProtocolError."""
        if self._dead:
            raise KafkaProtocolError("connection already failed")
        if self._frames:
            if len(self._pending) >= self.max_pending:
                return PAUSED
            try:
                return self._decode(self._frames.popleft())
            except KafkaProtocolError:
                self._dead = True
                raise
        if self._error is not None:
            self._dead = True
            raise self._error
        if self.they_closed:
            return CLOSED
        if len(self._pending) >= self.max_pending:
            return PAUSED
        return NEED_DATA

    def _decode(self, frame: bytearray) -> KafkaRequest | RawToken:
        if self._raw_tokens:
            token = RawToken(bytes(frame))
            self._pending.append(token)
            return token
        if len(frame) < MIN_REQUEST_BYTES:  # cut while bare tokens were expected
            raise KafkaProtocolError(f"frame of {len(frame)} bytes is shorter than any request")
        api_key, api_version, correlation_id = peek_request(frame)
        entry = self.table.get(api_key)
        if entry is None:
            raise KafkaProtocolError(
                f"{api_name(api_key)} (v{api_version}) is not served by this broker"
            )
        if entry.advertises(api_version):
            client_id, body = decode_request(frame, api_key, api_version)
        elif api_key == ApiKey.ApiVersions and api_version > entry.max_version:
            client_id, body = decode_request(frame, api_key, api_version, body=False)
        else:
            raise KafkaProtocolError(
                f"{api_name(api_key)} v{api_version} is outside the served versions "
                f"{entry.min_version}-{entry.max_version}"
            )
        request = KafkaRequest(
            api_key,
            api_version,
            correlation_id,
            client_id,
            body,
            len(frame),
            body is None or expects_response(body),
        )
        self.requests += 1
        if request.expects_response:
            self._pending.append(request)
        return request

    # -- output ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests handed out and still owed a response."""
        return len(self._pending)

    def send_response(self, request: KafkaRequest, response: Any) -> None:
        """Give ``request`` its response (a kafka.protocol response object); it is encoded
        now and leaves once every earlier request's response has."""
        if not request.expects_response:
            raise ValueError(f"{request.api_name} with acks=0 gets no response")
        if request.response is not None or request not in self._pending:
            raise ValueError(f"{request.api_name} {request.correlation_id} was answered already")
        request.response = encode_response(
            request.api_key, request.api_version, request.correlation_id, response
        )

    def send_raw(self, token: RawToken, data: bytes) -> None:
        """Answer a bare SASL token with bare bytes (length-prefixed, no header)."""
        if token.response is not None or token not in self._pending:
            raise ValueError("that SASL token was answered already")
        token.response = length_prefixed([data])

    def data_to_send(self) -> list[Buffer]:
        """Buffers of the responses now due, in request order (empty when none is)."""
        out: list[Buffer] = []
        pending = self._pending
        while pending and pending[0].response is not None:
            request = pending.popleft()
            out += request.response  # type: ignore[operator]
            request.response = None
        return out
