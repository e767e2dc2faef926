"""Pure-Python twin of ``kvlog/_compact.c``: the offset map and the batch walks of log
compaction, over cbor2 and ``kvlog._kafka_records_py``.

Used when the C accelerator was not built, by the tests as a second implementation, and
by the C path itself for valid CBOR its walker does not read (indefinite lengths): the
walks here take any map with ``put(key, offset) -> bool`` and ``get(key) -> int``.
Same inputs, same decisions, same ``ValueError`` on malformed input; slower.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any, Protocol

import cbor2

from ._kafka_records_py import decode_records

_SLOT_BYTES = 24  # what a slot costs in the C map; the twin counts keys the same way


class KeyOffsets(Protocol):
    def put(self, key: bytes, offset: int) -> bool: ...

    def get(self, key: bytes) -> int: ...


class OffsetMap:
    """key -> latest offset, holding at most ``capacity`` keys (by a 128-bit digest, as
    the C map does). Owned by one cleaner; not thread-safe."""

    def __init__(self, slots: int, load_factor: float = 0.9) -> None:
        if slots < 2 or not 0.0 < load_factor < 1.0:
            raise ValueError("an offset map needs >= 2 slots and 0 < load_factor < 1")
        self.slots = slots
        self.capacity = min(slots - 1, max(1, int(slots * load_factor)))
        self._offsets: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._offsets)

    @staticmethod
    def _digest(key: bytes) -> bytes:
        return hashlib.blake2b(key, digest_size=16).digest()

    def put(self, key: bytes, offset: int) -> bool:
        digest = self._digest(bytes(key))
        known = self._offsets.get(digest)
        if known is None:
            if len(self._offsets) >= self.capacity:
                return False
            self._offsets[digest] = offset
        elif offset > known:
            self._offsets[digest] = offset
        return True

    def get(self, key: bytes) -> int:
        return self._offsets.get(self._digest(bytes(key)), -1)

    def clear(self) -> None:
        self._offsets.clear()


def _native_columns(payload: Any, count: int) -> list[Any]:
    try:
        cols = cbor2.loads(payload)
    except Exception as exc:  # any decoder failure is a malformed payload
        raise ValueError(f"malformed record batch payload: {exc}") from exc
    if not isinstance(cols, list) or len(cols) not in (4, 5):
        raise ValueError("malformed record batch payload: not 4 or 5 columns")
    offsets, ts, keys, values = cols[:4]
    if offsets is None:
        offsets = list(range(count))
    if isinstance(ts, int):
        ts = [ts] * count
    for column in (offsets, ts, keys, values, *cols[4:]):
        if not isinstance(column, list) or len(column) != count:
            raise ValueError(f"malformed record batch payload: a column without {count} entries")
    if any(not isinstance(o, int) or o < 0 for o in offsets) or any(
        b <= a for a, b in itertools.pairwise(offsets)
    ):
        raise ValueError("malformed record batch payload: offset deltas not increasing")
    return cols


def _kafka_columns(records: Any, count: int) -> tuple[list[int], list[int], list[Any], list[Any]]:
    offsets, ts, keys, values, _headers = decode_records(records, count)
    return list(range(count)) if offsets is None else offsets, ts, keys, values


def _fill(omap: KeyOffsets, offsets: list[int], keys: list[Any], base: int, min_offset: int) -> int:
    for delta, key in zip(offsets, keys, strict=True):
        offset = base + delta
        if offset < min_offset or key is None:
            continue
        if not omap.put(key, offset):
            return offset
    return -1


def put_native(omap: KeyOffsets, payload: Any, count: int, base: int, min_offset: int) -> int:
    cols = _native_columns(payload, count)
    offsets = list(range(count)) if cols[0] is None else cols[0]
    return _fill(omap, offsets, cols[2], base, min_offset)


def put_kafka(omap: KeyOffsets, records: Any, count: int, base: int, min_offset: int) -> int:
    offsets, _ts, keys, _values = _kafka_columns(records, count)
    return _fill(omap, offsets, keys, base, min_offset)


def _first_none(offsets: list[int], keys: list[Any]) -> int:
    return next((delta for delta, key in zip(offsets, keys, strict=True) if key is None), -1)


def first_keyless_native(payload: Any, count: int) -> int:
    """The offset delta of the first record without a key, or -1."""
    cols = _native_columns(payload, count)
    return _first_none(list(range(count)) if cols[0] is None else cols[0], cols[2])


def first_keyless_kafka(records: Any, count: int) -> int:
    """The offset delta of the first record without a key, or -1."""
    offsets, _ts, keys, _values = _kafka_columns(records, count)
    return _first_none(offsets, keys)


def _decide(
    omap: KeyOffsets,
    offsets: list[int],
    ts: list[int],
    keys: list[Any],
    values: list[Any],
    base: int,
    map_end: int,
    horizon: int,
) -> tuple[list[int], int, int, int, int]:
    """Indices kept, max kept ts delta, first kept tombstone, tombstones and keyless
    records removed (the rule of ``filter_native`` in _compact.c)."""
    kept: list[int] = []
    max_ts = 0
    first_tombstone = -1
    tombstones = keyless = 0
    for i, (delta, key, value) in enumerate(zip(offsets, keys, values, strict=True)):
        offset = base + delta
        if offset < map_end:
            if key is None:
                keyless += 1
                continue
            if omap.get(key) > offset:
                continue
            if value is None and offset < horizon:
                tombstones += 1
                continue
        if not kept or ts[i] > max_ts:
            max_ts = ts[i]
        kept.append(i)
        if value is None and first_tombstone < 0:
            first_tombstone = offset
    return kept, max_ts, first_tombstone, tombstones, keyless


def filter_native(
    omap: KeyOffsets, payload: Any, count: int, base: int, map_end: int, horizon: int
) -> tuple[int, bytes | None, int, int, int, int]:
    cols = _native_columns(payload, count)
    offsets = list(range(count)) if cols[0] is None else cols[0]
    ts = [cols[1]] * count if isinstance(cols[1], int) else cols[1]
    kept, max_ts, first_tombstone, tombstones, keyless = _decide(
        omap, offsets, ts, cols[2], cols[3], base, map_end, horizon
    )
    new = None
    if 0 < len(kept) < count:
        out: list[Any] = [
            [offsets[i] for i in kept],
            cols[1] if isinstance(cols[1], int) else [ts[i] for i in kept],
        ]
        out += [[column[i] for i in kept] for column in cols[2:]]
        new = cbor2.dumps(out)
    return len(kept), new, max_ts, first_tombstone, tombstones, keyless


def _kafka_spans(records: bytes, count: int) -> list[tuple[int, int]]:
    """Each record's (start, end) in the records section, length prefix included."""
    spans = []
    pos = 0
    view = memoryview(records).cast("B")
    for _ in range(count):
        raw = shift = 0
        start = pos
        while True:
            if pos >= len(view) or shift > 63:
                raise ValueError("malformed Kafka record: truncated length")
            b = view[pos]
            pos += 1
            raw |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        length = (raw >> 1) ^ -(raw & 1)
        spans.append((start, pos + length))
        pos += length
    return spans


def filter_kafka(
    omap: KeyOffsets, records: Any, count: int, base: int, map_end: int, horizon: int
) -> tuple[int, bytes | None, int, int, int, int]:
    data = bytes(records)
    offsets, ts, keys, values = _kafka_columns(data, count)
    kept, max_ts, first_tombstone, tombstones, keyless = _decide(
        omap, offsets, ts, keys, values, base, map_end, horizon
    )
    new = None
    if 0 < len(kept) < count:
        spans = _kafka_spans(data, count)
        new = b"".join(data[spans[i][0] : spans[i][1]] for i in kept)
    return len(kept), new, max_ts, first_tombstone, tombstones, keyless


SLOT_BYTES = _SLOT_BYTES
