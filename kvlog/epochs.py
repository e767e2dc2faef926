"""The leader-epoch cache: at which offset each leader epoch of a partition began.

Kafka's leader-epoch checkpoint, kept in the log store's ``epochs`` table so it commits
in the same transaction as the batches that open an epoch. A replica that follows a new
leader asks it where the replica's latest epoch ended (:func:`end_offset_for_epoch`) and
truncates everything past that, so replicas never diverge: a suffix written by a leader
that lost its leadership before replicating it is cut, whatever offsets it used.

Entries: ``(epoch, start_offset)``, both strictly increasing.
"""

from __future__ import annotations

import struct

from .log import ReadTxn, WriteTxn
from .types import TopicPartition, partition_key

EPOCHS_TABLE = "epochs"
UNDEFINED = -1

_EPOCH = struct.Struct(">i")
_OFFSET = struct.Struct(">q")


def _prefix(tp: TopicPartition) -> bytes:
    return partition_key(tp) + b"\x00"


def entries(r: ReadTxn, tp: TopicPartition) -> list[tuple[int, int]]:
    """All ``(epoch, start_offset)`` of the partition, oldest first."""
    prefix = _prefix(tp)
    return [
        (_EPOCH.unpack_from(key, len(prefix))[0], _OFFSET.unpack(value)[0])
        for key, value in r.items(EPOCHS_TABLE, prefix)
    ]


def latest(r: ReadTxn, tp: TopicPartition) -> tuple[int, int] | None:
    found = entries(r, tp)
    return found[-1] if found else None


def record(w: WriteTxn, tp: TopicPartition, epoch: int, start_offset: int) -> bool:
    """Note that ``epoch`` begins at ``start_offset`` if it is newer than the latest."""
    last = latest(w, tp)
    if last is not None and epoch <= last[0]:
        return False
    w.put(EPOCHS_TABLE, _prefix(tp) + _EPOCH.pack(epoch), _OFFSET.pack(start_offset))
    return True


def end_offset_for_epoch(
    r: ReadTxn, tp: TopicPartition, epoch: int, log_end_offset: int
) -> tuple[int, int]:
    """Kafka's OffsetsForLeaderEpoch: ``(largest epoch <= epoch, its end offset)``.

    The end offset is where the next newer epoch starts, or the log end offset when that
    epoch is the latest. When every cached epoch is newer than ``epoch`` the answer is
    ``(-1, start of the earliest cached epoch)``: every epoch that holds data is cached,
    so a history can only be shared below that offset.
    """
    found = entries(r, tp)
    for i in range(len(found) - 1, -1, -1):
        cached, _start = found[i]
        if cached <= epoch:
            end = found[i + 1][1] if i + 1 < len(found) else log_end_offset
            return cached, end
    return UNDEFINED, found[0][1] if found else log_end_offset


def truncate_from(w: WriteTxn, tp: TopicPartition, offset: int) -> None:
    """Forget epochs that start at or after ``offset`` (after the log was truncated)."""
    prefix = _prefix(tp)
    for epoch, start in entries(w, tp):
        if start >= offset:
            w.delete(EPOCHS_TABLE, prefix + _EPOCH.pack(epoch))


def clear(w: WriteTxn, tp: TopicPartition) -> None:
    prefix = _prefix(tp)
    for key in [k for k, _ in w.items(EPOCHS_TABLE, prefix)]:
        w.delete(EPOCHS_TABLE, key)
