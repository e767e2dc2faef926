"""The broker process on kvlog's ZeroMQ wire: the bootstrap endpoint clients first
connect to.

Shell side: a :class:`workers.zmq_server.Server` over one
:class:`workers.broker_core.BrokerCore`, which decides every answer (the metadata cache,
which forwarded answers wait for it to catch up). Each ``op_<name>`` decodes the request
into the core's event, once; the ops in :data:`FORWARDED_OPS` are passed on to the
coordinator as they came. The core's sends go to the coordinator through a
:class:`workers.zmq_peer.PeerLink`; its answers are decoded (a ``watch_metadata`` reply
into the core's metadata answer) and handed back to the core.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq

from kvlog import clock
from kvlog.errors import InvalidRequestError, KvlogError
from kvlog.ipc.kafka.codec import ApiKey
from kvlog.ipc.wire import Request, check_str

from .broker_core import (
    WATCH,
    BrokerConfig,
    BrokerCore,
    BrokerMetadata,
    BrokerPing,
    CoordinatorAnswer,
    Forward,
    Forwarded,
)
from .controller_events import FindCoordinator as FindCoordinatorEvent
from .controller_events import Metadata, MetadataUnchanged
from .core_result import Reply, Send
from .kafka_handlers import KafkaContext
from .kafka_handlers.acls import ACL_EVENTS, forward_op, forwarded_answer
from .kafka_shell import KafkaShell, broker_config_entries
from .security import ServerSecurity
from .settings import BrokerSettings, ServerSettings
from .zmq_core_shell import CoreShell
from .zmq_peer import PeerLink
from .zmq_replies import Fields, decode_metadata
from .zmq_server import Server

log = logging.getLogger(__name__)

FORWARDED_OPS = (
    "create_topic",
    "delete_topic",
    "create_partitions",
    "alter_topic_config",
    "init_producer_id",
    "add_partitions_to_txn",
    "add_offsets_to_txn",
    "txn_offset_commit",
    "end_txn",
    "list_groups",
    "describe_groups",
    "delete_groups",
    "offset_fetch",
    "offset_commit",
    "elect_leaders",
    "acl_add",
    "acl_remove",
    "acl_list",
    "user_upsert",
    "user_remove",
    "user_list",
)


# The Kafka APIs the bootstrap answers: what a client asks before it knows the brokers
# (or of any broker). Admin and group requests go to the controller and the group
# coordinator, which Metadata and FindCoordinator name: the coordinator process.
# ACL requests are forwarded to the coordinator, which owns the store (as kvlog's acl ops).
KAFKA_APIS = (
    ApiKey.ApiVersions,
    ApiKey.Metadata,
    ApiKey.FindCoordinator,
    ApiKey.DescribeAcls,
    ApiKey.CreateAcls,
    ApiKey.DeleteAcls,
)


class BrokerServer(KafkaShell, CoreShell, Server):
    name = "broker"

    def __init__(
        self,
        ctx: zmq.Context[Any],
        router: zmq.Socket[Any],
        settings: BrokerSettings,
        security: ServerSecurity | None = None,
        server_settings: ServerSettings | None = None,
    ) -> None:
        super().__init__(ctx, router, security)
        server_settings = server_settings or ServerSettings()
        self.start_kafka(
            server_settings,
            KAFKA_APIS,
            broker_id=-1,
            config=broker_config_entries(settings, server_settings),
        )
        self.settings = settings
        self.coordinator = PeerLink(
            ctx,
            settings.coordinator,
            name="broker -> coordinator",
            options=security.client_options() if security else None,
        )
        self.add_socket(self.coordinator.socket, self.coordinator.on_readable)
        self.core = BrokerCore(
            BrokerConfig(
                coordinator=settings.coordinator,
                admin_timeout_ms=settings.admin_timeout_ms,
                watch_wait_ms=settings.watch_wait_ms,
                cache_catch_up_ms=settings.cache_catch_up_ms,
            )
        )
        for op in FORWARDED_OPS:
            self.handlers[op] = self._forward
        self.carry_out(self.core.start(clock.now_ms()), timer=True)

    # -- requests --------------------------------------------------------------------------

    def op_metadata(self, req: Request, peer: bytes) -> Fields | None:
        names = None
        if req.get("topics") is not None:
            names = [check_str(t, "topics[]", max_len=4096) for t in req.list("topics")]
        event = BrokerMetadata(names)
        if self.security is not None:
            authorizer, principal = self.security.authorizer, self.principal
            event.principal = principal
            event.may_describe = lambda topic: authorizer.allowed(
                principal, "topic", topic, "describe"
            )
        return self.call(peer, req.id, event)

    def op_find_coordinator(self, req: Request, peer: bytes) -> Fields | None:
        return self.call(peer, req.id, FindCoordinatorEvent())

    def op_ping(self, req: Request, peer: bytes) -> Fields | None:
        return self.call(peer, req.id, BrokerPing())

    def kafka_event(self, event: Any, ctx: KafkaContext) -> Any:
        """The Kafka handlers' Metadata is the broker core's (answered from its cache); their
        ACL events go to the coordinator as the ZeroMQ acl ops do."""
        if isinstance(event, Metadata):
            return BrokerMetadata(event.topics, allow_auto_create=event.allow_auto_create)
        if isinstance(event, ACL_EVENTS):
            return Forward(*forward_op(event))
        return event

    def kafka_answer(self, event: Any, body: Any) -> Any:
        if isinstance(body, Forwarded):
            return forwarded_answer(event, body.fields)
        return body

    def _forward(self, req: Request, peer: bytes) -> Fields | None:
        fields = {k: v for k, v in req.header.items() if k not in ("v", "id", "op")}
        return self.call(peer, req.id, Forward(req.op, fields))

    def send_reply(self, reply: Reply) -> None:
        if isinstance(reply.body, Forwarded) and reply.body.reload_acls:
            self.refresh_acls()  # this broker applies the change before it answers
        super().send_reply(reply)

    # -- the coordinator link --------------------------------------------------------------

    def carry_out_sends(self, sends: list[Send]) -> None:
        for send in sends:
            self.coordinator.request(
                send.op, send.fields, self._answer_to(send), timeout_ms=send.timeout_ms
            )

    def _answer_to(self, send: Send) -> Any:
        def done(
            header: dict[str, Any] | None, frames: list[bytes], error: KvlogError | None
        ) -> None:
            answer = self._decode_answer(send.op, header, error)
            self.carry_out(self.core.on_answer(send.token, answer, clock.now_ms()))

        return done

    @staticmethod
    def _decode_answer(
        op: str, header: dict[str, Any] | None, error: KvlogError | None
    ) -> CoordinatorAnswer:
        if header is None:
            return CoordinatorAnswer()  # no answer in time
        if error is not None:
            return CoordinatorAnswer(error=error)
        body = {k: v for k, v in header.items() if k not in ("v", "id")}
        if op not in (WATCH, "metadata"):
            return CoordinatorAnswer(body)
        if op == WATCH and "topics" not in body:
            return CoordinatorAnswer(MetadataUnchanged(body.get("version", -1)))
        try:
            return CoordinatorAnswer(decode_metadata(body))
        except InvalidRequestError as exc:
            log.warning("broker: the coordinator's metadata reply was not understood: %s", exc)
            return CoordinatorAnswer(error=exc)

    # -- timers ----------------------------------------------------------------------------

    def next_timeout_ms(self, now: float) -> float:
        timeout = super().next_timeout_ms(now)
        link = self.coordinator.next_deadline()  # on the loop's monotonic clock, as ``now``
        if link is None:
            return timeout
        return max(0.0, min(timeout, (link - now) * 1000))

    def on_timers(self, now: float) -> None:
        self.coordinator.expire(now)  # requests the coordinator did not answer in time
        super().on_timers(now)
