"""Compaction's work on one batch: note its keys in the offset map, filter it against the
map, rebuild what is left in the batch's own format.

Both stored formats are handled per batch: the payload is decompressed once (Python,
cramjam), the per-record walk runs in C (``kvlog._compact``; ``kvlog._compact_py`` is its
twin), and a filtered batch is recompressed with its own codec and rebuilt with
:func:`kvlog.batch.rebuild`: same base offset (the store key), same last offset delta,
leader epoch, first timestamp and producer id/epoch/base sequence, a new record count,
max timestamp and CRC. Kept records keep their offsets and timestamps (offsets become
sparse inside the batch: a native batch gets an explicit ``offset_deltas`` column, a
Kafka batch keeps its records' bytes as they were).
"""

from __future__ import annotations

import enum
import math
import mmap
import threading
from typing import Any, NamedTuple

from . import _compact_py, kafka_batch
from . import batch as batch_format
from .batch import HEADER_SIZE, KAFKA_MAGIC, TIMESTAMP_LOG_APPEND_TIME, BatchHeader
from .codecs import Codec, compress, decompress, decompress_within
from .errors import CorruptRecordError, InvalidRecordError

try:
    from . import _compact as _walks

    ACCELERATED = True
except ImportError:  # built without a compiler: the same walks in Python
    _walks = _compact_py  # type: ignore[assignment]
    ACCELERATED = False

OffsetMap = _walks.OffsetMap
SLOT_BYTES = 24  # a 128-bit key hash and an int64 offset
LOAD_FACTOR = 0.9  # Kafka's log.cleaner.io.buffer.load.factor
# A producer's batch walked before it is stored (first_keyless) decompresses into at most
# this many times its size: real data compresses well under it, a bomb (zstd: ~32,000
# to 1) is refused.
MAX_DECOMPRESSION_RATIO = 64
MIN_DECOMPRESSED_BYTES = 1 << 20
_SCRATCH = threading.local()
_MIN_SLOTS = 4  # tests use tiny maps to force several passes


def new_offset_map(max_bytes: int, expected_keys: int) -> Any:
    """A map within ``max_bytes`` (log.cleaner.dedupe.buffer.size), no larger than
    ``expected_keys`` need (a small partition does not get 128 MiB)."""
    budget = max(_MIN_SLOTS, max_bytes // SLOT_BYTES)
    wanted = math.ceil(max(expected_keys, 1) / LOAD_FACTOR) + _MIN_SLOTS
    return OffsetMap(min(budget, wanted), LOAD_FACTOR)


class Action(enum.Enum):
    KEEP = "keep"  # every record stays: the batch is left as it is
    REWRITE = "rewrite"  # some go: ``new`` replaces the batch
    REMOVE = "remove"  # every record goes: the batch goes


class Outcome(NamedTuple):
    action: Action
    new: bytes | None
    kept: int
    removed: int
    tombstones_removed: int
    keyless_removed: int
    first_tombstone: int  # offset of the first kept tombstone, or -1


def _walk(name: str, kafka: bool, *args: Any) -> Any:
    """The per-record walk ``name`` of the batch's format (``put``, ``filter``,
    ``first_keyless``): in C, or its Python twin for valid CBOR the C walker does not read
    (NotImplementedError). ValueError: a malformed batch."""
    fn = f"{name}_{'kafka' if kafka else 'native'}"
    try:
        return getattr(_walks, fn)(*args)
    except NotImplementedError:
        return getattr(_compact_py, fn)(*args)


def _records(batch: bytes | memoryview) -> tuple[BatchHeader, Any]:
    header = batch_format.read_header(batch)
    body = memoryview(batch)[HEADER_SIZE:]
    try:
        if header.magic == KAFKA_MAGIC:
            return header, kafka_batch._decompress(header.attributes & 0x07, body)
        return header, decompress(header.codec, body)
    except Exception as exc:  # a codec's failure means a corrupt batch
        raise CorruptRecordError(f"record batch does not decompress: {exc}") from exc


def map_batch(omap: Any, base: int, batch: bytes | memoryview, min_offset: int) -> int:
    """Note the key of every record at or past ``min_offset``. Returns -1, or the offset
    of the first record that did not fit (the map is full: the pass ends there)."""
    header, records = _records(batch)
    kafka = header.magic == KAFKA_MAGIC
    try:
        return int(_walk("put", kafka, omap, records, header.record_count, base, min_offset))
    except ValueError as exc:
        raise CorruptRecordError(f"record batch at {base}: {exc}") from exc


def first_keyless(batch: bytes | memoryview) -> int:
    """The offset delta of the batch's first record without a key, or -1 (a compacted
    topic refuses the batch, as Kafka does: the cleaner could only drop the record).

    A producer's batch, walked in a server before it is stored: it is decompressed into
    a buffer of at most ``MAX_DECOMPRESSION_RATIO`` times its size (at least
    ``MIN_DECOMPRESSED_BYTES``), never more: InvalidRecordError if it does not fit (a
    decompression bomb must not take the node's memory)."""
    header = batch_format.read_header(batch)
    body = memoryview(batch)[HEADER_SIZE:]
    kafka = header.magic == KAFKA_MAGIC
    limit = max(MIN_DECOMPRESSED_BYTES, MAX_DECOMPRESSION_RATIO * len(body))
    out = _scratch(limit)
    try:
        if kafka:
            records = kafka_batch.decompress_within(header.attributes & 0x07, body, out)
        else:
            records = decompress_within(header.codec, body, out)
    except ValueError as exc:
        raise InvalidRecordError(
            f"the record batch does not decompress within {limit} bytes "
            f"({MAX_DECOMPRESSION_RATIO} times its size): {exc}"
        ) from exc
    try:
        return int(_walk("first_keyless", kafka, records, header.record_count))
    except ValueError as exc:
        raise CorruptRecordError(f"record batch does not parse: {exc}") from exc
    finally:
        records.release()


def _scratch(limit: int) -> memoryview:
    """This thread's decompression buffer, of at least ``limit`` + 1 bytes (anonymous
    memory: pages cost only once written; kept for the next batch)."""
    buf: mmap.mmap | None = getattr(_SCRATCH, "buf", None)
    if buf is None or len(buf) <= limit:
        # The old one is unmapped once no view of it is left (not closed: one may be).
        buf = _SCRATCH.buf = mmap.mmap(-1, limit + 1)
    return memoryview(buf)[: limit + 1]


def filter_batch(
    omap: Any, base: int, batch: bytes | memoryview, map_end: int, tombstone_horizon: int
) -> Outcome:
    """What compaction makes of one batch: records below ``map_end`` go when superseded
    (the map holds a later offset for their key), keyless, or tombstones below
    ``tombstone_horizon``; the rest stay, at their offsets."""
    header, records = _records(batch)
    kafka = header.magic == KAFKA_MAGIC
    count = header.record_count
    try:
        result = _walk("filter", kafka, omap, records, count, base, map_end, tombstone_horizon)
    except ValueError as exc:
        raise CorruptRecordError(f"record batch at {base}: {exc}") from exc
    kept, new_records, max_ts_delta, first_tombstone, tombstones, keyless = result
    removed = count - kept
    if kept == count:
        return Outcome(Action.KEEP, None, kept, 0, 0, 0, first_tombstone)
    if kept == 0:
        return Outcome(Action.REMOVE, None, 0, removed, tombstones, keyless, -1)
    codec = header.codec
    if kafka:
        payload = kafka_batch._compress(codec, new_records)
    else:
        payload = new_records if codec is Codec.NONE else compress(codec, new_records)
    # LogAppendTime: every record's timestamp is the batch's max timestamp; keep it.
    max_ts = (
        header.max_timestamp
        if header.timestamp_type == TIMESTAMP_LOG_APPEND_TIME
        else header.first_timestamp + max_ts_delta
    )
    new = batch_format.rebuild(batch, payload, record_count=kept, max_timestamp=max_ts)
    return Outcome(Action.REWRITE, new, kept, removed, tombstones, keyless, first_tombstone)
