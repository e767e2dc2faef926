"""Committed group offsets, without sockets: OffsetCommit and OffsetFetch.

Committed offsets live in the coordinator's store (``t/offsets``, one key per group and
partition; :mod:`kvlog.metadata_store`), so they survive restarts and commit atomically.
Who may commit is the group's business: :meth:`workers.group_core.GroupCoordinator.
admit_commit` decides it (generation fencing, standalone commits only while the group has
no members), so both wires fence commits the same way. A commit is durable (fsync'd)
before its reply leaves. The committed offset is the next offset to read, as in Kafka.

Each request is an event (:mod:`workers.group_events`) with the shell's ``token`` and
``now_ms`` (the commit timestamp); the answer is one :class:`workers.core_result.Result`.
"""

from __future__ import annotations

from typing import Any

from kvlog.errors import KvlogError, OffsetMetadataTooLargeError
from kvlog.log import LogStore, WriteTxn
from kvlog.metadata_store import CommittedOffset, commit_offset, group_offsets

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
        results = []
        good: list[CommitEntry] = []
        for entry in event.offsets:
            if len(entry.metadata.encode()) > MAX_METADATA_BYTES:
                too_large = OffsetMetadataTooLargeError(
                    f"offset metadata longer than {MAX_METADATA_BYTES} bytes"
                )
                results.append(PartitionCommitted(entry.tp, too_large))
                continue
            good.append(entry)
            results.append(PartitionCommitted(entry.tp))

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
