"""The kvlog wire envelope (see PROTOCOL.md).

A message is a ZeroMQ multipart: frame 0 is a CBOR map ``{"v": 1, "id": <uint>, "op":
<text>, ...fields}``; further frames carry record-batch bytes untouched. Replies carry the
same ``id`` and either the result fields or ``"error": <code>, "message": <text>``.
Clients use DEALER sockets, servers ROUTER; a server sees ``[identity, frame0, ...]``.

This module is sans-IO: bytes in, dicts out. :class:`Request` gives handlers typed field
access that turns every malformed field into an INVALID_REQUEST naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cbor2

from kvlog.errors import (
    ErrorCode,
    InvalidConfigError,
    InvalidRequestError,
    KvlogError,
    UnsupportedVersionError,
    error_from_code,
)

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
MAX_ID = (1 << 63) - 1
INT64_MAX = (1 << 63) - 1
INT32_MAX = (1 << 31) - 1

Frame = bytes | memoryview


_KAFKA_LISTENERS = ("ssl", "sasl_plaintext", "sasl_ssl")


def normalize_endpoint(address: str) -> str:
    """``host:port`` -> ``tcp://host:port``; ``tcp://`` and ``ipc://`` pass through, and
    so does Kafka's ``PLAINTEXT://host:port`` (as ``tcp://``), which kafka-python
    programs write."""
    address = address.strip()
    if "://" in address:
        scheme, rest = address.split("://", 1)
        if scheme.lower() == "plaintext":
            return normalize_endpoint(rest)
        if scheme.lower() in _KAFKA_LISTENERS:
            raise InvalidConfigError(
                f"{address!r}: kvlog's clients have no {scheme.upper()} listener; give "
                "host:port, and for encryption and authentication security_protocol='curve' "
                "with curve_server_key and curve_secret_key"
            )
        if scheme not in ("tcp", "ipc", "inproc"):
            raise InvalidConfigError(
                f"unsupported endpoint scheme in {address!r}: use tcp:// or ipc://"
            )
        return address
    if ":" not in address:
        raise InvalidConfigError(
            f"endpoint {address!r} needs a port (host:port) or a scheme (ipc://path)"
        )
    return "tcp://" + address


_WILDCARDS = ("0.0.0.0", "*", "[::]", "::")


def advertise(endpoint: str, host: str | None = None) -> str:
    """The address to hand to clients for an endpoint bound on a wildcard host
    (``tcp://0.0.0.0:PORT`` -> ``tcp://HOST:PORT``, HOST defaulting to 127.0.0.1)."""
    if not endpoint.startswith("tcp://"):
        return endpoint
    bound_host, _, port = endpoint[len("tcp://") :].rpartition(":")
    if bound_host in _WILDCARDS:
        return f"tcp://{host or '127.0.0.1'}:{port}"
    return endpoint


def split_bootstrap(servers: str | Sequence[str]) -> list[str]:
    """``bootstrap.servers`` as Kafka spells it: a comma-separated string or a list."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    out = [normalize_endpoint(s) for s in items if s.strip()]
    if not out:
        raise InvalidConfigError("bootstrap.servers is empty: give host:port of a kvlog broker")
    return out


def encode(header: dict[str, Any]) -> bytes:
    return cbor2.dumps(header)


def request_header(op: str, request_id: int, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "op": op, **fields}


def error_reply(request_id: int | None, exc: KvlogError) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, **exc.to_wire()}


def ok_reply(request_id: int, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, **fields}


def decode_header(frame: Frame) -> dict[str, Any]:
    """Parse frame 0 of a request or reply; raises InvalidRequestError."""
    if len(frame) > MAX_HEADER_BYTES:
        raise InvalidRequestError(
            f"header frame is {len(frame)} bytes; at most {MAX_HEADER_BYTES} are accepted"
        )
    try:
        header = cbor2.loads(frame)
    except Exception as exc:  # cbor2 raises several types for bad input
        raise InvalidRequestError(f"frame 0 is not CBOR: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidRequestError(
            f"frame 0 must be a CBOR map, got {type(header).__name__}; see PROTOCOL.md"
        )
    return header


def peek_id(header: dict[str, Any]) -> int | None:
    """The correlation id when it is usable, else None (the reply then carries null)."""
    rid = header.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= MAX_ID:
        return rid
    return None


class Request:
    """A decoded request with typed, checked field access for handlers."""

    __slots__ = ("frames", "header", "id", "op")

    def __init__(self, header: dict[str, Any], frames: Sequence[Frame]) -> None:
        version = header.get("v")
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise UnsupportedVersionError(
                f"protocol version {version!r} is not supported; this server speaks "
                f"v{PROTOCOL_VERSION}"
            )
        rid = peek_id(header)
        if rid is None:
            raise InvalidRequestError("field 'id' must be an unsigned integer below 2**63")
        op = header.get("op")
        if not isinstance(op, str):
            raise InvalidRequestError("field 'op' must be a text string")
        if not all(isinstance(key, str) for key in header):
            raise InvalidRequestError("every field name in frame 0 must be a text string")
        self.header = header
        self.frames = frames
        self.id = rid
        self.op = op

    def __repr__(self) -> str:
        return f"Request(op={self.op!r}, id={self.id})"

    def int(
        self,
        name: str,
        default: int | None = None,
        *,
        low: int = -INT64_MAX - 1,
        high: int = INT64_MAX,
    ) -> int:
        return check_int(self.header.get(name, default), name, low=low, high=high)

    def str(self, name: str, default: str | None = None, *, max_len: int = 1 << 16) -> str:
        return check_str(self.header.get(name, default), name, max_len=max_len)

    def opt_str(self, name: str, *, max_len: int = 1 << 16) -> str | None:
        value = self.header.get(name)
        return None if value is None else check_str(value, name, max_len=max_len)

    def bool(self, name: str, default: bool | None = None) -> bool:
        value = self.header.get(name, default)
        if not isinstance(value, bool):
            raise InvalidRequestError(f"field {name!r} must be a boolean, got {_kind(value)}")
        return value

    def list(self, name: str, *, max_len: int = 1 << 16, default: Any = None) -> list[Any]:
        return check_list(self.header.get(name, default), name, max_len=max_len)

    def map(self, name: str, default: Any = None) -> dict[str, Any]:
        return check_map(self.header.get(name, default), name)

    def get(self, name: str, default: Any = None) -> Any:
        return self.header.get(name, default)


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def check_int(value: object, name: str, *, low: int = -INT64_MAX - 1, high: int = INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"field {name!r} must be an integer, got {_kind(value)}")
    if not low <= value <= high:
        raise InvalidRequestError(f"field {name!r} = {value} is outside {low}..{high}")
    return value


def check_str(value: object, name: str, *, max_len: int = 1 << 16) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"field {name!r} must be a text string, got {_kind(value)}")
    if len(value) > max_len:
        raise InvalidRequestError(f"field {name!r} is longer than {max_len} characters")
    return value


def check_list(value: object, name: str, *, max_len: int = 1 << 16) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidRequestError(f"field {name!r} must be an array, got {_kind(value)}")
    if len(value) > max_len:
        raise InvalidRequestError(f"field {name!r} has more than {max_len} entries")
    return value


def check_map(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequestError(f"field {name!r} must be a map, got {_kind(value)}")
    return value


def reply_error(header: dict[str, Any]) -> KvlogError | None:
    """The exception a reply carries, or None for a success reply."""
    code = header.get("error", 0)
    if not code:
        return None
    if not isinstance(code, int):
        code = int(ErrorCode.UNKNOWN_SERVER_ERROR)
    message = header.get("message")
    return error_from_code(code, message if isinstance(message, str) else None)
