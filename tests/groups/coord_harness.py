"""The group cores on a MemoryLogDir with a hand-driven clock (not a test module).

``Harness`` issues requests the way the coordinator's shell does: each call hands the
group core (or the offsets or admin core) an event and a token and carries out the
Result: every reply, now or for a parked request later, is encoded into the ZeroMQ
wire's fields and collected per token, so a test reads ``h.replies[token]``. It also
keeps the timer the way a shell does (the earliest deadline any Result gave, replaced by
each tick's) and checks after every call that it is never later than the core's next
deadline, so no timer could fire late.
"""

from __future__ import annotations

import itertools
from typing import Any

from kvlog.errors import ErrorCode, KvlogError
from kvlog.ipc.consumer_protocol import decode_assignment, encode_subscription
from kvlog.memory_store import MemoryLogDir
from kvlog.types import TopicPartition
from kvlog.workers.core_result import Result
from kvlog.workers.group_admin_core import GroupAdminCore
from kvlog.workers.group_core import GroupConfig, GroupCoordinator, seeded_member_ids
from kvlog.workers.group_events import (
    CommitEntry,
    DeleteGroups,
    Heartbeat,
    JoinGroup,
    LeaveGroup,
    ListGroups,
    OffsetCommit,
    OffsetFetch,
    SyncGroup,
)
from kvlog.workers.offsets_core import OffsetsCore
from kvlog.workers.zmq_replies import encode

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
        self.outbox: list[tuple[int, dict[str, Any]]] = []
        self.deadline_ms: int | None = None
        self.starts = 0
        self._new_coordinator()

    def _new_coordinator(self) -> None:
        self.starts += 1
        # A new seed per process start, as the shell's random one.
        ids = seeded_member_ids(b"harness-%d" % self.starts)
        self.coord = GroupCoordinator(self.store, self.config, self.counts.get, ids)
        self.offsets = OffsetsCore(self.store, self.coord)
        self.admin = GroupAdminCore(self.store, self.coord)
        self.deadline_ms = None

    def restart(self) -> None:
        """A new coordinator over the same store; parked requests die with the old one."""
        self._new_coordinator()
        self.run(self.coord.load(self.now), timer=True)

    def run(self, result: Result, *, timer: bool = False) -> Result:
        """Carry out a Result as the shell does: queue its replies (encoded for the wire)
        and keep its deadline (a tick's, or a load's, replaces the one kept)."""
        for reply in result.replies:
            fields = reply.error.to_wire() if reply.error is not None else encode(reply.body)
            self.outbox.append((reply.token, fields))
        if timer or self.deadline_ms is None:
            self.deadline_ms = result.deadline_ms
        elif result.deadline_ms is not None:
            self.deadline_ms = min(self.deadline_ms, result.deadline_ms)
        due = self.coord.next_deadline_ms()
        assert due is None or (self.deadline_ms is not None and self.deadline_ms <= due), (
            f"the shell would wake at {self.deadline_ms}, after the core's deadline {due}"
        )
        return result

    def drain(self) -> list[tuple[int, dict[str, Any]]]:
        out, self.outbox = self.outbox, []
        for token, fields in out:
            assert token not in self.replies, f"token {token} answered twice"
            self.replies[token] = fields
        return out

    def tick(self) -> None:
        self.run(self.coord.tick(self.now), timer=True)

    def advance(self, ms: int) -> None:
        self.now += ms
        self.tick()
        self.drain()

    def topics_changed(self) -> None:
        self.run(self.coord.on_topics_changed(self.now))
        self.drain()

    def _answer(self, token: int) -> dict[str, Any]:
        """The reply to a request answered at once."""
        self.drain()
        return self.replies[token]

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
        require_known_member_id: bool = False,
    ) -> int:
        """Send a JoinGroup; returns its token (the reply lands in ``replies``)."""
        token = next(self.tokens)
        topics = ["t"] if topics is None else topics
        meta = encode_subscription(topics, set(owned), generation)
        event = JoinGroup(
            group_id=group,
            member_id=member_id,
            instance_id=instance_id,
            client_id=client_id,
            session_timeout_ms=session_timeout_ms,
            rebalance_timeout_ms=rebalance_timeout_ms,
            protocol_type="consumer",
            protocols=[(name, meta) for name in (protocols or ["range"])],
            server_assignor=server_assignor,
            topics=topics if server_assignor else [],
            owned=sorted(owned) if server_assignor else [],
            require_known_member_id=require_known_member_id,
        )
        self.run(self.coord.join(token, event, self.now))
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
        event = SyncGroup(group, generation, member_id, instance_id, assignments)
        self.run(self.coord.sync(token, event, self.now))
        self.drain()
        return token

    def heartbeat(
        self, group: str, member_id: str, generation: int, *, instance_id: str | None = None
    ) -> int:
        """0 or the error code (answering any parked heartbeat it supersedes)."""
        token = next(self.tokens)
        event = Heartbeat(group, generation, member_id, instance_id)
        self.run(self.coord.heartbeat(token, event, self.now))
        return int(self._answer(token).get("error", 0))

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
        event = Heartbeat(group, generation, member_id, instance_id, max_wait_ms)
        self.run(self.coord.heartbeat(token, event, self.now))
        self.drain()
        return token

    def commit_reply(
        self,
        group: str,
        member_id: str,
        generation: int,
        offsets: dict[TopicPartition, int],
        *,
        instance_id: str | None = None,
    ) -> dict[str, Any]:
        token = next(self.tokens)
        entries = [CommitEntry(tp, off, "") for tp, off in offsets.items()]
        event = OffsetCommit(group, entries, generation, member_id, instance_id)
        self.run(self.offsets.commit(token, event, self.now))
        return self._answer(token)

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
        reply = self.commit_reply(group, member_id, generation, offsets, instance_id=instance_id)
        return int(reply.get("error", 0))

    def leave(self, group: str, member_id: str, *, instance_id: str | None = None) -> int:
        token = next(self.tokens)
        event = LeaveGroup(group, [(member_id, instance_id)])
        self.run(self.coord.leave(token, event, self.now))
        reply = self._answer(token)
        if reply.get("error"):
            return int(reply["error"])
        return int(reply["members"][0]["error"])

    def committed(self, group: str) -> dict[TopicPartition, int]:
        token = next(self.tokens)
        reply = encode(self.offsets.fetch(token, OffsetFetch(group), self.now).replies[0].body)
        return {
            TopicPartition(p["topic"], p["partition"]): p["offset"]
            for p in reply["partitions"]
            if p["offset"] >= 0
        }

    def delete_group(self, group: str) -> KvlogError | None:
        """DeleteGroups of one group: its outcome (None: deleted)."""
        result = self.admin.delete_groups(next(self.tokens), DeleteGroups([group]), self.now)
        return result.replies[0].body.results[0].error

    def list_groups(self) -> list[dict[str, Any]]:
        result = self.admin.list_groups(next(self.tokens), ListGroups(), self.now)
        return encode(result.replies[0].body)["groups"]

    def group(self, group: str = "g") -> Any:
        return self.coord.groups[group]

    def assignment_of(self, group: str, member_id: str) -> set[TopicPartition]:
        return set(self.group(group).members[member_id].assigned)


def error_of(reply: dict[str, Any]) -> ErrorCode | None:
    code = reply.get("error", 0)
    return ErrorCode(code) if code else None


def assignment(reply: dict[str, Any]) -> set[TopicPartition]:
    return decode_assignment(reply.get("assignment") or b"")
