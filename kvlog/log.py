"""The partition log interface, shared by the LMDB store and its in-memory twin.

A *log store* is one log dir: many partitions plus small key-value tables (topic metadata,
committed offsets, producer state) that must commit atomically with appends. All writes
go through ``store.write(fn)``: ``fn`` gets a :class:`WriteTxn` and everything it does
commits together, durably (fsync) before ``write`` returns, or not at all. ``fn`` may be
run more than once (the LMDB store re-runs it after growing its map), so it must have no
side effects outside the transaction.

Offsets of a partition: ``log_start_offset <= high_watermark <= log_end_offset``. Batches
are stored whole, keyed by base offset. Reading from offset N returns whole batches
starting with the one that contains N; the reader skips records before N.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol, TypeVar

from . import batch as batch_format
from .batch import BatchHeader
from .errors import OffsetOutOfRangeError
from .types import PartitionOffsets, TopicPartition

T = TypeVar("T")
Batch = bytes | memoryview


def read_limit(
    tp: TopicPartition, state: PartitionOffsets, offset: int, max_offset: int | None
) -> int:
    """Where a read from ``offset`` stops (exclusive): the LEO, or ``max_offset`` if lower.
    Raises OffsetOutOfRangeError for an offset below the log start or past the LEO."""
    if offset < state.log_start_offset or offset > state.log_end_offset:
        raise OffsetOutOfRangeError(
            f"offset {offset} is out of range for {tp}: valid offsets are "
            f"{state.log_start_offset}..{state.log_end_offset}",
            log_start_offset=state.log_start_offset,
            log_end_offset=state.log_end_offset,
        )
    if max_offset is None:
        return state.log_end_offset
    return min(max_offset, state.log_end_offset)


def collect_batches(
    batches: Iterable[tuple[int, Batch]], offset: int, limit: int, max_bytes: int
) -> list[tuple[int, bytes]]:
    """Whole batches from the one holding ``offset`` (``batches`` start there or just
    before), stopping at ``limit`` and before ``max_bytes``, but never returning none."""
    out: list[tuple[int, bytes]] = []
    total = 0
    for base, value in batches:
        if base >= limit:
            break
        if batch_format.next_offset(base, value) <= offset:
            continue  # a gap: this batch ends before the requested offset
        if out and total + len(value) > max_bytes:
            break
        out.append((base, bytes(value)))
        total += len(value)
    return out


class BatchReplacement(NamedTuple):
    """Compaction's change to one stored batch: at ``base_offset``, the batch that is
    exactly ``expected`` becomes ``new`` (the same base and last offset, fewer records),
    or goes when ``new`` is None."""

    base_offset: int
    expected: Batch
    new: Batch | None


def replacement_error(
    tp: TopicPartition, base: int, expected: Batch, new: Batch | None
) -> str | None:
    """Why ``new`` cannot stand in for ``expected`` at ``base`` (None: it can). Shared by
    both stores: a replacement keeps the batch's base and last offsets true, validates,
    and holds no more records than the batch it replaces."""
    if new is None:
        return None
    old = batch_format.read_header(expected)
    header = batch_format.validate(new)
    if header.last_offset_delta != old.last_offset_delta:
        return (
            f"{tp}: the replacement of the batch at {base} ends at delta "
            f"{header.last_offset_delta}, not {old.last_offset_delta}"
        )
    if header.record_count > old.record_count:
        return f"{tp}: the replacement of the batch at {base} holds more records than it"
    return None


class WriteTxn(Protocol):
    """One atomic, durable write transaction on a log store."""

    def offsets(self, tp: TopicPartition) -> PartitionOffsets: ...

    def append(
        self,
        tp: TopicPartition,
        batches: Sequence[Batch],
        *,
        leader_epoch: int | None = None,
        advance_high_watermark: bool = True,
    ) -> list[int]:
        """Validate (header + CRC) and append batches; returns their base offsets.

        ``leader_epoch`` stamps each batch's partition_leader_epoch. With
        ``advance_high_watermark`` (a leader with no followers) the high watermark moves
        to the new log end offset in the same transaction.
        """
        ...

    def append_at(self, tp: TopicPartition, base_offset: int, batch: Batch) -> None:
        """Append a batch at the offset its leader gave it (followers); must be >= LEO."""
        ...

    def set_high_watermark(self, tp: TopicPartition, offset: int) -> None: ...

    def truncate_to(self, tp: TopicPartition, offset: int) -> PartitionOffsets:
        """Remove every batch that does not end below ``offset`` (followers)."""
        ...

    def delete_before(self, tp: TopicPartition, offset: int) -> PartitionOffsets:
        """Move the log start to ``offset`` (capped at the high watermark; never
        backwards) and drop whole batches that end at or below it (retention,
        DeleteRecords)."""
        ...

    def reset(self, tp: TopicPartition, offset: int) -> PartitionOffsets:
        """Drop everything and restart the partition empty at ``offset``."""
        ...

    def replace_batches(
        self, tp: TopicPartition, replacements: Sequence[BatchReplacement]
    ) -> list[bool]:
        """Compaction: swap batches in place at their base offsets, or remove them.

        A replacement applies only where the stored batch is still byte for byte its
        ``expected`` and ends at or below the high watermark, and never removes the last
        batch (it marks the log end); else it is skipped (False: retention, DeleteRecords
        or a truncation got there first). Offsets (log start, high watermark, log end) never
        change; ``size_bytes`` follows. Raises ValueError for a replacement that does not
        keep the batch's base and last offset or holds more records
        (:func:`replacement_error`), CorruptRecordError for one that does not validate.
        """
        ...

    def get(self, table: str, key: bytes) -> bytes | None: ...

    def put(self, table: str, key: bytes, value: bytes) -> None: ...

    def delete(self, table: str, key: bytes) -> bool: ...

    def items(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]: ...


class ReadTxn(Protocol):
    """A consistent snapshot of a log store."""

    def offsets(self, tp: TopicPartition) -> PartitionOffsets: ...

    def read(
        self,
        tp: TopicPartition,
        offset: int,
        max_bytes: int,
        *,
        max_offset: int | None = None,
    ) -> list[tuple[int, bytes]]:
        """Whole batches ``(base_offset, bytes)`` from the one containing ``offset``.

        Stops before ``max_bytes`` is exceeded, but always returns at least one batch when
        there is one (so a consumer always progresses). Batches at or past ``max_offset``
        (the high watermark, for consumers) are not returned. Raises
        OffsetOutOfRangeError when ``offset`` is below the log start or past the LEO.
        """
        ...

    def headers(
        self, tp: TopicPartition, start_offset: int | None = None
    ) -> Iterator[tuple[int, int, BatchHeader]]:
        """``(base_offset, size_bytes, header)`` of each batch from ``start_offset``
        (default: the first batch), oldest first, without copying payloads."""
        ...

    def get(self, table: str, key: bytes) -> bytes | None: ...

    def items(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]: ...


class LogStore(Protocol):
    """One log dir. Owned by one process; see each implementation for thread-safety."""

    def create_partition(self, tp: TopicPartition, *, start_offset: int = 0) -> bool:
        """Create an empty partition; False if it exists already."""
        ...

    def drop_partition(self, tp: TopicPartition) -> bool: ...

    def has_partition(self, tp: TopicPartition) -> bool: ...

    def partitions(self) -> list[TopicPartition]: ...

    def write(self, fn: Callable[[WriteTxn], T]) -> T: ...

    def reader(self) -> AbstractContextManager[ReadTxn]: ...

    def close(self) -> None: ...


class PartitionLog:
    """One partition of a log store, with each operation in its own transaction.

    The convenient face of the log for embedding and tests; the node process batches
    many partitions into one ``store.write`` instead (group commit).
    """

    def __init__(self, store: LogStore, tp: TopicPartition, *, create: bool = True) -> None:
        self.store = store
        self.tp = tp
        if create:
            store.create_partition(tp)

    def __repr__(self) -> str:
        return f"PartitionLog({self.tp.topic!r}, {self.tp.partition})"

    def append(self, batches: Sequence[Batch], *, leader_epoch: int | None = None) -> list[int]:
        return self.store.write(lambda w: w.append(self.tp, batches, leader_epoch=leader_epoch))

    def append_at(self, base_offset: int, batch: Batch) -> None:
        self.store.write(lambda w: w.append_at(self.tp, base_offset, batch))

    def read(
        self, offset: int, max_bytes: int = 1 << 20, *, max_offset: int | None = None
    ) -> list[tuple[int, bytes]]:
        with self.store.reader() as r:
            return r.read(self.tp, offset, max_bytes, max_offset=max_offset)

    def offsets(self) -> PartitionOffsets:
        with self.store.reader() as r:
            return r.offsets(self.tp)

    @property
    def log_start_offset(self) -> int:
        return self.offsets().log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self.offsets().log_end_offset

    @property
    def high_watermark(self) -> int:
        return self.offsets().high_watermark

    @property
    def size_bytes(self) -> int:
        return self.offsets().size_bytes

    def set_high_watermark(self, offset: int) -> None:
        self.store.write(lambda w: w.set_high_watermark(self.tp, offset))

    def truncate_to(self, offset: int) -> PartitionOffsets:
        return self.store.write(lambda w: w.truncate_to(self.tp, offset))

    def delete_before(self, offset: int) -> PartitionOffsets:
        return self.store.write(lambda w: w.delete_before(self.tp, offset))

    def reset(self, offset: int) -> PartitionOffsets:
        return self.store.write(lambda w: w.reset(self.tp, offset))

    def headers(self, start_offset: int | None = None) -> list[tuple[int, int, BatchHeader]]:
        with self.store.reader() as r:
            return list(r.headers(self.tp, start_offset))
