"""A GroupCoordinator on a MemoryLogDir with a hand-driven clock (not a test module).

``Harness`` issues requests the way the coordinator's wire layer does: an error raised by
the core is that request's reply; a parked JoinGroup, SyncGroup or (long-poll) Heartbeat
is answered later through ``outbox``. Replies are collected per token, so a test reads
``h.replies[token]``.
"""

from __future__ import annotations

import itertools
from typing import Any

from kvlog.errors import ErrorCode, KvlogError
from kvlog.ipc.consumer_protocol import decode_assignment, encode_subscription
from kvlog.memory_store import MemoryLogDir
from kvlog.types import TopicPartition
from kvlog.workers.group_core import GroupConfig, GroupCoordinator

START_MS = 1_000_000


class Harness:
    """One coordinator, its store, a clock and the topics' partition counts."""

    def __init__(self, counts: dict[str, int] | None = None, **config: int) -> None:
        self.counts = dict(counts or {"t": 4})
        self.config = GroupConfig(
            **{"min_session_timeout_ms": 10, "initial_rebalance_delay_ms": 0, **config}
        )
        self.store = MemoryLogDir()
        self.now = START_MS
        self.tokens = itertools.count(1)
        self.replies: dict[int, dict[str, Any]] = {}
        self.coord = self._new_coordinator()

    def _new_coordinator(self) -> GroupCoordinator:
        return GroupCoordinator(self.store, self.config, self.counts.get)

    def restart(self) -> None:
        """A new coordinator over the same store; parked requests die with the old one."""
        self.coord = self._new_coordinator()
        self.coord.load(self.now)

    def drain(self) -> list[tuple[int, dict[str, Any]]]:
        out, self.coord.outbox = self.coord.outbox, []
        for token, fields in out:
            assert token not in self.replies, f"token {token} answered twice"
            self.replies[token] = fields
        return out

    def advance(self, ms: int) -> None:
        self.now += ms
        self.coord.tick(self.now)
        self.drain()

    # -- requests ----------------------------------------------------------------------------

    def join(
        self,
        group: str = "g",
        member_id: str = "",
        *,
        instance_id: str | None = None,
        client_id: str = "c",
        topics: list[str] | None = None,
        owned: set[TopicPartition] | frozenset[TopicPartition] = frozenset(),
        generation: int = -1,
        protocols: list[str] | None = None,
        session_timeout_ms: int = 1000,
        rebalance_timeout_ms: int = 3000,
        server_assignor: str | None = None,
    ) -> int:
        """Send a JoinGroup; returns its token (the reply lands in ``replies``)."""
        token = next(self.tokens)
        topics = ["t"] if topics is None else topics
        meta = encode_subscription(topics, set(owned), generation)
        try:
            self.coord.join(
                token,
                self.now,
                group_id=group,
                member_id=member_id,
                instance_id=instance_id,
                client_id=client_id,
                session_timeout_ms=session_timeout_ms,
                rebalance_timeout_ms=rebalance_timeout_ms,
                protocol_type="consumer",
                protocols=[(name, meta) for name in (protocols or ["range"])],
                server_assignor=server_assignor,
                topics=topics if server_assignor else None,
                owned=sorted(owned) if server_assignor else None,
            )
        except KvlogError as exc:
            self.replies[token] = exc.to_wire()
        self.drain()
        return token

    def sync(
        self,
        group: str,
        member_id: str,
        generation: int,
        assignments: dict[str, bytes] | None = None,
        *,
        instance_id: str | None = None,
    ) -> int:
        token = next(self.tokens)
        try:
            self.coord.sync(
                token,
                self.now,
                group_id=group,
                generation=generation,
                member_id=member_id,
                instance_id=instance_id,
                assignments=assignments,
            )
        except KvlogError as exc:
            self.replies[token] = exc.to_wire()
        self.drain()
        return token

    def heartbeat(
        self, group: str, member_id: str, generation: int, *, instance_id: str | None = None
    ) -> int:
        """0 or the error code (answering any parked heartbeat it supersedes)."""
        code = _code(
            lambda: self.coord.heartbeat(
                self.now,
                group_id=group,
                generation=generation,
                member_id=member_id,
                instance_id=instance_id,
            )
        )
        self.drain()
        return code

    def long_poll(
        self,
        group: str,
        member_id: str,
        generation: int,
        max_wait_ms: int | None,
        *,
        instance_id: str | None = None,
    ) -> int:
        """A heartbeat with ``max_wait_ms``, as the wire layer sends it; returns its token.
        Its reply (at once, or when the core answers the parked heartbeat) lands in
        ``replies``; a parked one has none yet."""
        token = next(self.tokens)
        try:
            reply = self.coord.heartbeat(
                self.now,
                group_id=group,
                generation=generation,
                member_id=member_id,
                instance_id=instance_id,
                token=token,
                max_wait_ms=max_wait_ms,
            )
        except KvlogError as exc:
            reply = exc.to_wire()
        if reply is not None:
            assert token not in self.replies
            self.replies[token] = reply
        self.drain()
        return token

    def commit(
        self,
        group: str,
        member_id: str,
        generation: int,
        offsets: dict[TopicPartition, int],
        *,
        instance_id: str | None = None,
    ) -> int:
        """0 or the error code."""
        return _code(
            lambda: self.coord.commit(
                self.now,
                group_id=group,
                generation=generation,
                member_id=member_id,
                instance_id=instance_id,
                offsets=[(tp, off, "") for tp, off in offsets.items()],
            )
        )

    def leave(self, group: str, member_id: str, *, instance_id: str | None = None) -> int:
        try:
            reply = self.coord.leave(self.now, group_id=group, members=[(member_id, instance_id)])
        except KvlogError as exc:
            return int(exc.code)
        finally:
            self.drain()
        return int(reply["members"][0]["error"])

    def committed(self, group: str) -> dict[TopicPartition, int]:
        reply = self.coord.fetch_offsets(group, None)
        return {
            TopicPartition(p["topic"], p["partition"]): p["offset"]
            for p in reply["partitions"]
            if p["offset"] >= 0
        }

    def group(self, group: str = "g") -> Any:
        return self.coord.groups[group]

    def assignment_of(self, group: str, member_id: str) -> set[TopicPartition]:
        return set(self.group(group).members[member_id].assigned)


def _code(fn: Any) -> int:
    try:
        fn()
    except KvlogError as exc:
        return int(exc.code)
    return 0


def error_of(reply: dict[str, Any]) -> ErrorCode | None:
    code = reply.get("error", 0)
    return ErrorCode(code) if code else None


def assignment(reply: dict[str, Any]) -> set[TopicPartition]:
    return decode_assignment(reply.get("assignment") or b"")
