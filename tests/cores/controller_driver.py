"""A ControllerCore on a MemoryLogDir with a hand-driven clock (not a test module).

``Cluster`` sends the core events the way the coordinator's shell does and carries out
each Result: replies are collected per token (typed, as the core gives them; each token
answered at most once), and the timer is kept as a shell keeps it (the earliest deadline
any Result gave, replaced by each tick's), checked after every call never to be later
than the core's next deadline. Nodes are modelled as far as the controller sees them:
a pid per process, and the metadata version each one has applied (what its last
heartbeat answer told it).
"""

from __future__ import annotations

import itertools
from typing import Any

from kvlog.memory_store import MemoryLogDir
from kvlog.types import TopicPartition
from kvlog.workers.controller_core import ControllerConfig, ControllerCore
from kvlog.workers.controller_events import (
    AlterIsr,
    Metadata,
    MetadataAnswer,
    NodeAssignment,
    NodeHeartbeat,
    TopicEntry,
)
from kvlog.workers.controller_state import PartitionState
from kvlog.workers.core_ids import seeded_ids
from kvlog.workers.core_result import Reply, Result

START_MS = 1_000_000
NODE_TIMEOUT_MS = 6000


def topic_id_source(start: int) -> Any:
    """The topic id source of the controller's ``start``-th process start."""
    return seeded_ids(b"controller-%d" % start, 32)


class Cluster:
    """One controller core, its store, a clock, and what the nodes applied."""

    def __init__(self, nodes: tuple[int, ...] = (0, 1, 2), **config: int) -> None:
        self.config = ControllerConfig(
            list(nodes), **{"node_timeout_ms": NODE_TIMEOUT_MS, **config}
        )
        self.store = MemoryLogDir()
        self.now = START_MS
        self.tokens = itertools.count(1)
        self.replies: dict[Any, Reply] = {}
        self.deadline_ms: int | None = None
        self.starts = 0
        self.pids = {n: 100 + n for n in nodes}
        self.applied = dict.fromkeys(nodes, -1)
        self.start()

    def start(self) -> None:
        """A (new) controller process over the store."""
        self.starts += 1
        self.core = ControllerCore(self.store, self.config, topic_id_source(self.starts))
        self.deadline_ms = None
        self.run(self.core.start(self.now), timer=True)

    @property
    def version(self) -> int:
        return self.core.version

    # -- carrying out ----------------------------------------------------------------------

    def run(self, result: Result, *, timer: bool = False) -> Result:
        for reply in result.replies:
            assert reply.token not in self.replies, f"token {reply.token} answered twice"
            self.replies[reply.token] = reply
            node = reply.token[1] if isinstance(reply.token, tuple) else None
            if isinstance(reply.body, NodeAssignment) and node in self.applied:
                self.applied[node] = reply.body.version  # the node applies what it is told
        if timer or self.deadline_ms is None:
            self.deadline_ms = result.deadline_ms
        elif result.deadline_ms is not None:
            self.deadline_ms = min(self.deadline_ms, result.deadline_ms)
        due = self.core.next_deadline_ms()
        assert due is None or (self.deadline_ms is not None and self.deadline_ms <= due), (
            f"the shell would wake at {self.deadline_ms}, after the core's deadline {due}"
        )
        return result

    def request(self, event: Any, token: Any = None) -> Any:
        """Hand the core one request; returns its token (its reply, if any, is in
        ``replies``)."""
        token = ("client", next(self.tokens)) if token is None else token
        self.run(self.core.handle(token, event, self.now))
        return token

    def answer(self, event: Any) -> Reply:
        """A request that must be answered at once: its reply."""
        token = self.request(event)
        assert token in self.replies, f"{event} was not answered at once"
        return self.replies[token]

    def advance(self, ms: int) -> None:
        """Move the clock; the timer fires (as the shell's would when due)."""
        self.now += ms
        self.run(self.core.tick(self.now), timer=True)

    def pass_time(self, ms: int, step_ms: int = 1000) -> None:
        """Move the clock by ``ms`` with every live node heartbeating each ``step_ms``."""
        end = self.now + ms
        while self.now < end:
            self.heartbeats([n for n, info in self.core.state.nodes.items() if info.alive])
            self.advance(min(step_ms, end - self.now))

    # -- nodes -----------------------------------------------------------------------------

    def heartbeat(
        self,
        node: int,
        *,
        wait_ms: int = 1000,
        offline: bool = False,
        applied: int | None = None,
    ) -> Any:
        """A node's heartbeat (with the version it applied); returns its token."""
        event = NodeHeartbeat(
            node,
            f"tcp://127.0.0.1:{7000 + node}",
            f"/logs/{node}",
            self.applied[node] if applied is None else applied,
            self.pids[node],
            wait_ms,
            offline,
        )
        return self.request(event, ("node", node, next(self.tokens)))

    def heartbeats(self, nodes: tuple[int, ...] | list[int] | None = None) -> None:
        for node in self.applied if nodes is None else nodes:
            self.heartbeat(node)

    def restart_node(self, node: int) -> None:
        """The node's process restarts (a new pid; it applied nothing yet)."""
        self.pids[node] += 1000
        self.applied[node] = -1

    # -- state -----------------------------------------------------------------------------

    def states(self, topic: str) -> list[PartitionState]:
        [view] = self.core.state.topics([topic])
        return view.states

    def state(self, topic: str, partition: int = 0) -> PartitionState:
        return self.states(topic)[partition]

    def replicas(self, topic: str) -> list[list[int]]:
        [view] = self.core.state.topics([topic])
        return view.meta.replicas

    def metadata(self) -> MetadataAnswer:
        body = self.answer(Metadata()).body
        assert isinstance(body, MetadataAnswer)
        return body

    def topic(self, name: str) -> TopicEntry:
        [entry] = [t for t in self.metadata().topics if t.name == name]
        assert isinstance(entry, TopicEntry)
        return entry

    def alter_isr(self, topic: str, partition: int, isr: list[int]) -> Reply:
        state = self.state(topic, partition)
        tp = TopicPartition(topic, partition)
        return self.answer(AlterIsr(tp, state.leader, state.leader_epoch, isr))
