"""The node process's logic, without sockets: one entry point for every shell.

:class:`NodeCore` puts the node's cores together over its one log store: the leader
(:mod:`~workers.leader_core`: group commit, acks, ISR), the reads
(:mod:`~workers.fetch_core`: fetches and their long polls, ListOffsets), the follower
(:mod:`~workers.follower_core`: replica fetches from other leaders) and the log dir's
health (:mod:`~workers.log_dir_core`). It also keeps the node registered at the
coordinator: a ``node_heartbeat`` long poll always in flight, whose answer carries the
assignment (what to host and lead, where the other nodes are).

Every method takes a typed event and ``now_ms`` and returns one
:class:`~workers.core_result.Result`. Who decides each reply:

=========================  ==========================================================
request                    decided by
=========================  ==========================================================
produce                    ``LeaderCore.produce`` (refused as a whole), else
                           ``LeaderCore._complete`` after the group commit (acks=1,
                           acks=all alone) or ``LeaderCore._settle`` (acks=all:
                           replicated, timed out, leadership moved); the body, and
                           ``UNANSWERED`` for acks=0, by ``StagedProduce.response``
fetch                      ``FetchCore._try_answer`` (at once, woken, or at its deadline)
list_offsets, ping         ``FetchCore.list_offsets``, :meth:`NodeCore.ping`
offset_for_leader_epoch    ``FetchCore.offset_for_leader_epoch`` (the epoch cache)
delete_records             ``delete_records_core.delete_records`` (after its own write)
write_txn_markers          ``LeaderCore._complete`` / ``_settle`` as an acks=all produce
                           (staged by ``markers_core.write_markers``)
list_groups                :meth:`NodeCore.list_groups`: a node coordinates no group
=========================  ==========================================================

How a shell drives it, per loop turn: decode each request and call :meth:`produce`,
:meth:`fetch`, :meth:`list_offsets`, :meth:`offset_for_leader_epoch`,
:meth:`delete_records` or :meth:`ping`; hand each answer to one of the core's
``Send``\\ s to :meth:`answer`; then call :meth:`flush` once (the turn's group commit, a
distinct step); call :meth:`tick` when the earliest deadline it was given has come. It
carries out every Result: replies by token, sends, and the deadline. A Result's deadline
covers what its event started; :meth:`tick`'s covers everything.

Owned by one node process's loop; not thread-safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kvlog.errors import KvlogError
from kvlog.log import LogStore
from kvlog.types import TopicPartition

from .core_result import Result, Send
from .delete_records_core import delete_records
from .fetch_core import FetchCore
from .follower_core import FollowerCore, ReplicaFetch
from .group_events import ListGroupsAnswer
from .leader_core import CommitJob, IsrChange, LeaderCore
from .log_dir_core import LogDirHealth
from .markers_core import write_markers
from .node_model import (
    COORDINATOR,
    Answer,
    Assignment,
    DeleteRecords,
    Fetch,
    HostedPartition,
    ListOffsets,
    NodeStatus,
    OffsetForLeaderEpoch,
    Produce,
    WriteTxnMarkers,
    earliest,
)
from .settings import NodeSettings

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_SLACK_MS = 2000  # a heartbeat times out this long after its wait


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Token of a ``node_heartbeat`` send: only the latest one's answer counts."""

    serial: int


def decode_assignment(fields: dict[str, Any]) -> Assignment:
    """The assignment in a ``node_heartbeat`` answer (PROTOCOL.md 3.23)."""
    return Assignment(
        [
            HostedPartition(
                tp=TopicPartition(p["topic"], p["partition"]),
                topic_id=p["topic_id"],
                leader_id=p["leader"],
                leader_epoch=p["leader_epoch"],
                replicas=list(p["replicas"]),
                config=dict(p.get("config") or {}),
                isr=list(p.get("isr") or []),
            )
            for p in fields["partitions"]
        ],
        list(fields.get("deleted_topic_ids", [])),
        {int(n): str(ep) for n, ep in fields.get("nodes", [])},
        fields.get("version", -1),
    )


class NodeCore:
    """Owned by one node process's loop; not thread-safe."""

    def __init__(
        self,
        settings: NodeSettings,
        store: LogStore,
        *,
        endpoint: str,
        pid: int,
        kafka_endpoint: str | None = None,
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.name = f"node {settings.node_id}"
        self.endpoint = endpoint
        self.kafka_endpoint = kafka_endpoint  # advertised "host:port" of its Kafka listener
        # The coordinator's Kafka "host:port" (from the assignment): where the node's Kafka
        # shell relays what the coordinator answers.
        self.coordinator_kafka: str | None = None
        self.pid = pid
        self.store = store
        self.health = LogDirHealth(self.name, settings.log_dir)
        self.leader = LeaderCore(
            settings.node_id,
            store,
            health=self.health,
            lag_time_max_ms=settings.replica_lag_time_max_ms,
            message_max_bytes=settings.message_max_bytes,
            producer_id_expiration_ms=settings.producer_id_expiration_ms,
        )
        self.reads = FetchCore(self.leader, fetch_max_wait_ms=settings.fetch_max_wait_ms)
        self.follower = FollowerCore(
            self.leader, fetch_wait_max_ms=settings.replica_fetch_wait_max_ms
        )
        self.endpoints: dict[int, str] = {}  # node id -> endpoint, from the assignment
        self.applied_version = -1
        self._heartbeat = 0  # serial of the heartbeat whose answer counts

    # -- client requests -------------------------------------------------------------------

    def start(self, now_ms: int) -> Result:
        """The first event: register at the coordinator."""
        self.leader.start(now_ms)
        return Result().send(self._heartbeat_send()).wake_at(self.leader.next_deadline_ms())

    def produce(self, request: Produce, now_ms: int) -> Result:
        """Queued for this turn's :meth:`flush`; answered then (or later, acks=all)."""
        return self.leader.produce(request, now_ms)

    def write_txn_markers(self, request: WriteTxnMarkers, now_ms: int) -> Result:
        """The transaction coordinator's markers: queued for this turn's :meth:`flush`,
        answered once replicated (acks=all)."""
        return write_markers(self.leader, request, now_ms)

    def last_stable_offset(self, tp: TopicPartition) -> int:
        """The partition's LSO as this node sees it, leading or following (from its
        stored high watermark when following)."""
        replica = self.leader.leaders.get(tp)
        with self.store.reader() as r:
            state = r.offsets(tp)
        hw = replica.high_watermark if replica is not None else state.high_watermark
        return self.leader.txns.last_stable_offset(tp, hw, state.log_start_offset)

    def fetch(self, request: Fetch, now_ms: int) -> Result:
        return self.reads.fetch(request, now_ms)

    def list_offsets(self, request: ListOffsets) -> Result:
        return self.reads.list_offsets(request)

    def offset_for_leader_epoch(self, request: OffsetForLeaderEpoch) -> Result:
        return self.reads.offset_for_leader_epoch(request)

    def delete_records(self, request: DeleteRecords, now_ms: int) -> Result:
        """Answered after its own durable write (a failed one takes the log dir offline)."""
        return delete_records(self.leader, request).extend(self._check_storage(now_ms))

    # -- what Kafka clients ask any broker -------------------------------------------------

    def list_groups(self, token: Any) -> Result:
        """Kafka asks every broker for the groups it coordinates: a node coordinates none."""
        return Result().reply(token, ListGroupsAnswer([]))

    def ping(self, token: Any) -> Result:
        return Result().reply(token, NodeStatus(self.node_id, self.applied_version))

    def flush(self, now_ms: int) -> Result:
        """End of a loop turn: the group commit (one write transaction for every produce
        request of the turn), then the replies it and the turn's other events decided:
        acks=all requests replication settled, long polls new data satisfies."""
        return self.settle(self.leader.commit(now_ms), now_ms)

    def take_commit(self) -> CommitJob | None:
        """The pipelined form of :meth:`flush`'s commit: the staged requests as one write
        for the shell's committer thread. Until :meth:`commit_landed`, the shell calls
        :meth:`settle` at the end of its turns, and lands the commit before any event
        other than produce, fetch, list_offsets and ping (those may write)."""
        return self.leader.take_commit()

    def commit_landed(
        self, job: CommitJob, written: Any, error: BaseException | None, now_ms: int
    ) -> Result:
        """The commit is durable (or failed): its replies, and the long polls it wakes."""
        return self.settle(self.leader.commit_landed(job, written, error, now_ms), now_ms)

    def settle(self, result: Result, now_ms: int) -> Result:
        """What the turn's events decided besides a commit: acks=all requests
        replication settled, long polls that new data or high watermarks satisfy."""
        result.extend(self.leader.take_decided())
        touched = self.leader.take_touched()
        if touched:
            result.extend(self.reads.wake(touched, now_ms))
            result.extend(self.leader.take_decided())  # follower fetches just woken
        result.extend(self._check_storage(now_ms))
        return result.wake_at(self.leader.next_deadline_ms())

    # -- answers to the core's sends -------------------------------------------------------

    def answer(self, answer: Answer, now_ms: int) -> Result:
        token = answer.token
        if isinstance(token, ReplicaFetch):
            self.follower.on_answer(answer, now_ms)
            result = Result()
            result.sends.extend(self._follow(now_ms))
        elif isinstance(token, IsrChange):
            result = self.leader.on_isr_answer(answer, now_ms)
        elif isinstance(token, Heartbeat):
            result = self._on_heartbeat(answer, now_ms)

        else:
            raise ValueError(f"an answer to no send of this core: {token!r}")
        result.extend(self._check_storage(now_ms))
        return result.wake_at(self.follower.next_deadline_ms())

    def _heartbeat_send(self) -> Send:
        self._heartbeat += 1
        wait = self.settings.heartbeat_wait_ms
        fields = {
            "node_id": self.node_id,
            "endpoint": self.endpoint,
            "log_dir": self.settings.log_dir,
            "applied_version": self.applied_version,
            "pid": self.pid,
            "wait_ms": wait,
            "offline": self.health.offline,
        }
        if self.kafka_endpoint is not None:
            fields["kafka_endpoint"] = self.kafka_endpoint
        timeout_ms = wait + HEARTBEAT_TIMEOUT_SLACK_MS
        return Send(COORDINATOR, "node_heartbeat", fields, Heartbeat(self._heartbeat), timeout_ms)

    def _on_heartbeat(self, answer: Answer, now_ms: int) -> Result:
        if answer.token.serial != self._heartbeat:
            return Result()  # superseded by a newer heartbeat (the offline flag changed)
        result = Result()
        fields = answer.fields
        if fields is None:  # timed out: the coordinator may be restarting
            log.debug("%s: heartbeat: %s", self.name, answer.error)
        elif answer.error is not None:
            log.warning("%s: heartbeat refused: %s", self.name, answer.error.message)
        elif "partitions" in fields:
            try:
                result = self.apply_assignment(decode_assignment(fields), now_ms)
            except KvlogError as exc:
                log.error("%s: cannot apply assignment: %s", self.name, exc.message)
            else:
                self.applied_version = fields.get("version", self.applied_version)
                self.coordinator_kafka = fields.get("coordinator_kafka_endpoint")
        # The next long poll, with the version just applied.
        return result.send(self._heartbeat_send())

    def apply_assignment(self, assignment: Assignment, now_ms: int) -> Result:
        """Host, lead and follow what the coordinator assigned."""
        followed = self.follower.followed()
        self.endpoints = dict(assignment.nodes)
        result = self.leader.apply_assignment(
            assignment.partitions, assignment.deleted_topic_ids, now_ms
        )
        self.follower.leadership_moved(followed)
        result.sends.extend(self._follow(now_ms))
        log.info(
            "%s: hosting %d partition(s), metadata version %s",
            self.name,
            len(assignment.partitions),
            assignment.version,
        )
        return result

    # -- time ------------------------------------------------------------------------------

    def tick(self, now_ms: int, headroom_bytes: int) -> Result:
        """Time-driven work; ``headroom_bytes`` is the room the log dir can still grow
        (the shell measures it: the core touches no file but through its store)."""
        result = self._check_storage(now_ms)
        if self.health.probe(now_ms, headroom_bytes, self.store):
            self.follower.forget_epochs()
            result.send(self._heartbeat_send())  # tell the coordinator now
        result.sends.extend(self._follow(now_ms))
        result.extend(self.leader.tick(now_ms))
        result.extend(self.reads.tick(now_ms))
        return result.wake_at(
            earliest([self.follower.next_deadline_ms(), self.health.next_deadline_ms()])
        )

    def _check_storage(self, now_ms: int) -> Result:
        """A write failed: go offline and tell the coordinator now (the new heartbeat
        supersedes the one in flight)."""
        if self.health.on_failure(now_ms):
            return Result().send(self._heartbeat_send()).wake_at(self.health.next_deadline_ms())
        return Result()

    def _follow(self, now_ms: int) -> list[Send]:
        if not self.health.writable:
            return []
        return self.follower.sends(now_ms, self.endpoints)


__all__ = ["Heartbeat", "NodeCore", "decode_assignment"]
