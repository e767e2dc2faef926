"""Pure-Python twin of ``kvlog/_kafka_records.c``: the records section of a Kafka
RecordBatch v2 to and from kvlog's columns.

Used when the C accelerator was not built (no compiler), and by the tests as a second
implementation to compare with. Same inputs, same outputs, same ``ValueError`` /
``TypeError`` on malformed input; it is simply 10-100 times slower
(tests/kafka/bench_kafka_batch.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_MIN_RECORD_BYTES = 7  # length, attributes, timestamp, offset, key, value, header count


def _varint(buf: memoryview, pos: int, end: int, max_bytes: int) -> tuple[int, int]:
    raw = 0
    shift = 0
    for _ in range(max_bytes):
        if pos >= end:
            raise ValueError("malformed Kafka record: truncated varint")
        b = buf[pos]
        pos += 1
        raw |= (b & 0x7F) << shift
        if not b & 0x80:
            if raw >> (32 if max_bytes == 5 else 64):
                kind = "varint overflows 32 bits" if max_bytes == 5 else "varlong overflows 64 bits"
                raise ValueError(f"malformed Kafka record: {kind}")
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7
    kind = "varint longer than 5 bytes" if max_bytes == 5 else "varlong longer than 10 bytes"
    raise ValueError(f"malformed Kafka record: {kind}")


def _nullable(buf: memoryview, pos: int, end: int, what: str) -> tuple[bytes | None, int]:
    n, pos = _varint(buf, pos, end, 5)
    if n == -1:
        return None, pos
    if n < 0 or n > end - pos:
        raise ValueError(f"malformed Kafka record: {what} length {n} with {end - pos} bytes left")
    return bytes(buf[pos : pos + n]), pos + n


def decode_records(records: Any, count: int) -> tuple[Any, list[int], list, list, Any]:
    buf = memoryview(records).cast("B")
    end = len(buf)
    if count < 0 or count > end // _MIN_RECORD_BYTES:
        raise ValueError(f"malformed Kafka record batch: {count} records cannot fit in {end} bytes")
    offsets: list[int] | None = None
    ts: list[int] = []
    keys: list[bytes | None] = []
    values: list[bytes | None] = []
    headers: list[Any] | None = None
    pos = 0
    for i in range(count):
        length, pos = _varint(buf, pos, end, 5)
        if length < 0 or length > end - pos:
            raise ValueError("malformed Kafka record: record length out of range")
        rec_end = pos + length
        if pos >= rec_end:
            raise ValueError("malformed Kafka record: record has no attributes")
        p = pos + 1  # record attributes: unused by Kafka
        ts_delta, p = _varint(buf, p, rec_end, 10)
        offset_delta, p = _varint(buf, p, rec_end, 5)
        ts.append(ts_delta)
        if offsets is None and offset_delta != i:
            offsets = list(range(i))
        if offsets is not None:
            offsets.append(offset_delta)
        key, p = _nullable(buf, p, rec_end, "key")
        value, p = _nullable(buf, p, rec_end, "value")
        keys.append(key)
        values.append(value)
        header_count, p = _varint(buf, p, rec_end, 5)
        if header_count < 0 or header_count > (rec_end - p) // 2:
            raise ValueError("malformed Kafka record: header count out of range")
        if header_count and headers is None:
            headers = [None] * i
        if headers is not None:
            pairs: list[list[Any]] | None = None
            if header_count:
                pairs = []
                for _ in range(header_count):
                    n, p = _varint(buf, p, rec_end, 5)
                    if n < 0 or n > rec_end - p:
                        raise ValueError("malformed Kafka record: header key length out of range")
                    name = bytes(buf[p : p + n]).decode("utf-8", "surrogateescape")
                    hvalue, p = _nullable(buf, p + n, rec_end, "header value")
                    pairs.append([name, hvalue])
            headers.append(pairs)
        if p != rec_end:
            raise ValueError(
                f"malformed Kafka record: {rec_end - p} bytes left over inside record {i}"
            )
        pos = rec_end
    if pos != end:
        raise ValueError(
            f"malformed Kafka record batch: {end - pos} bytes after its {count} records"
        )
    return offsets, ts, keys, values, headers


def _put_varint(out: bytearray, value: int) -> None:
    z = ((value << 1) ^ (value >> 63)) & 0xFFFFFFFFFFFFFFFF
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)


def _put_blob(out: bytearray, value: Any, what: str) -> None:
    if value is None:
        out.append(1)  # zigzag(-1)
        return
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"record {what} must be bytes or None, not {type(value).__name__}")
    _put_varint(out, len(value))
    out += value


def _name(name: Any) -> bytes:
    if not isinstance(name, str):
        raise TypeError(f"header name must be str, not {type(name).__name__}")
    return name.encode("utf-8", "surrogateescape")


def encode_records(
    offset_deltas: Sequence[int] | None,
    timestamp_deltas: Sequence[int] | int,
    keys: Sequence[Any],
    values: Sequence[Any],
    headers: Sequence[Any] | None,
) -> bytes:
    n = len(values)
    if len(keys) != n or any(
        col is not None and not isinstance(col, int) and len(col) != n
        for col in (offset_deltas, timestamp_deltas, headers)
    ):
        raise ValueError("record columns differ in length")
    out = bytearray()
    body = bytearray()
    for i in range(n):
        ts_delta = timestamp_deltas if isinstance(timestamp_deltas, int) else timestamp_deltas[i]
        offset_delta = i if offset_deltas is None else offset_deltas[i]
        if not -(2**31) <= offset_delta < 2**31:
            raise ValueError("record offset delta out of int32 range")
        body.clear()
        body.append(0)  # record attributes
        _put_varint(body, ts_delta)
        _put_varint(body, offset_delta)
        _put_blob(body, keys[i], "key")
        _put_blob(body, values[i], "value")
        pairs = None if headers is None else headers[i]
        if pairs is None:
            body.append(0)
        else:
            pairs = list(pairs)
            _put_varint(body, len(pairs))
            for pair in pairs:
                name, hvalue = pair
                raw = _name(name)
                _put_varint(body, len(raw))
                body += raw
                _put_blob(body, hvalue, "header value")
        _put_varint(out, len(body))
        out += body
    return bytes(out)
