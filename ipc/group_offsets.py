"""A group member's committed offsets: OffsetCommit (sync and async) and OffsetFetch at
the group's coordinator (PROTOCOL.md, ``offset_commit`` and ``offset_fetch``).

A commit carries the member's identity (generation, member id, instance id) so the
coordinator can refuse one from a member the group has moved on from; what such a refusal
means (CommitFailedError, rejoin) is the member's to say (:class:`OffsetsOwner`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from kvlog.errors import KvlogError, error_from_code
from kvlog.types import TopicPartition

from .consumer_types import OffsetAndMetadata
from .rpc import IOThread

log = logging.getLogger(__name__)

Positions = Callable[[set[TopicPartition] | None], dict[TopicPartition, int]]


class OffsetsOwner(Protocol):
    """What committing needs from the group member (ipc/group_member.py)."""

    group_id: str

    def coordinator(self) -> str:
        """The group coordinator's endpoint (raises when none is known)."""
        ...

    def commit_identity(self) -> dict[str, Any]:
        """``generation``, ``member_id`` and ``group_instance_id`` for OffsetCommit."""
        ...

    def refuse_commit(self) -> KvlogError | None:
        """The error for a commit the member cannot make now, else None."""
        ...

    def commit_failed(self, exc: KvlogError) -> KvlogError:
        """The error a commit that failed with ``exc`` raises."""
        ...


def _offset(value: OffsetAndMetadata | int) -> int:
    return value if isinstance(value, int) else value.offset


class GroupOffsets:
    """Owned by one GroupMember. ``commit_sync`` and the fetches run on the consumer's
    thread; ``commit_async``'s callback runs on the I/O thread."""

    def __init__(self, owner: OffsetsOwner, io: IOThread, positions: Positions) -> None:
        self.owner = owner
        self.io = io
        self.positions = positions  # the consumer's: the next offset to read, per partition
        self.last_committed: dict[TopicPartition, int] = {}

    def _call(self, op: str, fields: dict[str, Any], *, fail_fast: bool = False) -> dict[str, Any]:
        fields = {"group_id": self.owner.group_id, **fields}
        header, _ = self.io.call(self.owner.coordinator(), op, fields, fail_fast=fail_fast)
        return header

    def _commit_fields(self, offsets: Mapping[TopicPartition, Any]) -> dict[str, Any]:
        entries = [
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "offset": _offset(value),
                # kafka-python programs write OffsetAndMetadata(offset, None)
                "metadata": "" if isinstance(value, int) else value.metadata or "",
            }
            for tp, value in offsets.items()
        ]
        return {**self.owner.commit_identity(), "offsets": entries}

    def commit_sync(
        self,
        offsets: Mapping[TopicPartition, OffsetAndMetadata | int] | None,
        *,
        only: set[TopicPartition] | None = None,
    ) -> None:
        """Commit ``offsets`` (None: the consumer's positions, of ``only`` if given)."""
        if offsets is None:
            offsets = self.positions(only)
        if not offsets:
            return
        refused = self.owner.refuse_commit()
        if refused is not None:
            raise refused
        try:
            reply = self._call("offset_commit", self._commit_fields(offsets))
        except KvlogError as exc:
            raise self.owner.commit_failed(exc) from None
        for entry in reply.get("partitions", []):
            if entry.get("error"):
                raise error_from_code(entry["error"], entry.get("message"))
        for tp, value in offsets.items():
            self.last_committed[tp] = _offset(value)

    def commit_async(self, offsets: Mapping[TopicPartition, Any] | None, callback: Any) -> None:
        """Commit without waiting (None: the positions that moved since the last commit);
        ``callback(offsets, error)`` runs when the answer comes."""
        if offsets is None:
            offsets = {
                tp: pos
                for tp, pos in self.positions(None).items()
                if self.last_committed.get(tp) != pos
            }
        if not offsets:
            if callback is not None:
                callback(offsets, None)
            return
        fields = {"group_id": self.owner.group_id, **self._commit_fields(offsets)}
        snapshot = dict(offsets)

        def done(
            header: dict[str, Any] | None, frames: list[bytes], error: KvlogError | None
        ) -> None:
            if error is None and header is not None:
                for tp, value in snapshot.items():
                    self.last_committed[tp] = _offset(value)
            elif error is not None:
                error = self.owner.commit_failed(error)
                log.warning("group %s: async commit failed: %s", self.owner.group_id, error.message)
            if callback is not None:
                try:
                    callback(snapshot, error)
                except Exception:
                    log.exception("commit_async callback raised")

        try:
            endpoint = self.owner.coordinator()
        except KvlogError as exc:
            done(None, [], exc)
            return
        self.io.submit(endpoint, "offset_commit", fields, done)

    def fetch_committed(
        self, tps: list[TopicPartition], *, fail_fast: bool = False
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The group's committed offsets of ``tps`` (those it has). ``fail_fast``: a
        coordinator that is down fails the lookup at once (poll() retries it)."""
        wanted = {"partitions": [[tp.topic, tp.partition] for tp in tps]}
        reply = self._call("offset_fetch", wanted, fail_fast=fail_fast)
        out = {}
        for entry in reply.get("partitions", []):
            if entry.get("offset", -1) >= 0:
                tp = TopicPartition(entry["topic"], entry["partition"])
                out[tp] = OffsetAndMetadata(entry["offset"], entry.get("metadata", ""))
        return out

    def committed_positions(
        self, tps: list[TopicPartition], *, fail_fast: bool = False
    ) -> dict[TopicPartition, int]:
        found = self.fetch_committed(tps, fail_fast=fail_fast)
        return {tp: om.offset for tp, om in found.items()}
