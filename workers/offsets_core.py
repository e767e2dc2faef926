"""Committed group offsets, without sockets: OffsetCommit and OffsetFetch.

Committed offsets live in the coordinator's store (``t/offsets``, one key per group and
partition; :mod:`kvlog.metadata_store`), so they survive restarts and commit atomically.
Who may commit is the group's business: :meth:`workers.group_core.GroupCoordinator.
admit_commit` decides it (generation fencing, standalone commits only while the group has
no members), so both wires fence commits the same way. A commit is durable (fsync'd)
before its reply leaves. The committed offset is the next offset to read, as in Kafka.

Each request is an event (:mod:`workers.group_events`) with the shell's ``token`` and
``now_ms`` (the commit timestamp); the answer is one :class:`workers.core_result.Result`.

Transactional offsets (Kafka's TxnOffsetCommit, KIP-98): a transactional producer's
offsets for a group wait in their own table (``t/txn_offsets``, per group, producer id and
partition) and are not what OffsetFetch returns; the transaction coordinator
(:mod:`workers.txn_core`) decides who may store them (:meth:`OffsetsCore.stage_txn`) and,
in the same durable write that records its decision, makes them the group's committed
offsets or drops them (:meth:`OffsetsCore.end_txn`): the offsets commit exactly when the
transaction's records do.
"""

from __future__ import annotations

import struct
from typing import Any

import cbor2

from kvlog.errors import (
    FencedInstanceIdError,
    IllegalGenerationError,
    KvlogError,
    OffsetMetadataTooLargeError,
    UnknownMemberIdError,
)
from kvlog.log import LogStore, WriteTxn
from kvlog.metadata_store import CommittedOffset, commit_offset, group_offsets
from kvlog.types import TopicPartition

from .core_result import Result
from .group_core import GroupCoordinator
from .group_events import (
    CommitEntry,
    FetchedOffset,
    OffsetCommit,
    OffsetCommitAnswer,
    OffsetFetch,
    OffsetFetchAnswer,
    PartitionCommitted,
)

MAX_METADATA_BYTES = 4096
TXN_OFFSETS_TABLE = "txn_offsets"

_LEN = struct.Struct(">H")
_PID = struct.Struct(">q")
_PARTITION = struct.Struct(">I")


def _pending_prefix(group: str, producer_id: int) -> bytes:
    raw = group.encode()
    return _LEN.pack(len(raw)) + raw + _PID.pack(producer_id)


def _pending_key(group: str, producer_id: int, tp: TopicPartition) -> bytes:
    topic = tp.topic.encode()
    return (
        _pending_prefix(group, producer_id)
        + _LEN.pack(len(topic))
        + topic
        + _PARTITION.pack(tp.partition)
    )


def _parse_pending_tp(key: bytes, prefix_len: int) -> TopicPartition:
    (tlen,) = _LEN.unpack_from(key, prefix_len)
    start = prefix_len + 2
    topic = key[start : start + tlen].decode()
    (partition,) = _PARTITION.unpack_from(key, start + tlen)
    return TopicPartition(topic, partition)


def _checked(entries: list[CommitEntry]) -> tuple[list[PartitionCommitted], list[CommitEntry]]:
    """Per entry its result, and the entries to store (metadata too long: refused alone)."""
    results = []
    good: list[CommitEntry] = []
    for entry in entries:
        if len(entry.metadata.encode()) > MAX_METADATA_BYTES:
            too_large = OffsetMetadataTooLargeError(
                f"offset metadata longer than {MAX_METADATA_BYTES} bytes"
            )
            results.append(PartitionCommitted(entry.tp, too_large))
            continue
        good.append(entry)
        results.append(PartitionCommitted(entry.tp))
    return results, good


class OffsetsCore:
    """Owned by the coordinator's loop, beside the group core it asks; not thread-safe."""

    def __init__(self, store: LogStore, groups: GroupCoordinator) -> None:
        self.store = store
        self.groups = groups

    def commit(self, token: Any, event: OffsetCommit, now_ms: int) -> Result:
        """Store the offsets of an admitted commit; an entry whose metadata is too long is
        refused alone (OFFSET_METADATA_TOO_LARGE), the others are stored."""
        out = Result()
        try:
            self.groups.admit_commit(out, event, now_ms)
        except KvlogError as exc:
            return out.fail(token, exc)
        results, good = _checked(event.offsets)

        def write(w: WriteTxn) -> None:
            for tp, offset, metadata in good:
                commit_offset(w, event.group_id, tp, CommittedOffset(offset, metadata, now_ms))

        if good:
            self.store.write(write)
        return out.reply(token, OffsetCommitAnswer(results))

    def fetch(self, token: Any, event: OffsetFetch, now_ms: int) -> Result:
        """The committed offsets of the given partitions (None: every partition the group
        committed), of any group id, known or not, in every group state."""
        with self.store.reader() as r:
            found = group_offsets(r, event.group_id)
        partitions = sorted(found) if event.partitions is None else event.partitions
        answer = OffsetFetchAnswer([FetchedOffset(tp, found.get(tp)) for tp in partitions])
        return Result().reply(token, answer)

    # -- transactional offsets (the transaction coordinator's) ------------------------------

    def admit_txn(
        self, group_id: str, generation: int, member_id: str, instance_id: str | None
    ) -> None:
        """Raise unless a transaction may commit offsets for ``group_id`` with this group
        metadata (KIP-447; Kafka's classic group ``validateOffsetCommit`` for a
        transactional commit): without metadata (generation -1, no member or instance
        id) always, as before KIP-447; with it only for a current member
        (UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID for a replaced static member) of the
        current generation (ILLEGAL_GENERATION; also for a group that does not exist).
        Unlike a consumer's commit, a rebalance in progress does not refuse it."""
        if generation < 0 and not member_id and not instance_id:
            return
        group = self.groups.live_group(group_id)
        if group is None or (generation < 0 and not group.members):
            if generation < 0:
                return  # an empty group takes any commit (Kafka: generation -1, Empty)
            raise IllegalGenerationError(
                f"group {group_id!r} has no generation {generation}: the consumer's group "
                "is gone; this producer belongs to a zombie consumer"
            )
        if instance_id:
            current = group.static.get(instance_id)
            if current is None or current != member_id:
                raise FencedInstanceIdError(
                    f"group.instance.id {instance_id!r} of group {group_id!r} now belongs to "
                    "another member: this consumer (and its transactional producer) was "
                    "replaced"
                )
        if member_id not in group.members:
            raise UnknownMemberIdError(
                f"member {member_id!r} is not in group {group_id!r}: the group rebalanced "
                "without it; this producer belongs to a zombie consumer"
            )
        if generation != group.generation:
            raise IllegalGenerationError(
                f"offsets from generation {generation}, but group {group_id!r} is at "
                f"generation {group.generation}: a rebalance happened since this consumer "
                "joined (a zombie's producer)"
            )

    def stage_txn(
        self, group_id: str, producer_id: int, entries: list[CommitEntry], now_ms: int
    ) -> OffsetCommitAnswer:
        """Store a transaction's pending offsets for ``group_id`` (durably; a later one for
        the same partition replaces an earlier one)."""
        results, good = _checked(entries)

        def write(w: WriteTxn) -> None:
            for tp, offset, metadata in good:
                value = cbor2.dumps([offset, metadata, now_ms])
                w.put(TXN_OFFSETS_TABLE, _pending_key(group_id, producer_id, tp), value)

        if good:
            self.store.write(write)
        return OffsetCommitAnswer(results)

    @staticmethod
    def end_txn(w: WriteTxn, group_ids: frozenset[str], producer_id: int, commit: bool) -> int:
        """Inside the transaction coordinator's write of its decision: the producer's
        pending offsets of ``group_ids`` become the groups' committed offsets (``commit``)
        or are dropped. Returns how many there were."""
        moved = 0
        for group_id in sorted(group_ids):
            prefix = _pending_prefix(group_id, producer_id)
            for key, raw in list(w.items(TXN_OFFSETS_TABLE, prefix)):
                if commit:
                    offset, metadata, ts = cbor2.loads(raw)
                    tp = _parse_pending_tp(key, len(prefix))
                    commit_offset(w, group_id, tp, CommittedOffset(offset, metadata, ts))
                w.delete(TXN_OFFSETS_TABLE, key)
                moved += 1
        return moved

    def pending_txn(self, group_id: str, producer_id: int) -> dict[TopicPartition, int]:
        """The producer's pending offsets for a group (tests, tools)."""
        prefix = _pending_prefix(group_id, producer_id)
        with self.store.reader() as r:
            return {
                _parse_pending_tp(key, len(prefix)): cbor2.loads(raw)[0]
                for key, raw in r.items(TXN_OFFSETS_TABLE, prefix)
            }
