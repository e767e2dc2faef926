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
:meth:`after_drain` (the core's ``flush``: the group commit), then :meth:`on_timers`
(answers, delayed replies, ``tick``). The base loop's monotonic ``now`` is not used here:
timeouts of this shell's links, its quota clock and the core all run on
:func:`kvlog.clock.now_ms`, and :meth:`next_timeout_ms` turns the earliest of their
deadlines into the poller's timeout.
"""

from __future__ import annotations

import logging
import math
import os
import resource
from pathlib import Path
from typing import Any, NamedTuple

import zmq

from kvlog import clock
from kvlog.errors import KvlogError, ThrottlingQuotaExceededError
from kvlog.ipc.wire import Request, advertise
from kvlog.lmdb_store import LogDir

from .core_result import Reply, Result, Send
from .kafka_node_shell import KafkaCall, NodeKafkaShell
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


class ZmqToken(NamedTuple):
    """A request's address on this wire, as the core's replies carry it back."""

    peer: bytes
    request_id: int | None
    principal: str
    counted: bool  # holds a place under max.inflight.requests.per.client


class NodeServer(NodeKafkaShell, Server):
    """The node process's loop over one :class:`NodeCore`, with its Kafka shell
    (:mod:`workers.kafka_node_shell`) in the same loop. Owned by the process's one
    thread; not thread-safe."""

    name = "node"

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
        self.core = NodeCore(
            settings,
            store,
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

    def _token(self, req: Request, peer: bytes, *, counted: bool) -> ZmqToken:
        return ZmqToken(peer, req.id, self.principal, counted)

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
        request = decode_fetch(req, self._token(req, peer, counted=True))
        self._acquire(peer)
        self._carry(self.core.fetch(request, clock.now_ms()))

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
        self._carry(self.core.flush(clock.now_ms()))
        self.flush_kafka()

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
        for answer in inbox:
            self._carry(self.core.answer(answer, now_ms))
        if self._wake_ms is not None and now_ms >= self._wake_ms:
            self._wake_ms = None
            self._carry(self.core.tick(now_ms, _headroom(self.settings.log_dir)))
        self.kafka_timers()
        self.flush_kafka()
