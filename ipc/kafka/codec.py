"""The one adapter over kafka-python's ``kafka.protocol``: Kafka's request and response types.

No other kvlog module imports ``kafka.protocol``. It is generated from Kafka's own JSON
message schemas (every API and version, both directions; kafka-python's mock broker uses
it server-side too), so kvlog writes no schema by hand. Why kafka-python 3.0 and not
``kio``: kio is faster, but needs Python >= 3.11 and a Rust extension; kvlog supports
3.10, and kafka-python is pure Python and already a test dependency for its clients.
It is pinned within its major in setup.cfg: this module uses two of its documented
but underscored entry points (``_struct.compiled_decode_from``, the compiled decoder its
own ``decode`` runs), because the public ``decode(header=True)`` copies the whole frame to
parse the header (~0.8 ms for a 1 MB Produce); tests pin their behaviour.

What this module guarantees:

- decoding never parses record sets: a Produce request's ``records`` arrive as ``bytes``,
  copied once out of the frame, untouched;
- encoding a Fetch response never copies record sets: their buffers (``bytes``,
  ``memoryview`` or a list of either, e.g. ``kafka_batch.to_record_set``'s) come back
  as separate items of the buffer list, for ``sendmsg``;
- every decode failure is a :class:`KafkaProtocolError`.
"""

from __future__ import annotations

import os
import struct
import warnings
from typing import Any

from .framing import Buffer, KafkaProtocolError, frame, nbytes

with warnings.catch_warnings():
    # kafka-python 3.0 loads its schemas with importlib.resources' legacy calls.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import kafka.protocol.admin
    import kafka.protocol.consumer
    import kafka.protocol.metadata
    import kafka.protocol.producer
    import kafka.protocol.sasl  # noqa: F401  (each module defines its message classes)
    from kafka.protocol.api_header import RequestHeader
    from kafka.protocol.api_key import ApiKey
    from kafka.protocol.api_message import ApiMessage
    from kafka.protocol.consumer.metadata import (
        ConsumerProtocolAssignment,
        ConsumerProtocolSubscription,
    )

__all__ = [
    "ApiKey",
    "api_name",
    "decode_consumer_assignment",
    "decode_consumer_subscription",
    "encode_consumer_assignment",
    "encode_consumer_subscription",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "expects_response",
    "known_versions",
    "request_class",
    "response_class",
]


def _primary_classes(kind: str) -> dict[int, type[ApiMessage]]:
    # Versioned wrappers (Foo_v3) are subclasses too; the primary class has no version.
    found: dict[int, type[ApiMessage]] = {}
    stack = list(ApiMessage.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls._class_version is None and cls.type == kind:
            found[cls.API_KEY] = cls
    return found


_REQUESTS = _primary_classes("request")
_RESPONSES = _primary_classes("response")
_HEADER_DECODERS = {
    flexible: RequestHeader._struct.compiled_decode_from(
        2 if flexible else 1, compact=False, tagged=flexible, data_class=RequestHeader
    )
    for flexible in (False, True)
}


def api_name(api_key: int) -> str:
    try:
        return ApiKey(api_key).name
    except ValueError:
        return f"api key {api_key}"


def request_class(api_key: int) -> type[ApiMessage]:
    return _REQUESTS[api_key]


def response_class(api_key: int) -> type[ApiMessage]:
    return _RESPONSES[api_key]


def known_versions(api_key: int) -> tuple[int, int] | None:
    """The versions the codec can decode for ``api_key`` (None: an API it lacks)."""
    cls = _REQUESTS.get(api_key)
    return None if cls is None else (0, cls.max_version)


def _flexible(cls: type[ApiMessage], version: int) -> bool:
    # Kafka's "N+" flexibleVersions rule holds past the last version the schema knows:
    # ApiVersions v5 from a newer client still has header v2 (KIP-511 relies on it).
    # A schema whose flexibleVersions is "none" (SaslHandshake, OffsetDelete) has (-1, -1).
    versions = cls._flexible_versions
    return versions is not None and 0 <= versions[0] <= version


def decode_request(
    frame_bytes: Buffer, api_key: int, api_version: int, *, body: bool = True
) -> tuple[str | None, Any]:
    """``(client_id, request)`` from a request frame whose first 8 bytes said
    ``api_key``/``api_version``. ``body=False`` reads the header only (request None): for
    an ApiVersions version above what is served, whose body need not be understood."""
    cls = _REQUESTS.get(api_key)
    if cls is None:
        raise KafkaProtocolError(f"{api_name(api_key)} is not a request the codec knows")
    if body and not 0 <= api_version <= cls.max_version:
        raise KafkaProtocolError(
            f"{cls.__name__} v{api_version} is outside the versions the codec knows "
            f"(0-{cls.max_version})"
        )
    view = memoryview(frame_bytes).cast("B")
    flexible = _flexible(cls, api_version)
    try:
        header, pos = _HEADER_DECODERS[flexible](view, 0)
        if not body:
            return header.client_id, None
        decoder = cls._struct.compiled_decode_from(
            api_version, compact=flexible, tagged=flexible, data_class=cls
        )
        request, pos = decoder(view, pos)
    except KafkaProtocolError:
        raise
    except Exception as exc:  # any decoder failure means a malformed request
        raise KafkaProtocolError(
            f"{cls.__name__} v{api_version} does not decode: {type(exc).__name__}: {exc}"
        ) from exc
    if pos != len(view):
        # The client and the schema disagree: reading on could misread the request.
        raise KafkaProtocolError(
            f"{cls.__name__} v{api_version} has {len(view) - pos} bytes after its body"
        )
    request._header = header
    return header.client_id, request


def expects_response(request: Any) -> bool:
    """False only for Produce with acks=0 (Kafka sends no response to it)."""
    return bool(request.expect_response())


# -- the client side, for relaying a request to another kvlog process -----------------------


def encode_request(
    request: Any, api_version: int, correlation_id: int, client_id: str | None
) -> bytes:
    """A decoded request framed again (length prefix, header, body) under another
    correlation id: what a node relays to the coordinator (kvlog's op ``kafka_relay``)."""
    request.with_header(correlation_id=correlation_id, client_id=client_id)
    return bytes(request.encode(version=api_version, header=True, framed=True))


def decode_response(frame_bytes: Buffer, api_key: int, api_version: int) -> tuple[int, Any]:
    """``(correlation_id, response)`` from a response frame (without its length prefix)
    to a request of ``api_key``/``api_version``. Raises KafkaProtocolError."""
    cls = _RESPONSES.get(api_key)
    if cls is None:
        raise KafkaProtocolError(f"{api_name(api_key)} is not a response the codec knows")
    view = memoryview(frame_bytes).cast("B")
    if len(view) < _INT32.size:
        raise KafkaProtocolError(f"response frame of {len(view)} bytes has no correlation id")
    (correlation_id,) = _INT32.unpack_from(view)
    try:
        response = cls.decode(bytes(view), version=api_version, header=True)
    except Exception as exc:  # any decoder failure means a malformed response
        raise KafkaProtocolError(
            f"{cls.__name__} v{api_version} does not decode: {type(exc).__name__}: {exc}"
        ) from exc
    response._header = None  # it is sent on under the client's correlation id
    return correlation_id, response


# -- responses -----------------------------------------------------------------------------

_INT32 = struct.Struct(">i")
# Record sets are swapped for these while the rest is encoded, then spliced back in:
# 12 bytes random per process (no client can aim a topic name at them) + an index.
_MARKER = os.urandom(12)
_MARKER_SIZE = len(_MARKER) + 4


def encode_response(
    api_key: int, request_version: int, correlation_id: int, response: Any
) -> list[Buffer]:
    """A response as framed buffers (length prefix, header, body), ready for ``sendmsg``.

    The response is encoded at the request's version unless it carries its own, which
    only ApiVersions' KIP-511 answer may (version 0 with an error). Response header v0,
    or v1 for flexible versions, except ApiVersions: always v0 (kafka-python knows)."""
    cls = _RESPONSES.get(api_key)
    if cls is None or not isinstance(response, cls):
        raise TypeError(f"{type(response).__name__} is not a {api_name(api_key)} response")
    version = response.API_VERSION
    if version is None:
        response.API_VERSION = version = request_version
    elif version != request_version and not (
        api_key == ApiKey.ApiVersions and version == 0 and response.error_code
    ):
        raise ValueError(f"{cls.__name__} is set to v{version} for a v{request_version} request")
    response.with_header(correlation_id=correlation_id)
    if api_key != ApiKey.Fetch:
        return frame([response.encode(header=True)])
    return frame(_encode_spliced(response, _flexible(cls, version)))


def _encode_spliced(response: Any, flexible: bool) -> list[Buffer]:
    """A Fetch response whose record sets are not copied into the encoded bytes."""
    holes: list[tuple[Any, Any, bytes, list[Buffer]]] = []
    for topic in response.responses or ():
        for part in topic.partitions or ():
            records = part.records
            if records is None:
                continue
            parts = list(records) if isinstance(records, list | tuple) else [records]
            marker = _MARKER + _INT32.pack(len(holes))
            holes.append((part, records, marker, parts))
            part.records = marker
    try:
        raw = response.encode(header=True)  # a bytearray
    finally:
        for part, records, _, _ in holes:
            part.records = records
    encoded = memoryview(raw)
    out: list[Buffer] = []
    pos = 0
    for _, _, marker, parts in holes:
        at = raw.find(marker, pos)  # markers come out in the order they went in
        if at < 0:
            raise AssertionError("record set marker lost while encoding a Fetch response")
        size = sum(nbytes(p) for p in parts)
        if flexible:  # compact bytes: unsigned varint of length + 1 (17 for the marker)
            assert encoded[at - 1] == _MARKER_SIZE + 1
            out += (encoded[pos : at - 1], _uvarint(size + 1))
        else:
            assert _INT32.unpack_from(encoded, at - 4)[0] == _MARKER_SIZE
            out += (encoded[pos : at - 4], _INT32.pack(size))
        out += parts
        pos = at + _MARKER_SIZE
    out.append(encoded[pos:])
    return out


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# -- Kafka's ConsumerProtocol: what Kafka consumers put in JoinGroup and SyncGroup ----------

TopicPartitions = list[tuple[str, list[int]]]


def _decode_data(cls: Any, raw: Buffer) -> Any:
    try:
        return cls.decode(bytes(raw))
    except Exception as exc:  # any decoder failure means bytes that are not one
        raise ValueError(f"not a Kafka {cls.__name__}: {type(exc).__name__}: {exc}") from exc


def decode_consumer_subscription(raw: Buffer) -> tuple[list[str], TopicPartitions, int]:
    """A Kafka consumer's JoinGroup metadata (ConsumerProtocolSubscription v0-3, newer
    versions read as v3): ``(topics, owned partitions, generation)``, generation -1 where
    the version has none. Raises ValueError for bytes that are not one."""
    sub = _decode_data(ConsumerProtocolSubscription, raw)
    owned = [(t.topic, list(t.partitions)) for t in (getattr(sub, "owned_partitions", None) or [])]
    generation = getattr(sub, "generation_id", None)
    return list(sub.topics or []), owned, -1 if generation is None else generation


def decode_consumer_assignment(raw: Buffer) -> TopicPartitions:
    """A Kafka consumer's SyncGroup assignment (ConsumerProtocolAssignment v0-3): its
    partitions by topic. Raises ValueError for bytes that are not one."""
    assignment = _decode_data(ConsumerProtocolAssignment, raw)
    return [(t.topic, list(t.partitions)) for t in assignment.assigned_partitions or []]


def encode_consumer_subscription(
    topics: list[str], owned: TopicPartitions, generation: int
) -> bytes:
    """A ConsumerProtocolSubscription, as a Kafka group leader reads it: v1 (owned
    partitions) without a generation, v2 with one; no user data."""
    if generation < 0:
        sub = ConsumerProtocolSubscription(
            version=1, topics=topics, user_data=None, owned_partitions=owned
        )
    else:
        sub = ConsumerProtocolSubscription(
            version=2,
            topics=topics,
            user_data=None,
            owned_partitions=owned,
            generation_id=generation,
        )
    return bytes(sub.encode())


def encode_consumer_assignment(partitions: TopicPartitions, version: int = 0) -> bytes:
    """A ConsumerProtocolAssignment (no user data), as a Kafka consumer reads it."""
    assignment = ConsumerProtocolAssignment(
        version=version, assigned_partitions=partitions, user_data=None
    )
    return bytes(assignment.encode())
