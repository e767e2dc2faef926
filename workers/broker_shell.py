"""The broker process: the bootstrap endpoint clients first connect to.

It answers ``metadata`` from a cache it keeps current by long-polling the coordinator
(``watch_metadata``), so clients keep finding partition leaders even while the
coordinator restarts. Admin requests and ``init_producer_id`` are forwarded to the
coordinator; their replies are held until the cache has caught up with the change they
made, so a client that creates a topic finds it in the very next metadata reply.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import zmq

from kvlog.errors import (
    CoordinatorNotAvailableError,
    KvlogError,
    LeaderNotAvailableError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from kvlog.ipc.wire import Request, check_str

from .security import ServerSecurity
from .settings import BrokerSettings
from .zmq_peer import PeerLink, first_deadline
from .zmq_server import Server

log = logging.getLogger(__name__)

FORWARDED_OPS = (
    "create_topic",
    "delete_topic",
    "create_partitions",
    "alter_topic_config",
    "init_producer_id",
    "list_groups",
    "describe_groups",
    "delete_groups",
    "offset_fetch",
    "offset_commit",
    "elect_leaders",
    "acl_add",
    "acl_remove",
    "acl_list",
)


@dataclass
class HeldReply:
    peer: bytes
    request_id: int
    fields: dict[str, Any]
    version: int
    deadline: float


class BrokerServer(Server):
    name = "broker"

    def __init__(
        self,
        ctx: zmq.Context[Any],
        router: zmq.Socket[Any],
        settings: BrokerSettings,
        security: ServerSecurity | None = None,
    ) -> None:
        super().__init__(ctx, router, security)
        self.settings = settings
        self.coordinator = PeerLink(
            ctx,
            settings.coordinator,
            name="broker -> coordinator",
            options=security.client_options() if security else None,
        )
        self.add_socket(self.coordinator.socket, self.coordinator.on_readable)
        self.cache: dict[str, Any] | None = None
        self.version = -1
        self.held: list[HeldReply] = []
        self._watch_in_flight = False
        for op in FORWARDED_OPS:
            self.handlers[op] = self._forward
        self._watch()

    # -- metadata cache --------------------------------------------------------------------

    def _watch(self) -> None:
        self._watch_in_flight = True
        wait = self.settings.watch_wait_ms if self.cache is not None else 0
        self.coordinator.request(
            "watch_metadata",
            {"version": self.version, "wait_ms": wait},
            self._on_watch,
            timeout_ms=wait + 2000,
        )

    def _on_watch(
        self, header: dict[str, Any] | None, frames: list[bytes], error: KvlogError | None
    ) -> None:
        self._watch_in_flight = False
        if header is None or error is not None:
            return
        if "topics" in header:
            self.cache = header
            self.version = header.get("version", self.version)
            self._release_held(time.monotonic())

    def op_metadata(self, req: Request, peer: bytes) -> dict[str, Any]:
        if self.cache is None:
            raise LeaderNotAvailableError(
                "the broker is starting and has no metadata yet; retry in a moment"
            )
        names = req.get("topics")
        topics = self.cache["topics"]
        if names is not None:
            wanted = [check_str(t, "topics[]", max_len=4096) for t in req.list("topics")]
            by_name = {t["name"]: t for t in topics}
            topics = [
                by_name.get(name)
                or {
                    "name": name,
                    "error": int(UnknownTopicOrPartitionError.code),
                    "message": f"topic {name!r} does not exist; create it first",
                    "partitions": [],
                }
                for name in wanted
            ]
        if self.security is not None:
            visible = [self._visible(t, by_name=names is not None) for t in topics]
            topics = [t for t in visible if t is not None]
        return {
            "version": self.version,
            "nodes": self.cache["nodes"],
            "topics": topics,
            "coordinator": self.settings.coordinator,
        }

    def _visible(self, topic: dict[str, Any], *, by_name: bool) -> dict[str, Any] | None:
        """Topics the principal may not describe: left out of a full listing, an
        authorization error when asked for by name (Kafka's behaviour)."""
        assert self.security is not None
        if self.security.authorizer.allowed(self.principal, "topic", topic["name"], "describe"):
            return topic
        if by_name:
            return {
                "name": topic["name"],
                "error": int(TopicAuthorizationFailedError.code),
                "message": f"principal {self.principal!r} may not describe topic {topic['name']!r}",
                "partitions": [],
            }
        return None

    def op_find_coordinator(self, req: Request, peer: bytes) -> dict[str, Any]:
        return {"endpoint": self.settings.coordinator}

    def op_ping(self, req: Request, peer: bytes) -> dict[str, Any]:
        return {"version": self.version, "ready": self.cache is not None}

    # -- forwarding ------------------------------------------------------------------------

    def _forward(self, req: Request, peer: bytes) -> None:
        fields = {k: v for k, v in req.header.items() if k not in ("v", "id", "op")}

        def done(
            header: dict[str, Any] | None, frames: list[bytes], error: KvlogError | None
        ) -> None:
            if header is None:
                self.reply_error(
                    peer,
                    req.id,
                    CoordinatorNotAvailableError(
                        f"the coordinator did not answer {req.op} within "
                        f"{self.settings.admin_timeout_ms} ms; retry"
                    ),
                )
                return
            if error is not None:
                self.reply_error(peer, req.id, error)
                return
            body = {k: v for k, v in header.items() if k not in ("v", "id")}
            if req.op.startswith("acl_"):
                self.refresh_acls()  # this broker applies the change before it answers
            version = body.get("version", -1)
            if isinstance(version, int) and version > self.version:
                deadline = time.monotonic() + self.settings.cache_catch_up_ms / 1000
                self.held.append(HeldReply(peer, req.id, body, version, deadline))
            else:
                self.reply(peer, req.id, body)

        self.coordinator.request(req.op, fields, done, timeout_ms=self.settings.admin_timeout_ms)

    def _release_held(self, now: float) -> None:
        still = []
        for held in self.held:
            if held.version <= self.version or held.deadline <= now:
                self.reply(held.peer, held.request_id, held.fields)
            else:
                still.append(held)
        self.held = still

    # -- timers ----------------------------------------------------------------------------

    def next_timeout_ms(self, now: float) -> float:
        if not self._watch_in_flight:
            return 0.0
        deadline = first_deadline(
            self.coordinator.next_deadline(), min((h.deadline for h in self.held), default=None)
        )
        return 100.0 if deadline is None else max(0.0, min(100.0, (deadline - now) * 1000))

    def on_timers(self, now: float) -> None:
        self.coordinator.expire(now)
        if self.held:
            self._release_held(now)
        if not self._watch_in_flight and not self.stopping:
            self._watch()
