"""Replication bookkeeping on the leader, without sockets (Kafka's Partition logic).

One :class:`LeaderReplica` per partition a node leads. Followers fetch from the leader;
the offset a follower fetches from is its log end offset, which tells the leader how far
it has durably written (a follower fsyncs what it appended before fetching again).

- A follower is *caught up* when it fetches from the leader's log end offset, or (under
  steady writes, when the end keeps moving) from the end as it was at its previous fetch,
  which makes it caught up as of that previous fetch (Kafka's rule). An in-sync follower
  that has not been caught up for ``replica.lag.time.max.ms`` is proposed for removal
  from the ISR; an out-of-sync follower that reached the high watermark and is caught up
  is proposed for re-entry. The controller decides (``alter_isr``).
- The high watermark is the smallest log end offset over the ISR *including pending
  changes* (Kafka's "maximal ISR", so it never moves past what a member being added or
  removed has not got).
- ``acks=all`` requests wait until the high watermark passes their last offset; with
  fewer in-sync replicas than ``min.insync.replicas`` they are refused before anything
  is written (NOT_ENOUGH_REPLICAS).

Time is passed in (``now_ms``); owned by one node's loop; not thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvlog.errors import (
    FencedLeaderEpochError,
    KvlogError,
    NotEnoughReplicasAfterAppendError,
    NotEnoughReplicasError,
    NotLeaderOrFollowerError,
    RequestTimedOutError,
    UnknownLeaderEpochError,
)
from kvlog.types import TopicPartition

from .config import broker_default

DEFAULT_REPLICA_LAG_TIME_MAX_MS: int = broker_default("replica.lag.time.max.ms")


def check_leader_epoch(replica: LeaderReplica, tp: TopicPartition, client_epoch: int) -> None:
    """Refuse a request made for another leader epoch than the leader's (-1: any): an
    older one is FENCED_LEADER_EPOCH (the client's metadata is stale), a newer one
    UNKNOWN_LEADER_EPOCH (this node has not heard of it yet); Kafka's KIP-320 rule."""
    if client_epoch < 0 or client_epoch == replica.leader_epoch:
        return
    message = f"{tp}: request for leader epoch {client_epoch}, leader is at {replica.leader_epoch}"
    if client_epoch < replica.leader_epoch:
        raise FencedLeaderEpochError(message)
    raise UnknownLeaderEpochError(message)


@dataclass
class FollowerProgress:
    node_id: int
    log_end_offset: int = -1
    last_fetch_ms: int = 0
    last_caught_up_ms: int = 0
    last_fetch_leader_leo: int = -1  # the leader's log end offset at the previous fetch


@dataclass
class AckWaiter:
    token: Any
    end_offset: int
    deadline_ms: int
    item: Any = None


@dataclass
class LeaderReplica:
    tp: TopicPartition
    node_id: int
    replicas: list[int]
    isr: list[int]
    leader_epoch: int
    log_end_offset: int
    high_watermark: int
    min_insync_replicas: int = 1
    lag_time_max_ms: int = DEFAULT_REPLICA_LAG_TIME_MAX_MS
    followers: dict[int, FollowerProgress] = field(default_factory=dict)
    pending_isr: list[int] | None = None
    waiters: list[AckWaiter] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        tp: TopicPartition,
        node_id: int,
        replicas: list[int],
        isr: list[int],
        leader_epoch: int,
        log_end_offset: int,
        high_watermark: int,
        now_ms: int,
        *,
        min_insync_replicas: int = 1,
        lag_time_max_ms: int = DEFAULT_REPLICA_LAG_TIME_MAX_MS,
    ) -> LeaderReplica:
        replica = cls(
            tp,
            node_id,
            list(replicas),
            list(isr),
            leader_epoch,
            log_end_offset,
            high_watermark,
            min_insync_replicas,
            lag_time_max_ms,
        )
        for follower in replicas:
            if follower != node_id:
                # A new leader gives every follower a full lag window to show up.
                replica.followers[follower] = FollowerProgress(follower, -1, now_ms, now_ms)
        replica.recompute_high_watermark()
        return replica

    # -- progress --------------------------------------------------------------------------

    @property
    def maximal_isr(self) -> set[int]:
        members = set(self.isr)
        if self.pending_isr is not None:
            members |= set(self.pending_isr)
        return members

    def on_local_append(self, log_end_offset: int) -> None:
        self.log_end_offset = log_end_offset

    def on_follower_fetch(self, follower: int, fetch_offset: int, now_ms: int) -> bool:
        """Record a follower's fetch; returns whether the high watermark moved."""
        progress = self.followers.get(follower)
        if progress is None:
            return False
        if fetch_offset >= self.log_end_offset:
            progress.last_caught_up_ms = max(progress.last_caught_up_ms, now_ms)
        elif fetch_offset >= progress.last_fetch_leader_leo >= 0:
            progress.last_caught_up_ms = max(progress.last_caught_up_ms, progress.last_fetch_ms)
        progress.log_end_offset = fetch_offset
        progress.last_fetch_ms = now_ms
        progress.last_fetch_leader_leo = self.log_end_offset
        return self.recompute_high_watermark()

    def recompute_high_watermark(self) -> bool:
        offsets = [self.log_end_offset]
        for member in self.maximal_isr:
            if member == self.node_id:
                continue
            progress = self.followers.get(member)
            offsets.append(progress.log_end_offset if progress is not None else -1)
        candidate = min(offsets)
        if candidate > self.high_watermark:
            self.high_watermark = candidate
            return True
        return False

    # -- ISR ------------------------------------------------------------------------------

    def proposed_isr(self, now_ms: int) -> list[int] | None:
        """The ISR the leader should ask the controller for, or None if unchanged."""
        if self.pending_isr is not None:
            return None
        isr = [self.node_id] + [m for m in self.isr if m != self.node_id]
        out = [self.node_id]
        for member in isr[1:]:
            progress = self.followers.get(member)
            if progress is not None and now_ms - progress.last_caught_up_ms <= self.lag_time_max_ms:
                out.append(member)
        for follower, progress in self.followers.items():
            if follower in out or follower in isr:
                continue
            if (
                progress.log_end_offset >= self.high_watermark
                and now_ms - progress.last_caught_up_ms <= self.lag_time_max_ms
            ):
                out.append(follower)
        if sorted(out) == sorted(self.isr):
            return None
        return out

    def isr_applied(self, isr: list[int]) -> bool:
        """The controller decided the ISR; returns whether the high watermark moved."""
        self.isr = list(isr)
        self.pending_isr = None
        return self.recompute_high_watermark()

    # -- acks=all -------------------------------------------------------------------------

    def check_enough_replicas(self) -> None:
        if len(self.isr) < self.min_insync_replicas:
            raise NotEnoughReplicasError(
                f"{self.tp} has {len(self.isr)} in-sync replica(s) {sorted(self.isr)}, fewer "
                f"than min.insync.replicas={self.min_insync_replicas}; nothing was written. "
                "Retry when the replicas are back, or use acks=1."
            )

    def wait_for(self, token: Any, end_offset: int, deadline_ms: int, item: Any = None) -> None:
        self.waiters.append(AckWaiter(token, end_offset, deadline_ms, item))

    def ready_waiters(self, now_ms: int) -> list[tuple[AckWaiter, KvlogError | None]]:
        """Waiters whose fate is decided: replicated, timed out, or under-replicated."""
        done: list[tuple[AckWaiter, KvlogError | None]] = []
        still = []
        for waiter in self.waiters:
            if self.high_watermark >= waiter.end_offset:
                error: KvlogError | None = None
                if len(self.isr) < self.min_insync_replicas:
                    error = NotEnoughReplicasAfterAppendError(
                        f"{self.tp}: written, but the ISR shrank to {sorted(self.isr)}, below "
                        f"min.insync.replicas={self.min_insync_replicas}"
                    )
                done.append((waiter, error))
            elif waiter.deadline_ms <= now_ms:
                done.append(
                    (
                        waiter,
                        RequestTimedOutError(
                            f"{self.tp}: not replicated to every in-sync replica within timeout_ms "
                            f"(high watermark {self.high_watermark}, needed {waiter.end_offset})"
                        ),
                    )
                )
            else:
                still.append(waiter)
        self.waiters = still
        return done

    def abandon(self, reason: str) -> list[tuple[AckWaiter, KvlogError]]:
        """Leadership moved: every waiter fails with NOT_LEADER_OR_FOLLOWER (retriable)."""
        out = [(w, NotLeaderOrFollowerError(f"{self.tp}: {reason}")) for w in self.waiters]
        self.waiters = []
        return out  # type: ignore[return-value]

    def next_deadline_ms(self) -> int | None:
        return min((w.deadline_ms for w in self.waiters), default=None)


def elect_leader(
    replicas: list[int],
    isr: list[int],
    alive: set[int],
    *,
    unclean: bool,
) -> tuple[int, list[int]]:
    """Kafka's election: the first live replica (in replica order) that is in the ISR;
    with ``unclean`` any live replica. Returns (leader or -1, new ISR)."""
    live_isr = [r for r in replicas if r in isr and r in alive]
    if live_isr:
        return live_isr[0], [r for r in isr if r in alive]
    if unclean:
        live = [r for r in replicas if r in alive]
        if live:
            return live[0], [live[0]]
    return -1, list(isr)
