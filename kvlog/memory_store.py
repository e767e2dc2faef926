"""The in-memory twin of the LMDB log store.

Same interface and semantics as :class:`kvlog.lmdb_store.LogDir`, nothing on disk. It is
the model the property tests check the LMDB store against, and a store for tests and
throwaway embedded use. A write transaction works on copies of what it touches and
publishes them only when ``fn`` returns, so a failing ``fn`` changes nothing.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from . import batch as batch_format
from .batch import BatchHeader
from .errors import OffsetOutOfRangeError, StorageError, UnknownTopicOrPartitionError
from .log import Batch, BatchReplacement, collect_batches, read_limit, replacement_error
from .types import PartitionOffsets, TopicPartition

T = TypeVar("T")

# LMDB's largest key (its default build); the LMDB store refuses longer and empty keys.
MAX_KEY_SIZE = 511


class _Partition:
    __slots__ = ("bases", "offsets", "values")

    def __init__(self, offsets: PartitionOffsets) -> None:
        self.bases: list[int] = []
        self.values: list[bytes] = []
        self.offsets = offsets

    def copy(self) -> _Partition:
        clone = _Partition(self.offsets)
        clone.bases = list(self.bases)
        clone.values = list(self.values)
        return clone

    def index_containing(self, offset: int) -> int:
        """Index of the batch containing ``offset`` (or the first one after it)."""
        i = bisect.bisect_right(self.bases, offset) - 1
        return max(i, 0)


class _State:
    def __init__(self) -> None:
        self.partitions: dict[TopicPartition, _Partition] = {}
        self.tables: dict[str, dict[bytes, bytes]] = {}


class MemoryLogDir:
    """A log store in memory (implements ``kvlog.log.LogStore``); thread-safe."""

    def __init__(self) -> None:
        self._state = _State()
        self._lock = threading.RLock()
        self.closed = False

    def __repr__(self) -> str:
        return "MemoryLogDir()"

    def write(self, fn: Callable[[_MemoryWrite], T]) -> T:
        with self._lock:
            w = _MemoryWrite(self._state)
            result = fn(w)
            w.publish()
            return result

    @contextmanager
    def reader(self) -> Iterator[_MemoryRead]:
        with self._lock:
            # A snapshot, as an LMDB read transaction is: writes publish new dicts and
            # copy what they change, so the current ones stay as they are.
            snapshot = _State()
            snapshot.partitions = self._state.partitions
            snapshot.tables = self._state.tables
            yield _MemoryRead(snapshot)

    def create_partition(self, tp: TopicPartition, *, start_offset: int = 0) -> bool:
        return self.write(lambda w: w.create_partition(tp, start_offset=start_offset))

    def drop_partition(self, tp: TopicPartition) -> bool:
        return self.write(lambda w: w.drop_partition(tp))

    def has_partition(self, tp: TopicPartition) -> bool:
        with self._lock:
            return tp in self._state.partitions

    def partitions(self) -> list[TopicPartition]:
        with self._lock:
            return sorted(self._state.partitions)

    def close(self) -> None:
        self.closed = True


class _MemoryRead:
    def __init__(self, state: _State) -> None:
        self._state = state

    def _partition(self, tp: TopicPartition) -> _Partition:
        part = self._state.partitions.get(tp)
        if part is None:
            raise UnknownTopicOrPartitionError(f"partition {tp} does not exist in this log dir")
        return part

    def offsets(self, tp: TopicPartition) -> PartitionOffsets:
        return self._partition(tp).offsets

    def read(
        self,
        tp: TopicPartition,
        offset: int,
        max_bytes: int,
        *,
        max_offset: int | None = None,
    ) -> list[tuple[int, bytes]]:
        part = self._partition(tp)
        limit = read_limit(tp, part.offsets, offset, max_offset)
        if offset >= limit or not part.bases:
            return []
        first = part.index_containing(offset)
        return collect_batches(
            zip(part.bases[first:], part.values[first:], strict=True), offset, limit, max_bytes
        )

    def headers(
        self, tp: TopicPartition, start_offset: int | None = None
    ) -> Iterator[tuple[int, int, BatchHeader]]:
        part = self._partition(tp)
        start = 0 if start_offset is None else part.index_containing(start_offset)
        for i in range(start, len(part.bases)):
            yield part.bases[i], len(part.values[i]), batch_format.read_header(part.values[i])

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._state.tables.get(table, {}).get(key)

    def items(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        rows = self._state.tables.get(table, {})
        for key in sorted(rows):
            if key.startswith(prefix):
                yield key, rows[key]


class _MemoryWrite(_MemoryRead):
    """Copy-on-write view: touched partitions and tables are copied, then published."""

    def __init__(self, state: _State) -> None:
        self._base = state
        shadow = _State()
        shadow.partitions = dict(state.partitions)
        shadow.tables = dict(state.tables)
        super().__init__(shadow)
        self._copied: set[object] = set()

    def publish(self) -> None:
        self._base.partitions = self._state.partitions
        self._base.tables = self._state.tables

    def _mutable(self, tp: TopicPartition) -> _Partition:
        part = self._partition(tp)
        if tp not in self._copied:
            part = self._state.partitions[tp] = part.copy()
            self._copied.add(tp)
        return part

    def _table(self, table: str) -> dict[bytes, bytes]:
        key = ("table", table)
        if key not in self._copied:
            self._state.tables[table] = dict(self._state.tables.get(table, {}))
            self._copied.add(key)
        return self._state.tables[table]

    def put(self, table: str, key: bytes, value: bytes) -> None:
        if not 0 < len(key) <= MAX_KEY_SIZE:
            # Refuse what LMDB refuses, so code tested on the model also runs on disk.
            raise StorageError(
                f"table key of {len(key)} bytes: keys are 1 to {MAX_KEY_SIZE} bytes; "
                "nothing was written."
            )
        self._table(table)[bytes(key)] = bytes(value)

    def delete(self, table: str, key: bytes) -> bool:
        return self._table(table).pop(key, None) is not None

    def create_partition(self, tp: TopicPartition, *, start_offset: int = 0) -> bool:
        if tp in self._state.partitions:
            return False
        self._state.partitions[tp] = _Partition(
            PartitionOffsets(start_offset, start_offset, start_offset, 0)
        )
        self._copied.add(tp)
        return True

    def drop_partition(self, tp: TopicPartition) -> bool:
        return self._state.partitions.pop(tp, None) is not None

    def append(
        self,
        tp: TopicPartition,
        batches: Sequence[Batch],
        *,
        leader_epoch: int | None = None,
        advance_high_watermark: bool = True,
    ) -> list[int]:
        part = self._mutable(tp)
        state = part.offsets
        leo = state.log_end_offset
        size = state.size_bytes
        bases = []
        # Validate every batch before storing any: a caller that catches the error (a
        # group commit refusing one producer's batch) must not find half of them stored.
        headers = [batch_format.validate(batch) for batch in batches]
        for batch, header in zip(batches, headers, strict=True):
            value = (
                bytes(batch)
                if leader_epoch is None
                else batch_format.stamp_leader_epoch(batch, leader_epoch)
            )
            part.bases.append(leo)
            part.values.append(value)
            bases.append(leo)
            leo += header.last_offset_delta + 1
            size += len(value)
        hw = leo if advance_high_watermark else state.high_watermark
        part.offsets = PartitionOffsets(state.log_start_offset, hw, leo, size)
        return bases

    def append_at(self, tp: TopicPartition, base_offset: int, batch: Batch) -> None:
        part = self._mutable(tp)
        state = part.offsets
        if base_offset < state.log_end_offset:
            raise OffsetOutOfRangeError(
                f"partition {tp}: cannot append at {base_offset}, below the log end "
                f"offset {state.log_end_offset}; truncate first"
            )
        header = batch_format.validate(batch)
        part.bases.append(base_offset)
        part.values.append(bytes(batch))
        part.offsets = state._replace(
            log_end_offset=base_offset + header.last_offset_delta + 1,
            size_bytes=state.size_bytes + len(batch),
        )

    def set_high_watermark(self, tp: TopicPartition, offset: int) -> None:
        part = self._mutable(tp)
        state = part.offsets
        if not state.log_start_offset <= offset <= state.log_end_offset:
            raise ValueError(
                f"high watermark {offset} outside {state.log_start_offset}..{state.log_end_offset}"
            )
        part.offsets = state._replace(high_watermark=offset)

    def truncate_to(self, tp: TopicPartition, offset: int) -> PartitionOffsets:
        part = self._mutable(tp)
        state = part.offsets
        if offset >= state.log_end_offset:
            return state
        size = state.size_bytes
        leo = state.log_start_offset
        while part.bases:
            end = batch_format.next_offset(part.bases[-1], part.values[-1])
            if end <= offset:
                leo = end
                break
            size -= len(part.values[-1])
            part.bases.pop()
            part.values.pop()
        leo = max(leo, state.log_start_offset)
        part.offsets = PartitionOffsets(
            state.log_start_offset, min(state.high_watermark, leo), leo, size
        )
        return part.offsets

    def delete_before(self, tp: TopicPartition, offset: int) -> PartitionOffsets:
        part = self._mutable(tp)
        state = part.offsets
        offset = min(offset, state.high_watermark)
        if offset <= state.log_start_offset:
            return state
        drop = 0
        size = state.size_bytes
        while drop < len(part.bases) and (
            batch_format.next_offset(part.bases[drop], part.values[drop]) <= offset
        ):
            size -= len(part.values[drop])
            drop += 1
        del part.bases[:drop]
        del part.values[:drop]
        part.offsets = state._replace(log_start_offset=offset, size_bytes=size)
        return part.offsets

    def replace_batches(
        self, tp: TopicPartition, replacements: Sequence[BatchReplacement]
    ) -> list[bool]:
        part = self._mutable(tp)
        state = part.offsets
        size = state.size_bytes
        applied = []
        for base, expected, new in replacements:
            problem = replacement_error(tp, base, expected, new)
            if problem is not None:
                raise ValueError(problem)
            i = bisect.bisect_left(part.bases, base)
            fits = (
                i < len(part.bases)
                and part.bases[i] == base
                and part.values[i] == bytes(expected)
                and batch_format.next_offset(base, part.values[i]) <= state.high_watermark
                and (new is not None or i != len(part.bases) - 1)
            )
            if fits:
                size -= len(part.values[i])
                if new is None:
                    del part.bases[i]
                    del part.values[i]
                else:
                    part.values[i] = bytes(new)
                    size += len(new)
            applied.append(fits)
        part.offsets = state._replace(size_bytes=size)
        return applied

    def reset(self, tp: TopicPartition, offset: int) -> PartitionOffsets:
        part = self._mutable(tp)
        part.bases.clear()
        part.values.clear()
        part.offsets = PartitionOffsets(offset, offset, offset, 0)
        return part.offsets
