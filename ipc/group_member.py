"""A consumer's membership in a group (Kafka's classic consumer protocol, client side).

Joining and syncing happen inside ``poll()``, on the caller's thread, so rebalance
listener callbacks run where the user's code runs (as in Kafka). A background thread
(ipc/group_heartbeat.py) heartbeats, so slow processing between polls does not cost the
session, and watches ``max.poll.interval.ms``: a consumer that stops polling leaves the
group (its partitions go to the others), the next ``poll()`` raises
MaxPollIntervalExceededError, and the one after rejoins.

The leader of each generation computes the assignment with the first assignor of
``partition.assignment.strategy`` every member supports. Eager assignors revoke
everything before rejoining; ``cooperative-sticky`` revokes only what moves and rejoins
at once to hand it over (incremental rebalancing).

Subscription and assignment metadata are CBOR maps (PROTOCOL.md, "Consumer protocol").

A newcomer asks for its member id first (Kafka's KIP-394: ``require_member_id``; the
coordinator answers MEMBER_ID_REQUIRED with the id and the member rejoins with it at
once), so a consumer closed before its first join completes still knows its id and
leaves: ``close()`` always sends LeaveGroup when it has an id, assigned or not, and no
ghost member holds the group in a rebalance until its session expires.

The member sees its consumer only through :class:`ConsumerLink`: the consumer's I/O
thread and metadata, and five operations on its subscription, assignment and positions.
Its offset commits and fetches are ipc/group_offsets.py's.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kvlog.errors import (
    CommitFailedError,
    ErrorCode,
    FencedInstanceIdError,
    IllegalStateError,
    KafkaTimeoutError,
    KvlogError,
    MaxPollIntervalExceededError,
    NoBrokersAvailable,
    Recovery,
    error_from_code,
)
from kvlog.types import TopicPartition

from .assignors import COOPERATIVE, assignor
from .consumer_protocol import (
    decode_assignment,
    decode_subscription,
    encode_assignment,
    encode_subscription,
)
from .consumer_types import ConsumerRebalanceListener
from .group_heartbeat import HeartbeatThread
from .group_link import ConsumerLink, Exchange
from .group_offsets import GroupOffsets

log = logging.getLogger(__name__)

_REJOIN_ERRORS = {
    ErrorCode.UNKNOWN_MEMBER_ID,
    ErrorCode.ILLEGAL_GENERATION,
    ErrorCode.REBALANCE_IN_PROGRESS,
    ErrorCode.MEMBER_ID_REQUIRED,
}


class _State(enum.Enum):
    UNJOINED = "unjoined"
    JOINING = "joining"  # a JoinGroup or SyncGroup is in flight
    STABLE = "stable"


class GroupMember:
    """Owned by one Consumer. poll-side methods run on the consumer's thread; the
    heartbeat thread only flags what poll() must do next."""

    def __init__(self, cfg: Mapping[str, Any], consumer: ConsumerLink) -> None:
        self.consumer = consumer
        self.io = consumer.io
        self.group_id: str = cfg["group_id"]
        self.instance_id: str | None = cfg["group_instance_id"]
        self.client_id: str = cfg["client_id"]
        self.session_timeout_ms: int = cfg["session_timeout_ms"]
        self.heartbeat_interval_ms: int = cfg["heartbeat_interval_ms"]
        self.max_poll_interval_ms: int = cfg["max_poll_interval_ms"]
        self.strategies: list[Any] = cfg["partition_assignment_strategy"]
        self.auto_commit: bool = cfg["enable_auto_commit"]
        self.auto_commit_s = cfg["auto_commit_interval_ms"] / 1000
        self.backoff_s = cfg["retry_backoff_ms"] / 1000
        self.member_id = ""
        self.generation = -1
        self.leader = ""
        self.protocol: str | None = None
        self.state = _State.UNJOINED
        self.owned: set[TopicPartition] = set()
        # The last assignment, which an eager member revokes before it rejoins: its
        # subscription still tells the assignor, so sticky can give it back (Kafka's
        # StickyAssignor sends the same as user data).
        self.previous: set[TopicPartition] = set()
        self.listener: ConsumerRebalanceListener | None = None
        self.subscribed = False
        self.need_rejoin = False
        self.last_poll = time.monotonic()
        self.pending_error: KvlogError | None = None
        self.lost: set[TopicPartition] | None = None
        self.lost_reason = ""
        self.assigned_counts: dict[str, int] = {}
        self.next_auto_commit = time.monotonic() + self.auto_commit_s
        self._pending: Exchange | None = None
        self._joined: tuple[str, int] | None = None  # (member id, generation) while syncing
        self._retry_at = 0.0
        self._lock = threading.Lock()
        # Bumped by every JoinGroup and LeaveGroup this member sends: a heartbeat answered
        # after one speaks of a membership that is gone, and is ignored.
        self.membership_epoch = 0
        self.offsets = GroupOffsets(self, self.io, consumer.positions)
        self.heartbeat = HeartbeatThread(
            self,
            self.io,
            interval_ms=self.heartbeat_interval_ms,
            session_timeout_ms=self.session_timeout_ms,
            backoff_s=self.backoff_s,
        )

    # -- coordinator calls ------------------------------------------------------------------

    def coordinator(self, deadline: float | None = None) -> str:
        endpoint = self.consumer.metadata.coordinator
        if endpoint is None:
            self.consumer.ensure_metadata(None, deadline)
            endpoint = self.consumer.metadata.coordinator
        if endpoint is None:
            raise KafkaTimeoutError("the broker did not name a group coordinator")
        return endpoint

    def _call(
        self, op: str, fields: dict[str, Any], timeout_ms: float | None = None
    ) -> dict[str, Any]:
        header, _ = self.io.call(
            self.coordinator(), op, {"group_id": self.group_id, **fields}, timeout_ms=timeout_ms
        )
        return header

    # -- subscription -----------------------------------------------------------------------

    def subscribe(
        self, topics: set[str], pattern: Any, listener: ConsumerRebalanceListener | None
    ) -> None:
        self.listener = listener
        self.subscribed = True
        self.need_rejoin = True
        self.heartbeat.start()

    def unsubscribe(self) -> None:
        self._revoke(set(self.owned), "unsubscribe")
        self._leave("unsubscribe")  # also mid-rebalance (see close)
        self._pending = None
        self.subscribed = False
        self.owned = set()
        self.state = _State.UNJOINED

    # -- poll side ----------------------------------------------------------------------------

    def poll_tick(self, deadline: float) -> None:
        now = time.monotonic()
        self.last_poll = now
        with self._lock:
            error, self.pending_error = self.pending_error, None
            lost, self.lost = self.lost, None
        if lost:
            self._lose(lost, self.lost_reason)
        if error is not None:
            raise error
        if not self.subscribed:
            return
        if self.state is _State.STABLE and self._metadata_changed():
            self.need_rejoin = True
        if self.need_rejoin or self.state is not _State.STABLE or self._pending is not None:
            self._join_and_sync(deadline)
        if self.auto_commit and now >= self.next_auto_commit and self.state is _State.STABLE:
            self.next_auto_commit = now + self.auto_commit_s
            self.offsets.commit_async(None, None)

    def _lose(self, lost: set[TopicPartition], reason: str) -> None:
        """Drop partitions another member may own by now, without committing."""
        log.warning(
            "group %s: partitions lost (%s): %s", self.group_id, reason, sorted(map(str, lost))
        )
        self.consumer.set_assignment(set())
        if self.listener is not None:
            self._safely(self.listener.on_partitions_lost, lost)
        self.owned = set()
        self.previous = set()

    def _metadata_changed(self) -> bool:
        """The leader rebalances when subscribed topics appear or grow (Kafka's leader
        watches metadata the same way)."""
        if self.member_id != self.leader and not self.consumer.follows_pattern():
            return False
        meta = self.consumer.metadata
        if time.monotonic() - meta.updated_at > 5.0:
            meta.mark_stale()
        topics = self.consumer.subscribed_topics() if self.consumer.follows_pattern() else None
        if topics is not None and topics != set(self.assigned_counts):
            return True
        for topic, count in self.assigned_counts.items():
            now_count = meta.partition_count(topic)
            if now_count is not None and now_count != count:
                return True
        return False

    def _safely(self, fn: Callable[[set[TopicPartition]], None], tps: set[TopicPartition]) -> None:
        try:
            fn(set(tps))
        except Exception:
            log.exception("rebalance listener %s raised", getattr(fn, "__name__", fn))

    def _revoke(self, tps: set[TopicPartition], why: str) -> None:
        if not tps:
            return
        if self.auto_commit and self.generation >= 0:
            try:
                self.offsets.commit_sync(None, only=tps)
            except KvlogError as exc:
                log.warning(
                    "group %s: commit before revoking failed: %s", self.group_id, exc.message
                )
        if self.listener is not None:
            self._safely(self.listener.on_partitions_revoked, tps)
        log.info("group %s: revoked %d partition(s) (%s)", self.group_id, len(tps), why)

    def _join_and_sync(self, deadline: float) -> None:
        """Advance the join/sync exchange as far as ``deadline`` allows; the next poll()
        picks it up where this one stopped (so poll(timeout) never blocks past it)."""
        while True:
            pending = self._pending
            if pending is None:
                if not (self.need_rejoin or self.state is _State.UNJOINED):
                    return
                if time.monotonic() < self._retry_at:
                    return
                if not self._start_join(deadline):
                    return
                continue
            if not pending.done.wait(max(0.0, deadline - time.monotonic())):
                return
            self._pending = None
            if pending.error is not None:
                self._on_join_error(pending.error, pending.reply)
                continue
            assert pending.reply is not None
            if pending.kind == "join":
                self._on_join_reply(pending.reply)
            else:
                self._on_sync_reply(pending.reply)
                return

    def _cooperative(self) -> bool:
        return any(s in COOPERATIVE for s in self.strategies if isinstance(s, str))

    def _start_join(self, deadline: float) -> bool:
        """Send a JoinGroup; False when the topics' metadata or the coordinator is not
        known by ``deadline`` (the broker is down or restarting: the next poll() tries
        again, so poll(timeout) returns in time)."""
        topics = self._topics()
        try:
            self.consumer.ensure_metadata(topics, deadline)
            self.coordinator(deadline)
        except KvlogError as exc:
            if not exc.retriable or isinstance(exc, NoBrokersAvailable):
                raise
            log.debug("group %s: cannot join yet: %s", self.group_id, exc.message)
            self._retry_at = time.monotonic() + self.backoff_s
            return False
        self._joined = None
        self.membership_epoch += 1
        cooperative = self._cooperative()
        if not cooperative and self.owned:
            self._revoke(set(self.owned), "rebalance")
            self.owned = set()
            self.consumer.set_assignment(set())
        self.need_rejoin = False
        self.state = _State.JOINING
        names = [s for s in self.strategies if isinstance(s, str)]
        owned = self.owned if cooperative else self.previous
        metadata = encode_subscription(topics, owned, self.generation)
        self._submit(
            "join",
            "join_group",
            {
                "member_id": self.member_id,
                "group_instance_id": self.instance_id,
                "client_id": self.client_id,
                "session_timeout_ms": self.session_timeout_ms,
                "rebalance_timeout_ms": self.max_poll_interval_ms,
                "protocol_type": "consumer",
                "protocols": [[name, metadata] for name in names],
                # KIP-394: a newcomer learns its id before it is a member (see module doc)
                "require_member_id": not self.member_id,
            },
        )
        return True

    def _submit(self, kind: str, op: str, fields: dict[str, Any]) -> None:
        pending = self._pending = Exchange(kind)
        try:
            endpoint = self.coordinator()
        except KvlogError as exc:
            pending.finish(None, exc)
            return

        def done(
            header: dict[str, Any] | None, frames: list[bytes], error: KvlogError | None
        ) -> None:
            if kind == "join" and header is not None and error is None:
                # Heartbeat for the new generation at once, even before the next poll()
                # sends SyncGroup (Kafka heartbeats through that gap too).
                self._joined = (header.get("member_id", ""), header.get("generation", -1))
                self.heartbeat.kick()
            pending.finish(header, error)

        self.io.submit(
            endpoint,
            op,
            {"group_id": self.group_id, **fields},
            done,
            timeout_ms=self.max_poll_interval_ms + 5000,
        )

    def _on_join_error(self, exc: KvlogError, reply: dict[str, Any] | None) -> None:
        if isinstance(exc, FencedInstanceIdError):
            self.state = _State.UNJOINED
            raise exc
        if exc.code is ErrorCode.MEMBER_ID_REQUIRED and reply and reply.get("member_id"):
            # KIP-394: rejoin with the id at once (it is what close() leaves with meanwhile).
            self.member_id = reply["member_id"]
            self.state = _State.UNJOINED
            self._retry_at = 0.0
            log.debug("group %s: member id %s, joining", self.group_id, self.member_id)
            return
        if exc.code is ErrorCode.UNKNOWN_MEMBER_ID:
            self.member_id = ""
            self.generation = -1
        if self.owned and exc.code in (ErrorCode.UNKNOWN_MEMBER_ID, ErrorCode.ILLEGAL_GENERATION):
            # A cooperative member keeps reading while it rejoins; this answer means the
            # group went on without it, so others may own those partitions now (Kafka
            # calls them lost too).
            self.lost_reason = (
                f"the group rebalanced without this member ({exc.message}); its heartbeats "
                f"may have stopped for session.timeout.ms={self.session_timeout_ms}"
            )
            self._lose(set(self.owned), self.lost_reason)
        if exc.code in _REJOIN_ERRORS or exc.retriable:
            if exc.recovery is Recovery.REFRESH_METADATA or exc.code is ErrorCode.KAFKA_TIMEOUT:
                self.consumer.metadata.mark_stale()
                self.consumer.metadata.coordinator = None
            log.info("group %s: rejoining (%s)", self.group_id, exc.message)
            self.state = _State.UNJOINED
            self._retry_at = time.monotonic() + self.backoff_s
            return
        self.state = _State.UNJOINED
        raise exc

    def _on_join_reply(self, reply: dict[str, Any]) -> None:
        self.member_id = reply["member_id"]
        self.generation = reply["generation"]
        self.leader = reply.get("leader") or ""
        self.protocol = reply.get("protocol")
        assignments = None
        if self.member_id == self.leader and not reply.get("skip_assignment"):
            assignments = self._assign(reply.get("members") or [])
        self._submit(
            "sync",
            "sync_group",
            {
                "generation": self.generation,
                "member_id": self.member_id,
                "group_instance_id": self.instance_id,
                "assignments": assignments,
            },
        )

    def _on_sync_reply(self, reply: dict[str, Any]) -> None:
        self._joined = None
        self.lost_reason = ""  # a fresh generation: older causes no longer apply
        new = decode_assignment(reply.get("assignment") or b"")
        cooperative = self._cooperative()
        revoked = self.owned - new
        added = new - self.owned
        if revoked:
            self._revoke(revoked, "moved to another member")
            self.need_rejoin = True  # hand them over in a follow-up rebalance
        self.owned = new
        self.previous = set(new)
        self.consumer.set_assignment(new)
        self.state = _State.STABLE
        self.heartbeat.kick()
        self.assigned_counts = {
            t: self.consumer.metadata.partition_count(t) or 0 for t in self._topics()
        }
        log.info(
            "group %s: generation %d, member %s, %d partition(s)",
            self.group_id,
            self.generation,
            self.member_id,
            len(new),
        )
        if self.listener is not None and (added or not cooperative):
            self._safely(self.listener.on_partitions_assigned, added if cooperative else new)

    def _topics(self) -> list[str]:
        return sorted(self.consumer.subscribed_topics())

    def _assign(self, members: list[dict[str, Any]]) -> list[dict[str, Any]]:
        subs = [
            decode_subscription(m["member_id"], m.get("instance_id"), m.get("metadata") or b"")
            for m in members
        ]
        topics = sorted({t for s in subs for t in s.topics})
        self.consumer.ensure_metadata(topics)
        counts = {t: n for t in topics if (n := self.consumer.metadata.partition_count(t))}
        result = assignor(self.protocol or "range")(counts, subs)
        log.info(
            "group %s: leader assigned %d partition(s) to %d member(s) with %s",
            self.group_id,
            sum(len(v) for v in result.values()),
            len(subs),
            self.protocol,
        )
        return [
            {"member_id": member_id, "assignment": encode_assignment(tps)}
            for member_id, tps in result.items()
        ]

    # -- what the heartbeat thread asks (ipc/group_heartbeat.py) ----------------------------

    def heartbeat_target(self) -> tuple[str, int] | None:
        """(member id, generation) to heartbeat for, or None when there is none."""
        # Keep heartbeating while a rebalance waits for the next poll() (the session
        # must not expire before this member rejoins), and between the JoinGroup reply
        # and the SyncGroup the next poll() sends.
        joined = self._joined
        if self.state is _State.STABLE:
            return self.member_id, self.generation
        if self.state is _State.JOINING and joined is not None:
            return joined
        return None

    def leave_if_poll_overdue(self) -> bool:
        idle_ms = (time.monotonic() - self.last_poll) * 1000
        if idle_ms > self.max_poll_interval_ms and self.state is _State.STABLE:
            self._poll_interval_exceeded(idle_ms)
            return True
        return False

    def on_heartbeat_error(self, exc: KvlogError) -> bool:
        """Act on a failed heartbeat; True when the coordinator gave no answer (retry)."""
        if exc.code is ErrorCode.REBALANCE_IN_PROGRESS:
            self.need_rejoin = True
        elif self.state is _State.JOINING:
            # The SyncGroup reply brings the same error to poll(), which acts on it.
            return exc.code not in _REJOIN_ERRORS and not isinstance(exc, FencedInstanceIdError)
        elif exc.code in (ErrorCode.UNKNOWN_MEMBER_ID, ErrorCode.ILLEGAL_GENERATION):
            with self._lock:
                self.lost = set(self.owned)
                self.lost_reason = (
                    f"the coordinator no longer knows this member ({exc.message}); its "
                    f"heartbeats may have stopped for session.timeout.ms="
                    f"{self.session_timeout_ms}"
                )
            if exc.code is ErrorCode.UNKNOWN_MEMBER_ID:
                self.member_id = ""
            self.generation = -1
            self.state = _State.UNJOINED
        elif isinstance(exc, FencedInstanceIdError):
            with self._lock:
                self.pending_error = exc
            self.state = _State.UNJOINED
        else:
            self.consumer.metadata.coordinator = None
            log.debug("group %s: heartbeat failed: %s", self.group_id, exc)
            return True
        return False

    def _poll_interval_exceeded(self, idle_ms: float) -> None:
        reason = (
            f"poll() was not called for {idle_ms / 1000:.1f} s, longer than "
            f"max.poll.interval.ms={self.max_poll_interval_ms}"
        )
        log.warning(
            "group %s: consumer %s is leaving the group because %s; its partitions go to the "
            "other members. Process records faster, lower max.poll.records or raise "
            "max.poll.interval.ms.",
            self.group_id,
            self.member_id,
            reason,
        )
        self._leave(reason)
        with self._lock:
            self.lost = set(self.owned)
            self.lost_reason = reason
            self.pending_error = MaxPollIntervalExceededError(
                f"this consumer left group {self.group_id!r} because {reason}; its partitions "
                "were reassigned and it rejoins on the next poll(). Process records faster, "
                "lower max.poll.records or raise max.poll.interval.ms."
            )
        self.state = _State.UNJOINED
        self.generation = -1

    def _leave(self, reason: str) -> None:
        if not self.member_id:
            return
        self.membership_epoch += 1
        try:
            self._call(
                "leave_group",
                {"members": [{"member_id": self.member_id, "group_instance_id": self.instance_id}]},
                timeout_ms=3000,
            )
        except KvlogError as exc:
            log.info("group %s: leave failed (%s): %s", self.group_id, reason, exc.message)
        if not self.instance_id:
            self.member_id = ""

    # -- what committing asks (ipc/group_offsets.py) --------------------------------------

    def commit_identity(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "member_id": self.member_id,
            "group_instance_id": self.instance_id,
        }

    def refuse_commit(self) -> KvlogError | None:
        if self.generation < 0 and self.subscribed:
            return self.commit_failed(
                error_from_code(
                    int(ErrorCode.ILLEGAL_GENERATION), "this member is not in the group"
                )
            )
        return None

    def commit_failed(self, exc: KvlogError) -> KvlogError:
        if exc.code in _REJOIN_ERRORS or isinstance(exc, FencedInstanceIdError):
            self.need_rejoin = True
            cause = self.lost_reason or (
                "the group rebalanced and assigned the partitions to another member (a member "
                "joined or left, or this consumer's heartbeats stopped for session.timeout.ms="
                f"{self.session_timeout_ms})"
            )
            return CommitFailedError(
                f"commit failed: {cause}. The records since the last commit will be read again "
                "by the partitions' new owner. If processing is slow, raise "
                f"max.poll.interval.ms (now {self.max_poll_interval_ms}) or lower "
                "max.poll.records.",
                cause=exc.message,
            )
        return exc

    # -- close ----------------------------------------------------------------------------------

    def _learn_member_id(self, timeout_s: float) -> None:
        """A first JoinGroup still in flight is answered at once (MEMBER_ID_REQUIRED with
        the id): wait that long for it, so that close() can leave with the id."""
        pending = self._pending
        if self.member_id or pending is None or pending.kind != "join":
            return
        if pending.done.wait(timeout_s) and pending.error is not None:
            reply = pending.reply or {}
            if pending.error.code is ErrorCode.MEMBER_ID_REQUIRED and reply.get("member_id"):
                self.member_id = reply["member_id"]

    def close(self, *, autocommit: bool) -> None:
        self.heartbeat.stop()
        self._learn_member_id(timeout_s=1.0)
        try:
            if self.state is _State.STABLE and autocommit and self.auto_commit:
                try:
                    self.offsets.commit_sync(None)
                except KvlogError as exc:
                    log.warning("group %s: commit on close failed: %s", self.group_id, exc.message)
            if self.listener is not None and self.owned:
                self._safely(self.listener.on_partitions_revoked, self.owned)
            # Leave even in the middle of a rebalance, and with only a pending member id:
            # otherwise the group counts this member in and hands it partitions until its
            # session runs out.
            if not self.instance_id:  # static members keep their partitions
                self._leave("close")
        finally:
            self.heartbeat.join()
            self.state = _State.UNJOINED


__all__ = ["ConsumerLink", "GroupMember", "IllegalStateError"]
