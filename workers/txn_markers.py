"""Which transaction markers are still to be written, and the sends that write them.

Part of the transaction coordinator (:mod:`workers.txn_core`), without sockets. Once a
transaction is decided (PrepareCommit / PrepareAbort is durable), every partition it
touched needs its marker, written by the partition's leader node. The channel keeps, per
transactional id, the partitions whose marker is not written yet, and hands the core the
``write_txn_markers`` sends to make (Kafka's TransactionMarkerChannelManager):

- one request in flight per leader node, carrying every pending marker that node leads
  (markers of several transactions ride together);
- each marker names the leader epoch it is meant for, so a deposed leader refuses it
  (FENCED_LEADER_EPOCH) instead of writing it late;
- a marker the node refused, or a request that got no answer, is retried after
  ``retry_backoff_ms`` at the partition's leader then (which may have moved); a partition
  without a live leader waits, and is retried when the metadata moves
  (:meth:`MarkerChannel.metadata_moved`, which also drops requests in flight to a node
  that no longer leads their partitions: their late answers are ignored);
- a partition that no longer exists (its topic deleted) needs no marker.

Writing a marker twice is harmless (the leader skips one it already wrote), which is what
makes every retry safe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvlog.errors import ErrorCode
from kvlog.types import TopicPartition

from .core_result import Send
from .node_model import NodePeer

log = logging.getLogger(__name__)

MARKER_TIMEOUT_MS = 5000  # the node's acks=all wait for one request
SEND_SLACK_MS = 2000  # a send times out this long after the node's wait
RETRY_BACKOFF_MS = 100


@dataclass(frozen=True, slots=True)
class Leader:
    """Where a partition's marker goes; ``gone``: the partition no longer exists."""

    node_id: int = -1
    leader_epoch: int = -1
    endpoint: str = ""
    gone: bool = False


GONE = Leader(gone=True)
LeaderLookup = Callable[[TopicPartition], Leader | None]  # None: no live leader now


@dataclass(frozen=True, slots=True)
class MarkerSend:
    """Token of a ``write_txn_markers`` send."""

    node_id: int
    serial: int


@dataclass(slots=True)
class Pending:
    """One decided transaction's markers not yet written."""

    producer_id: int
    producer_epoch: int
    committed: bool
    partitions: set[TopicPartition]


@dataclass(slots=True)
class _InFlight:
    token: MarkerSend
    entries: list[tuple[str, TopicPartition, int]]  # (transactional id, tp, leader epoch)


@dataclass
class MarkerChannel:
    """Owned by the transaction coordinator core; not thread-safe."""

    leaders: LeaderLookup
    marker_timeout_ms: int = MARKER_TIMEOUT_MS
    retry_backoff_ms: int = RETRY_BACKOFF_MS
    pending: dict[str, Pending] = field(default_factory=dict)
    _in_flight: dict[int, _InFlight] = field(default_factory=dict)
    _serial: int = 0
    _retry_at: dict[int, int] = field(default_factory=dict)  # node id -> after a failure
    _leaderless_at: int | None = None  # when to look again for leaders that were missing

    def add(
        self,
        transactional_id: str,
        producer_id: int,
        producer_epoch: int,
        committed: bool,
        partitions: frozenset[TopicPartition],
    ) -> None:
        self.pending[transactional_id] = Pending(
            producer_id, producer_epoch, committed, set(partitions)
        )

    def done(self) -> list[str]:
        """Transactional ids whose every marker is written (they leave the channel)."""
        finished = [tid for tid, p in self.pending.items() if not p.partitions]
        for tid in finished:
            del self.pending[tid]
        return finished

    def _sent(self) -> set[tuple[str, TopicPartition]]:
        return {(tid, tp) for f in self._in_flight.values() for tid, tp, _ in f.entries}

    def sends(self, now_ms: int) -> list[Send]:
        """The sends to make now: one per leader node with pending markers and nothing in
        flight. Partitions that are gone are marked done here."""
        for node_id in [n for n, at in self._retry_at.items() if at <= now_ms]:
            del self._retry_at[node_id]
        sent = self._sent()
        by_node: dict[int, tuple[Leader, list[tuple[str, TopicPartition, int]]]] = {}
        waiting = False
        for tid, pending in self.pending.items():
            for tp in sorted(pending.partitions):
                if (tid, tp) in sent:
                    continue
                leader = self.leaders(tp)
                if leader is not None and leader.gone:
                    pending.partitions.discard(tp)
                    continue
                if leader is None:
                    waiting = True
                    continue
                if leader.node_id in self._in_flight or leader.node_id in self._retry_at:
                    continue  # its answer, or its backoff's end, sends it

                entry = by_node.setdefault(leader.node_id, (leader, []))
                entry[1].append((tid, tp, leader.leader_epoch))
        self._leaderless_at = now_ms + self.retry_backoff_ms if waiting else None
        out = []
        for node_id, (leader, entries) in by_node.items():
            self._serial += 1
            token = MarkerSend(node_id, self._serial)
            self._in_flight[node_id] = _InFlight(token, entries)
            markers = []
            for tid, tp, leader_epoch in entries:
                p = self.pending[tid]
                markers.append(
                    {
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "producer_id": p.producer_id,
                        "producer_epoch": p.producer_epoch,
                        "committed": p.committed,
                        "leader_epoch": leader_epoch,
                    }
                )
            fields = {"markers": markers, "timeout_ms": self.marker_timeout_ms}
            timeout = self.marker_timeout_ms + SEND_SLACK_MS
            out.append(
                Send(
                    NodePeer(node_id, leader.endpoint), "write_txn_markers", fields, token, timeout
                )
            )
        return out

    def on_answer(self, token: Any, fields: dict[str, Any] | None, now_ms: int) -> None:
        """A leader answered (or a send failed): written markers leave the pending sets;
        the others are retried after the backoff."""
        if not isinstance(token, MarkerSend):
            return
        flight = self._in_flight.get(token.node_id)
        if flight is None or flight.token != token:
            return  # dropped when leadership moved: its partitions went out again
        del self._in_flight[token.node_id]
        results = (fields or {}).get("results")
        if not isinstance(results, list) or len(results) != len(flight.entries):
            results = [None] * len(flight.entries)
        failed = 0
        for (tid, tp, _), result in zip(flight.entries, results, strict=True):
            code = result.get("error", -1) if isinstance(result, dict) else -1
            pending = self.pending.get(tid)
            if code == ErrorCode.NONE:
                if pending is not None:
                    pending.partitions.discard(tp)
            else:
                failed += 1
                log.debug("marker for %s of %r not written (error %s); retrying", tp, tid, code)
        if failed:
            self._retry_at[token.node_id] = now_ms + self.retry_backoff_ms

    def metadata_moved(self) -> None:
        """Leaders may have moved: a request in flight to a node that no longer leads one
        of its partitions (at that epoch) is dropped, and its markers go out again."""
        for node_id, flight in list(self._in_flight.items()):
            for _tid, tp, epoch in flight.entries:
                leader = self.leaders(tp)
                if leader is None or leader.node_id != node_id or leader.leader_epoch != epoch:
                    del self._in_flight[node_id]
                    break
        self._retry_at.clear()

    def next_deadline_ms(self) -> int | None:
        """When :meth:`sends` has something to retry (None: nothing waits on time)."""
        if not self.pending:
            return None
        due = [*self._retry_at.values()]
        if self._leaderless_at is not None:
            due.append(self._leaderless_at)
        return min(due, default=None)

    def forget(self) -> None:
        """A new process: nothing is in flight any more."""
        self._in_flight.clear()
        self._retry_at.clear()
        self._leaderless_at = None


__all__ = ["GONE", "Leader", "LeaderLookup", "MarkerChannel", "MarkerSend"]
