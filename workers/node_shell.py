"""The node process's ZeroMQ shell: one per log dir, around :class:`~workers.node_core.NodeCore`.

No policy lives here (``workers/node_core.py`` names the core function that decides each
reply). The shell decodes each request once (``workers/node_wire.py``), reads the one
clock (:func:`kvlog.clock.now_ms`), calls the core and carries out its Result:

- replies: encoded for this wire, addressed by the token the shell gave the request
  (:class:`ZmqToken`); a produce or fetch reply is held back while its principal is over
  its byte-rate quota (workers/quotas.py, shared with any other shell), and frees the
  request's place under ``max.inflight.requests.per.client``;
- sends: over one DEALER link to the coordinator and one per other node; their answers
  queue in an inbox that the next turn hands to :meth:`NodeCore.answer`;
- the deadline: the shell calls :meth:`NodeCore.tick` when it has come.

Replies whose token is a :class:`~workers.kafka_node_shell.KafkaCall` belong to the Kafka
shell mixed in here (the node's Kafka listener, in this loop): they leave as Kafka
responses at the end of the turn.

Per loop turn (``zmq_server.Server.run_once``): drain and dispatch requests, then
:meth:`after_drain` (the group commit), then :meth:`on_timers` (answers, delayed replies,
``tick``).

With ``commit.pipelined`` (off by default: BENCHMARKS.md J) the group commit is
pipelined (``workers/committer.py``): :meth:`after_drain` hands the
staged requests to the committer thread when no commit is in flight, and the loop goes on
receiving requests and answering fetches during its fsync. The committer's pipe wakes the
loop when the commit has landed; the core then decides its replies (none leaves before
that), and the requests staged meanwhile form the next commit. Every other write goes
through the committer too, after the commit in flight has landed (:meth:`land_commit`,
before answers, ticks and DeleteRecords: the events that may write or move leadership).
``test.commit.fail`` (testing only) makes one group commit fail in its fsync phase.
Without it, :meth:`after_drain` calls the core's ``flush``: the commit runs in the turn.

The base loop's monotonic ``now`` is not used here:
timeouts of this shell's links, its quota clock and the core all run on
:func:`kvlog.clock.now_ms`, and :meth:`next_timeout_ms` turns the earliest of their
deadlines into the poller's timeout.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import zmq

from kvlog import clock
from kvlog.errors import KvlogError, StorageError, ThrottlingQuotaExceededError
from kvlog.ipc.wire import Request, advertise
from kvlog.lmdb_store import LogDir

from .committer import CommittedStore, Committer
from .core_result import Reply, Result, Send
from .kafka_node_shell import KafkaCall, NodeKafkaShell
from .leader_core import CommitJob
from .node_core import NodeCore
from .node_model import (
    COORDINATOR,
    UNANSWERED,
    Answer,
    FetchResponse,
    ListOffsetsResponse,
    NodePeer,
    NodeStatus,
    ProduceResponse,
    earliest,
)
from .node_wire import (
    decode_fetch,
    decode_list_offsets,
    decode_produce,
    decode_write_txn_markers,
    fetch_reply,
    list_offsets_fields,
    produce_fields,
    status_fields,
)
from .quotas import InflightLimit, Quotas
from .security import ServerSecurity
from .settings import NodeSettings, ServerSettings
from .zmq_peer import PeerLink
from .zmq_server import Server

log = logging.getLogger(__name__)

MAX_POLL_MS = 100  # wake at least this often (ACL refreshes, key reloads)
GIL_SWITCH_INTERVAL_S = 0.0005
# How long the loop waits, GIL released, for the committer to run a group commit's body
# (tens of microseconds) before it goes on: past this the committer is waiting for LMDB's
# writer lock held by another process (the sweeper), and the loop must not stall on that.
BODY_WAIT_S = 0.002
# Inline commits: how many more drains and commits a turn runs for requests that arrived
# during its commit (NodeServer._commit_inline).
POST_COMMIT_DRAINS = 2


def _headroom(log_dir: str) -> int:
    """Bytes the log dir's data file can still grow: free disk space, capped by this
    process's file-size limit (RLIMIT_FSIZE)."""
    path = Path(log_dir)
    try:
        fs = os.statvfs(path)
        room = fs.f_bavail * fs.f_frsize
        soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            room = min(room, soft - (path / "data.mdb").stat().st_size)
    except OSError:
        return 0
    return room


def _seconds() -> float:
    """The one clock, in the seconds PeerLink and Quotas count in."""
    return clock.now_ms() / 1000


class _FaultyCommits:
    """The log dir, but the group commit numbered ``fail`` (1 is the first) fails in its
    fsync phase, after the transaction's body ran (``test.commit.fail``: what a failing
    disk does to one commit while requests stage for the next). Other writes pass."""

    def __init__(self, store: LogDir, fail: int) -> None:
        self.store = store
        self.fail = fail
        self.commits = 0

    def write(self, fn: Any, written: Any = None) -> Any:
        if written is None or not self.fail:
            return self.store.write(fn, written)
        self.commits += 1
        if self.commits != self.fail:
            return self.store.write(fn, written)

        def body(w: Any) -> Any:
            fn(w)
            written()
            raise StorageError(f"test.commit.fail: group commit {self.commits} failed")

        return self.store.write(body)


class ZmqToken(NamedTuple):
    """A request's address on this wire, as the core's replies carry it back."""

    peer: bytes
    request_id: int | None
    principal: str
    counted: bool  # holds a place under max.inflight.requests.per.client
    arrived_ms: int = 0  # when the request was read (fetch latency)


class NodeServer(NodeKafkaShell, Server):
    """The node process's loop over one :class:`NodeCore`, with its Kafka shell
    (:mod:`workers.kafka_node_shell`) in the same loop. Owned by the process's one
    thread; not thread-safe."""

    name = "node"
    # A drain answers fetches before it stages produce requests (zmq_server: the e2e
    # latency's consumer half need not wait behind the produce half's decoding).
    first_ops = frozenset({"fetch"})

    def __init__(
        self,
        ctx: zmq.Context[Any],
        router: zmq.Socket[Any],
        endpoint: str,
        settings: NodeSettings,
        store: LogDir,
        security: ServerSecurity | None = None,
        server_settings: ServerSettings | None = None,
    ) -> None:
        super().__init__(ctx, router, security)
        self.link_options = security.client_options() if security else None
        self.name = f"node {settings.node_id}"
        self.settings = settings
        self.endpoint = advertise(endpoint, settings.advertised_host)
        # Quotas are per principal, so they apply when security gives principals.
        self.quotas = Quotas(
            settings.quota_producer_byte_rate if security else -1,
            settings.quota_consumer_byte_rate if security else -1,
        )
        # The Kafka listener first: the node reports its address in every heartbeat.
        kafka_endpoint = self.start_kafka(
            server_settings or ServerSettings(),
            node_id=settings.node_id,
            max_pending=settings.max_inflight_requests_per_client,
        )
        self.committer: Committer | None = None
        self._commit_job: CommitJob | None = None
        self._commit_began = (0.0, 0.0)
        core_store: Any = store
        if settings.commit_pipelined:
            # A commit back from its fsync takes the GIL from a busy loop within this,
            # not CPython's default 5 ms (the process's only other thread is the
            # committer): at 5 ms the e2e p99 was 3x worse (BENCHMARKS.md J).
            sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
            faulty = _FaultyCommits(store, settings.test_commit_fail)
            self.committer = Committer(faulty, self.name)
            self.add_socket(self.committer.fileno(), self._on_landed)  # type: ignore[arg-type]
            core_store = CommittedStore(store, self.committer)
        self.core = NodeCore(
            settings,
            core_store,
            endpoint=self.endpoint,
            pid=os.getpid(),
            kafka_endpoint=kafka_endpoint,
        )
        self.coordinator = self._new_link(settings.coordinator, f"{self.name} -> coordinator")
        self.links: dict[int, PeerLink] = {}  # node id -> link to that node
        self.inbox: list[Answer] = []  # answers to the core's sends, for the next turn
        self._wake_ms: int | None = None  # when the core wants its tick
        self._drop_replies = settings.test_drop_produce_replies
        self.inflight = InflightLimit(settings.max_inflight_requests_per_client)
        self.delayed: list[tuple[float, bytes, int | None, dict[str, Any], list[bytes]]] = []
        self._carry(self.core.start(clock.now_ms()))

    # -- requests --------------------------------------------------------------------------

    def _token(self, req: Request, peer: bytes, *, counted: bool, now_ms: int = 0) -> ZmqToken:
        return ZmqToken(peer, req.id, self.principal, counted, now_ms)

    def _acquire(self, peer: bytes) -> None:
        if not self.inflight.try_acquire(peer):
            raise ThrottlingQuotaExceededError(
                f"this client has {self.inflight.limit} requests waiting at {self.name} "
                "(max.inflight.requests.per.client); wait for replies before sending more"
            )

    def op_produce(self, req: Request, peer: bytes) -> None:
        request = decode_produce(req, self._token(req, peer, counted=True))
        self._acquire(peer)  # after every check that can refuse the request
        self._carry(self.core.produce(request, clock.now_ms()))

    def op_fetch(self, req: Request, peer: bytes) -> None:
        now_ms = clock.now_ms()
        request = decode_fetch(req, self._token(req, peer, counted=True, now_ms=now_ms))
        self._acquire(peer)
        self._carry(self.core.fetch(request, now_ms))

    def op_list_offsets(self, req: Request, peer: bytes) -> None:
        request = decode_list_offsets(req, self._token(req, peer, counted=False))
        self._carry(self.core.list_offsets(request))

    def op_write_txn_markers(self, req: Request, peer: bytes) -> None:
        """Internal, from the transaction coordinator: append transaction markers."""
        request = decode_write_txn_markers(req, self._token(req, peer, counted=False))
        self._carry(self.core.write_txn_markers(request, clock.now_ms()))

    def op_ping(self, req: Request, peer: bytes) -> None:
        self._carry(self.core.ping(self._token(req, peer, counted=False)))

    def after_drain(self) -> None:
        if self.committer is None:  # commit.pipelined off: the commit in this turn
            self._commit_inline()
            return
        now_ms = clock.now_ms()
        if self._commit_job is None:
            self._start_commit(self.committer)
        self._carry(self.core.settle(Result(), now_ms))
        self.flush_kafka()

    def _commit_inline(self) -> None:
        """The group commit in this turn, then again for what arrived during its fsync.

        The loop cannot read requests while it waits for a commit's fsync; a consumer's
        next fetch (sent when the last one was answered) is usually among what arrived
        meanwhile. It is read and answered right after the commit (a drain answers
        fetches first), with the records just committed, and the produce requests that
        came with it commit at once, rather than after this turn's timers and the next
        poll. At most ``POST_COMMIT_DRAINS`` times, so timers keep their turn."""
        turn_started = self.turn_started
        for drains in range(POST_COMMIT_DRAINS + 1):
            if drains:
                turn_started = time.perf_counter()
                self._drain_router()
            flush_started = time.perf_counter()
            self._carry(self.core.flush(clock.now_ms()))
            flush_ended = time.perf_counter()
            self.flush_kafka()
            if self.metrics is not None:
                # The produce latency's three parts, per commit (every request of it
                # shares them): read -> commit start, the group commit, -> replies sent.
                replied = time.perf_counter()
                self.metrics.on_turn(turn_started, flush_started, flush_ended, replied)
            if not self.router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return

    # -- the pipelined group commit ---------------------------------------------------------

    def _start_commit(self, committer: Committer) -> None:
        job = self.core.take_commit()
        if job is None:
            return
        write = committer.begin(job.write)
        self._commit_job = job
        # For the produce latency's parts (metrics): the turn that read the requests and
        # when their commit began; _land observes the rest.
        self._commit_began = (self.turn_started, time.perf_counter())
        # The body is on the commit's critical path, the rest of this turn is not: let the
        # committer have the GIL now rather than when this turn ends or the switch
        # interval runs out (0.07 to 0.3 ms of every commit, measured). The loop goes on
        # once the fsync runs (GIL released), answering fetches and staging requests.
        write.ran.wait(BODY_WAIT_S)

    def _land(self, *, wait: bool, now_ms: int | None = None) -> bool:
        job = self._commit_job
        if job is None or self.committer is None:
            return False
        write = self.committer.take_landed(wait=wait)
        if write is None:
            return False
        self._commit_job = None
        landed = time.perf_counter()
        now_ms = clock.now_ms() if now_ms is None else now_ms
        self._carry(self.core.commit_landed(job, write.value, write.error, now_ms))
        if self.metrics is not None:
            turn_started, began = self._commit_began
            self.metrics.on_turn(turn_started, began, landed, time.perf_counter())
        return True

    def _on_landed(self) -> None:
        """The committer's pipe: the commit in flight is durable (or failed). Its
        replies leave now, and the requests staged during it form the next commit."""
        if self._land(wait=False):
            self.flush_kafka()

    def land_commit(self) -> None:
        if self._land(wait=True):
            self.flush_kafka()

    def close(self) -> None:
        if self.committer is not None:
            self.land_commit()
            self.committer.close()
            self.poller.unregister(self.committer.fileno())
            self._socket_handlers.pop(self.committer.fileno(), None)  # type: ignore[call-overload]
        super().close()

    # -- carrying out a Result -------------------------------------------------------------

    def _carry(self, result: Result) -> None:
        for reply in result.replies:
            self._deliver(reply)
        for send in result.sends:
            self._send(send)
        due = result.deadline_ms
        if due is not None and (self._wake_ms is None or due < self._wake_ms):
            self._wake_ms = due

    def _deliver(self, reply: Reply) -> None:
        if isinstance(reply.token, KafkaCall):
            if self.metrics is not None and isinstance(reply.body, FetchResponse):
                self.metrics.on_fetched(reply.body, None)
            self.deliver_kafka(reply)
            return
        token: ZmqToken = reply.token
        if token.counted:
            self.inflight.release(token.peer)
        if reply.error is not None:
            self.reply_error(token.peer, token.request_id, reply.error)
            return
        body = reply.body
        if body is UNANSWERED:
            return
        if self.metrics is not None and isinstance(body, FetchResponse):
            self.metrics.on_fetched(body, (clock.now_ms() - token.arrived_ms) / 1000)
        if isinstance(body, ProduceResponse):
            if self._drop_replies > 0:
                self._drop_replies -= 1
                log.warning("%s: test hook: dropping a produce reply", self.name)
                return
            self._reply_throttled("produce", token, body.request_bytes, produce_fields(body), [])
        elif isinstance(body, FetchResponse):
            fields, frames = fetch_reply(body)
            self._reply_throttled("fetch", token, body.quota_bytes, fields, frames)
        elif isinstance(body, ListOffsetsResponse):
            self.reply(token.peer, token.request_id, list_offsets_fields(body))
        elif isinstance(body, NodeStatus):
            self.reply(token.peer, token.request_id, status_fields(body))
        else:
            raise TypeError(f"no encoding for a {type(body).__name__} reply")

    def _reply_throttled(
        self,
        kind: str,
        token: ZmqToken,
        nbytes: int,
        fields: dict[str, Any],
        frames: list[bytes],
    ) -> None:
        """Reply now, or later if the principal is over its byte-rate quota."""
        now = _seconds()
        delay = self.quotas.throttle(kind, token.principal, nbytes, now) if token.principal else 0.0
        fields["throttle_time_ms"] = int(delay * 1000)
        if delay > 0 and self.metrics is not None:
            self.metrics.on_throttled(kind, delay)
        if delay <= 0:
            self.reply(token.peer, token.request_id, fields, frames)
        else:
            self.delayed.append((now + delay, token.peer, token.request_id, fields, frames))

    def _send(self, send: Send) -> None:
        link = self.coordinator if send.to == COORDINATOR else self._link(send.to)
        token = send.token

        def answered(
            header: dict[str, Any] | None, frames: list[bytes], error: KvlogError | None
        ) -> None:
            self.inbox.append(Answer(token, header, frames, error))

        link.request(send.op, send.fields, answered, timeout_ms=send.timeout_ms)

    def _new_link(self, endpoint: str, name: str) -> PeerLink:
        link = PeerLink(self.ctx, endpoint, name=name, options=self.link_options, clock=_seconds)
        self.add_socket(link.socket, link.on_readable)
        return link

    def _link(self, peer: NodePeer) -> PeerLink:
        link = self.links.get(peer.node_id)
        if link is not None and link.endpoint != peer.endpoint:
            # The node moved: its requests in flight on the old link time out now (the
            # core hears of each), and a new link goes to where it is.
            self.poller.unregister(link.socket)
            del self._socket_handlers[link.socket]
            link.expire(math.inf)
            link.close()
            link = None
        if link is None:
            link = self._new_link(peer.endpoint, f"{self.name} -> node {peer.node_id}")
            self.links[peer.node_id] = link
        return link

    # -- timers ----------------------------------------------------------------------------

    def next_timeout_ms(self, now: float) -> float:
        if self.inbox:
            return 0.0
        deadline_ms = earliest(
            [
                self._wake_ms,
                self.kafka_deadline_ms(),
                min((d[0] * 1000 for d in self.delayed), default=None),
                *(
                    d * 1000 if (d := link.next_deadline()) is not None else None
                    for link in (self.coordinator, *self.links.values())
                ),
            ]
        )
        if deadline_ms is None:
            return float(MAX_POLL_MS)
        return float(max(0.0, min(float(MAX_POLL_MS), deadline_ms - clock.now_ms())))

    def on_timers(self, now: float) -> None:
        now_ms = clock.now_ms()
        seconds = now_ms / 1000
        self.coordinator.expire(seconds)
        for link in self.links.values():
            link.expire(seconds)
        if self.delayed:
            due = [d for d in self.delayed if d[0] <= seconds]
            if due:
                self.delayed = [d for d in self.delayed if d[0] > seconds]
                for _, peer, rid, fields, frames in due:
                    self.reply(peer, rid, fields, frames)
        inbox, self.inbox = self.inbox, []
        if inbox:
            self.land_commit()
        for answer in inbox:
            self._carry(self.core.answer(answer, now_ms))
        if self._wake_ms is not None and now_ms >= self._wake_ms:
            self._wake_ms = None
            self.land_commit()
            self._carry(self.core.tick(now_ms, _headroom(self.settings.log_dir)))
        self.kafka_timers()
        self.flush_kafka()
