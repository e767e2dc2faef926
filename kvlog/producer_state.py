"""Idempotent-producer state: the leader's sequence checks, Kafka's rules, sans-IO.

Each idempotent producer has a producer id and epoch (from the coordinator) and numbers
its records per partition from 0. A batch carries ``base_sequence`` and ``record_count``;
the leader accepts it only if it continues the producer's last sequence, so that a retried
batch is never stored twice and batches are never reordered (up to
``MAX_CACHED_BATCHES`` requests in flight). For every (partition, producer) the table
keeps the epoch and the metadata of the last five batches, so a retry of any of them is
answered with its original offset instead of being appended again.

Rules (Kafka's ``ProducerStateManager``):

- epoch older than the stored one: INVALID_PRODUCER_EPOCH (a newer instance fenced it);
- a batch identical (epoch, first and last sequence) to a cached one: duplicate, answer
  with the cached base offset;
- a newer epoch must start at sequence 0; an unknown producer must start at 0 (else
  UNKNOWN_PRODUCER_ID: its state expired or was never written);
- otherwise the first sequence must be last + 1 (wrapping at 2**31 - 1), else
  OUT_OF_ORDER_SEQUENCE_NUMBER.

``check`` only decides; ``record`` notes an accepted append and writes its row in the
same transaction as the batch.

A transaction marker (a control batch, :mod:`kvlog.control_batch`) carries the producer's
epoch and no sequence: it moves the stored epoch up to its own (a marker written after
the coordinator bumped the epoch fences the old one here, so a zombie's late batch is
INVALID_PRODUCER_EPOCH) and leaves the sequence where it was when the epoch stays the
same (a transactional producer numbers on across its transactions).
"""

from __future__ import annotations

import functools
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import cbor2

from .batch import BatchHeader
from .errors import (
    InvalidProducerEpochError,
    OutOfOrderSequenceNumberError,
    UnknownProducerIdError,
)
from .log import ReadTxn, WriteTxn
from .types import TopicPartition, partition_key

PRODUCERS_TABLE = "producers"
MAX_CACHED_BATCHES = 5
INT32_MAX = 0x7FFFFFFF
DEFAULT_PRODUCER_ID_EXPIRATION_MS = 24 * 60 * 60 * 1000

_PID = struct.Struct(">q")


class BatchMetadata(NamedTuple):
    """One cached batch of a producer (a tuple: one is made per appended batch)."""

    first_seq: int
    last_seq: int
    base_offset: int
    last_offset_delta: int


@dataclass
class ProducerEntry:
    epoch: int
    last_timestamp: int
    batches: deque[BatchMetadata] = field(default_factory=lambda: deque(maxlen=MAX_CACHED_BATCHES))

    @property
    def last_seq(self) -> int:
        return self.batches[-1].last_seq if self.batches else -1

    def encode(self) -> bytes:
        return cbor2.dumps(
            [
                self.epoch,
                self.last_timestamp,
                list(self.batches),  # each a CBOR array, as a list would be
            ]
        )

    @classmethod
    def decode(cls, raw: bytes) -> ProducerEntry:
        epoch, ts, batches = cbor2.loads(raw)
        entry = cls(epoch, ts)
        entry.batches.extend(BatchMetadata(*b) for b in batches)
        return entry


def _in_sequence(last_seq: int, next_seq: int) -> bool:
    return next_seq == last_seq + 1 or (next_seq == 0 and last_seq == INT32_MAX)


def _row_key(tp: TopicPartition, producer_id: int) -> bytes:
    return _partition_prefix(tp) + _PID.pack(producer_id)


@functools.lru_cache(maxsize=1 << 16)
def _partition_prefix(tp: TopicPartition) -> bytes:
    # Kept: the group commit writes a row per appended batch (1,000 partitions: a few
    # thousand a second).
    return partition_key(tp) + b"\x00"


def check_sequence(
    entry: ProducerEntry | None, tp: TopicPartition, header: BatchHeader
) -> int | None:
    """None: append the batch. An int: a duplicate, already stored at that base offset.
    Raises the Kafka error for a fenced or out-of-sequence batch."""
    if header.producer_id < 0:
        return None
    first, last = header.base_sequence, header.last_sequence
    if entry is None:
        if first != 0:
            raise UnknownProducerIdError(
                f"{tp}: no state for producer {header.producer_id} and its batch starts "
                f"at sequence {first}, not 0 (state expired or lost)"
            )
        return None
    if header.producer_epoch < entry.epoch:
        raise InvalidProducerEpochError(
            f"{tp}: producer {header.producer_id} epoch {header.producer_epoch} is older "
            f"than the current epoch {entry.epoch}; a newer instance fenced it"
        )
    if header.producer_epoch > entry.epoch:
        if first != 0:
            raise OutOfOrderSequenceNumberError(
                f"{tp}: producer {header.producer_id} opened epoch {header.producer_epoch} "
                f"at sequence {first}; a new epoch starts at 0"
            )
        return None
    for cached in entry.batches:
        if cached.first_seq == first and cached.last_seq == last:
            return cached.base_offset
    if not _in_sequence(entry.last_seq, first):
        raise OutOfOrderSequenceNumberError(
            f"{tp}: producer {header.producer_id} sent sequence {first} after "
            f"{entry.last_seq}; expected {(entry.last_seq + 1) & INT32_MAX}"
        )
    return None


def after_append(
    entry: ProducerEntry | None, header: BatchHeader, base_offset: int
) -> ProducerEntry:
    """The producer's entry once the batch is appended (a new object; ``entry`` is kept)."""
    if header.is_control:
        return after_marker(entry, header.producer_epoch, header.max_timestamp)
    # One per appended batch: the deque is built whole (the default factory and an
    # extend cost as much as the rest of the leader's Python for the batch).
    cached = BatchMetadata(
        header.base_sequence, header.last_sequence, base_offset, header.last_offset_delta
    )
    if entry is None or header.producer_epoch != entry.epoch:
        return ProducerEntry(
            header.producer_epoch, header.max_timestamp, deque((cached,), MAX_CACHED_BATCHES)
        )
    batches = deque(entry.batches, MAX_CACHED_BATCHES)
    batches.append(cached)
    last = entry.last_timestamp
    return ProducerEntry(
        entry.epoch, last if last > header.max_timestamp else header.max_timestamp, batches
    )


def after_marker(entry: ProducerEntry | None, epoch: int, timestamp: int) -> ProducerEntry:
    """The producer's entry once a transaction marker of ``epoch`` is appended: a newer
    epoch replaces the entry (its sequence starts over at 0); the same epoch keeps it."""
    if entry is None or epoch > entry.epoch:
        return ProducerEntry(epoch, timestamp)
    new = ProducerEntry(entry.epoch, max(entry.last_timestamp, timestamp))
    new.batches.extend(entry.batches)
    return new


_Key = tuple[TopicPartition, int]


class ProducerStateTable:
    """Producer state of every partition one node holds. Owned by that node's loop;
    not thread-safe.

    Appends go through a :meth:`stage`: checks and updates see earlier batches of the same
    transaction, and land in the table only by ``stage.apply()`` once the store commits.
    A failed or re-run transaction simply drops its stage.
    """

    def __init__(self) -> None:
        self._entries: dict[_Key, ProducerEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, tp: TopicPartition, producer_id: int) -> ProducerEntry | None:
        return self._entries.get((tp, producer_id))

    def stage(self) -> ProducerStateStage:
        return ProducerStateStage(self)

    def forget_partition(self, tp: TopicPartition) -> None:
        for key in [k for k in self._entries if k[0] == tp]:
            del self._entries[key]

    def expire(
        self,
        now_ms: int,
        expiration_ms: int,
        keep: Callable[[TopicPartition, int], bool] | None = None,
    ) -> list[_Key]:
        """Drop producers idle longer than ``producer.id.expiration.ms`` from memory (but
        those ``keep`` names); the caller deletes their rows (:func:`delete_producer`) in
        a write transaction."""
        doomed = [
            k
            for k, e in self._entries.items()
            if e.last_timestamp < now_ms - expiration_ms and not (keep and keep(*k))
        ]
        for key in doomed:
            del self._entries[key]
        return doomed

    def load(self, r: ReadTxn, partitions: Iterable[TopicPartition]) -> None:
        """(Re)load the state of ``partitions`` from the store, replacing memory."""
        for tp in partitions:
            self.forget_partition(tp)
            for key, raw in r.items(PRODUCERS_TABLE, _partition_prefix(tp)):
                (pid,) = _PID.unpack_from(key, len(key) - _PID.size)
                self._entries[(tp, pid)] = ProducerEntry.decode(raw)


class ProducerStateStage:
    """Changes of one write transaction, over a table."""

    def __init__(self, table: ProducerStateTable) -> None:
        self._table = table
        self._changed: dict[_Key, ProducerEntry] = {}

    def _entry(self, key: _Key) -> ProducerEntry | None:
        entry = self._changed.get(key)
        return entry if entry is not None else self._table._entries.get(key)

    def entry(self, tp: TopicPartition, producer_id: int) -> ProducerEntry | None:
        """The producer's entry as this transaction sees it."""
        return self._entry((tp, producer_id))

    def check(self, tp: TopicPartition, header: BatchHeader) -> int | None:
        if header.producer_id < 0:
            return None
        return check_sequence(self._entry((tp, header.producer_id)), tp, header)

    def record(
        self, w: WriteTxn, tp: TopicPartition, header: BatchHeader, base_offset: int
    ) -> None:
        """Note an accepted append and write its row in the same transaction."""
        if header.producer_id < 0:
            return
        key = (tp, header.producer_id)
        entry = self._changed[key] = after_append(self._entry(key), header, base_offset)
        w.put(PRODUCERS_TABLE, _row_key(tp, header.producer_id), entry.encode())

    def apply(self) -> None:
        self._table._entries.update(self._changed)
        self._changed = {}


def put_entry(w: WriteTxn, tp: TopicPartition, producer_id: int, entry: ProducerEntry) -> None:
    """Store a producer's entry as is (used when rebuilding state from the log)."""
    w.put(PRODUCERS_TABLE, _row_key(tp, producer_id), entry.encode())


def delete_producer(w: WriteTxn, tp: TopicPartition, producer_id: int) -> None:
    w.delete(PRODUCERS_TABLE, _row_key(tp, producer_id))


def delete_partition_state(w: WriteTxn, tp: TopicPartition) -> None:
    for key in [k for k, _ in w.items(PRODUCERS_TABLE, _partition_prefix(tp))]:
        w.delete(PRODUCERS_TABLE, key)
