"""The coordinator process on kvlog's ZeroMQ wire: topic metadata, nodes, producer ids,
ACLs and groups.

Shell side: a :class:`workers.zmq_server.Server` over one
:class:`workers.coordinator_core.CoordinatorCore` (built over ``<data>/meta``). Each
``op_<name>`` decodes PROTOCOL.md's fields into the core's event, once, and hands it to
the core (:class:`workers.zmq_core_shell.CoreShell`), which decides every answer,
including which wait (the ``node_heartbeat`` and ``watch_metadata`` long polls, admin
changes answered once the nodes applied them, parked group requests). The group ops'
decoding is in :mod:`workers.group_shell`, the transaction ops' (and the links that
carry the transaction coordinator's markers to the nodes) in :mod:`workers.txn_shell`.
The shell seeds the cores' id sources with random bytes at start and reloads the ACLs
after an ACL change.
"""

from __future__ import annotations

import os
from typing import Any

import zmq

from kvlog import clock
from kvlog.errors import InvalidConfigError, InvalidRequestError
from kvlog.ipc.kafka.scram import MECHANISMS as SCRAM_MECHANISMS
from kvlog.ipc.kafka.scram import ScramCredential
from kvlog.ipc.wire import INT32_MAX, Request, check_int, check_str
from kvlog.lmdb_store import LogDir
from kvlog.types import TopicPartition, check_partition

from .acl import AclEntry
from .controller_core import ControllerConfig
from .controller_events import (
    COORDINATOR_BROKER_ID,
    AclAdd,
    AclList,
    AclRemove,
    AlterIsr,
    AlterTopicConfig,
    CreatePartitions,
    CreateTopic,
    DeleteTopic,
    ElectLeaders,
    InitProducerId,
    Metadata,
    NodeDown,
    NodeHeartbeat,
    Ping,
    UserList,
    UserRemove,
    UserUpsert,
    WatchMetadata,
)
from .coordinator_core import CoordinatorCore
from .core_ids import seeded_ids
from .group_core import seeded_member_ids
from .group_model import GroupConfig
from .group_shell import GroupOps
from .kafka_handlers import HANDLERS
from .kafka_shell import KafkaShell, broker_config_entries
from .scram_users import MAX_NAME_LENGTH
from .security import ServerSecurity
from .settings import CoordinatorSettings, ServerSettings
from .txn_core import TxnConfig
from .txn_shell import TxnOps
from .zmq_core_shell import CoreShell
from .zmq_replies import Fields
from .zmq_server import Server


def _names(req: Request, max_len: int = 1 << 16) -> list[str] | None:
    """The optional ``topics`` list (absent or null: None, all topics)."""
    if req.get("topics") is None:
        return None
    return [check_str(t, "topics[]", max_len=max_len) for t in req.list("topics")]


class CoordinatorServer(GroupOps, TxnOps, KafkaShell, CoreShell, Server):
    name = "coordinator"

    def __init__(
        self,
        ctx: zmq.Context[Any],
        router: zmq.Socket[Any],
        settings: CoordinatorSettings,
        store: LogDir,
        security: ServerSecurity | None = None,
        server_settings: ServerSettings | None = None,
    ) -> None:
        super().__init__(ctx, router, security)
        self.settings = settings
        self._node_links = {}
        self.link_options = security.client_options() if security else None
        if COORDINATOR_BROKER_ID in settings.node_ids:
            raise InvalidConfigError(
                f"node id {COORDINATOR_BROKER_ID} is the coordinator's Kafka broker id; "
                "give that log dir another node.id"
            )
        server_settings = server_settings or ServerSettings()
        # The Kafka listener first: the core hands out its address.
        kafka_endpoint = self.start_kafka(
            server_settings,
            HANDLERS,
            broker_id=COORDINATOR_BROKER_ID,
            config=broker_config_entries(settings, server_settings),
        )
        self.core = CoordinatorCore(
            store,
            ControllerConfig(
                node_ids=settings.node_ids,
                node_timeout_ms=settings.node_timeout_ms,
                admin_apply_timeout_ms=settings.admin_apply_timeout_ms,
                leader_imbalance_check_interval_ms=settings.leader_imbalance_check_interval_ms,
                auto_create_topics_enable=settings.auto_create_topics_enable,
                num_partitions=settings.num_partitions,
                default_replication_factor=settings.default_replication_factor,
                kafka_endpoint=kafka_endpoint,
                acls_enabled=security is not None,
            ),
            GroupConfig(
                min_session_timeout_ms=settings.group_min_session_timeout_ms,
                max_session_timeout_ms=settings.group_max_session_timeout_ms,
                initial_rebalance_delay_ms=settings.group_initial_rebalance_delay_ms,
                max_size=settings.group_max_size,
            ),
            # Fresh seeds at every start: ids never repeat across restarts.
            member_ids=seeded_member_ids(os.urandom(16)),
            topic_ids=seeded_ids(os.urandom(16), 32),
            txns=TxnConfig(
                max_timeout_ms=settings.transaction_max_timeout_ms,
                id_expiration_ms=settings.transactional_id_expiration_ms,
            ),
        )
        self.carry_out(self.core.start(clock.now_ms()), timer=True)

    # -- nodes (internal) ------------------------------------------------------------------

    def op_node_heartbeat(self, req: Request, peer: bytes) -> Fields | None:
        event = NodeHeartbeat(
            node_id=req.int("node_id", low=0, high=INT32_MAX),
            applied_version=req.int("applied_version", -1),
            wait_ms=req.int("wait_ms", 1000, low=0, high=60_000),
            endpoint=req.str("endpoint"),
            log_dir=req.str("log_dir"),
            pid=req.int("pid", 0),
            offline=req.bool("offline", False),
            kafka_endpoint=req.opt_str("kafka_endpoint", max_len=1024),
        )
        return self.call(peer, req.id, event)

    def op_node_down(self, req: Request, peer: bytes) -> Fields | None:
        """From the supervisor: a node process died (fail over without waiting)."""
        event = NodeDown(req.int("node_id", low=0, high=INT32_MAX), req.int("pid", 0, low=0))
        return self.call(peer, req.id, event)

    def op_alter_isr(self, req: Request, peer: bytes) -> Fields | None:
        """From a partition leader: shrink or expand the ISR."""
        tp = TopicPartition(req.str("topic", max_len=249), check_partition(req.get("partition")))
        isr = [check_int(n, "isr[]", low=0, high=INT32_MAX) for n in req.list("isr", max_len=64)]
        event = AlterIsr(
            tp,
            req.int("leader", low=0, high=INT32_MAX),
            req.int("leader_epoch", low=0, high=INT32_MAX),
            isr,
        )
        return self.call(peer, req.id, event)

    # -- metadata --------------------------------------------------------------------------

    def op_metadata(self, req: Request, peer: bytes) -> Fields | None:
        event = Metadata(_names(req, max_len=4096), req.bool("allow_auto_create", False))
        return self.call(peer, req.id, event)

    def op_watch_metadata(self, req: Request, peer: bytes) -> Fields | None:
        event = WatchMetadata(req.int("version", -1), req.int("wait_ms", 1000, low=0, high=60_000))
        return self.call(peer, req.id, event)

    # -- admin -----------------------------------------------------------------------------

    def op_elect_leaders(self, req: Request, peer: bytes) -> Fields | None:
        """Admin: move leadership back to preferred replicas (all topics or the given)."""
        return self.call(peer, req.id, ElectLeaders(_names(req)))

    def op_create_topic(self, req: Request, peer: bytes) -> Fields | None:
        config = req.get("config") or {}
        if not isinstance(config, dict):
            raise InvalidRequestError("field 'config' must be a map of topic config names")
        event = CreateTopic(
            req.str("name", max_len=4096),
            req.int("partitions", 1, low=-(1 << 31), high=INT32_MAX),
            req.int("replication_factor", 1, low=-(1 << 31), high=INT32_MAX),
            config,
            validate_only=req.bool("validate_only", False),
        )
        return self.call(peer, req.id, event)

    def op_delete_topic(self, req: Request, peer: bytes) -> Fields | None:
        return self.call(peer, req.id, DeleteTopic(req.str("name", max_len=4096)))

    def op_create_partitions(self, req: Request, peer: bytes) -> Fields | None:
        event = CreatePartitions(
            req.str("name", max_len=4096), req.int("count", low=-(1 << 31), high=INT32_MAX)
        )
        return self.call(peer, req.id, event)

    def op_alter_topic_config(self, req: Request, peer: bytes) -> Fields | None:
        event = AlterTopicConfig(req.str("name", max_len=4096), req.map("config"))
        return self.call(peer, req.id, event)

    def op_init_producer_id(self, req: Request, peer: bytes) -> Fields | None:
        event = InitProducerId(
            req.opt_str("transactional_id", max_len=32_767),
            req.int("transaction_timeout_ms", 60_000, low=-(1 << 31), high=INT32_MAX),
            producer_id=req.int("producer_id", -1, low=-1),
            producer_epoch=req.int("producer_epoch", -1, low=-1, high=32_767),
        )
        return self.call(peer, req.id, event)

    def op_ping(self, req: Request, peer: bytes) -> Fields | None:
        return self.call(peer, req.id, Ping())

    # -- timers: the links to the nodes too -------------------------------------------------

    def next_timeout_ms(self, now: float) -> float:
        timeout = float(super().next_timeout_ms(now))
        due = self.node_links_deadline_ms()
        if due is None:
            return timeout
        return max(0.0, min(timeout, due - clock.now_ms()))

    def on_timers(self, now: float) -> None:
        self.expire_node_links()  # a timed-out marker send goes back to the core
        self.flush_replies()
        super().on_timers(now)

    # -- ACLs ------------------------------------------------------------------------------

    def refresh_acls(self) -> None:
        if self.security is not None:
            self.security.refresh_acls(self.core.store)

    def op_acl_add(self, req: Request, peer: bytes) -> Fields | None:
        entry = AclEntry(
            req.str("principal", max_len=1024),
            req.str("resource_type", max_len=32),
            req.str("name", "kvlog", max_len=1024),
            req.str("operation", max_len=32),
        )
        return self._acl_change(req, peer, AclAdd(entry))

    def op_acl_remove(self, req: Request, peer: bytes) -> Fields | None:
        event = AclRemove(
            **{
                k: req.opt_str(k, max_len=1024)
                for k in ("principal", "resource_type", "name", "operation")
            }
        )
        return self._acl_change(req, peer, event)

    def _acl_change(self, req: Request, peer: bytes, event: AclAdd | AclRemove) -> Fields | None:
        try:
            return self.call(peer, req.id, event)
        finally:
            self.refresh_acls()  # this process applies the change before it answers

    def op_acl_list(self, req: Request, peer: bytes) -> Fields | None:
        return self.call(peer, req.id, AclList())

    # -- Kafka requests relayed by nodes (internal) -----------------------------------------

    def op_kafka_relay(
        self, req: Request, peer: bytes
    ) -> Fields | tuple[Fields, list[bytes]] | None:
        """From a node: a Kafka request its client sent it that the coordinator serves
        (frame 1), with the principal the node's listener authenticated for that client."""
        if not req.frames:
            raise InvalidRequestError("kafka_relay: frame 1 (the Kafka request) is missing")
        return self.relay_kafka(  # type: ignore[no-any-return]
            peer,
            req.id,
            req.str("principal", max_len=1024),
            req.str("client_host", "", max_len=256),
            bytes(req.frames[0]),
        )

    # -- SCRAM users (Kafka's SASL logins) --------------------------------------------------

    def op_user_upsert(self, req: Request, peer: bytes) -> Fields | None:
        credentials = []
        for entry in req.list("credentials", max_len=len(SCRAM_MECHANISMS)):
            if not isinstance(entry, dict):
                raise InvalidRequestError("field 'credentials' must be an array of maps")
            try:
                credentials.append(ScramCredential.from_wire(entry))
            except ValueError as exc:
                raise InvalidRequestError(f"credentials[]: {exc}") from None
        event = UserUpsert(req.str("name", max_len=MAX_NAME_LENGTH), credentials)
        return self._user_change(req, peer, event)

    def op_user_remove(self, req: Request, peer: bytes) -> Fields | None:
        return self._user_change(req, peer, UserRemove(req.str("name", max_len=MAX_NAME_LENGTH)))

    def _user_change(
        self, req: Request, peer: bytes, event: UserUpsert | UserRemove
    ) -> Fields | None:
        try:
            return self.call(peer, req.id, event)
        finally:
            self.refresh_acls()  # this process's listener sees the change before it answers

    def op_user_list(self, req: Request, peer: bytes) -> Fields | None:
        return self.call(peer, req.id, UserList())
