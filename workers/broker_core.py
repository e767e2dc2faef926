"""The broker process's core: the metadata cache, forwarding, and held replies, without
sockets.

The broker is the bootstrap endpoint. It answers metadata from a cache it keeps current
by long-polling the coordinator (``watch_metadata``, sent as a
:class:`workers.core_result.Send`), so clients keep finding partition leaders even while
the coordinator restarts. Admin requests and ``init_producer_id`` are forwarded to the
coordinator (also Sends); a forwarded answer that carries a metadata ``version`` newer
than the cache's is held until the cache shows it (or ``cache_catch_up_ms`` passes), so a
client that creates a topic finds it in the very next metadata reply.

Metadata policy: before the first cache, LEADER_NOT_AVAILABLE (retry); topics asked for by
name come in request order, unknown ones as UNKNOWN_TOPIC_OR_PARTITION; with security on,
a topic the principal may not describe is left out of a full listing and answered
TOPIC_AUTHORIZATION_FAILED when asked for by name (Kafka's behaviour). A request that
names topics the cache lacks asks the coordinator about those, and its answer replaces
the cache's: a topic created a moment ago where the broker did not see it (through the
coordinator's Kafka listener) is found at once, and when the request allows
auto-creation (Kafka's Metadata v4+) the coordinator decides (``auto.create.topics.enable``)
and creates them (LEADER_NOT_AVAILABLE once created). No answer in time: the cache's
stands.

Requests are events handed to :meth:`BrokerCore.handle` with the shell's opaque token;
the coordinator's answers come back through :meth:`BrokerCore.on_answer` with the Send's
token. Every Result's ``deadline_ms`` is the core's next deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvlog.errors import (
    CoordinatorNotAvailableError,
    KvlogError,
    LeaderNotAvailableError,
    UnknownTopicOrPartitionError,
)

from .controller_events import (
    FindCoordinator,
    FindCoordinatorAnswer,  # noqa: F401  (the answer to FindCoordinator, for importers)
    MetadataAnswer,
    MissingTopic,
    TopicEntry,
    find_coordinator,
    visible_topics,
)
from .core_result import Result, Send

COORDINATOR = "coordinator"  # the one process a broker sends to
WATCH = "watch_metadata"


@dataclass
class BrokerConfig:
    """The broker's settings the core needs (from :class:`workers.settings.BrokerSettings`)."""

    coordinator: str  # its endpoint, as clients reach it
    admin_timeout_ms: int = 15_000
    watch_wait_ms: int = 1000
    cache_catch_up_ms: int = 3000


# -- requests and answers -----------------------------------------------------------------


@dataclass(slots=True)
class BrokerMetadata:
    """``topics`` None: every topic. ``may_describe`` (None: security off) says whether
    ``principal`` may describe a topic."""

    topics: list[str] | None = None
    principal: str | None = None
    may_describe: Callable[[str], bool] | None = None
    allow_auto_create: bool = False


@dataclass(slots=True)
class BrokerPing:
    pass


@dataclass(slots=True)
class Forward:
    """A request for the coordinator, passed on as its wire carried it."""

    op: str
    fields: dict[str, Any]


@dataclass(slots=True)
class CoordinatorAnswer:
    """The coordinator's answer to a Send: ``body`` (for the watch a
    :class:`MetadataAnswer` or :class:`MetadataUnchanged`; for a forward its reply fields)
    or ``error``; neither: no answer in time."""

    body: Any = None
    error: KvlogError | None = None


@dataclass(slots=True)
class BrokerPingAnswer:
    version: int
    ready: bool  # the broker has metadata and can answer metadata requests


@dataclass(slots=True)
class Forwarded:
    """The coordinator's answer to a forwarded request, as its wire carried it;
    ``reload_acls``: the request changed ACLs or SCRAM users, which this process must reload
    before it answers."""

    fields: dict[str, Any]
    reload_acls: bool = False


@dataclass(slots=True)
class Held:
    """A forwarded answer waiting for the cache to reach ``version``."""

    token: Any
    answer: Forwarded
    version: int
    deadline_ms: int


@dataclass(slots=True)
class _AskingCoordinator:
    """The Send token of a metadata request that named topics the cache lacks: whose
    request, and the request."""

    token: Any
    event: BrokerMetadata


@dataclass(slots=True)
class _Forwarding:
    """A forward's Send token: whose request, and which op."""

    token: Any
    op: str


class BrokerCore:
    """Owned by the broker's loop; not thread-safe."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.cache: MetadataAnswer | None = None
        self.version = -1
        self.held: list[Held] = []
        self._watch_due_ms: int | None = 0  # when to send the next watch (None: in flight)
        self._handlers: dict[type, Callable[[Result, Any, Any, int], None]] = {
            BrokerMetadata: self._metadata,
            FindCoordinator: self._find_coordinator,
            BrokerPing: self._ping,
            Forward: self._forward,
        }

    # -- entry points ----------------------------------------------------------------------

    def start(self, now_ms: int) -> Result:
        return self.tick(now_ms)

    def handle(self, token: Any, event: Any, now_ms: int) -> Result:
        out = Result()
        try:
            self._handlers[type(event)](out, token, event, now_ms)
        except KvlogError as exc:
            out.fail(token, exc)
        return out.wake_at(self.next_deadline_ms())

    def on_answer(self, send_token: Any, answer: CoordinatorAnswer, now_ms: int) -> Result:
        out = Result()
        if send_token == WATCH:
            self._on_watch(out, answer, now_ms)
        elif isinstance(send_token, _AskingCoordinator):
            self._on_coordinator_metadata(out, send_token, answer)
        else:
            self._on_forwarded(out, send_token, answer, now_ms)
        return out.wake_at(self.next_deadline_ms())

    def tick(self, now_ms: int) -> Result:
        out = Result()
        self._release_held(out, now_ms)
        if self._watch_due_ms is not None and self._watch_due_ms <= now_ms:
            wait = self.config.watch_wait_ms if self.cache is not None else 0
            self._watch_due_ms = None
            out.send(
                Send(
                    COORDINATOR,
                    WATCH,
                    {"version": self.version, "wait_ms": wait},
                    token=WATCH,
                    timeout_ms=wait + 2000,
                )
            )
        out.deadline_ms = self.next_deadline_ms()
        return out

    def next_deadline_ms(self) -> int | None:
        deadlines = [h.deadline_ms for h in self.held]
        if self._watch_due_ms is not None:
            deadlines.append(self._watch_due_ms)
        return min(deadlines, default=None)

    # -- the metadata cache ----------------------------------------------------------------

    def _on_watch(self, out: Result, answer: CoordinatorAnswer, now_ms: int) -> None:
        self._watch_due_ms = now_ms  # the next watch goes out at once, from the timer
        if isinstance(answer.body, MetadataAnswer):
            self.cache = answer.body
            self.version = answer.body.version
            self._release_held(out, now_ms)
        # MetadataUnchanged, an error or no answer: the cache stays as it is.

    def _metadata(self, out: Result, token: Any, ev: BrokerMetadata, now_ms: int) -> None:
        answer = self._metadata_answer(ev)
        missing = [
            t.name
            for t in answer.topics
            if isinstance(t, MissingTopic) and t.code == UnknownTopicOrPartitionError.code
        ]
        if missing:
            # The cache follows the coordinator a watch behind: a topic created a moment
            # ago (through another process's listener) may not be in it yet, and a client
            # that created it must find it (as it may auto-create it, when allowed).
            out.send(
                Send(
                    COORDINATOR,
                    "metadata",
                    {"topics": missing, "allow_auto_create": ev.allow_auto_create},
                    token=_AskingCoordinator(token, ev),
                    timeout_ms=self.config.admin_timeout_ms,
                )
            )
            return
        out.reply(token, answer)

    def _on_coordinator_metadata(
        self, out: Result, sent: _AskingCoordinator, answer: CoordinatorAnswer
    ) -> None:
        """The coordinator's word on the topics the cache lacked replaces the cache's (no
        answer, or the same verdict: the cache's stands, with its message naming the
        topic)."""
        reply = self._metadata_answer(sent.event)
        if isinstance(answer.body, MetadataAnswer):
            theirs = {t.name: t for t in answer.body.topics}

            def settled(mine: TopicEntry | MissingTopic) -> TopicEntry | MissingTopic:
                found = theirs.get(mine.name)
                if not isinstance(mine, MissingTopic) or found is None:
                    return mine
                if isinstance(found, MissingTopic) and found.code == mine.code:
                    return mine
                return found

            reply.topics = [settled(t) for t in reply.topics]
        out.reply(sent.token, reply)

    def _metadata_answer(self, ev: BrokerMetadata) -> MetadataAnswer:
        if self.cache is None:
            raise LeaderNotAvailableError(
                "the broker is starting and has no metadata yet; retry in a moment"
            )
        topics: list[TopicEntry | MissingTopic] = list(self.cache.topics)
        if ev.topics is not None:
            by_name = {t.name: t for t in topics}
            topics = [
                by_name.get(name)
                or MissingTopic(
                    name,
                    UnknownTopicOrPartitionError.code,
                    f"topic {name!r} does not exist; create it first",
                )
                for name in ev.topics
            ]
        if ev.may_describe is not None:
            topics = visible_topics(
                topics, ev.may_describe, ev.principal, by_name=ev.topics is not None
            )
        return MetadataAnswer(
            self.version,
            self.cache.nodes,
            topics,
            self.config.coordinator,
            self.cache.coordinator_kafka,
        )

    def _find_coordinator(self, out: Result, token: Any, ev: FindCoordinator, now_ms: int) -> None:
        kafka = self.cache.coordinator_kafka if self.cache is not None else None
        out.reply(token, find_coordinator(ev, self.config.coordinator, kafka))

    def _ping(self, out: Result, token: Any, ev: BrokerPing, now_ms: int) -> None:
        out.reply(token, BrokerPingAnswer(self.version, self.cache is not None))

    # -- forwarding ------------------------------------------------------------------------

    def _forward(self, out: Result, token: Any, ev: Forward, now_ms: int) -> None:
        out.send(
            Send(
                COORDINATOR,
                ev.op,
                ev.fields,
                token=_Forwarding(token, ev.op),
                timeout_ms=self.config.admin_timeout_ms,
            )
        )

    def _on_forwarded(
        self, out: Result, forwarding: _Forwarding, answer: CoordinatorAnswer, now_ms: int
    ) -> None:
        token, op = forwarding.token, forwarding.op
        if answer.error is not None:
            out.fail(token, answer.error)
            return
        if answer.body is None:
            out.fail(
                token,
                CoordinatorNotAvailableError(
                    f"the coordinator did not answer {op} within "
                    f"{self.config.admin_timeout_ms} ms; retry"
                ),
            )
            return
        forwarded = Forwarded(answer.body, reload_acls=op.startswith(("acl_", "user_")))
        version = answer.body.get("version", -1)
        if isinstance(version, int) and version > self.version:
            deadline = now_ms + self.config.cache_catch_up_ms
            self.held.append(Held(token, forwarded, version, deadline))
        else:
            out.reply(token, forwarded)

    def _release_held(self, out: Result, now_ms: int) -> None:
        still = []
        for held in self.held:
            if held.version <= self.version or held.deadline_ms <= now_ms:
                out.reply(held.token, held.answer)
            else:
                still.append(held)
        self.held = still
