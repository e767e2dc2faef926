"""Kafka RecordBatch v2 (magic 2) in kvlog's log: stored as it came, converted per batch.

A Kafka client's batch is stored as it arrived minus its first 12 bytes (base offset and
length): what is left has exactly the field order of kvlog's 49-byte native header
(see :mod:`kvlog.batch`), and the magic byte at offset 4 tells the formats apart::

    Kafka on the wire:  baseOffset int64 | length int32 | <- the 12 bytes kvlog drops
                        partitionLeaderEpoch int32 | magic int8 (= 2) | crc uint32 |
                        attributes int16 | lastOffsetDelta int32 | baseTimestamp int64 |
                        maxTimestamp int64 | producerId int64 | producerEpoch int16 |
                        baseSequence int32 | recordCount int32 | records
    stored by kvlog:    the same from partitionLeaderEpoch on; LMDB's key is the offset

The CRC32C covers attributes..end in both formats, and the leader epoch sits outside it,
so the leader's checks (:func:`kvlog.batch.validate`) and its epoch stamping are the same
for both and it decodes neither. The records section (compressed as a whole with the
codec in the attributes' low 3 bits) is Kafka's varint records; the per-record loop of a
conversion runs in C (``kvlog._kafka_records``; ``_kafka_records_py`` is its pure-Python
twin, used when no compiler was at hand at install time).

Three reads, per batch:

- a kvlog consumer reading a Kafka batch: :func:`decode` gives the same
  ``(BatchHeader, Columns)`` as a native batch (``kvlog.batch.decode_raw`` dispatches here);
- a Kafka client reading a native batch: :func:`native_to_kafka` re-encodes it as a
  RecordBatch v2 (same offsets, timestamps, keys, values, headers, producer fields);
- a Kafka client reading a Kafka batch: :func:`to_record_set` puts the 12 bytes back in
  front of the stored bytes; no per-record work, no copy of the batch.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import cramjam
from crc32c import crc32c

from . import batch as batch_format
from . import codecs
from .batch import HEADER_SIZE, BatchHeader, Columns
from .codecs import Codec, compress, decompress
from .errors import (
    CorruptRecordError,
    InvalidRecordError,
    UnsupportedCompressionTypeError,
    UnsupportedVersionError,
)

try:
    from ._kafka_records import decode_records, encode_records

    ACCELERATED = True
except ImportError:  # built without a compiler: the same code in Python
    from ._kafka_records_py import decode_records, encode_records

    ACCELERATED = False

KAFKA_MAGIC = 2
PREFIX = struct.Struct(">qi")  # baseOffset, length: what kvlog drops and puts back
PREFIX_SIZE = PREFIX.size
# Offset of the magic byte in a full Kafka batch (and in a legacy message set entry).
_WIRE_MAGIC_AT = PREFIX_SIZE + 4

_PREFIX = struct.Struct(">ibI")
_BODY = struct.Struct(">hiqqqhii")
_CRC_START = _PREFIX.size

# Java's Kafka client writes snappy in xerial's framing: this 8-byte magic, version and
# compat (int32 each), then blocks of [int32 length][raw snappy].
_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER_SIZE = 16
_INT32 = struct.Struct(">i")


# -- produce side: a Kafka client's record set -> the bytes kvlog stores ---------------------


def from_record_set(records: bytes | memoryview) -> memoryview:
    """The bytes to store for one partition's record set from a Kafka Produce request.

    Like Kafka for Produce v3+, the record set must be exactly one RecordBatch v2. Magic
    0/1 (Kafka's message sets before 0.11) are refused with UNSUPPORTED_VERSION, which no
    client retries: kvlog never stored nor converts them (CORRUPT_MESSAGE would be wrong:
    it is retriable, so a client would resend the same batch until its delivery timeout).
    More than one batch, or none, is INVALID_RECORD (Kafka's answer too). The header and
    CRC are the leader's :func:`kvlog.batch.validate`, run on what this returns.
    """
    view = memoryview(records).cast("B")
    if len(view) <= _WIRE_MAGIC_AT:
        raise InvalidRecordError(
            f"record set of {len(view)} bytes holds no record batch; Produce v3+ carries "
            "exactly one RecordBatch v2 per partition"
        )
    magic = view[_WIRE_MAGIC_AT]
    if magic in (0, 1):
        raise UnsupportedVersionError(
            f"record set is Kafka message format v{magic} (magic {magic}, clients before "
            "Kafka 0.11); kvlog stores only RecordBatch v2 (magic 2): use a client that "
            "writes magic 2 (every client since 2017 does)"
        )
    if magic != KAFKA_MAGIC:
        raise CorruptRecordError(f"record batch has magic {magic}; Kafka's batches have 2")
    _, length = PREFIX.unpack_from(view)
    if length != len(view) - PREFIX_SIZE:
        if 0 < length < len(view) - PREFIX_SIZE:
            raise InvalidRecordError(
                "record set holds more than one record batch; Produce v3+ carries exactly "
                "one RecordBatch v2 per partition"
            )
        raise CorruptRecordError(
            f"record batch length field says {length} bytes, the record set has "
            f"{len(view) - PREFIX_SIZE} after it"
        )
    return view[PREFIX_SIZE:]


# -- fetch side: a stored batch of either format -> Kafka's bytes ----------------------------


def kafka_prefix(base_offset: int, stored: bytes | memoryview) -> bytes:
    """The 12 bytes that make a stored Kafka batch whole again."""
    return PREFIX.pack(base_offset, len(stored))


def to_record_set(
    base_offset: int, stored: bytes | memoryview, *, codec: Codec = Codec.NONE
) -> list[bytes | memoryview]:
    """A stored batch as the buffers a Kafka Fetch response carries (to concatenate or
    hand to ``sendmsg``). A Kafka batch is its 12 bytes plus the stored buffer itself,
    untouched; a native batch is converted (:func:`native_to_kafka`)."""
    if memoryview(stored)[4] == KAFKA_MAGIC:
        return [kafka_prefix(base_offset, stored), stored]
    return [native_to_kafka(base_offset, stored, codec=codec)]


def native_to_kafka(
    base_offset: int, stored: bytes | memoryview, *, codec: Codec = Codec.NONE
) -> bytes:
    """A native kvlog batch re-encoded as a whole Kafka RecordBatch v2 at ``base_offset``.

    Offsets, timestamps (and their type), keys, values, headers, producer id, epoch,
    base sequence and the stamped leader epoch carry over; the CRC is recomputed.
    Compression: ``codec`` (default none), not the stored batch's codec. The conversion
    runs on the fetch path, once per fetch: recompressing would cost the node more than
    decoding did (gzip alone runs at tens of MB/s), for bytes that mostly cross loopback.
    A shell serving remote consumers can pass the batch's own codec instead.
    """
    header, cols = batch_format.decode_raw(stored, verify=False)
    stored_form = encode(
        cols.offset_deltas if not isinstance(cols.offset_deltas, range) else None,
        cols.timestamp_deltas,
        cols.keys,
        cols.values,
        cols.headers,
        first_timestamp=header.first_timestamp,
        max_timestamp=header.max_timestamp,
        codec=codec,
        producer_id=header.producer_id,
        producer_epoch=header.producer_epoch,
        base_sequence=header.base_sequence,
        timestamp_type=header.timestamp_type,
        leader_epoch=header.partition_leader_epoch,
        last_offset_delta=header.last_offset_delta,
    )
    return kafka_prefix(base_offset, stored_form) + stored_form


# -- magic-2 batches in kvlog's stored form --------------------------------------------------


def encode(
    offset_deltas: Sequence[int] | None,
    timestamp_deltas: Sequence[int] | int,
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
    headers: Sequence[Sequence[Sequence[Any]] | None] | None = None,
    *,
    first_timestamp: int,
    max_timestamp: int,
    codec: Codec = Codec.NONE,
    producer_id: int = batch_format.NO_PRODUCER_ID,
    producer_epoch: int = batch_format.NO_PRODUCER_EPOCH,
    base_sequence: int = batch_format.NO_SEQUENCE,
    timestamp_type: int = batch_format.TIMESTAMP_CREATE_TIME,
    leader_epoch: int = batch_format.NO_LEADER_EPOCH,
    last_offset_delta: int | None = None,
) -> bytes:
    """Record columns as a Kafka RecordBatch v2 in kvlog's stored form (no 12-byte prefix).

    The columns are :class:`kvlog.batch.Columns`' (None ``offset_deltas``: consecutive).
    Header values may be None (Kafka allows null header values)."""
    count = len(values)
    if not count:
        raise ValueError("a record batch needs at least one record")
    records = encode_records(offset_deltas, timestamp_deltas, keys, values, headers)
    payload = _compress(codec, records)
    if last_offset_delta is None:
        last_offset_delta = count - 1 if offset_deltas is None else offset_deltas[-1]
    attributes = int(codec) | (0x08 if timestamp_type else 0)
    body = _BODY.pack(
        attributes,
        last_offset_delta,
        first_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        count,
    )
    crc = crc32c(payload, crc32c(body))
    return b"".join((_PREFIX.pack(leader_epoch, KAFKA_MAGIC, crc), body, payload))


def decode(buf: bytes | memoryview, *, verify: bool = True) -> tuple[BatchHeader, Columns]:
    """A stored Kafka batch's header and record columns, shaped like a native batch's
    (``kvlog.batch.decode_raw`` lands here for magic 2). Raises CorruptRecordError."""
    header = batch_format.validate(buf) if verify else batch_format.read_header(buf)
    if header.magic != KAFKA_MAGIC:
        raise CorruptRecordError(f"record batch has magic {header.magic}, not Kafka's 2")
    try:
        records = _decompress(header.attributes & 0x07, memoryview(buf)[HEADER_SIZE:])
        offsets, ts_deltas, keys, values, headers = decode_records(records, header.record_count)
    except (ValueError, TypeError, cramjam.DecompressionError) as exc:
        raise CorruptRecordError(f"Kafka record batch does not decode: {exc}") from exc
    return header, Columns(
        range(header.record_count) if offsets is None else offsets,
        ts_deltas,
        keys,
        values,
        headers,
    )


def _compress(codec: Codec, data: bytes) -> bytes:
    if codec is Codec.NONE:
        return data
    if codec is Codec.LZ4:
        # Kafka reads LZ4 frames with independent blocks only (KafkaLZ4BlockInputStream).
        compressor = cramjam.lz4.Compressor(level=1, block_linked=False)
        compressor.compress(data)
        return bytes(compressor.finish())
    return compress(codec, data)


def _decompress(codec_id: int, data: memoryview) -> bytes | memoryview:
    if codec_id > max(Codec):
        raise UnsupportedCompressionTypeError(
            f"record batch uses compression codec id {codec_id}; known codecs are 0-4"
        )
    codec = Codec(codec_id)
    if codec is Codec.SNAPPY and data[: len(_XERIAL_MAGIC)] == _XERIAL_MAGIC:
        return _xerial_snappy(data)
    return decompress(codec, data)


def decompress_within(codec_id: int, data: memoryview, out: memoryview) -> memoryview:
    """:func:`kvlog.codecs.decompress_within` for a Kafka batch's records (codec ids,
    xerial-framed snappy): ValueError when they do not decompress within ``out``."""
    if codec_id > max(Codec):
        raise UnsupportedCompressionTypeError(
            f"record batch uses compression codec id {codec_id}; known codecs are 0-4"
        )
    codec = Codec(codec_id)
    if codec is not Codec.SNAPPY or data[: len(_XERIAL_MAGIC)] != _XERIAL_MAGIC:
        return codecs.decompress_within(codec, data, out)
    filled = 0
    for block in _xerial_blocks(data):
        filled += len(codecs.decompress_within(codec, block, out[filled:]))
    return out[:filled]


def _xerial_blocks(data: memoryview) -> list[memoryview]:
    """The snappy blocks of xerial's framing (version and compat words not checked: some
    writers get their byte order wrong)."""
    blocks = []
    pos, end = _XERIAL_HEADER_SIZE, len(data)
    while pos < end:
        if end - pos < 4:
            raise ValueError("xerial snappy stream ends inside a block length")
        (size,) = _INT32.unpack_from(data, pos)
        pos += 4
        if size < 0 or size > end - pos:
            raise ValueError(f"xerial snappy block of {size} bytes with {end - pos} left")
        blocks.append(data[pos : pos + size])
        pos += size
    return blocks


def _xerial_snappy(data: memoryview) -> bytes:
    """Snappy in xerial's block framing (what Java's Kafka client writes)."""
    return b"".join(bytes(cramjam.snappy.decompress_raw(b)) for b in _xerial_blocks(data))
