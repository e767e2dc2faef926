"""Node cores on in-memory stores, wired by hand (not a test module).

``Cluster`` runs three :class:`~kvlog.workers.node_core.NodeCore`\\ s the way their shells
would, but in one thread and with a hand-driven clock: each node has a
:class:`~kvlog.memory_store.MemoryLogDir` that survives the node (a restart is a new core
over the same store), a small controller stands in for the coordinator (assignment by
heartbeat, ``alter_isr``, elections from the ISR when a leader dies or is suspected), and
a network holds every message until a test delivers, loses or times it out. Messages
between nodes go through the ZeroMQ codec (``workers/node_wire.py``), so replica fetches
travel exactly as on the wire.

Every call into a core is followed by that node's ``flush`` (a loop turn), and ``tick``
is called only when the deadline the core gave has come, as the shell does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from kvlog import batch as batch_format
from kvlog.errors import (
    FencedLeaderEpochError,
    KvlogError,
    RequestTimedOutError,
)
from kvlog.ipc import wire
from kvlog.memory_store import MemoryLogDir
from kvlog.types import TopicPartition
from kvlog.workers.core_result import Reply, Result, Send
from kvlog.workers.node_core import NodeCore
from kvlog.workers.node_model import (
    COORDINATOR,
    UNANSWERED,
    Answer,
    DeleteRecords,
    Fetch,
    FetchPartition,
    FetchResponse,
    NodePeer,
    Produce,
    ProduceResponse,
    TxnMarker,
    WriteTxnMarkers,
)
from kvlog.workers.node_wire import decode_fetch, fetch_reply
from kvlog.workers.settings import NodeSettings

NODES = (0, 1, 2)
TOPIC_ID = "0" * 32
START_MS = 1_700_000_000_000
LAG_MS = 2000
ROOM = 1 << 40  # headroom the shell would measure: plenty


def batches(store: MemoryLogDir, tp: TopicPartition) -> dict[int, bytes]:
    """Every stored batch of ``tp``, by base offset."""
    with store.reader() as r:
        state = r.offsets(tp)
        if state.log_start_offset >= state.log_end_offset:
            return {}
        return dict(r.read(tp, state.log_start_offset, 1 << 40))


def offsets(store: MemoryLogDir, tp: TopicPartition) -> Any:
    with store.reader() as r:
        return r.offsets(tp) if store.has_partition(tp) else None


@dataclass
class PartitionState:
    leader: int
    epoch: int
    isr: list[int]


class Controller:
    """The coordinator's partition state, as far as nodes see it (controller_core's rules)."""

    def __init__(self, replicas: dict[TopicPartition, list[int]], config: dict[str, Any]) -> None:
        self.replicas = replicas
        self.config = config
        self.state = {tp: PartitionState(r[0], 0, list(r)) for tp, r in replicas.items()}
        self.alive: set[int] = set(NODES)
        self.version = 1

    def mark_dead(self, node: int) -> None:
        if node in self.alive:
            self.alive.discard(node)
            self._reelect()

    def mark_alive(self, node: int) -> None:
        if node not in self.alive:
            self.alive.add(node)
            self.version += 1
            self._reelect()

    def _reelect(self) -> None:
        for tp, state in self.state.items():
            if state.leader in self.alive:
                state.isr = [r for r in state.isr if r in self.alive]
            else:
                live_isr = [r for r in self.replicas[tp] if r in state.isr and r in self.alive]
                if live_isr:
                    state.leader, state.isr = live_isr[0], [r for r in state.isr if r in self.alive]
                    state.epoch += 1
                elif state.leader != -1:
                    state.leader = -1
                    state.epoch += 1
        self.version += 1

    def alter_isr(self, fields: dict[str, Any]) -> tuple[dict[str, Any] | None, KvlogError | None]:
        tp = TopicPartition(fields["topic"], fields["partition"])
        state = self.state[tp]
        if state.leader != fields["leader"] or state.epoch != fields["leader_epoch"]:
            return None, FencedLeaderEpochError(f"{tp}: not the current leader")
        wanted = fields["isr"]
        assert state.leader in wanted and set(wanted) <= set(self.replicas[tp]), fields
        isr = [
            r for r in self.replicas[tp] if r in wanted and (r in self.alive or r == state.leader)
        ]
        if isr != state.isr:
            state.isr = isr
            self.version += 1
        reply = {"leader": state.leader, "leader_epoch": state.epoch, "isr": isr}
        return reply | {"version": self.version}, None

    def assignment(self, node: int) -> dict[str, Any]:
        return {
            "version": self.version,
            "partitions": [
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "topic_id": TOPIC_ID,
                    "leader": s.leader,
                    "leader_epoch": s.epoch,
                    "replicas": self.replicas[tp],
                    "isr": list(s.isr),
                    "config": self.config,
                }
                for tp, s in self.state.items()
                if node in self.replicas[tp]
            ],
            "deleted_topic_ids": [],
            "nodes": [[n, f"node-{n}"] for n in NODES],
        }


@dataclass
class Node:
    node_id: int
    store: MemoryLogDir = field(default_factory=MemoryLogDir)
    core: NodeCore | None = None
    incarnation: int = 0
    wake_ms: int | None = None


@dataclass
class Request:
    """A send of a node, until its one answer (a reply or a timeout) is delivered."""

    key: int
    src: int
    incarnation: int
    send: Send
    delivered: bool = False  # handed to its target (parked or answered there)
    target_incarnation: int = 0  # of the node it was handed to (a restart loses it)


@dataclass
class ClientRequest:
    kind: str  # "produce" | "fetch" | "delete_records"
    node: int
    tp: TopicPartition
    acks: int = 1
    batch: bytes = b""
    epoch: int = -1
    offset: int = -1  # delete_records: the offset asked for


class Cluster:
    def __init__(
        self,
        replicas: dict[TopicPartition, list[int]],
        *,
        min_insync_replicas: int = 1,
        fetch_wait_ms: int = 500,
    ) -> None:
        self.now = START_MS
        self.controller = Controller(replicas, {"min.insync.replicas": min_insync_replicas})
        self.fetch_wait_ms = fetch_wait_ms
        self.nodes = {n: Node(n) for n in NODES}
        self.keys = itertools.count(1)
        self.requests: dict[int, Request] = {}  # sends not yet answered
        self.answers: list[tuple[Request, Answer]] = []  # answers not yet delivered
        self.heartbeats: dict[int, int] = {}  # node -> key of its latest heartbeat
        self.clients: dict[int, ClientRequest] = {}  # client token -> request, until answered
        self.replies: dict[int, Reply] = {}
        self.on_client_reply: Any = None  # (node, token, request, reply) -> None
        self.observe: Any = None  # (node) -> None, after each Result of that node is carried
        for n in NODES:
            self.start(n)

    # -- nodes -----------------------------------------------------------------------------

    def settings(self, n: int) -> NodeSettings:
        return NodeSettings(
            node_id=n,
            log_dir=f"/mem/{n}",
            coordinator="coordinator",
            replica_lag_time_max_ms=LAG_MS,
            replica_fetch_wait_max_ms=self.fetch_wait_ms,
        )

    def start(self, n: int) -> None:
        node = self.nodes[n]
        node.incarnation += 1
        node.wake_ms = None
        node.core = NodeCore(
            self.settings(n), node.store, endpoint=f"node-{n}", pid=node.incarnation
        )
        self.carry(n, node.core.start(self.now))

    def kill(self, n: int) -> None:
        """The process dies: its sends die with it, requests parked there are never
        answered (their senders time them out)."""
        node = self.nodes[n]
        node.core = None
        for key in [k for k, r in self.requests.items() if r.src == n]:
            del self.requests[key]
        self.answers = [(r, a) for r, a in self.answers if r.src != n]
        self.heartbeats.pop(n, None)
        for token in [t for t, c in self.clients.items() if c.node == n]:
            del self.clients[token]

    def alive(self, n: int) -> bool:
        return self.nodes[n].core is not None

    def core(self, n: int) -> NodeCore:
        core = self.nodes[n].core
        assert core is not None
        return core

    def turn(self, n: int, result: Result) -> None:
        """Carry out an event's Result, then the turn's flush."""
        self.carry(n, result)
        if self.alive(n):
            self.carry(n, self.core(n).flush(self.now))

    def carry(self, n: int, result: Result) -> None:
        node = self.nodes[n]
        for reply in result.replies:
            self._reply(n, reply)
        for send in result.sends:
            key = next(self.keys)
            request = Request(key, n, node.incarnation, send)
            self.requests[key] = request
            if send.op == "node_heartbeat":
                old = self.heartbeats.get(n)
                self.heartbeats[n] = key
                if old is not None and old in self.requests:  # superseded: answered at once
                    fields = {"version": self.controller.version}
                    self._answer(self.requests.pop(old), fields, [], None)
        due = result.deadline_ms
        if due is not None and (node.wake_ms is None or due < node.wake_ms):
            node.wake_ms = due
        if self.observe is not None:
            self.observe(n)

    def _answer(
        self,
        request: Request,
        fields: dict[str, Any] | None,
        frames: list[bytes],
        error: KvlogError | None,
    ) -> None:
        self.answers.append((request, Answer(request.send.token, fields, frames, error)))

    def _reply(self, n: int, reply: Reply) -> None:
        token = reply.token
        if isinstance(token, tuple) and token[0] == "net":
            request = self.requests.pop(token[1], None)
            if request is None:
                return  # timed out at its sender already: the late reply is dropped
            assert isinstance(reply.body, FetchResponse) and reply.error is None
            fields, frames = fetch_reply(reply.body)
            self._answer(request, fields, frames, None)
            return
        assert token not in self.replies, f"token {token} answered twice"
        self.replies[token] = reply
        client = self.clients.pop(token, None)
        if self.on_client_reply is not None and client is not None:
            self.on_client_reply(n, token, client, reply)

    # -- the network -----------------------------------------------------------------------

    def pending(self, *, delivered: bool | None = None) -> list[Request]:
        """Requests between nodes (heartbeats aside), oldest first."""
        return [
            r
            for r in self.requests.values()
            if r.send.op != "node_heartbeat" and (delivered is None or r.delivered == delivered)
        ]

    def deliver(self, request: Request) -> None:
        """Hand a request to its target (a node or the controller)."""
        send = request.send
        request.delivered = True
        if send.to == COORDINATOR:
            assert send.op == "alter_isr", send
            del self.requests[request.key]
            fields, error = self.controller.alter_isr(send.fields)
            self._answer(request, fields, [], error)
            return
        assert isinstance(send.to, NodePeer) and send.op == "fetch", send
        target = send.to.node_id
        request.target_incarnation = self.nodes[target].incarnation
        if not self.alive(target):
            return  # lost: its sender times it out
        header = wire.request_header("fetch", request.key, **send.fields)
        fetch = decode_fetch(wire.Request(header, []), ("net", request.key))
        self.turn(target, self.core(target).fetch(fetch, self.now))

    def lost(self, request: Request) -> bool:
        """Whether a delivered request can no longer be answered (its target died)."""
        target = (
            self.nodes[request.send.to.node_id] if isinstance(request.send.to, NodePeer) else None
        )
        return (
            request.delivered
            and target is not None
            and (target.core is None or target.incarnation != request.target_incarnation)
        )

    def time_out(self, request: Request) -> None:
        """The sender's link gives up on a request (dropped, or parked at a dead node)."""
        del self.requests[request.key]
        self._answer(request, None, [], RequestTimedOutError("no reply"))

    def deliver_answer(self, index: int) -> None:
        request, answer = self.answers.pop(index)
        node = self.nodes[request.src]
        if node.core is None or node.incarnation != request.incarnation:
            return
        self.turn(request.src, node.core.answer(answer, self.now))

    def sync(self, n: int) -> None:
        """The coordinator answers node ``n``'s heartbeat: with the assignment when the
        node is behind, else as if its wait ran out. A heartbeat registers the node."""
        key = self.heartbeats.get(n)
        if key is None or key not in self.requests or not self.alive(n):
            return
        request = self.requests.pop(key)
        self.controller.mark_alive(n)
        applied = request.send.fields["applied_version"]
        if request.send.fields["offline"]:
            self.controller.mark_dead(n)
        if applied < self.controller.version:
            self._answer(request, self.controller.assignment(n), [], None)
        else:
            self._answer(request, {"version": self.controller.version}, [], None)
        for i, (r, _) in enumerate(self.answers):
            if r is request:
                self.deliver_answer(i)
                break

    def advance(self, ms: int) -> None:
        """Time passes; every node whose deadline came gets its tick."""
        self.now += ms
        for n, node in self.nodes.items():
            if node.core is not None and node.wake_ms is not None and node.wake_ms <= self.now:
                node.wake_ms = None
                self.turn(n, node.core.tick(self.now, ROOM))

    # -- clients ---------------------------------------------------------------------------

    def produce(
        self,
        token: int,
        n: int,
        tp: TopicPartition,
        acks: int,
        value: bytes,
        *,
        flush: bool = True,
        batch: bytes | None = None,
    ) -> None:
        """A one-batch produce request (of ``value``, or ``batch`` as given); without
        ``flush`` it waits for the turn's commit."""
        batch = batch if batch is not None else batch_format.build_batch([(None, value)])
        epoch = self.controller.state[tp].epoch
        self.clients[token] = ClientRequest("produce", n, tp, acks, batch, epoch)
        result = self.core(n).produce(Produce(token, acks, [(tp, batch)], 5000), self.now)
        if flush:
            self.turn(n, result)
        else:
            self.carry(n, result)

    def consume(
        self,
        token: int,
        n: int,
        tp: TopicPartition,
        offset: int,
        wait_ms: int,
        min_bytes: int,
        isolation_level: int = 0,
    ) -> None:
        self.clients[token] = ClientRequest("fetch", n, tp)
        fetch = Fetch(
            token,
            [FetchPartition(tp, offset, 1 << 20)],
            1 << 20,
            min_bytes,
            wait_ms,
            isolation_level=isolation_level,
        )
        self.turn(n, self.core(n).fetch(fetch, self.now))

    def write_markers(self, token: int, n: int, markers: list[TxnMarker]) -> None:
        """The transaction coordinator's ``write_txn_markers`` at node ``n``."""
        self.clients[token] = ClientRequest("markers", n, markers[0].tp)
        request = WriteTxnMarkers(token, markers, 5000)
        self.turn(n, self.core(n).write_txn_markers(request, self.now))

    def delete_records(self, token: int, n: int, tp: TopicPartition, offset: int) -> None:
        """Kafka's DeleteRecords at node ``n``: its log start moves to ``offset``."""
        self.clients[token] = ClientRequest("delete_records", n, tp, offset=offset)
        request = DeleteRecords(token, [(tp, offset)])
        self.turn(n, self.core(n).delete_records(request, self.now))


def produced(reply: Reply) -> tuple[int, KvlogError | None]:
    """(base offset, error) of a one-partition produce reply."""
    if reply.error is not None:
        return -1, reply.error
    if reply.body is UNANSWERED:
        return -1, None
    assert isinstance(reply.body, ProduceResponse)
    [p] = reply.body.partitions
    return p.base_offset, p.error


__all__ = ["Cluster", "Controller", "batches", "offsets", "produced"]
