"""The node process's Kafka shell: a second shell over the same NodeCore, in the same loop.

Shell side. :class:`NodeKafkaShell` is mixed into the node's ZeroMQ server
(:class:`workers.node_shell.NodeServer`); it owns a
:class:`workers.kafka_listener.KafkaListener` bound from ``ServerSettings.kafka_listen``
(a Kafka broker whose id is the node id), and serves the node's APIs. For each request
the API's handler (one module each under :mod:`workers.kafka_handlers`; versions in
``kvlog.ipc.kafka.versions.SERVED``) gives a plan: the node core's event, and how to
build Kafka's response from the core's typed answer. The shell hands the event to the
core with a :class:`KafkaCall` as its token and carries out the Result as the ZeroMQ
shell does (the group commit at the end of the turn, long polls parked in the core);
when the core replies to that token the handler builds the response and the listener
sends it (in request order per connection). Nothing here decides an answer.

What the shell does apply, the same way as on the ZeroMQ wire:

- quotas (:mod:`workers.quotas`, per principal, shared with the ZeroMQ shell): a
  produce or fetch response over its principal's byte rate is held back for the time
  the bytes should have taken. ``throttle_time_ms`` says so to clients of versions that
  expect the broker to delay (before KIP-219: Produce v0-5, Fetch v0-7); clients of later
  versions would wait that long again themselves, so they get 0 for a delay already
  served;
- the in-flight cap (``max.inflight.requests.per.client``): Kafka's way, a connection
  with that many requests owed a response is not read until one is answered (the
  listener pauses it), where the ZeroMQ wire answers THROTTLING_QUOTA_EXCEEDED;
- acks=0: no response; if a partition failed, the connection closes (Kafka's signal to
  the client to refresh its metadata).

Kafka clients send some requests to any broker (Metadata, FindCoordinator,
InitProducerId, topic configs, ACLs, ...). A node answers ApiVersions and ListGroups itself
(it coordinates no group) and relays every other API the coordinator serves to the
coordinator, as Kafka's brokers forward to their controller (KIP-590): over the node's
CURVE-authenticated link as kvlog's internal op ``kafka_relay`` (PROTOCOL.md 3.32), with
the principal this listener authenticated, so the coordinator answers (and authorizes)
the request as its client's. The coordinator decides those answers, its Metadata
included. A relayed request the coordinator does not answer in time closes its client's
connection, logged: the client retries, as after any broker failure.

A connection's principal is on its token: the SCRAM user or certificate name the listener
authenticated (:mod:`workers.kafka_security`), ANONYMOUS without security. With security
on and no way for a Kafka client to log in, the listener stays off and says why.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvlog import clock
from kvlog.errors import InvalidConfigError, KvlogError
from kvlog.ipc.kafka.codec import ApiKey, decode_response, encode_request
from kvlog.ipc.kafka.connection import KafkaRequest
from kvlog.ipc.kafka.versions import SERVED

from .core_result import Reply, Result
from .group_events import ListGroups
from .kafka_handlers import (
    HANDLERS,
    KafkaContext,
    Outcome,
    Plan,
    delete_records,
    fetch,
    leader_epochs,
    list_offsets,
    produce,
)
from .kafka_handlers.authorize import authorize
from .kafka_listener import DEFERRED, KafkaListener, KafkaToken
from .kafka_security import PLAINTEXT, listener_security
from .kafka_shell import kafka_address
from .node_model import DeleteRecords, Fetch, ListOffsets, OffsetForLeaderEpoch, Produce
from .settings import ServerSettings

log = logging.getLogger(__name__)

# KIP-219: from these versions on the client waits out throttle_time_ms itself.
CLIENT_SIDE_THROTTLE = {ApiKey.Produce: 6, ApiKey.Fetch: 8}
_QUOTA_KIND = {ApiKey.Produce: "produce", ApiKey.Fetch: "fetch"}


# What a node answers itself: the data path (the node's own handlers), ApiVersions, and
# ListGroups (Kafka asks every broker for the groups it coordinates: a node has none).
NODE_HANDLERS: dict[int, Callable[[KafkaRequest, KafkaContext], Plan]] = {
    ApiKey.ApiVersions: HANDLERS[ApiKey.ApiVersions],
    ApiKey.ListGroups: HANDLERS[ApiKey.ListGroups],
    ApiKey.Produce: produce.produce,
    ApiKey.Fetch: fetch.fetch,
    ApiKey.ListOffsets: list_offsets.list_offsets,
    ApiKey.OffsetForLeaderEpoch: leader_epochs.offset_for_leader_epoch,
    ApiKey.DeleteRecords: delete_records.delete_records,
}
# What it relays to the coordinator: every other API served (the coordinator's; SASL is
# the listener's own).
RELAYED = frozenset(r.api_key for r in SERVED if r.api_key not in NODE_HANDLERS)
RELAY_TIMEOUT_MS = 30_000


@dataclass(frozen=True, slots=True)
class KafkaCall:
    """The core's token for a Kafka request: its listener token, the handler's plan and
    who sent it."""

    token: KafkaToken
    plan: Plan
    principal: str

    @property
    def request(self) -> KafkaRequest:
        return self.token.request


class NodeKafkaShell:
    """Mixin for :class:`workers.node_shell.NodeServer` (``self.core``, ``self.quotas``,
    ``_carry``, ``add_socket``, ``security``). Single-threaded, as the loop."""

    core: Any
    quotas: Any
    security: Any
    name: str
    add_socket: Any
    _carry: Any
    kafka: KafkaListener | None = None
    metrics: Any = None  # the node's NodeMetrics (workers/metrics_node.py), None when off
    coordinator: Any  # the node's PeerLink to the coordinator (workers/zmq_peer.py)
    _kafka_delayed: list[tuple[int, KafkaToken, Any]]  # (due, on kvlog's clock, ms)
    _kafka_replies: list[Reply]
    _relayed: list[tuple[KafkaToken, Any, str | None]]  # (token, response, or why none)

    def start_kafka(
        self, settings: ServerSettings, *, node_id: int, max_pending: int
    ) -> str | None:
        """Bind the Kafka listener ``kafka_listen`` asks for; returns the "host:port" it
        advertises (None: no listener). Call once, before the loop runs."""
        self._kafka_delayed = []
        self._kafka_replies = []
        self._relayed = []
        if settings.kafka_listen is None:
            return None
        try:
            security = listener_security(settings, self.security)
        except InvalidConfigError as exc:
            log.warning(
                "%s: the Kafka listener stays off (%s asked for): %s",
                self.name,
                settings.kafka_listen,
                exc.message,
            )
            return None
        address = kafka_address(settings)
        assert address is not None
        bind, port, advertised = address
        limit = settings.max_connections
        self.kafka = KafkaListener(
            {api: self._on_kafka_request for api in (*NODE_HANDLERS, *RELAYED)},
            host=bind,
            port=port,
            max_pending=max_pending,
            max_connections=limit if limit > 0 else 1 << 30,
            failed_authentication_delay_ms=settings.connection_failed_authentication_delay_ms,
            name=f"{self.name} kafka",
            security=security,
        )
        bound_host, bound_port = self.kafka.start()
        endpoint = f"{advertised}:{bound_port}"
        self.add_socket(self.kafka.poll_handle(), self.kafka.on_ready)
        log.info(
            "%s: Kafka listener on %s:%d (advertised %s, broker id %d, %s)",
            self.name,
            bound_host,
            bound_port,
            endpoint,
            node_id,
            PLAINTEXT if security is None else security.protocol,
        )
        return endpoint

    # -- requests --------------------------------------------------------------------------

    def _on_kafka_request(self, request: KafkaRequest, token: KafkaToken) -> Any:
        assert self.kafka is not None
        peer = self.kafka.peer_of(token) or ""
        if request.api_key in RELAYED:
            self._relay(token, request, peer.rpartition(":")[0])
            return DEFERRED
        ctx = KafkaContext(
            broker_id=self.core.node_id,
            principal=token.principal,
            client_host="/" + peer.rpartition(":")[0],
            authorizer=None if self.security is None else self.security.authorizer,
        )
        plan = NODE_HANDLERS[request.api_key](request, ctx)
        call = KafkaCall(token, plan, ctx.principal)
        if not plan.steps:  # answered without the core (ApiVersions, a refused version)
            return self._response(call, [], 0)
        [event] = plan.steps  # every node API is one core event
        if isinstance(event, Outcome):
            return self._response(call, [event], 0)
        try:
            authorize(ctx.authorizer, ctx.principal, event)
        except KvlogError as exc:
            log.info("%s: refused %s: %s", self.name, request.api_name, exc.message)
            return self._response(call, [Outcome(error=exc)], 0)
        self._carry(self._handle(call, event))
        return DEFERRED

    def land_commit(self) -> None:
        """Wait for the group commit in flight, if any, and carry out what it decided
        (the node shell's committer; a write may not overtake it)."""

    def _handle(self, call: KafkaCall, event: Any) -> Result:
        """Hand the event to the node core (the node's own events carry their token)."""
        core, now_ms = self.core, clock.now_ms()
        if isinstance(event, Produce | Fetch | ListOffsets | OffsetForLeaderEpoch | DeleteRecords):
            event.token = call
        if isinstance(event, Produce):
            return core.produce(event, now_ms)
        if isinstance(event, Fetch):
            return core.fetch(event, now_ms)
        if isinstance(event, ListOffsets):
            return core.list_offsets(event)
        if isinstance(event, OffsetForLeaderEpoch):
            return core.offset_for_leader_epoch(event)
        if isinstance(event, DeleteRecords):
            self.land_commit()  # it writes: after the group commit in flight
            return core.delete_records(event, now_ms)
        if isinstance(event, ListGroups):
            return core.list_groups(call)
        raise TypeError(f"no node core event {type(event).__name__}")

    def _relay(self, token: KafkaToken, request: KafkaRequest, client_host: str) -> None:
        """Hand ``request`` to the coordinator (``kafka_relay``); its response, or why
        there is none, waits in ``_relayed`` for :meth:`flush_kafka`."""
        frame = encode_request(
            request.body, request.api_version, request.correlation_id, request.client_id
        )

        def done(header: Any, frames: list[bytes], error: KvlogError | None) -> None:
            if error is not None or not frames:
                why = error.message if error is not None else "no response frame"
                self._relayed.append((token, None, f"relaying {request.api_name} failed: {why}"))
                return
            try:
                _, response = decode_response(frames[0], request.api_key, request.api_version)
            except Exception as exc:  # the coordinator's bug: this client's connection goes
                self._relayed.append((token, None, f"relayed response did not decode: {exc}"))
                return
            self._relayed.append((token, response, None))

        self.coordinator.request(
            "kafka_relay",
            {"principal": token.principal, "client_host": client_host},
            done,
            timeout_ms=RELAY_TIMEOUT_MS,
            frames=[frame[4:]],  # without the length prefix
        )

    # -- replies ---------------------------------------------------------------------------

    def deliver_kafka(self, reply: Reply) -> None:
        """The core's reply to a Kafka request; it leaves at :meth:`flush_kafka` (the core
        may reply while the listener is still handing out that connection's requests)."""
        self._kafka_replies.append(reply)

    def flush_kafka(self) -> None:
        """Build and send the responses the core decided since the last call, and pass on
        what the relay brought back."""
        if self.kafka is None:
            return
        relayed, self._relayed = self._relayed, []
        for token, response, failed in relayed:
            if failed is None:
                self.kafka.respond(token, response)
            else:
                self.kafka.close_connection(token, failed)
        replies, self._kafka_replies = self._kafka_replies, []
        for reply in replies:
            call: KafkaCall = reply.token
            response = self._response(call, [Outcome(reply.body, reply.error)], _quota_bytes(reply))
            if response is not DEFERRED:
                assert self.kafka is not None
                self.kafka.respond(call.token, response)

    def _response(self, call: KafkaCall, outcomes: list[Outcome], quota_bytes: int) -> Any:
        """The response to send now, or DEFERRED: none is due (acks=0), it is held back
        under a quota, or the connection was closed."""
        assert self.kafka is not None
        request = call.request
        try:
            response = call.plan.respond(outcomes)
        except Exception:  # a handler's bug: its connection closes, the process goes on
            log.exception("%s: %s response failed", self.name, request.api_name)
            self.kafka.close_connection(call.token, "the broker failed to build a response")
            return DEFERRED
        if not request.expects_response:  # acks=0
            failed = produce.first_error(response)
            if failed is not None:
                self.kafka.close_connection(call.token, f"acks=0 produce failed: {failed}")
            return DEFERRED
        delay = self._throttle(call, quota_bytes)
        if delay <= 0:
            return response
        if request.api_version < CLIENT_SIDE_THROTTLE.get(request.api_key, 0):
            response.throttle_time_ms = int(delay * 1000)
        self._kafka_delayed.append((clock.now_ms() + math.ceil(delay * 1000), call.token, response))
        return DEFERRED

    def _throttle(self, call: KafkaCall, nbytes: int) -> float:
        kind = _QUOTA_KIND.get(call.request.api_key)
        if kind is None or nbytes <= 0:
            return 0.0
        delay = float(self.quotas.throttle(kind, call.principal, nbytes, clock.now_ms() / 1000))
        if delay > 0 and self.metrics is not None:
            self.metrics.on_throttled(kind, delay)
        return delay

    # -- timers ----------------------------------------------------------------------------

    def kafka_deadline_ms(self) -> float | None:
        """On kvlog's clock: the earliest held-back response or idle connection (0:
        relayed responses wait to be passed on; the coordinator link times relays out)."""
        if self._relayed:
            return 0.0
        due: list[float] = [d for d, _, _ in self._kafka_delayed]
        deadline = self.kafka.next_deadline() if self.kafka is not None else None
        if deadline is not None:  # on the listener's monotonic clock
            due.append(clock.now_ms() + (deadline - time.monotonic()) * 1000)
        return min(due, default=None)

    def kafka_timers(self) -> None:
        if self.kafka is None:
            return
        self.kafka.expire_idle()
        if self._kafka_delayed:
            now = clock.now_ms()
            due = [d for d in self._kafka_delayed if d[0] <= now]
            if due:
                self._kafka_delayed = [d for d in self._kafka_delayed if d[0] > now]
                for _, token, response in due:
                    self.kafka.respond(token, response)


def _quota_bytes(reply: Reply) -> int:
    body = reply.body
    if reply.error is not None or body is None:
        return 0
    if hasattr(body, "quota_bytes"):
        return int(body.quota_bytes)
    return int(getattr(body, "request_bytes", 0))


__all__ = ["NODE_HANDLERS", "RELAYED", "KafkaCall", "NodeKafkaShell"]
