"""The controller core's state and decisions: topics, replica placement, nodes, leaders.

Part of the controller core (sans-IO): :class:`ControllerState` decides; the requests
reach it through :class:`workers.controller_core.ControllerCore`, which turns its errors
into replies and parks what waits. Kafka splits this between the controller and the
brokers' metadata caches; kvlog keeps it in the coordinator process, over the
coordinator's own log store (``<data>/meta``), so topic metadata survives restarts with
everything else the coordinator stores.

State and who changes it:

- topics (``t/topics``): created, deleted, grown and reconfigured by admin requests;
- partition states (``t/partition_states``): leader, leader epoch and in-sync replicas of
  every partition;
- deleted topic ids (``t/deleted_topics``): tombstones, so that a node that was down
  during a delete drops that topic's data when it comes back (and never a topic it was
  simply not told about);
- a metadata ``version`` that grows with every change, persisted so it keeps growing
  across restarts; nodes and the broker cache compare versions to know they are behind;
- nodes: registered by their heartbeats; in memory only (they heartbeat again):
  workers/controller_nodes.py.

Errors are raised as :class:`kvlog.errors.KvlogError`. Every method that depends on time
takes ``now_ms``; topic ids come from the id source given at construction; nothing here
reads a clock, sleeps or touches a socket.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import cbor2

from kvlog.errors import (
    FencedLeaderEpochError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidReplicaAssignmentError,
    InvalidReplicationFactorError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from kvlog.log import LogStore, ReadTxn, WriteTxn
from kvlog.metadata_store import (
    TopicMetadata,
    delete_topic,
    get_topic,
    list_topics,
    put_topic,
)
from kvlog.topic_config import (
    TOPIC_CONFIG,
    effective_topic_config,
    unknown_name_error,
    validate_topic_config,
)
from kvlog.types import TopicPartition, check_topic_name, partition_key

from .controller_events import (
    HostedPartition,
    MissingTopic,
    NodeEntry,
    NodeHeartbeat,
    PartitionEntry,
    TopicEntry,
)
from .controller_nodes import NodeInfo, NodeRegistry
from .core_ids import IdSource
from .replication_core import elect_leader

log = logging.getLogger(__name__)

PARTITION_STATES_TABLE = "partition_states"
DELETED_TOPICS_TABLE = "deleted_topics"
CONTROLLER_TABLE = "controller"
MAX_PARTITIONS_PER_TOPIC = 10_000


@dataclass
class PartitionState:
    leader: int
    leader_epoch: int
    isr: list[int]

    def encode(self) -> bytes:
        return cbor2.dumps([self.leader, self.leader_epoch, self.isr])

    @classmethod
    def decode(cls, raw: bytes) -> PartitionState:
        leader, epoch, isr = cbor2.loads(raw)
        return cls(leader, epoch, isr)


@dataclass
class TopicView:
    """A topic with its partitions' live state, as metadata replies carry it."""

    meta: TopicMetadata
    states: list[PartitionState] = field(default_factory=list)


@dataclass
class PartitionTransitions:
    """Counts of partition state changes: new leader epochs, replicas that left an ISR,
    replicas that joined one."""

    elections: int = 0
    shrinks: int = 0
    expands: int = 0

    def count(self, before: PartitionState, after: PartitionState) -> None:
        if after.leader_epoch > before.leader_epoch:
            self.elections += 1
        self.shrinks += len(set(before.isr) - set(after.isr))
        self.expands += len(set(after.isr) - set(before.isr))

    def add(self, other: PartitionTransitions) -> None:
        self.elections += other.elections
        self.shrinks += other.shrinks
        self.expands += other.expands


class ControllerState:
    """Owned by :class:`workers.controller_core.ControllerCore`; not thread-safe."""

    def __init__(
        self, store: LogStore, node_ids: list[int], *, node_timeout_ms: int, topic_ids: IdSource
    ) -> None:
        self.store = store
        self.topic_ids = topic_ids
        # Who registered and who is alive: workers/controller_nodes.py.
        self.registry = NodeRegistry(node_ids, node_timeout_ms=node_timeout_ms)
        self.node_ids = self.registry.node_ids
        self.nodes = self.registry.nodes
        self.version = 0
        # Leader elections and ISR shrinks/expands since this process started, counted as
        # each change commits (the metrics read them: sampling the states would miss a
        # shrink and its expand between two looks).
        self.transitions = PartitionTransitions()
        self._staged = PartitionTransitions()

    def start(self, now_ms: int) -> None:
        """A new process: the version moves on (so caches notice the restart) and the
        start-up grace period for nodes that have not registered yet begins."""
        self.version = self.store.write(self._bump_version)
        self.registry.start(now_ms)

    # -- version ---------------------------------------------------------------------------

    def _bump_version(self, w: WriteTxn) -> int:
        raw = w.get(CONTROLLER_TABLE, b"version")
        version = (int(raw) if raw else 0) + 1
        w.put(CONTROLLER_TABLE, b"version", str(version).encode())
        return version

    def _commit(self, fn: Any) -> Any:
        """Run a metadata change and bump the version in the same transaction."""

        def run(w: WriteTxn) -> Any:
            result = fn(w)
            return result, self._bump_version(w)

        self._staged = PartitionTransitions()
        result, self.version = self.store.write(run)
        self.transitions.add(self._staged)
        return result

    # -- topics ----------------------------------------------------------------------------

    def _place_replicas(
        self, first_partition: int, count: int, rf: int, seed: int
    ) -> list[list[int]]:
        """Kafka-like round robin: leaders spread over nodes, followers shifted."""
        nodes = self.node_ids
        n = len(nodes)
        return [
            [nodes[(seed + p + i) % n] for i in range(rf)]
            for p in range(first_partition, first_partition + count)
        ]

    def create_topic(
        self,
        name: str,
        partitions: int,
        replication_factor: int,
        config: dict[str, Any] | None,
        now_ms: int,
        *,
        validate_only: bool = False,
    ) -> TopicMetadata:
        """Create a topic; ``validate_only``: make every check, change nothing."""
        check_topic_name(name)
        if not 1 <= partitions <= MAX_PARTITIONS_PER_TOPIC:
            raise InvalidPartitionsError(
                f"partitions={partitions}: a topic has 1..{MAX_PARTITIONS_PER_TOPIC} partitions"
            )
        if not 1 <= replication_factor <= len(self.node_ids):
            raise InvalidReplicationFactorError(
                f"replication_factor={replication_factor} but this broker has "
                f"{len(self.node_ids)} node(s) (log dirs); use 1..{len(self.node_ids)} or "
                "start kvlog serve with more --log-dir"
            )
        overrides = validate_topic_config(config)
        min_isr = effective_topic_config(overrides)["min.insync.replicas"]
        if min_isr > replication_factor:
            raise InvalidConfigError(
                f"min.insync.replicas={min_isr} is more than replication_factor="
                f"{replication_factor}: every acks=all write would fail; lower it or add replicas"
            )
        seed = sum(name.encode()) % len(self.node_ids)
        meta = TopicMetadata(
            name=name,
            topic_id=self.topic_ids(),
            partitions=partitions,
            replication_factor=replication_factor,
            replicas=self._place_replicas(0, partitions, replication_factor, seed),
            config=overrides,
            created_ms=now_ms,
        )
        if validate_only:
            with self.store.reader() as r:
                self._check_absent(r, name)
            return meta

        def write(w: WriteTxn) -> None:
            self._check_absent(w, name)
            put_topic(w, meta)
            for p, replicas in enumerate(meta.replicas):
                self._put_state(
                    w, TopicPartition(name, p), PartitionState(replicas[0], 0, replicas)
                )

        self._commit(write)
        log.info("created topic %s (%d partitions, rf %d)", name, partitions, replication_factor)
        # A first replica that is dead (a failed disk, a crashed node) must not lead: the
        # partition would have no leader until some node's liveness changed.
        self.reelect()
        return meta

    @staticmethod
    def _check_absent(r: ReadTxn, name: str) -> None:
        if get_topic(r, name) is not None:
            raise TopicAlreadyExistsError(f"topic {name!r} exists already")

    def _put_state(self, w: WriteTxn, tp: TopicPartition, state: PartitionState) -> None:
        key = partition_key(tp)
        raw = w.get(PARTITION_STATES_TABLE, key)
        if raw:
            self._staged.count(PartitionState.decode(raw), state)
        w.put(PARTITION_STATES_TABLE, key, state.encode())

    def _require(self, r: ReadTxn, name: str) -> TopicMetadata:
        meta = get_topic(r, name)
        if meta is None:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        return meta

    def delete_topic(self, name: str, now_ms: int) -> TopicMetadata:
        def write(w: WriteTxn) -> TopicMetadata:
            meta = self._require(w, name)
            delete_topic(w, name)
            for p in range(meta.partitions):
                w.delete(PARTITION_STATES_TABLE, partition_key(TopicPartition(name, p)))
            w.put(DELETED_TOPICS_TABLE, meta.topic_id.encode(), str(now_ms).encode())
            return meta

        meta = self._commit(write)
        log.info("deleted topic %s", name)
        return meta

    def create_partitions(
        self, name: str, total: int, *, validate_only: bool = False
    ) -> tuple[TopicMetadata, int]:
        """Grow a topic to ``total`` partitions; returns it and the old count.
        ``validate_only``: make every check, change nothing."""

        def check(r: ReadTxn) -> TopicMetadata:
            meta = self._require(r, name)
            if total <= meta.partitions or total > MAX_PARTITIONS_PER_TOPIC:
                raise InvalidPartitionsError(
                    f"topic {name!r} has {meta.partitions} partitions; the new count must be "
                    f"larger (and at most {MAX_PARTITIONS_PER_TOPIC}): partitions never shrink"
                )
            return meta

        if validate_only:
            with self.store.reader() as r:
                meta = check(r)
            return meta, meta.partitions

        def write(w: WriteTxn) -> tuple[TopicMetadata, int]:
            meta = check(w)
            old = meta.partitions
            seed = sum(name.encode()) % len(self.node_ids)
            added = self._place_replicas(old, total - old, meta.replication_factor, seed)
            meta.replicas.extend(added)
            meta.partitions = total
            put_topic(w, meta)
            for p, replicas in enumerate(added, start=old):
                self._put_state(
                    w, TopicPartition(name, p), PartitionState(replicas[0], 0, replicas)
                )
            return meta, old

        result = self._commit(write)
        log.info("topic %s grown from %d to %d partitions", name, result[1], total)
        self.reelect()  # as for a new topic: no dead node leads a new partition
        return result

    def alter_topic_config(
        self,
        name: str,
        changes: dict[str, Any],
        *,
        replace: bool = False,
        validate_only: bool = False,
    ) -> TopicMetadata:
        """Set the given config keys; a value of None removes the override. ``replace``:
        the overrides become exactly ``changes`` (Kafka's AlterConfigs). ``validate_only``:
        make every check, change nothing."""
        removals = [k for k, v in changes.items() if v is None]
        for key in removals:
            if key not in TOPIC_CONFIG:
                raise unknown_name_error(key, TOPIC_CONFIG, "topic config")
        updates = validate_topic_config({k: v for k, v in changes.items() if v is not None})

        def change(r: ReadTxn) -> TopicMetadata:
            meta = self._require(r, name)
            config = {} if replace else dict(meta.config)
            config.update(updates)
            for key in removals:
                config.pop(key, None)
            meta.config = config
            return meta

        if validate_only:
            with self.store.reader() as r:
                return change(r)

        def write(w: WriteTxn) -> TopicMetadata:
            meta = change(w)
            put_topic(w, meta)
            return meta

        return self._commit(write)

    # -- reads -----------------------------------------------------------------------------

    def topics(self, names: list[str] | None = None) -> list[TopicView]:
        with self.store.reader() as r:
            metas = (
                list_topics(r) if names is None else [m for n in names if (m := get_topic(r, n))]
            )
            views = []
            for meta in metas:
                states = []
                for p in range(meta.partitions):
                    raw = r.get(PARTITION_STATES_TABLE, partition_key(TopicPartition(meta.name, p)))
                    states.append(
                        PartitionState.decode(raw)
                        if raw
                        else PartitionState(meta.replicas[p][0], 0, meta.replicas[p])
                    )
                views.append(TopicView(meta, states))
            return views

    def deleted_topic_ids(self) -> list[str]:
        with self.store.reader() as r:
            return [k.decode() for k, _ in r.items(DELETED_TOPICS_TABLE)]

    def topic_entries(self, names: list[str] | None = None) -> list[TopicEntry | MissingTopic]:
        """Topics as metadata answers carry them: every topic, or those of ``names`` that
        exist (in that order) followed by UNKNOWN_TOPIC_OR_PARTITION for the others."""
        views = self.topics(names)
        known = {v.meta.name for v in views}
        entries: list[TopicEntry | MissingTopic] = [self._topic_entry(v) for v in views]
        for name in names or ():
            if name not in known:
                entries.append(MissingTopic(name, UnknownTopicOrPartitionError.code))
        return entries

    def node_entries(self) -> list[NodeEntry]:
        return self.registry.entries()

    def _topic_entry(self, view: TopicView) -> TopicEntry:
        meta = view.meta
        return TopicEntry(
            meta.name,
            meta.topic_id,
            meta.config,
            meta.replication_factor,
            [
                PartitionEntry(
                    p,
                    state.leader if self._alive(state.leader) else -1,
                    state.leader_epoch,
                    meta.replicas[p],
                    state.isr,
                )
                for p, state in enumerate(view.states)
            ],
        )

    def partition_count(self, topic: str) -> int | None:
        views = self.topics([topic])
        return views[0].meta.partitions if views else None

    def _alive(self, node_id: int) -> bool:
        return self.registry.is_alive(node_id)

    # -- nodes -----------------------------------------------------------------------------

    def node_heartbeat(self, ev: NodeHeartbeat, now_ms: int) -> NodeInfo:
        """A node's heartbeat; a node that (re)registered or went offline moves
        leaderships (who is alive is part of the metadata)."""
        node, changed = self.registry.heartbeat(ev, now_ms)
        if changed and not self.reelect():
            self.bump()
        return node

    def bump(self) -> None:
        """Move the metadata version on (durably, so it never goes back)."""
        self.version = self.store.write(self._bump_version)

    def node_endpoints(self) -> dict[int, str]:
        return self.registry.endpoints()

    def assignment_for(self, node_id: int) -> list[HostedPartition]:
        """The partitions a node holds, as its heartbeat answer carries them."""
        out = []
        for view in self.topics():
            meta = view.meta
            for p, state in enumerate(view.states):
                if node_id in meta.replicas[p]:
                    out.append(
                        HostedPartition(
                            meta.name,
                            p,
                            meta.topic_id,
                            state.leader,
                            state.leader_epoch,
                            meta.replicas[p],
                            state.isr,
                            meta.config,
                        )
                    )
        return out

    def expire_nodes(self, now_ms: int) -> list[int]:
        """Mark nodes whose heartbeats stopped as dead (and, once the start-up grace period
        has passed, nodes that never registered); moves their leaderships."""
        dead = self.registry.expire(now_ms)
        if dead and not self.reelect():
            self.bump()
        return dead

    def next_expiry_ms(self) -> int | None:
        return self.registry.next_expiry_ms()

    def node_down(self, node_id: int, pid: int) -> bool:
        """The supervisor saw the node's process die: fail over at once instead of
        waiting for node.session.timeout.ms. Ignored if that process is already gone."""
        if not self.registry.down(node_id, pid):
            return False
        if not self.reelect():
            self.bump()
        return True

    # -- leadership ------------------------------------------------------------------------

    def alive_ids(self) -> set[int]:
        """Nodes that may lead (the registry's answer)."""
        return self.registry.alive_ids()

    def reelect(self) -> bool:
        """Give every partition whose leader is gone a new leader from its ISR (higher
        leader epoch), and drop dead nodes from every ISR. True if anything changed (the
        version then moved too)."""
        alive = self.alive_ids()
        changes: list[tuple[TopicPartition, PartitionState]] = []
        for view in self.topics():
            unclean = bool(
                effective_topic_config(view.meta.config)["unclean.leader.election.enable"]
            )
            for p, state in enumerate(view.states):
                tp = TopicPartition(view.meta.name, p)
                replicas = view.meta.replicas[p]
                if state.leader in alive:
                    isr = [r for r in state.isr if r in alive]
                    if isr != state.isr:
                        changes.append((tp, PartitionState(state.leader, state.leader_epoch, isr)))
                    continue
                leader, isr = elect_leader(replicas, state.isr, alive, unclean=unclean)
                if leader == state.leader and isr == state.isr:
                    continue
                if leader == -1 and state.leader == -1:
                    continue
                epoch = state.leader_epoch + 1
                if leader >= 0 and leader not in state.isr:
                    log.warning("%s: unclean election of node %d (records may be lost)", tp, leader)
                log.info(
                    "%s: leader %d -> %d (epoch %d, isr %s)", tp, state.leader, leader, epoch, isr
                )
                changes.append((tp, PartitionState(leader, epoch, isr)))
        if not changes:
            return False

        def write(w: WriteTxn) -> None:
            for tp, state in changes:
                self._put_state(w, tp, state)

        self._commit(write)
        return True

    def alter_isr(
        self, tp: TopicPartition, leader: int, leader_epoch: int, isr: list[int]
    ) -> PartitionState:
        """A leader asks to shrink or expand its partition's ISR (Kafka's AlterPartition)."""
        view = self.topics([tp.topic])
        if not view or tp.partition >= view[0].meta.partitions:
            raise UnknownTopicOrPartitionError(f"partition {tp} does not exist")
        state = view[0].states[tp.partition]
        replicas = view[0].meta.replicas[tp.partition]
        if state.leader != leader or state.leader_epoch != leader_epoch:
            raise FencedLeaderEpochError(
                f"{tp}: node {leader} epoch {leader_epoch} is not the current leader "
                f"(node {state.leader} epoch {state.leader_epoch})"
            )
        alive = self.alive_ids()
        if leader not in isr or not set(isr) <= set(replicas):
            raise InvalidReplicaAssignmentError(
                f"{tp}: ISR {isr} must include the leader and only replicas {replicas}"
            )
        isr = [r for r in replicas if r in isr and (r in alive or r == leader)]
        new = PartitionState(leader, leader_epoch, isr)
        if isr != state.isr:
            self._commit(lambda w: self._put_state(w, tp, new))
            log.info("%s: ISR %s -> %s", tp, state.isr, isr)
        return new

    def elect_preferred(self, topics: list[str] | None = None) -> list[TopicPartition]:
        """Move leadership back to each partition's first replica where it is alive and in
        sync (``kvlog topics elect-leaders``; also run periodically)."""
        alive = self.alive_ids()
        changes = []
        for view in self.topics(topics):
            for p, state in enumerate(view.states):
                preferred = view.meta.replicas[p][0]
                if state.leader != preferred and preferred in alive and preferred in state.isr:
                    tp = TopicPartition(view.meta.name, p)
                    changes.append(
                        (tp, PartitionState(preferred, state.leader_epoch + 1, state.isr))
                    )
        if changes:

            def write(w: WriteTxn) -> None:
                for tp, state in changes:
                    self._put_state(w, tp, state)

            self._commit(write)
            for tp, state in changes:
                log.info(
                    "%s: preferred leader %d back (epoch %d)", tp, state.leader, state.leader_epoch
                )
        return [tp for tp, _ in changes]

    def nodes_behind(self, node_ids: list[int], version: int) -> list[int]:
        return self.registry.behind(node_ids, version)

    # -- producer ids ----------------------------------------------------------------------

    def init_producer_id(self) -> tuple[int, int]:
        """A fresh producer id (epoch 0), durable so ids are never reused."""
        return self.store.write(next_producer_id), 0

    def partition_state(self, tp: TopicPartition) -> PartitionState | None:
        """The partition's leader, epoch and ISR; None if it does not exist."""
        views = self.topics([tp.topic])
        if not views or not 0 <= tp.partition < views[0].meta.partitions:
            return None
        return views[0].states[tp.partition]

    def node_alive_endpoint(self, node_id: int) -> str | None:
        return self.registry.alive_endpoint(node_id)


def next_producer_id(w: WriteTxn) -> int:
    """Allocate a producer id inside a write (the transaction coordinator's too, in the
    same transaction as the id's owner): ids are never handed out twice."""
    raw = w.get(CONTROLLER_TABLE, b"next_producer_id")
    pid = int(raw) if raw else 1000
    w.put(CONTROLLER_TABLE, b"next_producer_id", str(pid + 1).encode())
    return pid
