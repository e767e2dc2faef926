"""Record batches: the unit the producer builds, the leader stores and the consumer reads.

Byte layout (big-endian), mirroring Kafka's v2 batch without base offset and length (the
base offset is the LMDB key; the length is the value's length)::

    off  size  field
      0     4  partition_leader_epoch  int32   stamped by the leader; producers write -1;
                                              NOT covered by the CRC (like Kafka)
      4     1  magic                   int8    = 1 (kvlog batch format v1)
      5     4  crc                     uint32  CRC32C of bytes [9:] (everything after it)
      9     2  attributes              int16   bits 0-2 codec, bit 3 timestamp type
     11     4  last_offset_delta       int32   offset of the last record - base offset
     15     8  first_timestamp         int64   ms since the epoch, of the first record
     23     8  max_timestamp           int64   largest record timestamp in the batch
     31     8  producer_id             int64   -1 when not idempotent
     39     2  producer_epoch          int16   -1 when not idempotent
     41     4  base_sequence           int32   -1 when not idempotent
     45     4  record_count            int32   >= 1
     49     -  payload                 the records, compressed with the codec

The payload, once decompressed, is one CBOR array of *columns* (one array per field, each
with ``record_count`` entries), which CBOR encodes and decodes about three times faster
than one small array per record::

    [offset_deltas, timestamp_deltas, keys, values]
    [offset_deltas, timestamp_deltas, keys, values, headers]

- ``offset_deltas``: ``null`` when the records' offsets are consecutive (delta i is i), else
  an array of uints;
- ``timestamp_deltas``: ms after ``first_timestamp``, an array of ints, or one int when
  every record has the same delta;
- ``keys``, ``values``: arrays of byte strings or nulls;
- ``headers`` (only when some record has headers): one entry per record, null or an array
  of ``[name (text), value (bytes)]`` pairs.

The leader validates the header and CRC and assigns the base offset; it never decodes
records. Decoding happens in consumers (and tools).

A second format shares this header: a Kafka client's RecordBatch v2, stored as it
arrived minus its first 12 bytes (base offset and length), has exactly the field order
above from ``partition_leader_epoch`` on, with ``magic`` = 2 and Kafka's varint records
as the payload (:mod:`kvlog.kafka_batch`). The magic byte tells the two apart:
:func:`validate` and :func:`read_header` accept both and return the same
:class:`BatchHeader`, so the leader's checks (CRC, sequence, epoch) and its epoch stamping
are one code path; :func:`decode_raw` and :func:`decode` read both.

Transactions (KIP-98) use two more attribute bits. Bit 4 (transactional) marks a batch a
transactional producer wrote inside a transaction, in either format; its records stay
invisible to ``read_committed`` readers until the transaction's commit marker. Bit 5
(control), magic 2 only, marks a control batch: one control record, a commit or abort
marker (:mod:`kvlog.control_batch`), written by the partition leader, never by a
producer (:func:`check_produced` refuses one).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import cbor2
from crc32c import crc32c as _crc32c

from .clock import now_ms
from .codecs import Codec, compress, decompress
from .errors import (
    CorruptRecordError,
    InvalidRecordError,
    UnsupportedCompressionTypeError,
)


def _crc32c_keeping_gil() -> Any:
    """crc32c that never releases the GIL. By default the package releases it for inputs
    of 32 KiB or more; a batch's CRC takes a few microseconds (hardware CRC), but getting
    the GIL back waits until the thread holding it lets go: in the producer, whose main
    thread runs the C append for a whole ``send_batch`` call, up to a switch interval
    (5 ms) per batch, and at 1,000 partitions a 1 MiB request carries ~20 batches of
    ~50 KB (BENCHMARKS.md, issue 14). crc32c before 2.5 has no ``gil_release_mode``."""
    try:
        _crc32c(b"", gil_release_mode=0)
    except TypeError:
        return _crc32c

    def crc32c(data: Any, value: int = 0) -> int:
        return _crc32c(data, value, gil_release_mode=0)

    return crc32c


crc32c = _crc32c_keeping_gil()

MAGIC = 1
KAFKA_MAGIC = 2  # a Kafka RecordBatch v2 minus its first 12 bytes (kvlog.kafka_batch)
HEADER_SIZE = 49
NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
NO_SEQUENCE = -1
NO_LEADER_EPOCH = -1

TIMESTAMP_CREATE_TIME = 0
TIMESTAMP_LOG_APPEND_TIME = 1

_CODEC_MASK = 0x07
_TIMESTAMP_TYPE_BIT = 0x08
TRANSACTIONAL_BIT = 0x10  # both formats
CONTROL_BIT = 0x20  # magic 2 only: a commit or abort marker (kvlog.control_batch)

_HEADER = struct.Struct(">ibIhiqqqhii")
_PREFIX = struct.Struct(">ibI")  # leader epoch, magic, crc
_BODY = struct.Struct(">hiqqqhii")  # attributes .. record_count (covered by the CRC)
_EPOCH = struct.Struct(">i")
_CRC_START = _PREFIX.size
assert _HEADER.size == HEADER_SIZE


class BatchHeader(NamedTuple):
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def codec(self) -> Codec:
        return Codec(self.attributes & _CODEC_MASK)

    @property
    def timestamp_type(self) -> int:
        return TIMESTAMP_LOG_APPEND_TIME if self.attributes & _TIMESTAMP_TYPE_BIT else 0

    @property
    def last_sequence(self) -> int:
        """Sequence of the last record (wraps at int32 like Kafka's). Counted from the
        last offset delta, as Kafka does, not from the record count: compaction removes
        records but keeps the batch's last offset, so the sequences stay true."""
        if self.base_sequence == NO_SEQUENCE:
            return NO_SEQUENCE
        return (self.base_sequence + self.last_offset_delta) & 0x7FFFFFFF

    @property
    def is_idempotent(self) -> bool:
        return self.producer_id >= 0

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL_BIT)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_BIT)


class Record(NamedTuple):
    """One decoded record; ``offset`` is absolute."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def read_header(buf: bytes | memoryview) -> BatchHeader:
    """Parse the fixed header; raises CorruptRecordError when it cannot be one."""
    if len(buf) < HEADER_SIZE:
        raise CorruptRecordError(
            f"record batch is {len(buf)} bytes, shorter than its {HEADER_SIZE}-byte header"
        )
    header = BatchHeader._make(_HEADER.unpack_from(buf))
    if header.magic != MAGIC and header.magic != KAFKA_MAGIC:
        # Kafka's older message formats (magic 0/1) are refused where a Kafka record set
        # comes in (kafka_batch.from_record_set); here any other magic is corruption.
        raise CorruptRecordError(
            f"record batch has magic {header.magic}; kvlog stores magic 1 (its own "
            "batches) and 2 (Kafka RecordBatch v2)"
        )
    return header


def validate(buf: bytes | memoryview) -> BatchHeader:
    """Check header sanity and the CRC without decoding records (the leader's check)."""
    header = read_header(buf)
    if header.record_count < 1:
        raise CorruptRecordError(f"record batch has record_count {header.record_count}")
    if not header.record_count - 1 <= header.last_offset_delta:
        raise CorruptRecordError(
            f"record batch has last_offset_delta {header.last_offset_delta} for "
            f"{header.record_count} records"
        )
    known = _CODEC_MASK | _TIMESTAMP_TYPE_BIT | TRANSACTIONAL_BIT
    if header.magic == KAFKA_MAGIC:
        known |= CONTROL_BIT
    if header.attributes & ~known:
        raise CorruptRecordError(f"record batch has unknown attribute bits {header.attributes}")
    if header.attributes & _CODEC_MASK > max(Codec):
        raise UnsupportedCompressionTypeError(
            f"record batch uses compression codec id {header.attributes & _CODEC_MASK}; "
            "known codecs are 0-4 (none, gzip, snappy, lz4, zstd)"
        )
    actual = crc32c(memoryview(buf)[_CRC_START:])
    if actual != header.crc:
        raise CorruptRecordError(
            f"record batch CRC32C mismatch: header says {header.crc:#010x}, "
            f"content gives {actual:#010x}"
        )
    return header


def check_produced(header: BatchHeader) -> None:
    """What a producer may not send, beyond :func:`validate` (the leader's check of a
    produced batch): a control batch (markers are the leader's own), or a transactional
    batch without a producer id and sequence (a transaction belongs to a producer id)."""
    if header.attributes & CONTROL_BIT:
        raise InvalidRecordError(
            "control batches (transaction markers) are written by the partition leader, "
            "not sent by producers"
        )
    if header.attributes & TRANSACTIONAL_BIT and (
        header.producer_id < 0 or header.base_sequence < 0
    ):
        raise InvalidRecordError(
            "a transactional batch needs a producer id and a base sequence (from "
            "init_producer_id with a transactional id)"
        )


def next_offset(base_offset: int, buf: bytes | memoryview) -> int:
    """The offset after the batch's last record."""
    return base_offset + _EPOCH.unpack_from(buf, 11)[0] + 1


def rebuild(
    stored: bytes | memoryview, payload: bytes, *, record_count: int, max_timestamp: int
) -> bytes:
    """A stored batch of either format with a new (already compressed) payload of
    ``record_count`` records: the compaction of a batch. The leader epoch, magic,
    attributes, last offset delta, first timestamp and producer id, epoch and base
    sequence stay; the count, max timestamp and CRC are new."""
    header = read_header(stored)
    body = _BODY.pack(
        header.attributes,
        header.last_offset_delta,
        header.first_timestamp,
        max_timestamp,
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
        record_count,
    )
    crc = crc32c(payload, crc32c(body))
    return b"".join((_PREFIX.pack(header.partition_leader_epoch, header.magic, crc), body, payload))


def stamp_leader_epoch(buf: bytes | memoryview, leader_epoch: int) -> bytes:
    """The batch with its partition_leader_epoch set (outside the CRC, so it stays valid)."""
    return _EPOCH.pack(leader_epoch) + memoryview(buf)[4:]


class Columns(NamedTuple):
    """A batch's records as columns (the payload's CBOR layout)."""

    offset_deltas: Sequence[int]
    timestamp_deltas: Sequence[int]
    keys: list[bytes | None]
    values: list[bytes | None]
    headers: list[list[list[Any]] | None] | None


def encode(
    timestamp_deltas: Sequence[int] | int,
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
    headers: Sequence[list[list[Any]] | None] | None = None,
    *,
    first_timestamp: int,
    max_timestamp: int,
    offset_deltas: Sequence[int] | None = None,
    codec: Codec = Codec.NONE,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = NO_PRODUCER_EPOCH,
    base_sequence: int = NO_SEQUENCE,
    timestamp_type: int = TIMESTAMP_CREATE_TIME,
) -> bytes:
    """Encode record columns as one batch (None ``offset_deltas``: consecutive).

    This is the producer's per-batch step: one CBOR encode, one compress, one CRC.
    """
    count = len(values)
    if not count:
        raise ValueError("a record batch needs at least one record")
    columns: list[Any] = [
        None if offset_deltas is None else list(offset_deltas),
        timestamp_deltas,
        keys,
        values,
    ]
    if headers is not None and any(headers):
        columns.append(headers)
    return encode_payload(
        cbor2.dumps(columns),
        count,
        first_timestamp=first_timestamp,
        max_timestamp=max_timestamp,
        last_offset_delta=count - 1 if offset_deltas is None else offset_deltas[-1],
        codec=codec,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        timestamp_type=timestamp_type,
    )


def encode_payload(
    payload: bytes,
    record_count: int,
    *,
    first_timestamp: int,
    max_timestamp: int,
    last_offset_delta: int | None = None,
    codec: Codec = Codec.NONE,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = NO_PRODUCER_EPOCH,
    base_sequence: int = NO_SEQUENCE,
    timestamp_type: int = TIMESTAMP_CREATE_TIME,
    transactional: bool = False,
) -> bytes:
    """A batch around an already encoded payload (the columns' CBOR, uncompressed): one
    compress, one CRC, the header. The producer's accumulator builds the payload as
    records arrive (kvlog._accumulator); a retry with a new sequence re-frames it.
    ``last_offset_delta`` None: the offsets are consecutive."""
    if record_count < 1:
        raise ValueError("a record batch needs at least one record")
    payload = compress(codec, payload)
    attributes = int(codec) | (_TIMESTAMP_TYPE_BIT if timestamp_type else 0)
    if transactional:
        attributes |= TRANSACTIONAL_BIT
    body = _BODY.pack(
        attributes,
        record_count - 1 if last_offset_delta is None else last_offset_delta,
        first_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        record_count,
    )
    crc = crc32c(payload, crc32c(body))
    return b"".join((_PREFIX.pack(NO_LEADER_EPOCH, MAGIC, crc), body, payload))


def _columns(header: BatchHeader, raw: Any) -> Columns:
    count = header.record_count
    if not isinstance(raw, list) or len(raw) not in (4, 5):
        raise CorruptRecordError("record batch payload is not an array of 4 or 5 columns")
    offsets, ts_deltas, keys, values = raw[:4]
    headers = raw[4] if len(raw) == 5 else None
    if offsets is None:
        offsets = range(count)
    if isinstance(ts_deltas, int) and not isinstance(ts_deltas, bool):
        ts_deltas = [ts_deltas] * count
    for name, column in (
        ("offset", offsets),
        ("timestamp", ts_deltas),
        ("key", keys),
        ("value", values),
        ("header", headers),
    ):
        if column is None and name == "header":
            continue
        if not isinstance(column, list | range) or len(column) != count:
            raise CorruptRecordError(f"record batch {name} column does not hold {count} entries")
    return Columns(offsets, ts_deltas, keys, values, headers)


def decode_raw(buf: bytes | memoryview, *, verify: bool = True) -> tuple[BatchHeader, Columns]:
    """Header and record columns; checks the CRC unless ``verify`` is False (a
    consumer's ``check.crcs=false``). A Kafka batch (magic 2) comes back in the same
    shape (:func:`kvlog.kafka_batch.decode`). Raises CorruptRecordError."""
    if len(buf) > 4 and buf[4] == KAFKA_MAGIC:
        from . import kafka_batch  # it imports this module: resolved at first use

        return kafka_batch.decode(buf, verify=verify)
    header = validate(buf) if verify else read_header(buf)
    try:
        payload = decompress(header.codec, memoryview(buf)[HEADER_SIZE:])
        raw = cbor2.loads(payload)
    except Exception as exc:  # any decoder failure means a corrupt batch
        raise CorruptRecordError(f"record batch payload does not decode: {exc}") from exc
    return header, _columns(header, raw)


def decode(buf: bytes | memoryview, base_offset: int) -> list[Record]:
    """Every record of a batch with absolute offsets and timestamps."""
    header, cols = decode_raw(buf)
    first_ts = header.first_timestamp
    headers = cols.headers or [None] * header.record_count
    try:
        new = tuple.__new__  # NamedTuple's own constructor is a Python-level call
        return [
            new(
                Record,
                (
                    base_offset + delta,
                    first_ts + ts_delta,
                    key,
                    value,
                    [(h[0], h[1]) for h in pairs] if pairs else [],
                ),
            )
            for delta, ts_delta, key, value, pairs in zip(
                cols.offset_deltas,
                cols.timestamp_deltas,
                cols.keys,
                cols.values,
                headers,
                strict=True,
            )
        ]
    except (TypeError, IndexError, KeyError) as exc:
        raise CorruptRecordError(f"record batch holds a malformed record: {exc}") from exc


class BatchBuilder:
    """Collects records for one partition and encodes them as one batch.

    Not thread-safe: the producer's accumulator owns one per open batch.
    """

    __slots__ = (
        "_headers",
        "_keys",
        "_ts_deltas",
        "_values",
        "base_sequence",
        "codec",
        "first_timestamp",
        "max_timestamp",
        "producer_epoch",
        "producer_id",
        "size_estimate",
    )

    def __init__(
        self,
        codec: Codec = Codec.NONE,
        *,
        producer_id: int = NO_PRODUCER_ID,
        producer_epoch: int = NO_PRODUCER_EPOCH,
        base_sequence: int = NO_SEQUENCE,
    ) -> None:
        self.codec = codec
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        self._ts_deltas: list[int] = []
        self._keys: list[bytes | None] = []
        self._values: list[bytes | None] = []
        self._headers: list[list[list[Any]] | None] | None = None
        self.first_timestamp = -1
        self.max_timestamp = -1
        self.size_estimate = HEADER_SIZE

    def __len__(self) -> int:
        return len(self._values)

    def append(
        self,
        value: bytes | None,
        key: bytes | None = None,
        headers: Iterable[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
    ) -> int:
        """Add one record; returns its offset delta within the batch."""
        ts = now_ms() if timestamp_ms is None else timestamp_ms
        delta = len(self._values)
        if not delta:
            self.first_timestamp = self.max_timestamp = ts
        elif ts > self.max_timestamp:
            self.max_timestamp = ts
        self._ts_deltas.append(ts - self.first_timestamp)
        self._keys.append(key)
        self._values.append(value)
        size = 12 + (len(key) if key else 0) + (len(value) if value else 0)
        pairs = [[name, hvalue] for name, hvalue in headers] if headers else None
        if pairs:
            size += sum(len(n) + len(v) + 4 for n, v in pairs)
            if self._headers is None:
                self._headers = [None] * delta
        if self._headers is not None:
            self._headers.append(pairs)
        self.size_estimate += size
        return delta

    def build(self) -> bytes:
        return encode(
            self._ts_deltas,
            self._keys,
            self._values,
            self._headers,
            first_timestamp=self.first_timestamp,
            max_timestamp=self.max_timestamp,
            codec=self.codec,
            producer_id=self.producer_id,
            producer_epoch=self.producer_epoch,
            base_sequence=self.base_sequence,
        )


def build_batch(
    records: Iterable[tuple[bytes | None, bytes | None]]
    | Iterable[tuple[bytes | None, bytes | None, Iterable[tuple[str, bytes]] | None, int | None]],
    codec: Codec = Codec.NONE,
    **producer: int,
) -> bytes:
    """Convenience: a batch from ``(key, value)`` or ``(key, value, headers, ts)`` tuples."""
    builder = BatchBuilder(codec, **producer)
    for rec in records:
        key, value, *rest = rec
        headers = rest[0] if rest else None
        ts = rest[1] if len(rest) > 1 else None
        builder.append(value, key, headers, ts)
    return builder.build()
