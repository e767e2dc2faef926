"""What a consumer hands the application: records one by one, or columns.

A fetched batch is decoded once into columns (:class:`DecodedBatch`); ``poll()`` builds a
:class:`ConsumerRecord` only for the records it returns, and ``poll_batch()`` returns
slices of the columns themselves (:class:`RecordColumns`), so a consumer that works on
whole columns pays no per-record Python work in kvlog at all.

A key or value its deserializer refuses stops the hand-out just before that record: the
records before it are returned, and the next call raises :class:`UndecodableRecord`
(with the raw bytes), so the consumer's position rests on the record that failed.

With the C extension ``kvlog._records``, a native batch (as kvlog producers write it) is
not decoded at all: its payload is indexed in place, and ``poll()`` builds each returned
ConsumerRecord in C from it (~0.15 us a record); keys and values become bytes objects only
for the records handed out. Other batches (Kafka's, headers, other shapes) go through
cbor2 into lists, as without the extension.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from kvlog import batch as batch_format
from kvlog.batch import HEADER_SIZE, MAGIC, BatchHeader, Columns
from kvlog.codecs import decompress
from kvlog.errors import CorruptRecordError

try:  # KVLOG_PURE_PYTHON=1: cbor2 decodes every batch (tests of the fallback)
    if os.environ.get("KVLOG_PURE_PYTHON"):
        raise ImportError("KVLOG_PURE_PYTHON is set")
    from kvlog import _records as native
except ImportError:
    native = None  # type: ignore[assignment]

_tuple_new = tuple.__new__  # a NamedTuple's own constructor is a Python-level call
# Records without headers share one empty, immutable headers value.
NO_HEADERS: tuple[tuple[str, bytes], ...] = ()

Deserializer = Callable[[Any], Any]


class UndecodableRecord(Exception):
    """The key or value deserializer failed on the first record to hand out; the record's
    raw fields are kept (the consumer turns this into RecordDeserializationError)."""

    def __init__(
        self,
        offset: int,
        field: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        timestamp: int,
        cause: BaseException,
    ) -> None:
        super().__init__(f"cannot deserialize the {field} at offset {offset}: {cause}")
        self.offset = offset
        self.field = field
        self.key = key
        self.value = value
        self.headers = list(headers)
        self.timestamp = timestamp
        self.cause = cause


class _ColumnFailed(Exception):
    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.index = index
        self.cause = cause


class ConsumerRecord(NamedTuple):
    """One record as ``poll()`` returns it (kafka-python's field names)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: Any
    value: Any
    headers: list[tuple[str, bytes]]
    timestamp_type: int = 0
    serialized_key_size: int = -1
    serialized_value_size: int = -1


if native is not None:
    native.set_record_type(ConsumerRecord, NO_HEADERS)


class RecordColumns:
    """A run of consecutive records of one partition as columns: ``poll_batch()``'s
    value per partition. Column ``i`` of every attribute belongs to the same record;
    keys and values went through the consumer's deserializers."""

    __slots__ = (
        "headers",
        "keys",
        "offsets",
        "partition",
        "timestamp_type",
        "timestamps",
        "topic",
        "values",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        offsets: Sequence[int],
        timestamps: list[int],
        keys: list[Any],
        values: list[Any],
        headers: list[Sequence[tuple[str, bytes]]] | None,
        timestamp_type: int,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offsets = offsets  # a range when the offsets are contiguous
        self.timestamps = timestamps
        self.keys = keys
        self.values = values
        self.headers = headers  # None when no record in the run has headers
        self.timestamp_type = timestamp_type

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[ConsumerRecord]:
        return iter(self.records())

    def __repr__(self) -> str:
        span = f"{self.offsets[0]}..{self.offsets[-1]}" if self.values else "empty"
        return f"RecordColumns({self.topic}-{self.partition}, offsets {span})"

    @property
    def next_offset(self) -> int:
        """The offset after the last record: what to commit once the run is processed."""
        return self.offsets[-1] + 1

    def records(self) -> list[ConsumerRecord]:
        """The same records as ConsumerRecords (serialized sizes are not known here: -1)."""
        headers = self.headers or [NO_HEADERS] * len(self.values)
        topic, partition, ts_type, new = self.topic, self.partition, self.timestamp_type, _tuple_new
        return [
            new(ConsumerRecord, (topic, partition, o, t, k, v, h, ts_type, -1, -1))
            for o, t, k, v, h in zip(
                self.offsets, self.timestamps, self.keys, self.values, headers, strict=True
            )
        ]

    def extend(self, more: RecordColumns) -> None:
        """Append a later run of the same partition (list concatenation, no per-record work)."""
        if isinstance(self.offsets, range) and isinstance(more.offsets, range):
            if self.offsets.stop == more.offsets.start:
                self.offsets = range(self.offsets.start, more.offsets.stop)
            else:
                self.offsets = [*self.offsets, *more.offsets]
        else:
            self.offsets = [*self.offsets, *more.offsets]
        if self.headers is not None or more.headers is not None:
            mine = self.headers or [NO_HEADERS] * len(self.values)
            theirs = more.headers or [NO_HEADERS] * len(more.values)
            self.headers = mine + theirs
        self.timestamps += more.timestamps
        self.keys += more.keys
        self.values += more.values


def decode_batch(raw: bytes, base_offset: int, *, verify: bool = True) -> DecodedBatch:
    """A fetched batch ready to hand out (raises CorruptRecordError). ``verify``: check
    the CRC (a consumer's ``check.crcs``)."""
    if native is not None and len(raw) > 4 and raw[4] == MAGIC:
        header = batch_format.validate(raw) if verify else batch_format.read_header(raw)
        try:
            payload = decompress(header.codec, memoryview(raw)[HEADER_SIZE:])
        except Exception as exc:  # any decoder failure means a corrupt batch
            raise CorruptRecordError(f"record batch payload does not decode: {exc}") from exc
        found = native.parse(payload, header.record_count)
        if found is not None:
            return DecodedBatch.of_native(header, found, base_offset)
        # Another shape (headers, offset gaps) or corrupt: cbor2 reads it or says why.
        header, columns = batch_format.decode_raw(raw, verify=False)
        for name, column in (("key", columns.keys), ("value", columns.values)):
            if not all(x is None or type(x) is bytes for x in column):
                raise CorruptRecordError(f"record batch holds a {name} that is not bytes")
        return DecodedBatch(header, columns, base_offset)
    header, columns = batch_format.decode_raw(raw, verify=verify)
    return DecodedBatch(header, columns, base_offset)


class _NativeColumn:
    """A column of a natively indexed batch as a read-only sequence: the objects are made
    for the items asked for (the slow paths: deserializers, undecodable records)."""

    __slots__ = ("_count", "_get")

    def __init__(self, get: Callable[[int, int], list[Any]], count: int) -> None:
        self._get = get
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            start, stop, _ = index.indices(self._count)
            return self._get(start, max(start, stop))
        if index < 0:
            index += self._count
        return self._get(index, index + 1)[0]


class DecodedBatch:
    """One fetched batch's records, decoded to columns (or, ``native``, indexed in place)
    of which the first ``start`` have been handed out. Keys and values are deserialized
    as they are handed out. Owned by one consumer (its thread)."""

    __slots__ = (
        "first_timestamp",
        "headers",
        "keys",
        "native",
        "offsets",
        "start",
        "ts_deltas",
        "ts_type",
        "values",
    )

    @classmethod
    def of_native(cls, header: BatchHeader, found: Any, base_offset: int) -> DecodedBatch:
        """A native batch with consecutive offsets and no headers (kvlog._records)."""
        self = cls.__new__(cls)
        count = len(found)
        self.native = found
        self.offsets = range(base_offset, base_offset + count)
        self.ts_deltas = _NativeColumn(found.ts_deltas, count)
        self.first_timestamp = header.first_timestamp
        self.ts_type = header.timestamp_type
        self.keys = _NativeColumn(found.keys, count)  # type: ignore[assignment]
        self.values = _NativeColumn(found.values, count)  # type: ignore[assignment]
        self.headers = None
        self.start = 0
        return self

    def __init__(self, header: BatchHeader, columns: Columns, base_offset: int) -> None:
        self.native: Any = None
        deltas = columns.offset_deltas
        if isinstance(deltas, range):
            self.offsets: Sequence[int] = range(
                base_offset + deltas.start, base_offset + deltas.stop
            )
        else:
            self.offsets = [base_offset + d for d in deltas]
        self.ts_deltas = columns.timestamp_deltas
        self.first_timestamp = header.first_timestamp
        self.ts_type = header.timestamp_type
        self.keys: list[Any] = columns.keys
        self.values: list[Any] = columns.values
        self.headers = columns.headers
        self.start = 0

    def __len__(self) -> int:
        return len(self.values) - self.start

    def skip_to(self, position: int) -> None:
        """Drop the records before ``position`` (a fetch starts at the batch holding it)."""
        self.start = max(self.start, bisect_left(self.offsets, position))

    def _slice(self, limit: int) -> tuple[int, int]:
        start = self.start
        return start, min(len(self.values), start + limit)

    def _undecodable(self, index: int, field: str, cause: BaseException) -> UndecodableRecord:
        headers = _headers(self.headers, index, index + 1)
        return UndecodableRecord(
            self.offsets[index],
            field,
            self.keys[index],
            self.values[index],
            headers[0] if headers else NO_HEADERS,
            self.first_timestamp + self.ts_deltas[index],
            cause,
        )

    def _deserialize(
        self,
        start: int,
        stop: int,
        key_deserializer: Deserializer | None,
        value_deserializer: Deserializer | None,
    ) -> tuple[list[Any], list[Any]] | int:
        """Keys and values of records ``start:stop``, or the length of the run that does
        deserialize when a record in it does not (raises UndecodableRecord when that is
        the first one)."""
        try:
            keys = _deserialized(self.keys[start:stop], key_deserializer)
        except _ColumnFailed as failed:
            if failed.index == 0:
                raise self._undecodable(start, "key", failed.cause) from failed.cause
            return failed.index
        try:
            values = _deserialized(self.values[start:stop], value_deserializer)
        except _ColumnFailed as failed:
            if failed.index == 0:
                raise self._undecodable(start, "value", failed.cause) from failed.cause
            return failed.index
        return keys, values

    def take_records(
        self,
        topic: str,
        partition: int,
        limit: int,
        key_deserializer: Deserializer | None,
        value_deserializer: Deserializer | None,
    ) -> list[ConsumerRecord]:
        start, stop = self._slice(limit)
        if self.native is not None and key_deserializer is None and value_deserializer is None:
            out: list[ConsumerRecord] = self.native.records(
                start, stop, topic, partition, self.offsets[0], self.first_timestamp, self.ts_type
            )
            self.start = stop
            return out
        decoded = self._deserialize(start, stop, key_deserializer, value_deserializer)
        if isinstance(decoded, int):  # stop before the record that does not deserialize
            return self.take_records(
                topic, partition, decoded, key_deserializer, value_deserializer
            )
        keys, values = decoded
        if self.native is not None:  # built in C, with the raw sizes
            out = self.native.records(
                start,
                stop,
                topic,
                partition,
                self.offsets[0],
                self.first_timestamp,
                self.ts_type,
                None if key_deserializer is None else keys,
                None if value_deserializer is None else values,
            )
            self.start = stop
            return out
        raw_keys, raw_values = self.keys[start:stop], self.values[start:stop]
        key_sizes = [-1 if k is None else len(k) for k in raw_keys]
        value_sizes = [-1 if v is None else len(v) for v in raw_values]
        headers = _headers(self.headers, start, stop) or [NO_HEADERS] * (stop - start)
        first_ts, ts_type, new = self.first_timestamp, self.ts_type, _tuple_new
        out = [
            new(ConsumerRecord, (topic, partition, o, first_ts + td, k, v, h, ts_type, ks, vs))
            for o, td, k, v, h, ks, vs in zip(
                self.offsets[start:stop],
                self.ts_deltas[start:stop],
                keys,
                values,
                headers,
                key_sizes,
                value_sizes,
                strict=True,
            )
        ]
        self.start = stop  # only once every record was built (a deserializer may raise)
        return out

    def take_columns(
        self,
        topic: str,
        partition: int,
        limit: int,
        key_deserializer: Deserializer | None,
        value_deserializer: Deserializer | None,
    ) -> RecordColumns:
        start, stop = self._slice(limit)
        decoded = self._deserialize(start, stop, key_deserializer, value_deserializer)
        if isinstance(decoded, int):  # stop before the record that does not deserialize
            return self.take_columns(
                topic, partition, decoded, key_deserializer, value_deserializer
            )
        keys, values = decoded
        first_ts = self.first_timestamp
        ts_deltas = self.ts_deltas[start:stop]
        if ts_deltas and ts_deltas.count(ts_deltas[0]) == len(ts_deltas):
            timestamps = [first_ts + ts_deltas[0]] * len(ts_deltas)  # one timestamp for all
        else:
            timestamps = [first_ts + td for td in ts_deltas]
        run = RecordColumns(
            topic,
            partition,
            self.offsets[start:stop],
            timestamps,
            keys,
            values,
            _headers(self.headers, start, stop),
            self.ts_type,
        )
        self.start = stop
        return run


def _deserialized(column: list[Any], deserializer: Deserializer | None) -> list[Any]:
    if deserializer is None:
        return column
    try:
        return [deserializer(x) for x in column]
    except Exception:
        pass  # find which one: the slow path, for the failing column only
    out = []
    for index, x in enumerate(column):
        try:
            out.append(deserializer(x))
        except Exception as exc:
            raise _ColumnFailed(index, exc) from exc
    return out


def _headers(
    column: list[Any] | None, start: int, stop: int
) -> list[Sequence[tuple[str, bytes]]] | None:
    if column is None:
        return None
    return [[(h[0], h[1]) for h in pairs] if pairs else NO_HEADERS for pairs in column[start:stop]]
