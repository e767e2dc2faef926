"""BrokerCore, one behaviour at a time, with the clock moved by hand: the metadata cache
kept by watching the coordinator, forwarded requests, and replies held until the cache
catches up. The coordinator is played by the test: it answers the core's sends."""

from __future__ import annotations

from typing import Any

import cbor2

from kvlog.errors import ErrorCode, RebalanceInProgressError
from kvlog.workers.broker_core import (
    COORDINATOR,
    WATCH,
    BrokerConfig,
    BrokerCore,
    BrokerMetadata,
    BrokerPing,
    BrokerPingAnswer,
    CoordinatorAnswer,
    FindCoordinator,
    FindCoordinatorAnswer,
    Forward,
    Forwarded,
)
from kvlog.workers.controller_events import (
    MetadataAnswer,
    MetadataUnchanged,
    MissingTopic,
    NodeEntry,
    PartitionEntry,
    TopicEntry,
)
from kvlog.workers.core_result import Reply, Result, Send
from kvlog.workers.zmq_replies import decode_metadata, encode

EC = ErrorCode
NOW = 1_000_000
ENDPOINT = "tcp://127.0.0.1:9999"


def metadata(version: int, *names: str) -> MetadataAnswer:
    topics = [
        TopicEntry(name, f"id-{name}", {}, 1, [PartitionEntry(0, 0, 0, [0], [0])]) for name in names
    ]
    return MetadataAnswer(version, [NodeEntry(0, "tcp://node", True)], list(topics))


class Broker:
    """A BrokerCore, its clock, its replies by token and the sends it made."""

    def __init__(self, **config: int) -> None:
        self.core = BrokerCore(BrokerConfig(ENDPOINT, **config))
        self.now = NOW
        self.replies: dict[Any, Reply] = {}
        self.sends: list[Send] = []
        self.run(self.core.start(self.now))

    def run(self, result: Result) -> Result:
        for reply in result.replies:
            assert reply.token not in self.replies, f"{reply.token} answered twice"
            self.replies[reply.token] = reply
        self.sends.extend(result.sends)
        assert result.deadline_ms == self.core.next_deadline_ms()
        return result

    def request(self, token: Any, event: Any) -> Reply | None:
        self.run(self.core.handle(token, event, self.now))
        return self.replies.get(token)

    def answer(self, send: Send, answer: CoordinatorAnswer) -> None:
        self.sends.remove(send)
        self.run(self.core.on_answer(send.token, answer, self.now))

    def advance(self, ms: int) -> None:
        self.now += ms
        self.run(self.core.tick(self.now))

    def watch(self) -> Send:
        [send] = [s for s in self.sends if s.token == WATCH]
        return send

    def cache(self, body: MetadataAnswer | MetadataUnchanged) -> None:
        """The coordinator answers the watch; the timer sends the next one."""
        self.answer(self.watch(), CoordinatorAnswer(body))
        assert self.core.next_deadline_ms() <= self.now, "the next watch is due at once"
        self.advance(0)


def test_the_cache_is_kept_by_watching_the_coordinator() -> None:
    b = Broker(watch_wait_ms=1000)
    first = b.watch()
    assert (first.to, first.op) == (COORDINATOR, "watch_metadata")
    assert first.fields == {"version": -1, "wait_ms": 0}, "no cache yet: no waiting"
    reply = b.request("m1", BrokerMetadata())
    assert reply.error.code is EC.LEADER_NOT_AVAILABLE, "no metadata yet: retry"
    assert b.request("p1", BrokerPing()).body == BrokerPingAnswer(-1, False)
    b.cache(metadata(5, "t"))
    watch = b.watch()
    assert watch.fields == {"version": 5, "wait_ms": 1000} and watch.timeout_ms == 3000
    assert b.request("p2", BrokerPing()).body == BrokerPingAnswer(5, True)
    b.cache(MetadataUnchanged(5))
    assert b.core.version == 5
    b.answer(b.watch(), CoordinatorAnswer())  # no answer in time: watch again, cache kept
    b.advance(0)
    assert b.watch().fields["version"] == 5 and b.core.cache is not None


def test_metadata_by_name_in_request_order_and_unknown_topics_say_so() -> None:
    b = Broker()
    b.cache(metadata(3, "a", "b"))
    assert b.request("m", BrokerMetadata(["b", "x", "a"])) is None
    [send] = [s for s in b.sends if s.op == "metadata"]
    assert send.fields == {"topics": ["x"], "allow_auto_create": False}
    # It does not know x either: the cache's answer stands, its message naming the topic.
    b.answer(
        send,
        CoordinatorAnswer(
            MetadataAnswer(3, [], [MissingTopic("x", EC.UNKNOWN_TOPIC_OR_PARTITION)])
        ),
    )
    body = b.replies["m"].body
    assert isinstance(body, MetadataAnswer)
    assert (body.version, body.coordinator) == (3, ENDPOINT)
    assert [t.name for t in body.topics] == ["b", "x", "a"]
    assert body.topics[1] == MissingTopic(
        "x", EC.UNKNOWN_TOPIC_OR_PARTITION, "topic 'x' does not exist; create it first"
    )
    assert [t.name for t in b.request("all", BrokerMetadata()).body.topics] == ["a", "b"]


def test_topics_the_principal_may_not_describe_are_hidden_or_refused() -> None:
    b = Broker()
    b.cache(metadata(3, "public", "secret"))

    def may(topic: str) -> bool:
        return topic == "public"

    listing = b.request("all", BrokerMetadata(None, "bob", may)).body
    assert [t.name for t in listing.topics] == ["public"], "left out of a full listing"
    named = b.request("named", BrokerMetadata(["secret", "public"], "bob", may)).body
    assert named.topics[0] == MissingTopic(
        "secret",
        EC.TOPIC_AUTHORIZATION_FAILED,
        "principal 'bob' may not describe topic 'secret'",
    )
    assert isinstance(named.topics[1], TopicEntry)


def test_find_coordinator() -> None:
    b = Broker()
    assert b.request("f", FindCoordinator()).body == FindCoordinatorAnswer(ENDPOINT)


def test_a_forwarded_change_is_held_until_the_cache_shows_it() -> None:
    b = Broker(admin_timeout_ms=15_000, cache_catch_up_ms=3000)
    b.cache(metadata(3))
    assert b.request("c", Forward("create_topic", {"name": "t"})) is None
    [send] = [s for s in b.sends if s.token != WATCH]
    assert (send.op, send.fields, send.timeout_ms) == ("create_topic", {"name": "t"}, 15_000)
    b.answer(send, CoordinatorAnswer({"topic_id": "x", "version": 4}))
    assert "c" not in b.replies, "held: the cache is at version 3"
    b.cache(metadata(4, "t"))
    assert b.replies["c"].body == Forwarded({"topic_id": "x", "version": 4})


def test_a_held_reply_goes_after_cache_catch_up_ms_anyway() -> None:
    b = Broker(cache_catch_up_ms=3000)
    b.cache(metadata(3))
    b.request("c", Forward("delete_topic", {"name": "t"}))
    [send] = [s for s in b.sends if s.token != WATCH]
    b.answer(send, CoordinatorAnswer({"topic_id": "x", "version": 9}))
    assert b.core.next_deadline_ms() == NOW + 3000
    b.advance(2999)
    assert "c" not in b.replies
    b.advance(1)
    assert b.replies["c"].body.fields == {"topic_id": "x", "version": 9}


def test_forwarded_answers_without_news_errors_and_silence() -> None:
    b = Broker(admin_timeout_ms=15_000)
    b.cache(metadata(3))
    for token, op in [("f", "offset_fetch"), ("a", "acl_add"), ("e", "join_group"), ("s", "x")]:
        b.request(token, Forward(op, {}))
    sends = {s.token.token: s for s in b.sends if s.token != WATCH}
    b.answer(sends["f"], CoordinatorAnswer({"partitions": []}))
    assert b.replies["f"].body == Forwarded({"partitions": []}), "no version: at once"
    b.answer(sends["a"], CoordinatorAnswer({"added": True}))
    assert b.replies["a"].body == Forwarded({"added": True}, reload_acls=True)
    b.answer(sends["e"], CoordinatorAnswer(error=RebalanceInProgressError("again")))
    assert b.replies["e"].error.code is EC.REBALANCE_IN_PROGRESS
    b.answer(sends["s"], CoordinatorAnswer())
    reply = b.replies["s"]
    assert reply.error.code is EC.COORDINATOR_NOT_AVAILABLE
    assert reply.error.message == "the coordinator did not answer x within 15000 ms; retry"


def test_the_cache_passes_the_coordinators_metadata_on_unchanged() -> None:
    """The broker shell decodes the coordinator's metadata fields into the cache and
    encodes its answer from it: byte for byte what the coordinator sent (but the
    coordinator's endpoint, which the broker fills in)."""
    sent = encode(metadata(7, "a", "b"))
    assert sent["coordinator"] is None
    b = Broker()
    b.cache(decode_metadata(cbor2.loads(cbor2.dumps(sent))))
    answer = encode(b.request("m", BrokerMetadata()).body)
    assert cbor2.dumps(answer) == cbor2.dumps({**sent, "coordinator": ENDPOINT})


def test_auto_creation_is_the_coordinators_decision() -> None:
    b = Broker()
    b.answer(b.watch(), CoordinatorAnswer(metadata(5, "known")))
    # Known topics: answered from the cache at once.
    assert b.request("k", BrokerMetadata(["known"], allow_auto_create=True)).error is None
    # Allowed and missing: the coordinator is asked, and its word on "new" is the answer.
    assert b.request("a", BrokerMetadata(["known", "new"], allow_auto_create=True)) is None
    [send] = [s for s in b.sends if s.op == "metadata"]
    assert (send.to, send.fields) == (COORDINATOR, {"topics": ["new"], "allow_auto_create": True})
    created = MetadataAnswer(6, [], [MissingTopic("new", EC.LEADER_NOT_AVAILABLE)])
    b.answer(send, CoordinatorAnswer(created))
    topics = b.replies["a"].body.topics
    assert [t.name for t in topics] == ["known", "new"]
    assert isinstance(topics[1], MissingTopic) and topics[1].code is EC.LEADER_NOT_AVAILABLE
    # No answer in time: the cache's answer stands.
    b.request("t", BrokerMetadata(["other"], allow_auto_create=True))
    [send] = [s for s in b.sends if s.op == "metadata"]
    b.answer(send, CoordinatorAnswer())
    assert [t.code for t in b.replies["t"].body.topics] == [EC.UNKNOWN_TOPIC_OR_PARTITION]


def test_a_topic_the_cache_lacks_is_asked_of_the_coordinator() -> None:
    """Created through the coordinator's Kafka listener a moment ago, before the watch
    brought it: the coordinator's answer is the reply, not the cache's "unknown"."""
    b = Broker()
    b.answer(b.watch(), CoordinatorAnswer(metadata(5, "known")))
    assert b.request("n", BrokerMetadata(["known", "fresh"])) is None
    [send] = [s for s in b.sends if s.op == "metadata"]
    assert send.fields == {"topics": ["fresh"], "allow_auto_create": False}
    b.answer(send, CoordinatorAnswer(metadata(6, "fresh")))
    assert [t.name for t in b.replies["n"].body.topics] == ["known", "fresh"]
    assert all(isinstance(t, TopicEntry) for t in b.replies["n"].body.topics)


def test_find_coordinator_gives_the_kafka_endpoint_from_the_cache() -> None:
    b = Broker()
    answer = metadata(5)
    answer.coordinator_kafka = "127.0.0.1:9093"
    b.answer(b.watch(), CoordinatorAnswer(answer))
    found = b.request("f", FindCoordinator("g")).body
    assert (found.endpoint, found.kafka_endpoint) == (ENDPOINT, "127.0.0.1:9093")
    # Transactions have the same coordinator (issue 17); other key types are refused.
    txn = b.request("t", FindCoordinator("t", key_type=1)).body
    assert (txn.endpoint, txn.kafka_endpoint) == (ENDPOINT, "127.0.0.1:9093")
    assert b.request("x", FindCoordinator("x", key_type=5)).error.code is EC.UNSUPPORTED_VERSION
    # The metadata cache round-trips the Kafka endpoints on the ZeroMQ wire.
    answer.nodes = [NodeEntry(0, "tcp://node", True, "127.0.0.1:9100")]
    assert decode_metadata(encode(answer)) == answer
