"""Transactions in a partition's log, sans-IO: open transactions, the last stable offset and
the aborted-transactions index (Kafka's ProducerStateManager and TransactionIndex).

A transactional producer's batches (attribute bit 4) open a transaction in each partition
they land in, at the offset of its first batch there; the transaction's marker (a control
batch, :mod:`kvlog.control_batch`) closes it. Per partition a node keeps:

- the **open transactions**: producer id -> ``(first offset, end offset)``; the end offset
  is -1 until the marker is written, then the marker's offset. A closed transaction stays
  *unstable* until the high watermark passes its marker (every in-sync replica has the
  decision), as in Kafka, then it is forgotten;
- the **last stable offset** (LSO): the first offset of the oldest unstable transaction,
  or the high watermark if there is none (never below the log start: retention may have
  removed an open transaction's first batches). ``read_committed`` readers read below it;
- the **aborted index**: ``(producer id, first offset, last offset)`` of every aborted
  transaction, the last offset being its abort marker's. A fetch hands a
  ``read_committed`` reader the entries overlapping what it returns, and the reader drops
  those producers' records within those ranges. Entries that end below the log start
  are purged.

Both live in the log store's tables (``txn_open``, ``txn_aborted``), written in the same
transaction as the batches that change them, and are loaded at start, so they survive
restarts; a follower computes the same from the batches it copies (so its LSO matches the
leader's at the same high watermark), and rebuilds them from the log's headers after a
truncation, keeping what the log cannot show: transactions begun below the log start
(:func:`rebuild`). Compaction (another process) removes an abort marker with no data
left together with its aborted-index row (:func:`forget_aborted`); fetches serve only
entries whose rows are stored (:func:`stored_aborted`). Changes go through a
:meth:`TxnStateTable.stage`, applied only once the write commits, like
:mod:`kvlog.producer_state`.

Rules at append (the leader's, via :meth:`TxnStage.check`): a non-transactional batch of
a producer with an open transaction in the partition is INVALID_TXN_STATE (Kafka's rule).
Which markers to write is :func:`marker_needed`.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from . import control_batch
from .batch import BatchHeader
from .errors import InvalidTxnStateError
from .log import ReadTxn, WriteTxn
from .producer_state import ProducerEntry
from .types import TopicPartition, partition_key

OPEN_TABLE = "txn_open"
ABORTED_TABLE = "txn_aborted"

_Q = struct.Struct(">q")
_QQ = struct.Struct(">qq")


class OpenTxn(NamedTuple):
    first_offset: int
    end_offset: int = -1  # the marker's offset once written


class AbortedTxn(NamedTuple):
    producer_id: int
    first_offset: int
    last_offset: int  # the abort marker's offset


@dataclass
class PartitionTxns:
    """One partition's open transactions and aborted index (a value: copied to change)."""

    open: dict[int, OpenTxn] = field(default_factory=dict)
    aborted: list[AbortedTxn] = field(default_factory=list)  # by last offset

    def copy(self) -> PartitionTxns:
        return PartitionTxns(dict(self.open), list(self.aborted))

    def first_unstable(self, high_watermark: int) -> int | None:
        """The first offset of the oldest transaction still open, or closed by a marker
        the high watermark has not passed."""
        return min(
            (
                t.first_offset
                for t in self.open.values()
                if t.end_offset < 0 or t.end_offset >= high_watermark
            ),
            default=None,
        )

    def last_stable_offset(self, high_watermark: int, log_start_offset: int) -> int:
        first = self.first_unstable(high_watermark)
        lso = high_watermark if first is None else min(high_watermark, first)
        return max(lso, log_start_offset)

    def open_below(self, log_start_offset: int) -> list[tuple[int, int]]:
        """``(producer id, first offset)`` of the transactions that began below the log
        start and are not decided below it: what a replica reset at the log start cannot
        learn from the log (:func:`rebuild`)."""
        return [
            (pid, t.first_offset)
            for pid, t in self.open.items()
            if t.first_offset < log_start_offset
            and (t.end_offset < 0 or t.end_offset >= log_start_offset)
        ]

    def aborted_between(self, start: int, end: int) -> list[AbortedTxn]:
        """Aborted transactions overlapping offsets ``[start, end)``."""
        i = bisect.bisect_left(self.aborted, start, key=lambda a: a.last_offset)
        return [a for a in self.aborted[i:] if a.first_offset < end]


_EMPTY = PartitionTxns()


def _prefix(tp: TopicPartition) -> bytes:
    return partition_key(tp) + b"\x00"


def _open_key(tp: TopicPartition, producer_id: int) -> bytes:
    return _prefix(tp) + _Q.pack(producer_id)


def _aborted_key(tp: TopicPartition, aborted: AbortedTxn) -> bytes:
    return _prefix(tp) + _QQ.pack(aborted.last_offset, aborted.producer_id)


def _rows(r: ReadTxn, tp: TopicPartition) -> PartitionTxns:
    """A partition's rows as stored."""
    part = PartitionTxns()
    prefix = _prefix(tp)
    for key, raw in r.items(OPEN_TABLE, prefix):
        (pid,) = _Q.unpack_from(key, len(prefix))
        part.open[pid] = OpenTxn(*_QQ.unpack(raw))
    for key, raw in r.items(ABORTED_TABLE, prefix):
        last, pid = _QQ.unpack_from(key, len(prefix))
        part.aborted.append(AbortedTxn(pid, _Q.unpack(raw)[0], last))
    return part


def marker_needed(
    txns: PartitionTxns, producer: ProducerEntry | None, producer_id: int, epoch: int
) -> bool:
    """Whether a marker of (``producer_id``, ``epoch``) must be written to the partition.

    Yes when the producer has a transaction open there, or when the marker's epoch is
    newer than the stored one (the coordinator bumped it: the marker fences the old epoch,
    so a zombie's late batch is refused). No for a marker of an older epoch than the
    stored one (stale), or a repeat of one already written (the coordinator retries
    markers until every leader answered): so writing markers is idempotent."""
    if producer is not None and epoch < producer.epoch:
        return False
    current = txns.open.get(producer_id)
    if current is not None and current.end_offset < 0:
        return True
    return producer is None or epoch > producer.epoch


class TxnStateTable:
    """Transaction state of every partition one node holds. Owned by that node's loop;
    not thread-safe."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, PartitionTxns] = {}

    def partition(self, tp: TopicPartition) -> PartitionTxns:
        return self._parts.get(tp, _EMPTY)

    def last_stable_offset(
        self, tp: TopicPartition, high_watermark: int, log_start_offset: int
    ) -> int:
        return self.partition(tp).last_stable_offset(high_watermark, log_start_offset)

    def aborted(self, tp: TopicPartition, start: int, end: int) -> list[AbortedTxn]:
        return self.partition(tp).aborted_between(start, end)

    def forget_partition(self, tp: TopicPartition) -> None:
        self._parts.pop(tp, None)

    def stage(self) -> TxnStage:
        return TxnStage(self)

    def load(self, r: ReadTxn, partitions: Iterable[TopicPartition]) -> None:
        """(Re)load ``partitions`` from the store, replacing memory."""
        for tp in partitions:
            part = _rows(r, tp)
            if part.open or part.aborted:
                self._parts[tp] = part
            else:
                self._parts.pop(tp, None)


class TxnStage:
    """The changes of one write transaction, over a table (dropped if the write fails or
    runs again)."""

    def __init__(self, table: TxnStateTable) -> None:
        self._table = table
        self._changed: dict[TopicPartition, PartitionTxns] = {}

    def partition(self, tp: TopicPartition) -> PartitionTxns:
        part = self._changed.get(tp)
        return part if part is not None else self._table.partition(tp)

    def _mutable(self, tp: TopicPartition) -> PartitionTxns:
        part = self._changed.get(tp)
        if part is None:
            part = self._changed[tp] = self._table.partition(tp).copy()
        return part

    def check(self, tp: TopicPartition, header: BatchHeader) -> None:
        """Refuse a non-transactional batch of a producer whose transaction is open here."""
        if header.producer_id < 0 or header.is_transactional or header.is_control:
            return
        current = self.partition(tp).open.get(header.producer_id)
        if current is not None and current.end_offset < 0:
            raise InvalidTxnStateError(
                f"{tp}: producer {header.producer_id} has a transaction open here, so its "
                "batches must be transactional until the transaction ends"
            )

    def record(
        self,
        w: WriteTxn,
        tp: TopicPartition,
        header: BatchHeader,
        base_offset: int,
        batch: bytes | memoryview,
    ) -> None:
        """Note an appended batch (data or marker) and write the rows it changes."""
        pid = header.producer_id
        if pid < 0:
            return
        if header.is_control:
            self._close(w, tp, pid, base_offset, control_batch.marker_type(batch))
        elif header.is_transactional:
            current = self.partition(tp).open.get(pid)
            if current is None or current.end_offset >= 0:
                opened = OpenTxn(base_offset)
                self._mutable(tp).open[pid] = opened
                w.put(OPEN_TABLE, _open_key(tp, pid), _QQ.pack(*opened))

    def _close(self, w: WriteTxn, tp: TopicPartition, pid: int, at: int, marker: int) -> None:
        current = self.partition(tp).open.get(pid)
        if current is None or current.end_offset >= 0:
            return  # nothing open: the marker only moves the producer's epoch
        part = self._mutable(tp)
        closed = part.open[pid] = OpenTxn(current.first_offset, at)
        w.put(OPEN_TABLE, _open_key(tp, pid), _QQ.pack(*closed))
        if marker == control_batch.ABORT:
            aborted = AbortedTxn(pid, current.first_offset, at)
            bisect.insort(part.aborted, aborted, key=lambda a: a.last_offset)
            w.put(ABORTED_TABLE, _aborted_key(tp, aborted), _Q.pack(aborted.first_offset))

    def settle(self, w: WriteTxn, tp: TopicPartition, high_watermark: int) -> None:
        """Forget closed transactions whose marker the high watermark has passed."""
        done = [
            pid for pid, t in self.partition(tp).open.items() if 0 <= t.end_offset < high_watermark
        ]
        if not done:
            return
        part = self._mutable(tp)
        for pid in done:
            del part.open[pid]
            w.delete(OPEN_TABLE, _open_key(tp, pid))

    def purge(self, w: WriteTxn, tp: TopicPartition, log_start_offset: int) -> None:
        """Drop aborted-index entries that end below the log start (nothing left to drop)."""
        current = self.partition(tp).aborted
        if not current or current[0].last_offset >= log_start_offset:
            return
        part = self._mutable(tp)
        keep = bisect.bisect_left(part.aborted, log_start_offset, key=lambda a: a.last_offset)
        for aborted in part.aborted[:keep]:
            w.delete(ABORTED_TABLE, _aborted_key(tp, aborted))
        del part.aborted[:keep]

    def apply(self) -> None:
        for tp, part in self._changed.items():
            if part.open or part.aborted:
                self._table._parts[tp] = part
            else:
                self._table._parts.pop(tp, None)
        self._changed = {}


def forget_aborted(w: WriteTxn, tp: TopicPartition, producer_id: int, last_offset: int) -> None:
    """Delete the aborted-index row of the transaction whose abort marker was at
    ``last_offset`` (the cleaner removed that marker and every batch of it). A node
    holding the entry in memory no longer serves it (:func:`stored_aborted`) and forgets
    it when the log start passes it."""
    w.delete(ABORTED_TABLE, _aborted_key(tp, AbortedTxn(producer_id, -1, last_offset)))


def stored_aborted(r: ReadTxn, tp: TopicPartition, entries: list[AbortedTxn]) -> list[AbortedTxn]:
    """``entries`` whose rows are still stored: the cleaner (another process) deletes the
    row of an abort it removed with its marker."""
    return [a for a in entries if r.get(ABORTED_TABLE, _aborted_key(tp, a)) is not None]


def clear(w: WriteTxn, tp: TopicPartition) -> None:
    """Delete a partition's rows (it was dropped or restarted empty); the caller forgets
    it in memory (:meth:`TxnStateTable.forget_partition`) or reloads it."""
    prefix = _prefix(tp)
    for table in (OPEN_TABLE, ABORTED_TABLE):
        for key in [k for k, _ in w.items(table, prefix)]:
            w.delete(table, key)


def scan(r: ReadTxn, tp: TopicPartition, high_watermark: int) -> PartitionTxns:
    """A partition's transactions as its log shows them: every batch header, and the
    payload of control batches only. Closed transactions whose marker the high watermark
    passed are left out (nothing unstable about them). A transaction whose first batches
    retention or DeleteRecords removed is beyond its sight: memory keeps it (loaded from
    the rows), a rebuild after a truncation does not."""
    opened: dict[int, OpenTxn] = {}
    aborted: list[AbortedTxn] = []
    for base, _size, header in r.headers(tp):
        pid = header.producer_id
        if pid < 0:
            continue
        current = opened.get(pid)
        if header.is_control:
            if current is None or current.end_offset >= 0:
                continue
            [(_, batch)] = r.read(tp, base, 1)[:1]
            opened[pid] = OpenTxn(current.first_offset, base)
            if control_batch.marker_type(batch) == control_batch.ABORT:
                aborted.append(AbortedTxn(pid, current.first_offset, base))
        elif header.is_transactional and (current is None or current.end_offset >= 0):
            opened[pid] = OpenTxn(base)
    kept = {p: t for p, t in opened.items() if t.end_offset < 0 or t.end_offset >= high_watermark}
    return PartitionTxns(kept, aborted)


def rebuild(
    w: WriteTxn,
    tp: TopicPartition,
    high_watermark: int,
    leader_open: Iterable[tuple[int, int]] | None = None,
) -> None:
    """Recompute a partition's rows from the batches its log holds (after a truncation
    cut markers or transactions off); the caller reloads it in memory afterwards.

    The log cannot show a transaction whose first batches retention or DeleteRecords
    removed while it was open, yet it holds the LSO at the log start until its marker
    (Kafka keeps producer state snapshots for it). Such a transaction is carried over
    from the rows as they were (the truncation left them as they were: it only cut the
    log's end), reopened if the truncation took its marker; or, when the log was reset
    at the leader's log start (``leader_open``: the ``(producer id, first offset)`` the
    leader has open below its log start), from the leader's view, as this replica may
    never have held them."""
    before = _rows(w, tp)
    clear(w, tp)
    found = scan(w, tp, high_watermark)
    state = w.offsets(tp)
    start, end = state.log_start_offset, state.log_end_offset
    if leader_open is None:
        carried = {pid: t for pid, t in before.open.items() if t.first_offset < start}
        carried_aborted = [
            a for a in before.aborted if a.first_offset < start and a.last_offset < end
        ]
    else:
        carried = {pid: OpenTxn(first) for pid, first in leader_open if first < start}
        carried_aborted = []
    for pid, t in carried.items():
        marker = t.end_offset if 0 <= t.end_offset < end else -1
        if 0 <= marker < high_watermark:
            found.open.pop(pid, None)  # decided and stable: nothing to keep
        else:
            found.open[pid] = OpenTxn(t.first_offset, marker)
    for entry in carried_aborted:
        # The scan saw this abort from its first batch left, if any: where it began is
        # the rows' (and the leader's).
        found.aborted = [
            a
            for a in found.aborted
            if (a.producer_id, a.last_offset) != (entry.producer_id, entry.last_offset)
        ]
        bisect.insort(found.aborted, entry, key=lambda a: a.last_offset)
    for pid, t in found.open.items():
        w.put(OPEN_TABLE, _open_key(tp, pid), _QQ.pack(*t))
    for entry in found.aborted:
        w.put(ABORTED_TABLE, _aborted_key(tp, entry), _Q.pack(entry.first_offset))


__all__ = [
    "ABORTED_TABLE",
    "OPEN_TABLE",
    "AbortedTxn",
    "OpenTxn",
    "PartitionTxns",
    "TxnStage",
    "TxnStateTable",
    "clear",
    "forget_aborted",
    "marker_needed",
    "rebuild",
    "scan",
    "stored_aborted",
]
