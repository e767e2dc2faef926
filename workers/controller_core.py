"""The controller core: topic metadata, nodes, leadership and producer ids, without sockets.

Theory of operation. Every request the controller serves is one event
(:mod:`workers.controller_events`) handed to :meth:`ControllerCore.handle` with the
shell's opaque ``token`` and ``now_ms``; the answer is one
:class:`workers.core_result.Result`. :class:`workers.controller_state.ControllerState`
decides (topics, placement, node liveness, elections, ISR changes); this class routes
each event to its handler, turns a raised :class:`kvlog.errors.KvlogError` into the
request's error reply, and parks what must wait:

- a node's ``NodeHeartbeat`` is answered at once with its assignment when the metadata
  version moved past the version it applied, else parked until the version moves (the
  assignment), its ``wait_ms`` runs out or a newer heartbeat of the node arrives (both
  ``NodeHeartbeatAck``);
- the broker's ``WatchMetadata`` is answered at once with the full metadata when the
  version moved past its own, else parked until it moves (the metadata) or ``wait_ms``
  runs out (``MetadataUnchanged``);
- an admin change (CreateTopic, DeleteTopic, CreatePartitions, AlterTopicConfig,
  ElectLeaders) is answered once every live node that hosts an affected partition has
  applied the new version, or when ``admin_apply_timeout_ms`` runs out, so a client can
  produce right after create_topic returns.

Timers (:meth:`ControllerCore.tick`): nodes whose heartbeats stopped for
``node_timeout_ms`` are marked dead and their leaderships move; so are configured nodes
that never registered once the start-up grace period (``node_timeout_ms`` from
:meth:`ControllerCore.start`) ends; every ``leader_imbalance_check_interval_ms``
leadership moves back to preferred replicas; parked requests whose wait ended are
answered. Every Result's ``deadline_ms`` is the core's next deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvlog.errors import (
    ErrorCode,
    InvalidRequestError,
    KvlogError,
    ResourceNotFoundError,
    SecurityDisabledError,
)
from kvlog.log import LogStore
from kvlog.types import TopicPartition

from .acl import AclEntry, add_acl, load_acls, remove_acls
from .config import broker_default
from .controller_events import (
    COORDINATOR_BROKER_ID,
    AclAdd,
    AclAdded,
    AclList,
    AclListing,
    AclRemove,
    AclsRemoved,
    AlterIsr,
    AlterTopicConfig,
    ChangeValidated,
    CreatePartitions,
    CreateTopic,
    DeleteTopic,
    ElectLeaders,
    FindCoordinator,
    InitProducerId,
    IsrAnswer,
    LeadersElected,
    Metadata,
    MetadataAnswer,
    MetadataUnchanged,
    MissingTopic,
    NodeAssignment,
    NodeDown,
    NodeDownAnswer,
    NodeHeartbeat,
    NodeHeartbeatAck,
    PartitionsCreated,
    Ping,
    PingAnswer,
    ProducerIdAnswer,
    TopicConfigAltered,
    TopicCreated,
    TopicDeleted,
    TopicEntry,
    UserList,
    UserListing,
    UserRemove,
    UserRemoved,
    UserUpsert,
    UserUpserted,
    WatchMetadata,
    find_coordinator,
)
from .controller_state import ControllerState
from .core_ids import IdSource
from .core_result import Result
from .scram_users import check_user_name, list_users, put_credentials, remove_user
from .txn_markers import GONE, Leader

log = logging.getLogger(__name__)


@dataclass
class ControllerConfig:
    """The coordinator's settings the controller core needs."""

    node_ids: list[int]
    node_timeout_ms: int = broker_default("node.session.timeout.ms")
    admin_apply_timeout_ms: int = 5000
    leader_imbalance_check_interval_ms: int = broker_default("leader.imbalance.check.interval.ms")
    # Metadata's auto-creation of topics (Kafka's names and defaults).
    auto_create_topics_enable: bool = broker_default("auto.create.topics.enable")
    num_partitions: int = broker_default("num.partitions")
    default_replication_factor: int = broker_default("default.replication.factor")
    # The coordinator's own addresses, as FindCoordinator and metadata hand them out.
    endpoint: str = ""
    kafka_endpoint: str | None = None
    # ACLs exist only with security on; without, the ACL requests are refused
    # (SECURITY_DISABLED, as Kafka does).
    acls_enabled: bool = True


@dataclass(slots=True)
class Parked:
    """A request waiting inside the core: whose (``token``) and until when."""

    token: Any
    deadline_ms: int
    version: int = 0  # the version it waits to see move (or be applied, for admin)
    answer: Any = None  # an admin change's answer, given once the nodes applied it
    node_ids: list[int] = field(default_factory=list)


Handler = Callable[[Result, Any, Any, int], None]


class ControllerCore:
    """Owned by the coordinator's loop; not thread-safe."""

    def __init__(self, store: LogStore, config: ControllerConfig, topic_ids: IdSource) -> None:
        self.config = config
        self.state = ControllerState(
            store, config.node_ids, node_timeout_ms=config.node_timeout_ms, topic_ids=topic_ids
        )
        self.node_waiters: dict[int, Parked] = {}
        self.watchers: list[Parked] = []
        self.admin_waiters: list[Parked] = []
        self._announced = 0
        self._next_preferred_ms = 0
        # The one handler that decides each request's answer.
        self._handlers: dict[type, Handler] = {
            NodeHeartbeat: self._node_heartbeat,
            NodeDown: self._node_down,
            AlterIsr: self._alter_isr,
            Metadata: self._metadata,
            FindCoordinator: self._find_coordinator,
            WatchMetadata: self._watch_metadata,
            CreateTopic: self._create_topic,
            DeleteTopic: self._delete_topic,
            CreatePartitions: self._create_partitions,
            AlterTopicConfig: self._alter_topic_config,
            ElectLeaders: self._elect_leaders,
            InitProducerId: self._init_producer_id,
            Ping: self._ping,
            AclAdd: self._acl_add,
            AclRemove: self._acl_remove,
            AclList: self._acl_list,
            UserUpsert: self._user_upsert,
            UserRemove: self._user_remove,
            UserList: self._user_list,
        }

    @property
    def version(self) -> int:
        return self.state.version

    @property
    def store(self) -> LogStore:
        return self.state.store

    def handles(self) -> list[type]:
        """The request types :meth:`handle` takes."""
        return list(self._handlers)

    def partition_count(self, topic: str) -> int | None:
        return self.state.partition_count(topic)

    def marker_leader(self, tp: TopicPartition) -> Leader | None:
        """Where a transaction marker for ``tp`` goes now: its live leader node (GONE:
        the partition does not exist; None: it has no live leader with a known endpoint)."""
        state = self.state.partition_state(tp)
        if state is None:
            return GONE
        endpoint = self.state.node_alive_endpoint(state.leader) if state.leader >= 0 else None
        if endpoint is None:
            return None
        return Leader(state.leader, state.leader_epoch, endpoint)

    # -- entry points ----------------------------------------------------------------------

    def start(self, now_ms: int) -> Result:
        """A new process over the store: call once, before any event."""
        self.state.start(now_ms)
        self._announced = self.version
        self._next_preferred_ms = now_ms + self.config.leader_imbalance_check_interval_ms
        return Result(deadline_ms=self.next_deadline_ms())

    def handle(self, token: Any, event: Any, now_ms: int) -> Result:
        out = Result()
        try:
            self._handlers[type(event)](out, token, event, now_ms)
        except KvlogError as exc:
            out.fail(token, exc)
        self._announce(out)
        return out.wake_at(self.next_deadline_ms())

    def tick(self, now_ms: int) -> Result:
        out = Result()
        self.state.expire_nodes(now_ms)
        if now_ms >= self._next_preferred_ms:
            self._next_preferred_ms = now_ms + self.config.leader_imbalance_check_interval_ms
            self.state.elect_preferred()
        self._announce(out)
        for node_id, parked in list(self.node_waiters.items()):
            if parked.deadline_ms <= now_ms:
                del self.node_waiters[node_id]
                out.reply(parked.token, NodeHeartbeatAck(self.version))
        if any(p.deadline_ms <= now_ms for p in self.watchers):
            due = [p for p in self.watchers if p.deadline_ms <= now_ms]
            self.watchers = [p for p in self.watchers if p.deadline_ms > now_ms]
            for parked in due:
                out.reply(parked.token, MetadataUnchanged(self.version))
        self._check_admin_waiters(out, now_ms)
        out.deadline_ms = self.next_deadline_ms()
        return out

    def next_deadline_ms(self) -> int | None:
        deadlines = [p.deadline_ms for p in self.node_waiters.values()]
        deadlines += [p.deadline_ms for p in self.watchers]
        deadlines += [p.deadline_ms for p in self.admin_waiters]
        expiry = self.state.next_expiry_ms()
        if expiry is not None:
            deadlines.append(expiry)
        deadlines.append(self._next_preferred_ms)
        return min(deadlines)

    # -- parking ---------------------------------------------------------------------------

    def _announce(self, out: Result) -> None:
        """Wake every parked node heartbeat and watcher when the version moved."""
        if self.version == self._announced:
            return
        self._announced = self.version
        for node_id, parked in list(self.node_waiters.items()):
            del self.node_waiters[node_id]
            out.reply(parked.token, self._assignment(node_id))
        watchers, self.watchers = self.watchers, []
        if watchers:
            answer = self._metadata_answer(None)
            for parked in watchers:
                out.reply(parked.token, answer)

    def _after_change(
        self, out: Result, token: Any, answer: Any, node_ids: list[int], now_ms: int
    ) -> None:
        """Answer once every live node in ``node_ids`` applied the new version."""
        self.admin_waiters.append(
            Parked(
                token,
                now_ms + self.config.admin_apply_timeout_ms,
                version=self.version,
                answer=answer,
                node_ids=sorted(set(node_ids)),
            )
        )
        self._check_admin_waiters(out, None)

    def _check_admin_waiters(self, out: Result, now_ms: int | None) -> None:
        """Answer the admin changes every node applied (and, with ``now_ms``, those whose
        wait ran out)."""
        still = []
        for parked in self.admin_waiters:
            behind = self.state.nodes_behind(parked.node_ids, parked.version)
            timed_out = now_ms is not None and parked.deadline_ms <= now_ms
            if behind and not timed_out:
                still.append(parked)
                continue
            if behind:
                log.warning(
                    "nodes %s did not apply metadata version %d in time; answering anyway",
                    behind,
                    parked.version,
                )
            out.reply(parked.token, parked.answer)
        self.admin_waiters = still

    # -- nodes -----------------------------------------------------------------------------

    def _assignment(self, node_id: int) -> NodeAssignment:
        return NodeAssignment(
            self.version,
            self.state.assignment_for(node_id),
            self.state.deleted_topic_ids(),
            sorted(self.state.node_endpoints().items()),
            [
                (n.node_id, n.kafka_endpoint)
                for n in self.state.node_entries()
                if n.alive and n.kafka_endpoint
            ],
            self.config.kafka_endpoint,
        )

    def _node_heartbeat(self, out: Result, token: Any, ev: NodeHeartbeat, now_ms: int) -> None:
        if ev.node_id not in self.state.node_ids or ev.node_id == COORDINATOR_BROKER_ID:
            raise InvalidRequestError(
                f"node {ev.node_id} is not one of this broker's nodes {self.state.node_ids}"
            )
        self.state.node_heartbeat(ev, now_ms)
        self._check_admin_waiters(out, None)
        old = self.node_waiters.pop(ev.node_id, None)
        if old is not None:  # a newer heartbeat supersedes the parked one
            out.reply(old.token, NodeHeartbeatAck(self.version))
        if ev.applied_version < self.version:
            out.reply(token, self._assignment(ev.node_id))
            return
        self.node_waiters[ev.node_id] = Parked(
            token, now_ms + ev.wait_ms, version=ev.applied_version
        )

    def _node_down(self, out: Result, token: Any, ev: NodeDown, now_ms: int) -> None:
        out.reply(token, NodeDownAnswer(self.state.node_down(ev.node_id, ev.pid)))

    def _alter_isr(self, out: Result, token: Any, ev: AlterIsr, now_ms: int) -> None:
        state = self.state.alter_isr(ev.tp, ev.leader, ev.leader_epoch, ev.isr)
        out.reply(token, IsrAnswer(state.leader, state.leader_epoch, state.isr, self.version))

    # -- metadata --------------------------------------------------------------------------

    def _metadata_answer(self, names: list[str] | None) -> MetadataAnswer:
        return MetadataAnswer(
            self.version,
            self.state.node_entries(),
            self.state.topic_entries(names),
            coordinator_kafka=self.config.kafka_endpoint,
        )

    def _metadata(self, out: Result, token: Any, ev: Metadata, now_ms: int) -> None:
        answer = self._metadata_answer(ev.topics)
        if ev.allow_auto_create and self.config.auto_create_topics_enable:
            answer.topics = [self._auto_create(t, now_ms) for t in answer.topics]
        out.reply(token, answer)

    def _auto_create(
        self, topic: TopicEntry | MissingTopic, now_ms: int
    ) -> TopicEntry | MissingTopic:
        """Kafka's auto-creation: a missing topic is created with ``num.partitions`` and
        ``default.replication.factor`` and answered LEADER_NOT_AVAILABLE (its leaders take
        a moment to reach the nodes; the client asks again); one that cannot be created is
        answered with the reason."""
        if not isinstance(topic, MissingTopic):
            return topic
        if topic.code != ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
            return topic
        cfg = self.config
        try:
            self.state.create_topic(
                topic.name, cfg.num_partitions, cfg.default_replication_factor, {}, now_ms
            )
        except KvlogError as exc:
            return MissingTopic(topic.name, exc.code, exc.message)
        return MissingTopic(
            topic.name,
            ErrorCode.LEADER_NOT_AVAILABLE,
            f"topic {topic.name!r} was created (auto.create.topics.enable); retry",
        )

    def _find_coordinator(self, out: Result, token: Any, ev: FindCoordinator, now_ms: int) -> None:
        out.reply(token, find_coordinator(ev, self.config.endpoint, self.config.kafka_endpoint))

    def _watch_metadata(self, out: Result, token: Any, ev: WatchMetadata, now_ms: int) -> None:
        if ev.version < self.version:
            out.reply(token, self._metadata_answer(None))
            return
        self.watchers.append(Parked(token, now_ms + ev.wait_ms, version=ev.version))

    # -- admin -----------------------------------------------------------------------------

    def _create_topic(self, out: Result, token: Any, ev: CreateTopic, now_ms: int) -> None:
        partitions, replication_factor = ev.partitions, ev.replication_factor
        if ev.broker_defaults:
            if partitions == -1:
                partitions = self.config.num_partitions
            if replication_factor == -1:
                replication_factor = self.config.default_replication_factor
        meta = self.state.create_topic(
            ev.name,
            partitions,
            replication_factor,
            ev.config,
            now_ms,
            validate_only=ev.validate_only,
        )
        if ev.validate_only:
            out.reply(token, ChangeValidated(self.version))
            return
        nodes = [n for replicas in meta.replicas for n in replicas]
        self._after_change(out, token, TopicCreated(meta.topic_id, self.version), nodes, now_ms)

    def _delete_topic(self, out: Result, token: Any, ev: DeleteTopic, now_ms: int) -> None:
        meta = self.state.delete_topic(ev.name, now_ms)
        nodes = [n for replicas in meta.replicas for n in replicas]
        self._after_change(out, token, TopicDeleted(meta.topic_id, self.version), nodes, now_ms)

    def _create_partitions(
        self, out: Result, token: Any, ev: CreatePartitions, now_ms: int
    ) -> None:
        meta, old = self.state.create_partitions(ev.name, ev.count, validate_only=ev.validate_only)
        if ev.validate_only:
            out.reply(token, ChangeValidated(self.version))
            return
        nodes = [n for replicas in meta.replicas for n in replicas]
        answer = PartitionsCreated(old, meta.partitions, self.version)
        self._after_change(out, token, answer, nodes, now_ms)

    def _alter_topic_config(
        self, out: Result, token: Any, ev: AlterTopicConfig, now_ms: int
    ) -> None:
        meta = self.state.alter_topic_config(
            ev.name, ev.config, replace=ev.replace, validate_only=ev.validate_only
        )
        if ev.validate_only:
            out.reply(token, ChangeValidated(self.version))
            return
        nodes = [n for replicas in meta.replicas for n in replicas]
        answer = TopicConfigAltered(meta.config, self.version)
        self._after_change(out, token, answer, nodes, now_ms)

    def _elect_leaders(self, out: Result, token: Any, ev: ElectLeaders, now_ms: int) -> None:
        moved = self.state.elect_preferred(ev.topics)
        nodes = [n for view in self.state.topics(ev.topics) for r in view.meta.replicas for n in r]
        self._after_change(out, token, LeadersElected(moved, self.version), nodes, now_ms)

    def _init_producer_id(self, out: Result, token: Any, ev: InitProducerId, now_ms: int) -> None:
        """An idempotent producer's id (transactional ones are the transaction
        coordinator's: the coordinator core routes them there)."""
        if ev.transactional_id is not None:
            raise InvalidRequestError(
                f"transactional.id {ev.transactional_id!r}: the transaction coordinator "
                "hands out transactional producer ids, not the controller"
            )
        producer_id, epoch = self.state.init_producer_id()
        out.reply(token, ProducerIdAnswer(producer_id, epoch))

    def _ping(self, out: Result, token: Any, ev: Ping, now_ms: int) -> None:
        out.reply(token, PingAnswer(self.version, self.state.node_entries()))

    # -- ACLs (the table the broker and nodes reload from) ---------------------------------

    def _check_acls_enabled(self) -> None:
        if not self.config.acls_enabled:
            raise SecurityDisabledError(
                "security is off on this broker, so there are no ACLs to manage; start "
                "kvlog serve with --curve-secret-key to turn it on"
            )

    def _acl_add(self, out: Result, token: Any, ev: AclAdd, now_ms: int) -> None:
        self._check_acls_enabled()
        added = self.store.write(lambda w: add_acl(w, ev.entry))
        log.info("ACL %s: %s", "added" if added else "exists", ev.entry)
        out.reply(token, AclAdded(added))

    def _acl_remove(self, out: Result, token: Any, ev: AclRemove, now_ms: int) -> None:
        self._check_acls_enabled()
        want = {
            "principal": ev.principal,
            "resource_type": ev.resource_type,
            "name": ev.name,
            "operation": ev.operation,
        }

        def match(entry: AclEntry) -> bool:
            return all(v is None or getattr(entry, k) == v for k, v in want.items())

        out.reply(token, AclsRemoved(self.store.write(lambda w: remove_acls(w, match))))

    def _acl_list(self, out: Result, token: Any, ev: AclList, now_ms: int) -> None:
        self._check_acls_enabled()
        with self.store.reader() as r:
            out.reply(token, AclListing(sorted(load_acls(r))))

    # -- SCRAM users (the credentials every Kafka listener reloads) -------------------------
    # Managed with or without security: with it off they wait, unused, until it is on.

    def _user_upsert(self, out: Result, token: Any, ev: UserUpsert, now_ms: int) -> None:
        name = check_user_name(ev.name)
        mechanisms = [c.mechanism for c in ev.credentials]
        if not mechanisms or len(set(mechanisms)) != len(mechanisms):
            raise InvalidRequestError("give one credential per SCRAM mechanism, at least one")
        created = self.store.write(lambda w: put_credentials(w, name, ev.credentials))
        log.info("SCRAM user %r %s (%s)", name, "added" if created else "updated", mechanisms)
        out.reply(token, UserUpserted(created, sorted(mechanisms)))

    def _user_remove(self, out: Result, token: Any, ev: UserRemove, now_ms: int) -> None:
        removed = self.store.write(lambda w: remove_user(w, ev.name))
        if not removed:
            raise ResourceNotFoundError(f"no SCRAM user {ev.name!r}")
        log.info("SCRAM user %r removed", ev.name)
        out.reply(token, UserRemoved(removed))

    def _user_list(self, out: Result, token: Any, ev: UserList, now_ms: int) -> None:
        with self.store.reader() as r:
            out.reply(token, UserListing(list_users(r)))
