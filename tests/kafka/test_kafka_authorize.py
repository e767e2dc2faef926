"""The Kafka wire's ACL checks are the ZeroMQ wire's: for each core event a Kafka handler
produces and the ZeroMQ op that carries the same request, one principal gets the same
verdict (the typed checks of workers/acl.py behind both), and Kafka's Metadata leaves
out or refuses the topics a principal may not describe, as the broker's does."""

from __future__ import annotations

from typing import Any

import pytest

from kvlog.errors import KvlogError
from kvlog.types import TopicPartition
from kvlog.workers.acl import AclEntry, Authorizer
from kvlog.workers.acl import authorize as zmq_authorize
from kvlog.workers.controller_events import (
    AlterTopicConfig,
    CreatePartitions,
    CreateTopic,
    DeleteTopic,
    InitProducerId,
    MetadataAnswer,
    PartitionEntry,
    TopicEntry,
)
from kvlog.workers.group_events import (
    CommitEntry,
    DeleteGroups,
    DescribeGroups,
    Heartbeat,
    JoinGroup,
    LeaveGroup,
    ListGroups,
    OffsetCommit,
    OffsetFetch,
    SyncGroup,
)
from kvlog.workers.kafka_handlers import KafkaContext
from kvlog.workers.kafka_handlers.authorize import authorize as kafka_authorize
from kvlog.workers.kafka_handlers.metadata import metadata_response

AUTH = Authorizer(
    [
        AclEntry("alice", "topic", "orders", "write"),
        AclEntry("alice", "topic", "orders", "alter"),
        AclEntry("alice", "group", "g", "read"),
        AclEntry("bob", "cluster", "kvlog", "create"),
        AclEntry("bob", "cluster", "kvlog", "describe"),
        AclEntry("bob", "group", "*", "delete"),
        AclEntry("bob", "topic", "*", "read"),
    ]
)

CASES: list[tuple[Any, str, dict[str, Any]]] = [
    (CreateTopic("orders"), "create_topic", {"name": "orders"}),
    (DeleteTopic("orders"), "delete_topic", {"name": "orders"}),
    (CreatePartitions("orders", 3), "create_partitions", {"name": "orders"}),
    (AlterTopicConfig("orders", {}), "alter_topic_config", {"name": "orders"}),
    (InitProducerId(), "init_producer_id", {}),
    (JoinGroup("g"), "join_group", {"group_id": "g"}),
    (SyncGroup("g", 1, "m"), "sync_group", {"group_id": "g"}),
    (Heartbeat("h", 1, "m"), "heartbeat", {"group_id": "h"}),
    (LeaveGroup("g", []), "leave_group", {"group_id": "g"}),
    (
        OffsetCommit("g", [CommitEntry(TopicPartition("orders", 0), 1)]),
        "offset_commit",
        {"group_id": "g", "offsets": [{"topic": "orders", "partition": 0}]},
    ),
    (OffsetFetch("g"), "offset_fetch", {"group_id": "g"}),
    (ListGroups(), "list_groups", {}),
    (DescribeGroups(["g"]), "describe_groups", {"group_ids": ["g"]}),
    (DeleteGroups(["g"]), "delete_groups", {"group_ids": ["g"]}),
]


def verdict(check: Any) -> type | None:
    try:
        check()
    except KvlogError as exc:
        return type(exc)
    return None


@pytest.mark.parametrize("principal", ["alice", "bob", "carol", "kvlog-internal"])
@pytest.mark.parametrize(("event", "op", "header"), CASES, ids=[c[1] for c in CASES])
def test_both_wires_give_the_same_verdict(principal, event, op, header) -> None:
    kafka = verdict(lambda: kafka_authorize(AUTH, principal, event))
    zmq = verdict(lambda: zmq_authorize(AUTH, principal, op, header))
    assert kafka == zmq


def test_security_off_allows_everything() -> None:
    for event, _, _ in CASES:
        kafka_authorize(None, "anyone", event)


def test_metadata_hides_or_refuses_topics_a_principal_may_not_describe() -> None:
    topics = [
        TopicEntry(name, name, {}, 1, [PartitionEntry(0, 0, 0, [0], [0])])
        for name in ("orders", "secret")
    ]
    answer = MetadataAnswer(1, [], list(topics))
    ctx = KafkaContext(broker_id=0, principal="alice", authorizer=AUTH)
    listed = metadata_response(answer, ctx, by_name=False)
    assert [t.name for t in listed.topics] == ["orders"]
    named = metadata_response(answer, ctx, by_name=True)
    assert [(t.name, t.error_code) for t in named.topics] == [("orders", 0), ("secret", 29)]
    everyone = metadata_response(answer, KafkaContext(broker_id=0), by_name=False)
    assert [t.name for t in everyone.topics] == ["orders", "secret"]


def test_metadata_lists_live_nodes_with_kafka_listeners_and_the_coordinator() -> None:
    from kvlog.workers.controller_events import COORDINATOR_BROKER_ID, NodeEntry

    nodes = [
        NodeEntry(0, "tcp://n0", True, "127.0.0.1:9094"),
        NodeEntry(1, "tcp://n1", False, "127.0.0.1:9095"),  # dead: not listed
        NodeEntry(2, "tcp://n2", True, None),  # no Kafka listener: not listed
    ]
    topic = TopicEntry("t", "t", {}, 3, [PartitionEntry(0, -1, 4, [1, 0, 2], [0])])
    answer = MetadataAnswer(1, nodes, [topic], coordinator_kafka="127.0.0.1:9093")
    response = metadata_response(answer, KafkaContext(broker_id=0), by_name=False)
    assert [(b.node_id, b.host, b.port) for b in response.brokers] == [
        (0, "127.0.0.1", 9094),
        (COORDINATOR_BROKER_ID, "127.0.0.1", 9093),
    ]
    assert response.controller_id == COORDINATOR_BROKER_ID
    [partition] = response.topics[0].partitions
    assert (partition.error_code, partition.leader_id, partition.leader_epoch) == (5, -1, 4)
    assert partition.offline_replicas == [1]
    # No coordinator listener: no controller.
    bare = metadata_response(MetadataAnswer(1, nodes, []), KafkaContext(broker_id=0), by_name=False)
    assert bare.controller_id == -1 and [b.node_id for b in bare.brokers] == [0]
