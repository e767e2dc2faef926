"""ACLs on a secured broker: deny unless allowed, named errors, super users bypass.

Principals of this module (``ring`` in conftest): ``admin`` is the only super user;
``alice`` may read topic ``readable`` and write topic ``writable``; ``bob`` may only read
``readable``; ``carol`` starts with nothing. A refusal must be the named error
(TOPIC/GROUP/CLUSTER_AUTHORIZATION_FAILED) whose message names the principal, the
resource and the operation, and must change nothing.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from sectest_util import RawDealer, await_topic_acl, unique, wait_until

import kvlog
from kvlog.batch import build_batch
from kvlog.errors import (
    ClusterAuthorizationFailedError,
    ErrorCode,
    GroupAuthorizationFailedError,
    KvlogError,
    TopicAuthorizationFailedError,
)
from kvlog.types import TopicPartition

RECORDS = [b"r%d" % i for i in range(20)]


class Topics:
    readable = unique("readable")
    writable = unique("writable")
    hidden = unique("hidden")


@pytest.fixture(scope="module")
def topics(secured: Any, ring: Any) -> type[Topics]:
    with secured.admin() as admin:
        for name in (Topics.readable, Topics.writable, Topics.hidden):
            admin.create_topic(name, 2)
        admin.add_acl("alice", "topic", Topics.readable, "read")
        admin.add_acl("alice", "topic", Topics.writable, "write")
        admin.add_acl("bob", "topic", Topics.readable, "read")
    with kvlog.Producer(**secured.config("admin")) as producer:
        for i, value in enumerate(RECORDS):
            producer.send(Topics.readable, value, partition=i % 2)
            producer.send(Topics.hidden, value, partition=i % 2)
        producer.flush(30)
    # Nodes and the broker reload ACLs within a moment: wait until both see alice's.
    await_topic_acl(secured, "alice", Topics.readable)
    with secured.admin("alice") as admin:
        wait_until(
            lambda: Topics.writable in admin.list_topics(), 10, what="the broker's ACL reload"
        )
    return Topics


def _assert_names(exc: KvlogError, *parts: str) -> None:
    for part in parts:
        assert part in exc.message, f"{part!r} not named in the refusal: {exc.message!r}"


def _end_offsets(secured: Any, topic: str) -> dict[TopicPartition, int]:
    consumer = kvlog.Consumer(**secured.config("admin"))
    try:
        return consumer.end_offsets([TopicPartition(topic, p) for p in (0, 1)])
    finally:
        consumer.close()


def _read_all(consumer: Any, count: int, timeout_s: float = 20.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=300).values():
            got.extend(records)
    return got


# -- write -----------------------------------------------------------------------------------


def test_reader_cannot_write_the_topic(secured: Any, topics: Any) -> None:
    """alice may write some topic (so she gets a producer id) but not this one."""
    before = _end_offsets(secured, topics.readable)
    with kvlog.Producer(**secured.config("alice")) as producer:
        future = producer.send(topics.readable, b"forbidden", partition=0)
        with pytest.raises(TopicAuthorizationFailedError) as info:
            future.get(10)
        _assert_names(info.value, "'alice'", "write", "topic", repr(topics.readable))
        # The control: the topic she may write takes her records.
        assert producer.send(topics.writable, b"allowed").get(10).offset >= 0
    assert _end_offsets(secured, topics.readable) == before, "a refused produce was stored"


def test_reader_without_any_write_gets_no_producer_id(secured: Any, topics: Any) -> None:
    before = _end_offsets(secured, topics.readable)
    with kvlog.Producer(**secured.config("bob")) as producer:
        future = producer.send(topics.readable, b"forbidden", partition=0)
        with pytest.raises(ClusterAuthorizationFailedError) as info:
            future.get(10)
    # No topic to name here: bob may write none, which is why he gets no producer id.
    _assert_names(info.value, "'bob'", "write", "topic", "producer id")
    with kvlog.Producer(**secured.config("bob", enable_idempotence=False)) as producer:
        future = producer.send(topics.readable, b"forbidden", partition=1)
        with pytest.raises(TopicAuthorizationFailedError) as info:
            future.get(10)
    _assert_names(info.value, "'bob'", "write", "topic", repr(topics.readable))
    assert _end_offsets(secured, topics.readable) == before, "a refused produce was stored"


def test_node_refuses_a_raw_produce(secured: Any, ring: Any, topics: Any) -> None:
    """The node checks too: a client that skips the broker gets the same refusal."""
    batch = build_batch([(None, b"raw")])
    with RawDealer(secured.endpoints()["node0"], ring.curve("alice")) as raw:
        reply = raw.request("produce", {"acks": 1, "partitions": [[topics.readable, 0]]}, [batch])
    assert reply is not None
    assert reply.get("error") == ErrorCode.TOPIC_AUTHORIZATION_FAILED, reply
    assert "'alice'" in reply["message"] and "write" in reply["message"]


# -- read ------------------------------------------------------------------------------------


def test_reader_can_consume(secured: Any, topics: Any) -> None:
    consumer = kvlog.Consumer(**secured.config("alice", auto_offset_reset="earliest"))
    try:
        consumer.assign([TopicPartition(topics.readable, p) for p in (0, 1)])
        got = _read_all(consumer, len(RECORDS))
    finally:
        consumer.close()
    assert sorted(r.value for r in got) == sorted(RECORDS)


def test_group_member_needs_group_read(secured: Any, topics: Any) -> None:
    group = unique("no-read")
    consumer = kvlog.Consumer(
        topics.readable, group_id=group, **secured.config("alice", auto_offset_reset="earliest")
    )
    try:
        with pytest.raises(GroupAuthorizationFailedError) as info:
            for _ in range(20):
                assert not consumer.poll(timeout_ms=300), "a member without group read read"
    finally:
        consumer.close()
    _assert_names(info.value, "'alice'", "read", "group", repr(group))
    with secured.admin() as admin:
        assert group not in {g["group_id"] for g in admin.list_groups()}


def test_group_member_with_group_read_consumes_and_commits(secured: Any, topics: Any) -> None:
    group = unique("may-read")
    with secured.admin() as admin:
        admin.add_acl("alice", "group", group, "read")
    consumer = kvlog.Consumer(
        topics.readable,
        group_id=group,
        **secured.config("alice", auto_offset_reset="earliest", enable_auto_commit=False),
    )
    try:
        got = _read_all(consumer, len(RECORDS))
        consumer.commit()
    finally:
        consumer.close()
    assert sorted(r.value for r in got) == sorted(RECORDS)
    with secured.admin() as admin:
        committed = admin.list_group_offsets(group)
    assert sum(committed.values()) == len(RECORDS)


# -- describe ----------------------------------------------------------------------------------


def test_admin_lists_only_topics_the_principal_may_describe(secured: Any, topics: Any) -> None:
    with secured.admin("alice") as admin:
        listed = admin.list_topics()
    assert topics.readable in listed and topics.writable in listed
    assert topics.hidden not in listed
    with secured.admin() as admin:  # the super user sees it
        assert topics.hidden in admin.list_topics()


def test_full_metadata_listing_leaves_out_hidden_topics(
    secured: Any, ring: Any, topics: Any
) -> None:
    with RawDealer(secured.bootstrap, ring.curve("alice")) as raw:
        full = raw.request("metadata", {})
    assert full is not None
    names = {t["name"] for t in full["topics"]}
    assert topics.readable in names
    assert topics.hidden not in names, f"hidden topic listed: {full['topics']}"


def test_metadata_by_name_answers_hidden_topics_unauthorized(
    secured: Any, ring: Any, topics: Any
) -> None:
    missing = unique("no-such-topic")
    with RawDealer(secured.bootstrap, ring.curve("alice")) as raw:
        reply = raw.request("metadata", {"topics": [topics.hidden, topics.readable, missing]})
    assert reply is not None
    entries = {t["name"]: t for t in reply["topics"]}
    hidden = entries[topics.hidden]
    assert hidden["error"] == ErrorCode.TOPIC_AUTHORIZATION_FAILED, hidden
    assert hidden["partitions"] == [], "the partitions of a hidden topic leaked"
    assert "topic_id" not in hidden and "config" not in hidden
    assert "'alice'" in hidden["message"] and "describe" in hidden["message"]
    assert repr(topics.hidden) in hidden["message"]
    assert not entries[topics.readable].get("error")
    assert entries[topics.readable]["partitions"]
    # Whether a topic she may not describe exists is not told either (as in Kafka).
    assert entries[missing]["error"] == ErrorCode.TOPIC_AUTHORIZATION_FAILED


@pytest.mark.parametrize("client", ["producer", "consumer", "admin"])
def test_client_names_an_undescribable_topic_as_unauthorized(
    secured: Any, topics: Any, client: str
) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        if client == "producer":
            with kvlog.Producer(**secured.config("alice"), max_block_ms=3000) as producer:
                producer.send(topics.hidden, b"x").get(5)
        elif client == "consumer":
            consumer = kvlog.Consumer(**secured.config("alice"))
            try:
                consumer.assign([TopicPartition(topics.hidden, 0)])
                consumer.poll(timeout_ms=500)
            finally:
                consumer.close()
        else:
            with secured.admin("alice") as admin:
                admin.describe_topic(topics.hidden)


# -- the ACLs themselves -------------------------------------------------------------------------


def test_acl_ops_need_cluster_alter(secured: Any, topics: Any) -> None:
    with secured.admin("carol") as carol:
        with pytest.raises(ClusterAuthorizationFailedError) as info:
            carol.add_acl("carol", "topic", topics.readable, "read")
        _assert_names(info.value, "'carol'", "alter", "cluster")
        with pytest.raises(ClusterAuthorizationFailedError) as info:
            carol.remove_acls(principal="alice")
        _assert_names(info.value, "'carol'", "alter", "cluster")
        with pytest.raises(ClusterAuthorizationFailedError) as info:
            carol.list_acls()
        _assert_names(info.value, "'carol'", "describe", "cluster")
    with secured.admin() as admin:
        acls = admin.list_acls()
        assert not [a for a in acls if a["principal"] == "carol"], "a refused acl_add stored"
        assert [a for a in acls if a["principal"] == "alice"], "a refused acl_remove removed"
        admin.add_acl("carol", "cluster", "kvlog", "alter")
    with secured.admin("carol") as carol:
        # ACL reloads reach the broker within a moment.
        wait_until(
            lambda: _try(lambda: carol.add_acl("carol", "topic", topics.readable, "read")),
            10,
            what="carol's cluster alter taking effect",
        )
        removed = carol.remove_acls(principal="carol", resource_type="topic")
        assert [a["name"] for a in removed] == [topics.readable]
    with secured.admin() as admin:
        admin.remove_acls(principal="carol")


def _try(call: Any) -> bool:
    try:
        call()
    except ClusterAuthorizationFailedError:
        return False
    return True


def test_super_user_bypasses_acls(secured: Any, topics: Any) -> None:
    """admin has no ACL at all, and may do everything."""
    name = unique("super")
    group = unique("super-group")
    with secured.admin() as admin:
        assert not [a for a in admin.list_acls() if a["principal"] == "admin"]
        admin.create_topic(name, 1)
    with kvlog.Producer(**secured.config("admin")) as producer:
        producer.send(name, b"by-admin").get(10)
    consumer = kvlog.Consumer(
        name, group_id=group, **secured.config("admin", auto_offset_reset="earliest")
    )
    try:
        assert [r.value for r in _read_all(consumer, 1)] == [b"by-admin"]
        consumer.commit()
    finally:
        consumer.close()
    with secured.admin() as admin:
        assert admin.list_group_offsets(group) == {TopicPartition(name, 0): 1}
        assert group in {g["group_id"] for g in admin.list_groups()}
        admin.delete_groups([group])
        admin.delete_topic(name)
    # The same operations by a principal that is not a super user are refused.
    with secured.admin("carol") as carol:
        with pytest.raises(TopicAuthorizationFailedError) as info:
            carol.create_topic(unique("not-super"), 1)
        _assert_names(info.value, "'carol'", "create", "topic")
        with pytest.raises(TopicAuthorizationFailedError):
            carol.delete_topic(topics.readable)
        with pytest.raises(ClusterAuthorizationFailedError):
            carol.list_groups()
