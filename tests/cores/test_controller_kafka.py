"""ControllerCore's answers for Kafka's wire (and the ZeroMQ wire's same rules):
validate_only admin changes, AlterConfigs' replacing of overrides, Metadata's
auto-creation, FindCoordinator, producer ids, ACL requests without security,
and nodes' Kafka endpoints in metadata."""

from __future__ import annotations

from controller_driver import Cluster
from test_controller_core import created, error, live_cluster, settle

from kvlog.errors import ErrorCode
from kvlog.workers.acl import AclEntry
from kvlog.workers.controller_events import (
    COORDINATOR_BROKER_ID,
    AclAdd,
    AclList,
    AclRemove,
    AlterTopicConfig,
    ChangeValidated,
    CreatePartitions,
    CreateTopic,
    FindCoordinator,
    FindCoordinatorAnswer,
    InitProducerId,
    Metadata,
    MissingTopic,
    NodeHeartbeat,
    TopicEntry,
)

EC = ErrorCode


def names(c: Cluster) -> list[str]:
    return [t.name for t in c.answer(Metadata()).body.topics]


def test_validate_only_checks_everything_and_changes_nothing() -> None:
    c = live_cluster()
    version = c.version
    assert c.answer(CreateTopic("v", 3, 3, validate_only=True)).body == ChangeValidated(version)
    assert names(c) == [] and c.version == version
    assert (
        error(c.answer(CreateTopic("v", 3, 9, validate_only=True))) is EC.INVALID_REPLICATION_FACTOR
    )
    assert (
        error(c.answer(CreateTopic("bad name", validate_only=True))) is EC.INVALID_TOPIC_EXCEPTION
    )
    created(c, "t", 2, 1)
    version = c.version
    assert error(c.answer(CreateTopic("t", 1, 1, validate_only=True))) is EC.TOPIC_ALREADY_EXISTS
    assert c.answer(CreatePartitions("t", 5, validate_only=True)).body == ChangeValidated(version)
    assert error(c.answer(CreatePartitions("t", 1, validate_only=True))) is EC.INVALID_PARTITIONS
    change = AlterTopicConfig("t", {"retention.ms": 5}, validate_only=True)
    assert c.answer(change).body == ChangeValidated(version)
    bad = AlterTopicConfig("t", {"retention.ms": "soon"}, validate_only=True)
    assert error(c.answer(bad)) is EC.INVALID_CONFIG
    [topic] = c.answer(Metadata(["t"])).body.topics
    assert isinstance(topic, TopicEntry) and len(topic.partitions) == 2 and topic.config == {}
    assert c.version == version


def test_alter_config_replace_makes_the_overrides_exactly_the_given() -> None:
    c = live_cluster()
    created(c, "t", 1, 1, **{"retention.ms": 1000})
    settle(c, c.request(AlterTopicConfig("t", {"retention.bytes": 10}, replace=True)))
    [topic] = c.answer(Metadata(["t"])).body.topics
    assert topic.config == {"retention.bytes": 10}
    settle(c, c.request(AlterTopicConfig("t", {"retention.ms": 7})))  # merging, as before
    [topic] = c.answer(Metadata(["t"])).body.topics
    assert topic.config == {"retention.bytes": 10, "retention.ms": 7}


def test_broker_defaults_fill_in_unset_partitions_and_replication() -> None:
    c = live_cluster(num_partitions=4, default_replication_factor=2)
    token = c.request(CreateTopic("d", -1, -1, broker_defaults=True))
    for _ in range(3):
        c.heartbeats()
    assert c.replies[token].error is None
    [topic] = c.answer(Metadata(["d"])).body.topics
    assert len(topic.partitions) == 4 and topic.replication_factor == 2
    # Without broker_defaults (the ZeroMQ wire), -1 stays an error.
    assert error(c.answer(CreateTopic("e", -1, 1))) is EC.INVALID_PARTITIONS


def test_metadata_auto_creates_missing_topics_when_allowed() -> None:
    c = live_cluster(num_partitions=2)
    answer = c.answer(Metadata(["a", "bad name"], allow_auto_create=True)).body
    assert [(t.name, t.code) for t in answer.topics] == [
        ("a", EC.LEADER_NOT_AVAILABLE),
        ("bad name", EC.INVALID_TOPIC_EXCEPTION),
    ]
    [topic] = c.answer(Metadata(["a"])).body.topics
    assert isinstance(topic, TopicEntry) and len(topic.partitions) == 2
    # Not asked, or not allowed by the broker: unknown stays unknown.
    assert c.answer(Metadata(["b"])).body.topics == [
        MissingTopic("b", EC.UNKNOWN_TOPIC_OR_PARTITION)
    ]
    off = live_cluster(auto_create_topics_enable=False)
    [missing] = off.answer(Metadata(["b"], allow_auto_create=True)).body.topics
    assert isinstance(missing, MissingTopic) and missing.code is EC.UNKNOWN_TOPIC_OR_PARTITION
    assert names(off) == []


def test_find_coordinator_names_the_coordinator_for_groups_and_transactions() -> None:
    c = Cluster(endpoint="tcp://c:1", kafka_endpoint="127.0.0.1:9093")
    answer = FindCoordinatorAnswer("tcp://c:1", "127.0.0.1:9093", COORDINATOR_BROKER_ID)
    assert c.answer(FindCoordinator("g")).body == answer
    assert c.answer(FindCoordinator("txn", key_type=1)).body == answer
    assert error(c.answer(FindCoordinator("x", key_type=5))) is EC.UNSUPPORTED_VERSION


def test_the_controller_hands_out_idempotent_producer_ids_only() -> None:
    # Transactional ones are the transaction coordinator's (the coordinator core routes
    # them there: tests/cores/test_txn_stateful.py).
    c = Cluster()
    assert error(c.answer(InitProducerId("txn-1"))) is EC.INVALID_REQUEST
    assert c.answer(InitProducerId()).error is None


def test_acl_requests_without_security_are_security_disabled() -> None:
    c = Cluster(acls_enabled=False)
    entry = AclEntry("alice", "topic", "t", "read")
    for event in (AclAdd(entry), AclRemove(principal="alice"), AclList()):
        assert error(c.answer(event)) is EC.SECURITY_DISABLED


def test_nodes_kafka_endpoints_and_the_coordinators_are_in_metadata() -> None:
    c = Cluster(nodes=(0, 1), kafka_endpoint="127.0.0.1:9093")
    c.answer(NodeHeartbeat(0, "tcp://n0", "/d0", pid=100, kafka_endpoint="127.0.0.1:9100"))
    c.answer(NodeHeartbeat(1, "tcp://n1", "/d1", pid=101))
    answer = c.answer(Metadata()).body
    assert [(n.node_id, n.kafka_endpoint) for n in answer.nodes] == [
        (0, "127.0.0.1:9100"),
        (1, None),
    ]
    assert answer.coordinator_kafka == "127.0.0.1:9093"
    # A node whose Kafka endpoint moves (a restart on another port) re-registers.
    version = c.version
    c.answer(NodeHeartbeat(0, "tcp://n0", "/d0", pid=100, kafka_endpoint="127.0.0.1:9200"))
    assert c.version > version
    assert c.answer(Metadata()).body.nodes[0].kafka_endpoint == "127.0.0.1:9200"
    # Nodes learn the Kafka endpoints from their heartbeat answers (for their own Metadata).
    assignment = c.answer(NodeHeartbeat(1, "tcp://n1", "/d1", pid=101)).body
    assert assignment.kafka_nodes == [(0, "127.0.0.1:9200")]
    assert assignment.coordinator_kafka == "127.0.0.1:9093"
    # No node may take the coordinator's broker id.
    refused = c.answer(NodeHeartbeat(COORDINATOR_BROKER_ID, "tcp://x", "/x", pid=5))
    assert error(refused) is EC.INVALID_REQUEST
