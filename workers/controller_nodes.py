"""The controller's nodes: who registered, where, and who is alive.

Part of the controller core (sans-IO). Nodes register by their heartbeats and are kept in
memory only (after a coordinator restart they heartbeat again). A node is dead when its
heartbeats stop for ``node.session.timeout.ms``, when the supervisor reports its process
gone (``node_down``, with that process's pid), or while it reports its log dir offline;
after a coordinator restart a node that has not registered yet is unknown, not dead,
through a start-up grace period of the same length.

:class:`NodeRegistry` only records and answers; :class:`workers.controller_state.
ControllerState` moves leaderships when it says liveness changed. Every method that
depends on time takes ``now_ms``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .controller_events import NodeEntry, NodeHeartbeat

log = logging.getLogger("kvlog.workers.controller_state")


@dataclass
class NodeInfo:
    node_id: int
    endpoint: str
    log_dir: str
    last_heartbeat_ms: int
    applied_version: int = -1
    pid: int = 0
    alive: bool = True
    kafka_endpoint: str | None = None


class NodeRegistry:
    """The nodes of one broker (``node_ids``: one per log dir). Owned by
    :class:`workers.controller_state.ControllerState`; not thread-safe."""

    def __init__(self, node_ids: list[int], *, node_timeout_ms: int) -> None:
        self.node_ids = sorted(node_ids)
        self.node_timeout_ms = node_timeout_ms
        self.nodes: dict[int, NodeInfo] = {}
        self.started_ms = 0
        self._grace_over = False

    def start(self, now_ms: int) -> None:
        """A new process: the start-up grace period for unregistered nodes begins."""
        self.started_ms = now_ms

    def is_alive(self, node_id: int) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and node.alive

    def heartbeat(self, ev: NodeHeartbeat, now_ms: int) -> tuple[NodeInfo, bool]:
        """Record a node's heartbeat; True with it when the node (re)registered or went
        offline: who is alive, and where, changed."""
        node_id, endpoint, log_dir, pid = ev.node_id, ev.endpoint, ev.log_dir, ev.pid
        kafka_endpoint = ev.kafka_endpoint
        node = self.nodes.get(node_id)
        changed = False
        if ev.offline:
            # The node runs but its log dir fails (full, read-only, I/O errors): it leads
            # nothing and counts as out of every ISR until it reports the disk back.
            if node is None or node.alive or node.pid != pid:
                log.warning("node %d reports its log dir %s offline", node_id, log_dir)
                node = self.nodes[node_id] = NodeInfo(node_id, endpoint, log_dir, now_ms, pid=pid)
                node.alive = False
                changed = True
        elif (
            node is None
            or node.endpoint != endpoint
            or node.kafka_endpoint != kafka_endpoint
            or node.pid != pid
            or not node.alive
        ):
            log.info(
                "node %d registered at %s (pid %d, log dir %s)", node_id, endpoint, pid, log_dir
            )
            node = self.nodes[node_id] = NodeInfo(
                node_id, endpoint, log_dir, now_ms, pid=pid, kafka_endpoint=kafka_endpoint
            )
            changed = True
        assert node is not None
        node.last_heartbeat_ms = now_ms
        node.applied_version = ev.applied_version
        return node, changed

    def expire(self, now_ms: int) -> list[int]:
        """Mark nodes whose heartbeats stopped as dead (and, once the start-up grace period
        has passed, nodes that never registered); returns them."""
        dead = []
        for node in self.nodes.values():
            if node.alive and now_ms - node.last_heartbeat_ms > self.node_timeout_ms:
                node.alive = False
                dead.append(node.node_id)
                log.warning(
                    "node %d missed heartbeats for %d ms: marked dead",
                    node.node_id,
                    now_ms - node.last_heartbeat_ms,
                )
        if not self._grace_over and now_ms - self.started_ms > self.node_timeout_ms:
            self._grace_over = True
            missing = [n for n in self.node_ids if n not in self.nodes]
            if missing:
                log.warning("nodes %s never registered since start-up: treated as dead", missing)
                dead.extend(missing)
        return dead

    def next_expiry_ms(self) -> int | None:
        """When :meth:`expire` next has something to do: a live node's heartbeats
        stopping, or the end of the start-up grace period."""
        deadlines = [
            n.last_heartbeat_ms + self.node_timeout_ms + 1 for n in self.nodes.values() if n.alive
        ]
        if not self._grace_over:
            deadlines.append(self.started_ms + self.node_timeout_ms + 1)
        return min(deadlines, default=None)

    def down(self, node_id: int, pid: int) -> bool:
        """The supervisor saw the node's process die: True if that process was the live
        node's (it is dead now); a process already gone is ignored."""
        node = self.nodes.get(node_id)
        if node is None or not node.alive or node.pid != pid:
            return False  # only the process that died counts (the supervisor knows its pid)
        node.alive = False
        log.warning("node %d (pid %d) died: moving its leaderships", node_id, node.pid)
        return True

    def alive_ids(self) -> set[int]:
        """Nodes that may lead. After a coordinator restart, a node that has not
        registered yet is unknown, not dead: it keeps its leaderships through the start-up
        grace period (else the first node to register would take every leadership)."""
        alive = {n for n, info in self.nodes.items() if info.alive}
        if not self._grace_over:
            alive |= {n for n in self.node_ids if n not in self.nodes}
        return alive

    def endpoints(self) -> dict[int, str]:
        """The live nodes' ZeroMQ endpoints."""
        return {n.node_id: n.endpoint for n in self.nodes.values() if n.alive}

    def alive_endpoint(self, node_id: int) -> str | None:
        node = self.nodes.get(node_id)
        return node.endpoint if node is not None and node.alive else None

    def behind(self, node_ids: list[int], version: int) -> list[int]:
        """The live ones of ``node_ids`` that have not applied metadata ``version``."""
        return [n for n in node_ids if self.is_alive(n) and self.nodes[n].applied_version < version]

    def entries(self) -> list[NodeEntry]:
        """Every registered node, as metadata answers carry them."""
        return [
            NodeEntry(n.node_id, n.endpoint, n.alive, n.kafka_endpoint)
            for n in sorted(self.nodes.values(), key=lambda n: n.node_id)
        ]


__all__ = ["NodeInfo", "NodeRegistry"]
