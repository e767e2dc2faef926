"""Key and value (de)serializers: bytes, str, JSON, CBOR or any callable.

``None`` means bytes as-is (a ``str`` is encoded as UTF-8 for convenience). A callable
serializer takes the object and returns bytes; a callable deserializer the reverse.
Failures raise SerializationError naming the field, not the callable's own exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import cbor2

from kvlog.errors import InvalidConfigError, SerializationError

Serializer = Callable[[Any], bytes | None]
Deserializer = Callable[[bytes | None], Any]


def _to_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise SerializationError(
        f"got {type(value).__name__} but no serializer is configured; pass bytes or set "
        "key_serializer/value_serializer ('str', 'json', 'cbor' or a callable)"
    )


_SERIALIZERS: dict[str, Serializer] = {
    "bytes": _to_bytes,
    "str": lambda v: None if v is None else str(v).encode(),
    "json": lambda v: None if v is None else json.dumps(v, separators=(",", ":")).encode(),
    "cbor": lambda v: None if v is None else cbor2.dumps(v),
}

_DESERIALIZERS: dict[str, Deserializer] = {
    "bytes": lambda b: b,
    "str": lambda b: None if b is None else b.decode(),
    "json": lambda b: None if b is None else json.loads(b),
    "cbor": lambda b: None if b is None else cbor2.loads(b),
}


def serializer(spec: Any, field: str) -> Serializer:
    return _named_or_callable(spec, field, _SERIALIZERS, "serializer")


def deserializer(spec: Any, field: str) -> Deserializer:
    return _named_or_callable(spec, field, _DESERIALIZERS, "deserializer")


def _named_or_callable(
    spec: Any, field: str, named: Mapping[str, Callable[[Any], Any]], what: str
) -> Callable[[Any], Any]:
    """None: bytes as they are; a name from ``named``; or the caller's own callable."""
    if spec is None:
        return named["bytes"]
    if isinstance(spec, str):
        found = named.get(spec.lower())
        if found is None:
            raise InvalidConfigError(
                f"{field}: unknown {what} {spec!r}; use bytes, str, json, cbor or a callable"
            )
        return _checked(found, field)
    if callable(spec):
        return _checked(spec, field)
    raise InvalidConfigError(f"{field} must be a name or a callable, got {spec!r}")


def _checked(fn: Callable[[Any], Any], field: str) -> Callable[[Any], Any]:
    def run(value: Any) -> Any:
        try:
            out = fn(value)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(f"{field} failed: {type(exc).__name__}: {exc}") from exc
        return out

    return run
