"""ControllerCore under random node heartbeats, crashes, restarts, offline disks,
supervisor notices, clock moves, topic admin, ISR changes, preferred elections and
controller restarts (hypothesis ``RuleBasedStateMachine``).

A model tracks what the controller should believe: which nodes are alive (a heartbeat
makes a node alive; an offline report, the supervisor's notice for the node's current
process, or ``node_timeout_ms`` of silence make it dead; after a controller restart,
nodes that have not registered count as alive until the start-up grace period ends) and
which topics exist with how many partitions.

Safety, after every step: the controller's live nodes are the model's; the topics are
the model's; every partition's ISR is a non-empty subset of its replicas; its leader is in
its ISR or there is none (-1); its leader is a live node or there is none; leader epochs
never go back, and grow whenever the leader changes; no topic without
``unclean.leader.election.enable`` ever elects a leader from outside the ISR it had; the
metadata version never goes back (and moves on at a controller restart); the metadata
answer shows a partition's leader exactly when it is alive; the shell's timer is never
later than the core's next deadline, and no request is answered twice. Liveness, at the
end: with every node heartbeating, every admin request gets its answer and every
partition whose replicas are all alive has a leader.
"""

from __future__ import annotations

import os

from controller_driver import NODE_TIMEOUT_MS, Cluster
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kvlog.errors import ErrorCode
from kvlog.topic_config import effective_topic_config
from kvlog.types import TopicPartition
from kvlog.workers.controller_events import (
    AlterIsr,
    CreatePartitions,
    CreateTopic,
    DeleteTopic,
    ElectLeaders,
    IsrAnswer,
    NodeDown,
    TopicEntry,
)

TOPICS = ["a", "b", "c", "d"]
ADMIN_TIMEOUT_MS = 2000


class ControllerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.c: Cluster | None = None

    @initialize(nodes=st.integers(1, 4))
    def setup(self, nodes: int) -> None:
        self.c = Cluster(
            tuple(range(nodes)),
            admin_apply_timeout_ms=ADMIN_TIMEOUT_MS,
            leader_imbalance_check_interval_ms=5000,
        )
        self.nodes = list(range(nodes))
        self.up = set(self.nodes)  # processes running (they heartbeat in progress rounds)
        self.offline: set[int] = set()  # running, with a failing log dir
        self.alive: set[int] = set()  # the controller's view, as the model has it
        self.registered: set[int] = set()  # heard from since the controller started
        self.last_heartbeat: dict[int, int] = {}
        self.started_ms = self.c.now
        self.grace_over = False
        self.topics: dict[str, tuple[int, bool]] = {}  # name -> (partitions, unclean)
        self.admin: set[object] = set()  # admin requests sent
        self.version = self.c.version
        # (topic id, partition) -> (leader, epoch, isr) after the last step
        self.seen: dict[tuple[str, int], tuple[int, int, list[int]]] = {}

    # -- the nodes ------------------------------------------------------------------------------

    def heartbeat(self, node: int) -> None:
        offline = node in self.offline
        token = self.c.heartbeat(node, offline=offline)
        reply = self.c.replies.get(token)
        assert reply is None or reply.error is None, reply
        self.registered.add(node)
        self.last_heartbeat[node] = self.c.now
        if offline:
            self.alive.discard(node)
        else:
            self.alive.add(node)

    @rule(data=st.data())
    def node_heartbeats(self, data: st.DataObject) -> None:
        if self.up:
            self.heartbeat(data.draw(st.sampled_from(sorted(self.up))))

    @rule(data=st.data(), notice=st.booleans())
    def crash(self, data: st.DataObject, notice: bool) -> None:
        """A node process dies; the supervisor may tell the controller at once."""
        if not self.up:
            return
        node = data.draw(st.sampled_from(sorted(self.up)))
        self.up.discard(node)
        self.offline.discard(node)
        if notice:
            moved = self.c.answer(NodeDown(node, self.c.pids[node])).body.moved
            assert moved == (node in self.alive and node in self.registered), moved
            self.alive.discard(node)
        event(f"crash, notice {notice}")

    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        down = sorted(set(self.nodes) - self.up)
        if down:
            node = data.draw(st.sampled_from(down))
            self.c.restart_node(node)
            self.up.add(node)
            self.heartbeat(node)

    @rule(data=st.data())
    def disk_fails_or_recovers(self, data: st.DataObject) -> None:
        if self.up:
            node = data.draw(st.sampled_from(sorted(self.up)))
            self.offline ^= {node}
            self.heartbeat(node)
            event("offline" if node in self.offline else "back online")

    @rule(ms=st.sampled_from([1, 100, 1000, NODE_TIMEOUT_MS, NODE_TIMEOUT_MS + 1]))
    def clock(self, ms: int) -> None:
        """Time passes without heartbeats (nodes may expire)."""
        self.c.advance(ms)
        self.expire()

    @rule()
    def progress(self) -> None:
        """Every running node heartbeats; a second passes."""
        for node in sorted(self.up):
            self.heartbeat(node)
        self.c.advance(1000)
        self.expire()

    def expire(self) -> None:
        now = self.c.now
        for node in list(self.alive):
            if node in self.registered and now - self.last_heartbeat[node] > NODE_TIMEOUT_MS:
                self.alive.discard(node)
        if not self.grace_over and now - self.started_ms > NODE_TIMEOUT_MS:
            self.grace_over = True

    @rule()
    def restart_controller(self) -> None:
        self.c.start()
        assert self.c.version > self.version, "the version moves on at a restart"
        self.version = self.c.version
        self.alive.clear()
        self.registered.clear()
        self.started_ms = self.c.now
        self.grace_over = False
        self.admin.clear()  # parked requests die with the process
        for node in self.nodes:
            self.c.applied[node] = -1  # nodes re-read everything from the new process

    # -- admin ----------------------------------------------------------------------------------

    def request(self, request: object) -> object:
        token = self.c.request(request)
        self.admin.add(token)
        return token

    @precondition(lambda self: self.c is not None)
    @rule(
        name=st.sampled_from(TOPICS),
        partitions=st.integers(1, 3),
        rf=st.integers(1, 4),
        unclean=st.booleans(),
    )
    def create_topic(self, name: str, partitions: int, rf: int, unclean: bool) -> None:
        rf = min(rf, len(self.nodes))
        config = {"unclean.leader.election.enable": True} if unclean else {}
        token = self.request(CreateTopic(name, partitions, rf, config))
        reply = self.c.replies.get(token)
        if name in self.topics:
            assert reply is not None and reply.error.code is ErrorCode.TOPIC_ALREADY_EXISTS
            return
        assert reply is None or reply.error is None, reply
        self.topics[name] = (partitions, unclean)

    @rule(name=st.sampled_from(TOPICS))
    def delete_topic(self, name: str) -> None:
        token = self.request(DeleteTopic(name))
        reply = self.c.replies.get(token)
        if name not in self.topics:
            assert reply is not None
            assert reply.error.code is ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            return
        assert reply is None or reply.error is None, reply
        del self.topics[name]

    @rule(name=st.sampled_from(TOPICS), more=st.integers(0, 2))
    def grow_topic(self, name: str, more: int) -> None:
        count = self.topics[name][0] + more if name in self.topics else 2
        token = self.request(CreatePartitions(name, count))
        reply = self.c.replies.get(token)
        if name not in self.topics or more == 0:
            assert reply is not None and reply.error is not None
            return
        assert reply is None or reply.error is None, reply
        self.topics[name] = (count, self.topics[name][1])

    @rule(all_topics=st.booleans())
    def elect_preferred(self, all_topics: bool) -> None:
        self.request(ElectLeaders(None if all_topics else sorted(self.topics)))

    @rule(data=st.data(), stale=st.booleans())
    def alter_isr(self, data: st.DataObject, stale: bool) -> None:
        """A partition's leader asks for a new ISR: itself and some replicas (or a
        leader with an old epoch asks)."""
        led = [
            (name, p, state)
            for name in sorted(self.topics)
            for p, state in enumerate(self.c.states(name))
            if state.leader >= 0
        ]
        if not led:
            return
        name, p, state = data.draw(st.sampled_from(led))
        replicas = self.c.replicas(name)[p]
        others = data.draw(st.lists(st.sampled_from(replicas), unique=True))
        isr = sorted({state.leader, *others})
        epoch = state.leader_epoch - 1 if stale else state.leader_epoch
        if epoch < 0:
            return
        reply = self.c.answer(AlterIsr(TopicPartition(name, p), state.leader, epoch, isr))
        if stale:
            assert reply.error is not None and reply.error.code is ErrorCode.FENCED_LEADER_EPOCH
            return
        assert isinstance(reply.body, IsrAnswer), reply
        alive = self.c.core.state.alive_ids()
        want = [r for r in replicas if r in isr and (r in alive or r == state.leader)]
        assert reply.body.isr == want == self.c.state(name, p).isr
        event("ISR expanded" if len(want) > len(state.isr) else "ISR shrunk or kept")

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def liveness_is_the_models(self) -> None:
        if self.c is None:
            return
        want = set(self.alive)
        if not self.grace_over:
            want |= set(self.nodes) - self.registered
        assert self.c.core.state.alive_ids() == want

    @invariant()
    def topics_are_the_models(self) -> None:
        if self.c is None:
            return
        entries = {t.name: t for t in self.c.metadata().topics if isinstance(t, TopicEntry)}
        assert {n: len(t.partitions) for n, t in entries.items()} == {
            n: count for n, (count, _) in self.topics.items()
        }
        for name, (_, unclean) in self.topics.items():
            config = effective_topic_config(entries[name].config)
            assert bool(config["unclean.leader.election.enable"]) == unclean

    @invariant()
    def partitions_are_sound(self) -> None:
        if self.c is None:
            return
        alive = self.c.core.state.alive_ids()
        registered_alive = {n for n, info in self.c.core.state.nodes.items() if info.alive}
        seen = {}
        for view, entry in zip(self.c.core.state.topics(), self.c.metadata().topics, strict=True):
            assert isinstance(entry, TopicEntry) and entry.name == view.meta.name
            unclean = self.topics[view.meta.name][1]
            for p, state in enumerate(view.states):
                replicas = view.meta.replicas[p]
                assert state.isr and set(state.isr) <= set(replicas), (state, replicas)
                assert state.leader == -1 or state.leader in state.isr, state
                assert state.leader == -1 or state.leader in alive, (state, alive)
                shown = entry.partitions[p].leader
                assert shown == (state.leader if state.leader in registered_alive else -1)
                key = (view.meta.topic_id, p)
                seen[key] = (state.leader, state.leader_epoch, list(state.isr))
                if key not in self.seen:
                    continue
                leader, epoch, isr = self.seen[key]
                assert state.leader_epoch >= epoch, "a leader epoch went back"
                if state.leader != leader:
                    assert state.leader_epoch > epoch, "a new leader with an old epoch"
                    if state.leader >= 0 and not unclean:
                        assert state.leader in isr, (
                            f"unclean election of {state.leader} (the ISR was {isr})"
                        )
                    event("leader moved")
        self.seen = seen

    @invariant()
    def version_never_goes_back(self) -> None:
        if self.c is None:
            return
        assert self.c.version >= self.version
        self.version = self.c.version

    # -- liveness -------------------------------------------------------------------------------

    def teardown(self) -> None:
        if self.c is None:
            return
        self.up = set(self.nodes)
        self.offline.clear()  # every node runs, with a good disk, and heartbeats
        for _ in range(ADMIN_TIMEOUT_MS // 1000 + NODE_TIMEOUT_MS // 1000 + 8):
            self.progress()
        missing = self.admin - set(self.c.replies)
        assert not missing, f"admin requests never answered: {sorted(missing)}"
        for name in self.topics:
            for state in self.c.states(name):
                assert state.leader >= 0, f"{name}: every replica is alive, yet no leader"


ControllerMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("KVLOG_CONTROLLER_EXAMPLES", "150")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_controller_core = ControllerMachine.TestCase
