"""The coordinator's transaction ops on kvlog's ZeroMQ wire, and its links to the nodes.

Shell side, mixed into :class:`workers.coordinator_shell.CoordinatorServer`:

- each ``op_<name>`` decodes PROTOCOL.md's fields (``add_partitions_to_txn``,
  ``add_offsets_to_txn``, ``end_txn``, ``txn_offset_commit``) into one event of
  :mod:`workers.txn_events`, once, and hands it to the core, which decides the answer
  (at once, or later for a request parked while a transaction completes);
- the transaction coordinator's sends (``write_txn_markers`` to a partition's leader
  node, :mod:`workers.txn_markers`) go over one DEALER link per node
  (:class:`workers.zmq_peer.PeerLink`, replaced when the node's endpoint moves); each
  answer, or the link's timeout, goes back to the core as a
  :class:`workers.txn_events.MarkersAnswer`.

Why the coordinator writes markers over kvlog's own wire rather than Kafka's
WriteTxnMarkers API: every node has this link's endpoint whether or not it has a Kafka
listener (``--kafka-listen none``, or security on), the coordinator already knows it
from the nodes' heartbeats, the link authenticates as kvlog's own process (CURVE, the
internal principal), and the answer is the node core's produce answer: no Kafka codec in
the coordinator's send path.
"""

from __future__ import annotations

import math
from typing import Any

import zmq

from kvlog import clock
from kvlog.errors import InvalidRequestError, KvlogError
from kvlog.ipc.wire import INT32_MAX, Request, check_list, check_str
from kvlog.types import TopicPartition, check_partition

from .core_result import Send
from .group_shell import commit_entries
from .node_model import NodePeer
from .txn_events import AddOffsetsToTxn, AddPartitionsToTxn, EndTxn, MarkersAnswer, TxnOffsetCommit
from .zmq_peer import PeerLink
from .zmq_replies import Fields

MAX_ID_LEN = 32_767  # Kafka's string limit for a transactional id


def _partitions(req: Request) -> list[TopicPartition]:
    out = []
    for i, entry in enumerate(req.list("partitions", max_len=100_000)):
        entry = check_list(entry, f"partitions[{i}]", max_len=2)
        if len(entry) != 2:
            raise InvalidRequestError(f"partitions[{i}] must be [topic, partition]")
        topic = check_str(entry[0], f"partitions[{i}].topic", max_len=249)
        out.append(TopicPartition(topic, check_partition(entry[1])))
    return out


def _producer(req: Request) -> tuple[str, int, int]:
    return (
        req.str("transactional_id", max_len=MAX_ID_LEN),
        req.int("producer_id", low=0),
        req.int("producer_epoch", low=0, high=32_767),
    )


def _seconds() -> float:
    return clock.now_ms() / 1000


class TxnOps:
    """Mixin for the coordinator server (a CoreShell with ``call``, ``carry_out``, the
    ZeroMQ context and poller). Single-threaded, as the loop."""

    call: Any
    carry_out: Any
    core: Any
    ctx: zmq.Context[Any]
    poller: Any
    add_socket: Any
    _socket_handlers: dict[Any, Any]
    link_options: dict[int, Any] | None = None
    _node_links: dict[int, PeerLink]  # node id -> link (the server sets it up empty)

    # -- ops -------------------------------------------------------------------------------

    def op_add_partitions_to_txn(self, req: Request, peer: bytes) -> Fields | None:
        tid, pid, epoch = _producer(req)
        return self.call(peer, req.id, AddPartitionsToTxn(tid, pid, epoch, _partitions(req)))

    def op_add_offsets_to_txn(self, req: Request, peer: bytes) -> Fields | None:
        tid, pid, epoch = _producer(req)
        group_id = req.str("group_id", max_len=1024)
        return self.call(peer, req.id, AddOffsetsToTxn(tid, pid, epoch, group_id))

    def op_end_txn(self, req: Request, peer: bytes) -> Fields | None:
        tid, pid, epoch = _producer(req)
        return self.call(peer, req.id, EndTxn(tid, pid, epoch, req.bool("committed")))

    def op_txn_offset_commit(self, req: Request, peer: bytes) -> Fields | None:
        tid, pid, epoch = _producer(req)
        group_id = req.str("group_id", max_len=1024)
        event = TxnOffsetCommit(
            tid,
            group_id,
            pid,
            epoch,
            commit_entries(req),
            generation=req.int("generation", -1, low=-1, high=INT32_MAX),
            member_id=req.str("member_id", "", max_len=1024),
            instance_id=req.opt_str("group_instance_id", max_len=1024),
        )
        return self.call(peer, req.id, event)

    # -- the links to the nodes ------------------------------------------------------------

    def carry_out_sends(self, sends: list[Send]) -> None:
        for send in sends:
            if not isinstance(send.to, NodePeer):
                raise TypeError(f"the coordinator cannot send {send.op} to {send.to!r}")
            self._node_link(send.to).request(
                send.op,
                send.fields,
                self._answered(send.token),
                timeout_ms=send.timeout_ms,
            )

    def _answered(self, token: Any) -> Any:
        def answered(
            header: dict[str, Any] | None, frames: list[bytes], error: KvlogError | None
        ) -> None:
            event = MarkersAnswer(token, header, error)
            self.carry_out(self.core.handle(None, event, clock.now_ms()))

        return answered

    def _node_link(self, peer: NodePeer) -> PeerLink:
        links = self._node_links
        link = links.get(peer.node_id)
        if link is not None and link.endpoint != peer.endpoint:
            # The node moved: its requests in flight on the old link time out now.
            self.poller.unregister(link.socket)
            del self._socket_handlers[link.socket]
            link.expire(math.inf)
            link.close()
            link = None
        if link is None:
            link = PeerLink(
                self.ctx,
                peer.endpoint,
                name=f"coordinator -> node {peer.node_id}",
                options=self.link_options,
                clock=_seconds,
            )
            self.add_socket(link.socket, link.on_readable)
            links[peer.node_id] = link
        return link

    def node_links_deadline_ms(self) -> float | None:
        """The earliest timeout of a request in flight to a node, on kvlog's clock (ms)."""
        deadlines = [
            d * 1000
            for link in self._node_links.values()
            if (d := link.next_deadline()) is not None
        ]
        return min(deadlines, default=None)

    def expire_node_links(self) -> None:
        seconds = _seconds()
        for link in list(self._node_links.values()):
            link.expire(seconds)


__all__ = ["TxnOps"]
