"""What every Kafka shell over a core does: run the handlers' plans against the core.

Shell side: the second shell in front of a process's core, beside its ZeroMQ shell and
in the same loop (:class:`workers.zmq_server.Server`). :class:`KafkaShell` is mixed into
a process's ZeroMQ server before :class:`workers.zmq_core_shell.CoreShell`; it owns a
:class:`workers.kafka_listener.KafkaListener` (bound from ``ServerSettings.kafka_listen``)
and serves the APIs the process names. For each request it asks the API's handler
(:mod:`workers.kafka_handlers`) for a plan, checks each of its core events against the
ACLs (the checks the ZeroMQ wire makes, :mod:`workers.kafka_handlers.authorize`), hands
each to the core with a token of its own (:class:`KafkaStep`) and carries out the Result
as the ZeroMQ shell does (:meth:`CoreShell.carry_out`). Replies to those tokens come back
through :meth:`send_reply`, at once or when the core releases a parked request; once a
request's steps all have outcomes, its handler builds the response and the listener sends
it (responses leave in request order per connection). Nothing here decides an answer.

A connection has a principal, on the token of each of its requests: the SCRAM user or
certificate name its listener authenticated (:mod:`workers.kafka_security`), ANONYMOUS
without security (as on the ZeroMQ wire). With security on and no way for a Kafka client
to authenticate, the listener stays off, and says why.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kvlog import clock
from kvlog.errors import (
    InvalidConfigError,
    InvalidRequestError,
    KvlogError,
    UnknownServerError,
    UnsupportedVersionError,
)
from kvlog.ipc.kafka.codec import api_name, decode_request, encode_response
from kvlog.ipc.kafka.connection import KafkaRequest
from kvlog.ipc.kafka.framing import MIN_REQUEST_BYTES, KafkaProtocolError, peek_request
from kvlog.ipc.kafka.versions import SERVED

from .config import BROKER_CONFIG, field_name
from .core_result import Reply
from .kafka_addresses import WILDCARD, ipv4, split_host_port
from .kafka_handlers import HANDLERS, BrokerConfigEntry, KafkaContext, Outcome, Plan
from .kafka_handlers.authorize import authorize
from .kafka_listener import DEFERRED, KafkaListener, KafkaToken
from .kafka_security import PLAINTEXT, listener_security
from .settings import ServerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KafkaStep:
    """The core's token for one step of a Kafka request's plan."""

    call_id: int
    index: int


@dataclass(frozen=True, slots=True)
class RelayedToken:
    """A Kafka request a node relayed over kvlog's wire (the internal op ``kafka_relay``):
    the ZeroMQ request to answer, and who sent the Kafka request to the node (its
    connection's principal, which the node's listener authenticated, and host)."""

    peer: bytes
    request_id: int | None
    request: KafkaRequest
    principal: str
    client_host: str


AnyToken = KafkaToken | RelayedToken


@dataclass(eq=False, slots=True)
class _Call:
    """A Kafka request whose steps are with the core."""

    token: AnyToken
    plan: Plan
    outcomes: list[Outcome | None]
    waiting: int = 0


def kafka_address(settings: ServerSettings) -> tuple[str, int, str] | None:
    """``(bind host, port, advertised host)`` from ``kafka_listen`` and
    ``kafka_advertised_host`` (the supervisor fixes both: workers/kafka_addresses.py); None:
    no listener. Without an advertised host, the bind host's IPv4 literal (127.0.0.1 for a
    wildcard bind)."""
    if settings.kafka_listen is None:
        return None
    host, port = split_host_port("kafka_listen", settings.kafka_listen)
    bind = ipv4(host, "kafka_listen")
    advertised = settings.kafka_advertised_host or ("127.0.0.1" if bind == WILDCARD else bind)
    return bind, port, ipv4(advertised, "kafka_advertised_host")


def broker_config_entries(*settings: Any) -> dict[str, BrokerConfigEntry]:
    """The broker config keys this process runs with (read from its settings objects),
    as DescribeConfigs shows a broker's."""
    out = {}
    for key in BROKER_CONFIG.values():
        for obj in settings:
            name = field_name(key)
            if hasattr(obj, name):
                value = getattr(obj, name)
                out[key.name] = BrokerConfigEntry(
                    key.name, _config_string(value), value == key.default
                )
                break
    return out


def _config_string(value: Any) -> str | None:
    from .kafka_handlers.configs import config_string

    return config_string(value)


class KafkaShell:
    """Mixin for a process's ZeroMQ server with a core (``self.core``) and
    :class:`workers.zmq_core_shell.CoreShell`'s ``carry_out``. Single-threaded, as the
    loop."""

    core: Any
    security: Any
    carry_out: Any
    kafka: KafkaListener | None = None
    kafka_endpoint: str | None = None  # advertised "host:port"
    broker_id: int = -1
    _kafka_config: Mapping[str, BrokerConfigEntry] = {}
    _kafka_calls: dict[int, _Call]

    def start_kafka(
        self,
        settings: ServerSettings,
        apis: Iterable[int],
        *,
        broker_id: int,
        config: Mapping[str, BrokerConfigEntry],
    ) -> str | None:
        """Bind the Kafka listener (when ``kafka_listen`` asks for one) serving ``apis``;
        returns the endpoint it advertises. Call once, before the loop runs."""
        self._kafka_calls = {}
        self._kafka_ids = itertools.count(1)
        self._kafka_apis = frozenset(apis)
        address = kafka_address(settings)
        if address is None:
            return None
        try:
            security = listener_security(settings, self.security)
        except InvalidConfigError as exc:
            log.warning(
                "%s: the Kafka listener stays off (%s asked for): %s",
                getattr(self, "name", "kvlog"),
                settings.kafka_listen,
                exc.message,
            )
            return None
        bind, port, advertised = address
        handlers = {api: self._on_kafka_request for api in apis}
        limit = settings.max_connections
        self.kafka = KafkaListener(
            handlers,
            host=bind,
            port=port,
            max_connections=limit if limit > 0 else 1 << 30,
            failed_authentication_delay_ms=settings.connection_failed_authentication_delay_ms,
            name=f"{getattr(self, 'name', 'kvlog')} kafka",
            security=security,
        )
        _, port = self.kafka.start()
        self.kafka_endpoint = f"{advertised}:{port}"
        self.broker_id = broker_id
        self._kafka_config = config
        self.add_socket(self.kafka.poll_handle(), self.kafka.on_ready)  # type: ignore[attr-defined]
        log.info(
            "%s: Kafka listener on %s:%d (advertised %s, broker id %d, %s)",
            getattr(self, "name", "kvlog"),
            bind,
            port,
            self.kafka_endpoint,
            broker_id,
            PLAINTEXT if security is None else security.protocol,
        )
        return self.kafka_endpoint

    # -- requests --------------------------------------------------------------------------

    def kafka_event(self, event: Any, ctx: KafkaContext) -> Any:
        """The core's form of a handler's event (a process whose core speaks another
        dialect overrides this)."""
        return event

    def kafka_answer(self, event: Any, body: Any) -> Any:
        """The handler's form of the core's answer to ``event`` (the inverse of
        :meth:`kafka_event`)."""
        return body

    def _context(self, token: AnyToken) -> KafkaContext:
        if isinstance(token, RelayedToken):
            host = token.client_host
        else:
            assert self.kafka is not None
            host = (self.kafka.peer_of(token) or "").rpartition(":")[0]
        return KafkaContext(
            broker_id=self.broker_id,
            principal=token.principal,
            client_host="/" + host,
            authorizer=None if self.security is None else self.security.authorizer,
            broker_config=self._kafka_config,
        )

    def _on_kafka_request(self, request: KafkaRequest, token: AnyToken) -> Any:
        ctx = self._context(token)
        plan = HANDLERS[request.api_key](request, ctx)
        call = _Call(token, plan, [None] * len(plan.steps))
        events = []
        for i, step in enumerate(plan.steps):
            if isinstance(step, Outcome):
                call.outcomes[i] = step
                continue
            try:
                authorize(ctx.authorizer, ctx.principal, step)
            except KvlogError as exc:
                log.info("kafka: refused %s: %s", api_name(request.api_key), exc.message)
                call.outcomes[i] = Outcome(error=exc)
                continue
            events.append((i, self.kafka_event(step, ctx)))
        if not events:
            return plan.respond(call.outcomes)  # type: ignore[arg-type]
        call_id = next(self._kafka_ids)
        call.waiting = len(events)
        self._kafka_calls[call_id] = call
        for i, event in events:
            self.carry_out(self.core.handle(KafkaStep(call_id, i), event, clock.now_ms()))
        return DEFERRED

    # -- replies ---------------------------------------------------------------------------

    def send_reply(self, reply: Reply) -> None:
        if not isinstance(reply.token, KafkaStep):
            super().send_reply(reply)  # type: ignore[misc]
            return
        call = self._kafka_calls.get(reply.token.call_id)
        if call is None or call.outcomes[reply.token.index] is not None:
            return
        body = reply.body
        if reply.error is None:
            body = self.kafka_answer(call.plan.steps[reply.token.index], body)
        call.outcomes[reply.token.index] = Outcome(body, reply.error)
        call.waiting -= 1
        if call.waiting:
            return
        del self._kafka_calls[reply.token.call_id]
        try:
            response = call.plan.respond(call.outcomes)  # type: ignore[arg-type]
        except Exception:  # a handler's bug: its connection closes, the process goes on
            log.exception("kafka: %s response failed", call.token.request.api_name)
            self._kafka_fail(call.token, "the broker failed to build a response")
            return
        self._kafka_respond(call.token, response)

    def _kafka_respond(self, token: AnyToken, response: Any) -> None:
        if isinstance(token, RelayedToken):
            self._relay_reply(token, response)
            return
        assert self.kafka is not None
        self.kafka.respond(token, response)

    def _kafka_fail(self, token: AnyToken, reason: str) -> None:
        if isinstance(token, RelayedToken):
            self.reply_error(token.peer, token.request_id, UnknownServerError(reason))  # type: ignore[attr-defined]
            return
        assert self.kafka is not None
        self.kafka.close_connection(token, reason)

    # -- requests relayed by nodes (kvlog's internal op kafka_relay) ----------------------

    def relay_kafka(
        self, peer: bytes, request_id: int | None, principal: str, client_host: str, frame: bytes
    ) -> Any:
        """Serve a Kafka request frame (header and body, no length prefix) a node relayed,
        as if its client had sent it here: with that client's principal. Returns the
        ZeroMQ reply (fields, [the Kafka response frame]) now, or None: later."""
        if len(frame) < MIN_REQUEST_BYTES:
            raise InvalidRequestError("kafka_relay: the frame is shorter than a request header")
        api_key, api_version, correlation_id = peek_request(frame)
        entry = SERVED.get(api_key)
        if entry is None or api_key not in self._kafka_apis or not entry.advertises(api_version):
            raise UnsupportedVersionError(
                f"kafka_relay: {api_name(api_key)} v{api_version} is not served here"
            )
        try:
            client_id, body = decode_request(frame, api_key, api_version)
        except KafkaProtocolError as exc:
            raise InvalidRequestError(f"kafka_relay: {exc}") from None
        request = KafkaRequest(api_key, api_version, correlation_id, client_id, body, len(frame))
        token = RelayedToken(peer, request_id, request, principal, client_host)
        response = self._on_kafka_request(request, token)
        if response is DEFERRED:
            return None
        return {}, [_response_frame(request, response)]

    def _relay_reply(self, token: RelayedToken, response: Any) -> None:
        try:
            frame = _response_frame(token.request, response)
        except Exception:  # a handler's bad response object: a bug
            log.exception("kafka: relayed %s response failed", token.request.api_name)
            self._kafka_fail(token, "the broker failed to build a response")
            return
        self.reply(token.peer, token.request_id, {}, [frame])  # type: ignore[attr-defined]

    # -- timers ----------------------------------------------------------------------------

    def next_timeout_ms(self, now: float) -> float:
        timeout = super().next_timeout_ms(now)  # type: ignore[misc]
        deadline = self.kafka.next_deadline() if self.kafka is not None else None
        if deadline is None:
            return float(timeout)
        return max(0.0, min(float(timeout), (deadline - now) * 1000))

    def on_timers(self, now: float) -> None:
        if self.kafka is not None:
            self.kafka.expire_idle(now)
        super().on_timers(now)  # type: ignore[misc]


def _response_frame(request: KafkaRequest, response: Any) -> bytes:
    """A Kafka response as its frame without the length prefix (what kafka_relay carries)."""
    buffers = encode_response(
        request.api_key, request.api_version, request.correlation_id, response
    )
    return b"".join(bytes(b) for b in buffers[1:])
