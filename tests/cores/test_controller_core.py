"""ControllerCore, one behaviour at a time, on a MemoryLogDir with the clock moved by hand.

Every request is an event, every answer a Result: errors are error replies, never
exceptions, and what must wait (node heartbeats, metadata watches, admin changes until
the nodes applied them) is answered by a later event or tick.
"""

from __future__ import annotations

import pytest
from controller_driver import NODE_TIMEOUT_MS, START_MS, Cluster, topic_id_source

from kvlog.errors import ErrorCode
from kvlog.types import TopicPartition as TP
from kvlog.workers.acl import AclEntry
from kvlog.workers.controller_events import (
    AclAdd,
    AclAdded,
    AclList,
    AclRemove,
    AlterIsr,
    AlterTopicConfig,
    CreatePartitions,
    CreateTopic,
    DeleteTopic,
    ElectLeaders,
    InitProducerId,
    IsrAnswer,
    LeadersElected,
    Metadata,
    MetadataAnswer,
    MetadataUnchanged,
    MissingTopic,
    NodeAssignment,
    NodeDown,
    NodeHeartbeatAck,
    PartitionsCreated,
    Ping,
    ProducerIdAnswer,
    TopicConfigAltered,
    TopicCreated,
    TopicDeleted,
    WatchMetadata,
)

EC = ErrorCode


def live_cluster(**config: int) -> Cluster:
    """Three nodes registered, caught up, each with a heartbeat parked."""
    c = Cluster(**config)
    for _ in range(3):  # each registration moves the version the others applied
        c.heartbeats()
    assert len(c.core.node_waiters) == 3
    return c


def created(
    c: Cluster, name: str = "t", partitions: int = 3, rf: int = 3, **config
) -> TopicCreated:
    """Create a topic and let every node apply it; returns the answer."""
    token = settle(c, c.request(CreateTopic(name, partitions, rf, config)))
    body = c.replies[token].body
    assert isinstance(body, TopicCreated), c.replies[token]
    return body


def settle(c: Cluster, token: object) -> object:
    """Nodes heartbeat (applying what they are told) until the request is answered."""
    for _ in range(3):
        if token in c.replies:
            break
        c.heartbeats()
    assert token in c.replies, "the nodes applied it, but it was not answered"
    return token


def error(reply) -> ErrorCode | None:
    return None if reply.error is None else reply.error.code


# -- topics ---------------------------------------------------------------------------------


def test_create_topic_places_replicas_round_robin_with_the_first_leading() -> None:
    c = live_cluster()
    answer = created(c, "t", 6, 2)
    assert answer.topic_id == topic_id_source(1)(), "the id comes from the given source"
    replicas = c.replicas("t")
    assert all(len(r) == 2 and len(set(r)) == 2 for r in replicas)
    assert {r[0] for r in replicas} == {0, 1, 2}, "leaders spread over the nodes"
    for p, r in enumerate(replicas):
        assert r[1] == (r[0] + 1) % 3, "followers shifted by one"
        assert replicas[(p + 1) % 6][0] == (r[0] + 1) % 3
    for state, r in zip(c.states("t"), replicas, strict=True):
        assert (state.leader, state.leader_epoch, state.isr) == (r[0], 0, r)
    entry = c.topic("t")
    assert entry.topic_id == answer.topic_id and entry.replication_factor == 2
    assert [p.leader for p in entry.partitions] == [r[0] for r in replicas]


def test_an_admin_change_is_answered_once_every_hosting_node_applied_it() -> None:
    c = live_cluster()
    before = c.version
    token = c.request(CreateTopic("t", 1, 2))
    assert token not in c.replies, "parked until the nodes apply it"
    assert c.version == before + 1
    hosts = c.replicas("t")[0]
    other = ({0, 1, 2} - set(hosts)).pop()
    # the parked node heartbeats heard of it at once
    assert all(c.applied[n] == c.version for n in (0, 1, 2))
    c.heartbeat(other)
    c.heartbeat(hosts[0])
    assert token not in c.replies, "one host has not applied it yet"
    c.heartbeat(hosts[1])
    assert c.replies[token].body == TopicCreated(c.topic("t").topic_id, c.version)


def test_an_admin_change_is_answered_after_admin_apply_timeout_ms_if_a_node_lags() -> None:
    c = live_cluster(admin_apply_timeout_ms=5000)
    token = c.request(CreateTopic("t", 3, 3))
    c.heartbeats([0, 1])
    c.applied[2] = -5  # node 2 never applies it, but stays alive
    c.advance(4000)
    c.heartbeat(2, applied=0)
    c.advance(999)
    assert token not in c.replies
    assert c.deadline_ms == START_MS + 5000, "the timer is set for the admin wait"
    c.advance(1)
    assert isinstance(c.replies[token].body, TopicCreated)


def test_a_change_no_live_node_hosts_is_answered_at_once() -> None:
    c = Cluster(nodes=(0, 1, 2))
    c.heartbeats([0])
    c.advance(NODE_TIMEOUT_MS + 1)  # the grace period ends: 1 and 2 never registered
    token = c.request(CreateTopic("a", 1, 1))  # placed by name: "a" lands on node 1
    assert c.replicas("a") == [[1]]
    assert isinstance(c.replies[token].body, TopicCreated)


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (CreateTopic("bad/name"), EC.INVALID_TOPIC_EXCEPTION),
        (CreateTopic("t", 0), EC.INVALID_PARTITIONS),
        (CreateTopic("t", 10_001), EC.INVALID_PARTITIONS),
        (CreateTopic("t", 1, 4), EC.INVALID_REPLICATION_FACTOR),
        (CreateTopic("t", 1, 0), EC.INVALID_REPLICATION_FACTOR),
        (CreateTopic("t", 1, 2, {"min.insync.replicas": 3}), EC.INVALID_CONFIG),
        (CreateTopic("t", 1, 1, {"no.such.config": 1}), EC.INVALID_CONFIG),
        (DeleteTopic("nope"), EC.UNKNOWN_TOPIC_OR_PARTITION),
        (CreatePartitions("nope", 3), EC.UNKNOWN_TOPIC_OR_PARTITION),
        (AlterTopicConfig("nope", {"retention.ms": 1}), EC.UNKNOWN_TOPIC_OR_PARTITION),
    ],
)
def test_admin_errors_are_error_replies_and_change_nothing(event, code) -> None:
    c = live_cluster()
    version = c.version
    reply = c.answer(event)
    assert error(reply) is code, reply
    assert c.version == version
    assert c.core.admin_waiters == []


def test_creating_an_existing_topic_fails() -> None:
    c = live_cluster()
    first = created(c)
    reply = c.answer(CreateTopic("t", 5, 1))
    assert error(reply) is EC.TOPIC_ALREADY_EXISTS
    assert c.topic("t").topic_id == first.topic_id and len(c.topic("t").partitions) == 3


def test_delete_topic_leaves_a_tombstone_for_nodes_that_were_away() -> None:
    c = live_cluster()
    topic_id = created(c).topic_id
    token = settle(c, c.request(DeleteTopic("t")))
    assert c.replies[token].body == TopicDeleted(topic_id, c.version)
    assert [t.name for t in c.metadata().topics] == []
    c.restart_node(1)  # it comes back after the delete
    assignment = c.replies[c.heartbeat(1)].body
    assert isinstance(assignment, NodeAssignment)
    assert assignment.deleted_topic_ids == [topic_id]
    assert assignment.partitions == []
    again = created(c)  # a new topic of the same name is a new topic
    assert again.topic_id != topic_id


def test_create_partitions_grows_and_never_shrinks() -> None:
    c = live_cluster()
    created(c, partitions=2, rf=2)
    token = settle(c, c.request(CreatePartitions("t", 5)))
    assert c.replies[token].body == PartitionsCreated(2, 5, c.version)
    assert len(c.replicas("t")) == 5
    assert [s.leader_epoch for s in c.states("t")] == [0] * 5
    for count in (5, 4):
        assert error(c.answer(CreatePartitions("t", count))) is EC.INVALID_PARTITIONS
    assert len(c.topic("t").partitions) == 5


def test_alter_topic_config_sets_and_removes_overrides() -> None:
    c = live_cluster()
    created(c, **{"retention.ms": 1000})
    event = AlterTopicConfig("t", {"retention.ms": None, "retention.bytes": 4096})
    token = settle(c, c.request(event))
    body = c.replies[token].body
    assert isinstance(body, TopicConfigAltered)
    assert body.config == c.topic("t").config == {"retention.bytes": 4096}
    assert error(c.answer(AlterTopicConfig("t", {"nope": 1}))) is EC.INVALID_CONFIG


def test_metadata_by_name_lists_the_known_ones_then_the_unknown() -> None:
    c = live_cluster()
    created(c, "a", 1, 1)
    created(c, "b", 1, 1)
    body = c.answer(Metadata(["x", "b", "a"])).body
    assert isinstance(body, MetadataAnswer) and body.coordinator is None
    assert [t.name for t in body.topics] == ["b", "a", "x"]
    assert body.topics[2] == MissingTopic("x", EC.UNKNOWN_TOPIC_OR_PARTITION)
    assert [n.node_id for n in body.nodes] == [0, 1, 2] and all(n.alive for n in body.nodes)


# -- nodes ----------------------------------------------------------------------------------


def test_a_node_heartbeat_is_a_long_poll_on_the_metadata_version() -> None:
    c = Cluster()
    first = c.heartbeat(0)
    assert isinstance(c.replies[first].body, NodeAssignment), "behind: answered at once"
    parked = c.heartbeat(0, wait_ms=2000)
    assert parked not in c.replies, "caught up: parked"
    c.advance(1999)
    assert parked not in c.replies
    c.advance(1)
    assert c.replies[parked].body == NodeHeartbeatAck(c.version), "the wait ended"
    parked = c.heartbeat(0, wait_ms=2000)
    newer = c.heartbeat(0, wait_ms=2000)
    assert c.replies[parked].body == NodeHeartbeatAck(c.version), "superseded"
    assert newer not in c.replies
    c.heartbeat(1)  # a new node registers: the version moves
    assert isinstance(c.replies[newer].body, NodeAssignment)
    assert c.replies[newer].body.nodes == [(0, "tcp://127.0.0.1:7000"), (1, "tcp://127.0.0.1:7001")]


def test_a_heartbeat_from_an_unknown_node_is_refused() -> None:
    c = Cluster(nodes=(0, 1))
    c.applied[7] = -1
    c.pids[7] = 7
    reply = c.replies[c.heartbeat(7)]
    assert error(reply) is EC.INVALID_REQUEST
    assert 7 not in c.core.state.nodes


def test_a_silent_node_is_marked_dead_and_its_leaderships_move() -> None:
    c = live_cluster()
    created(c, "t", 3, 3)
    led_by_0 = [p for p, s in enumerate(c.states("t")) if s.leader == 0]
    assert led_by_0
    c.advance(3000)
    c.heartbeats([1, 2])
    c.advance(NODE_TIMEOUT_MS - 3000)  # node 0's last heartbeat was 6000 ms ago
    assert c.core.state.nodes[0].alive
    assert c.deadline_ms == c.now + 1, "the timer is set for the expiry"
    c.advance(1)
    assert not c.core.state.nodes[0].alive
    for p, state in enumerate(c.states("t")):
        assert 0 not in state.isr and state.leader != 0
        if p in led_by_0:
            assert state.leader_epoch == 1, "a new leader, a new epoch"
            assert state.leader == c.replicas("t")[p][1], "the next replica in the ISR"
        else:
            assert state.leader_epoch == 0
    assert [n.alive for n in c.metadata().nodes] == [False, True, True]


def test_nodes_that_never_register_are_dead_once_the_grace_period_ends() -> None:
    c = live_cluster()
    created(c, "t", 3, 3)
    c.start()  # the coordinator restarts; only nodes 1 and 2 come back
    c.advance(10)
    c.applied.update({1: -1, 2: -1})
    before = [(s.leader, s.leader_epoch) for s in c.states("t")]
    for _ in range(5):
        c.heartbeats([1, 2])
        c.advance(1000)
    assert [(s.leader, s.leader_epoch) for s in c.states("t")] == before, (
        "an unregistered node keeps its leaderships through the grace period"
    )
    c.heartbeats([1, 2])
    c.advance(NODE_TIMEOUT_MS + 1 - 5010)  # the grace period counts from start(now_ms)
    assert all(s.leader in (1, 2) for s in c.states("t"))
    assert all(0 not in s.isr for s in c.states("t"))


def test_node_down_fails_over_at_once_for_the_process_that_died_only() -> None:
    c = live_cluster()
    created(c, "t", 3, 3)
    assert c.answer(NodeDown(0, 999)).body.moved is False, "another process of node 0"
    assert c.answer(NodeDown(0, c.pids[0])).body.moved is True
    assert all(s.leader != 0 for s in c.states("t"))
    assert c.answer(NodeDown(0, c.pids[0])).body.moved is False, "already dead"


def test_an_offline_log_dir_takes_the_node_out_until_it_reports_it_back() -> None:
    c = live_cluster()
    created(c, "t", 3, 3)
    c.heartbeat(1, offline=True)
    assert not c.core.state.nodes[1].alive
    assert all(s.leader != 1 and 1 not in s.isr for s in c.states("t"))
    c.heartbeat(1)  # the disk is back
    assert c.core.state.nodes[1].alive
    assert all(1 not in s.isr for s in c.states("t")), "it rejoins the ISR through its leader"


# -- leadership -----------------------------------------------------------------------------


def test_alter_isr_is_fenced_by_leader_epoch_and_checked() -> None:
    c = live_cluster()
    created(c, "t", 1, 3)
    state = c.state("t")
    leader, followers = state.leader, [r for r in state.isr if r != state.leader]
    version = c.version
    reply = c.alter_isr("t", 0, [leader])
    assert reply.body == IsrAnswer(leader, 0, [leader], version + 1)
    assert c.state("t").isr == [leader]
    stale = c.answer(AlterIsr(TP("t", 0), leader, 7, [leader]))
    assert error(stale) is EC.FENCED_LEADER_EPOCH
    assert error(c.alter_isr("t", 0, followers)) is EC.INVALID_REPLICA_ASSIGNMENT, "no leader"
    assert error(c.alter_isr("t", 0, [leader, 9])) is EC.INVALID_REPLICA_ASSIGNMENT
    reply = c.alter_isr("t", 0, [*followers, leader])
    assert reply.body.isr == c.replicas("t")[0], "expanded, in replica order"
    unchanged = c.version
    c.alter_isr("t", 0, [leader, *followers])
    assert c.version == unchanged, "no change, no new version"


def test_no_unclean_election_unless_the_topic_allows_it() -> None:
    c = live_cluster()
    # Placement starts at a node derived from the name: "a" and "d" are placed alike.
    safe, unsafe = "a", "d"
    created(c, safe, 1, 3)
    created(c, unsafe, 1, 3, **{"unclean.leader.election.enable": True})
    for topic in (safe, unsafe):
        leader = c.state(topic).leader
        c.alter_isr(topic, 0, [leader])  # only the leader is in sync
    leader = c.state(safe).leader
    assert c.state(unsafe).leader == leader, "same placement: same leader"
    c.answer(NodeDown(leader, c.pids[leader]))
    a, d = c.state(safe), c.state(unsafe)
    assert (a.leader, a.isr) == (-1, [leader]), "no live in-sync replica: no leader"
    assert a.leader_epoch == 1
    assert c.topic(safe).partitions[0].leader == -1
    assert d.leader not in (-1, leader) and d.isr == [d.leader], "unclean: any live replica"
    # the old leader comes back: it is the only in-sync replica, so it leads again
    c.restart_node(leader)
    c.heartbeat(leader)
    assert c.state(safe).leader == leader and c.state(safe).leader_epoch == 2


def test_preferred_leaders_come_back_by_request_and_by_the_periodic_check() -> None:
    c = live_cluster(leader_imbalance_check_interval_ms=30_000)
    created(c, "t", 3, 3)
    preferred = [r[0] for r in c.replicas("t")]
    c.answer(NodeDown(0, c.pids[0]))
    c.restart_node(0)
    c.heartbeat(0)
    moved = [p for p, s in enumerate(c.states("t")) if s.leader != preferred[p]]
    assert moved, "node 0 lost its leaderships"
    for p in moved:
        c.alter_isr("t", p, c.replicas("t")[p])  # node 0 caught up
    token = settle(c, c.request(ElectLeaders(["t"])))
    body = c.replies[token].body
    assert isinstance(body, LeadersElected)
    assert body.elected == [TP("t", p) for p in moved] and body.version == c.version
    assert [s.leader for s in c.states("t")] == preferred
    assert all(c.states("t")[p].leader_epoch == 2 for p in moved)
    # again, without a request: the periodic check (from start) does it
    c.answer(NodeDown(0, c.pids[0]))
    c.restart_node(0)
    c.heartbeat(0)
    for p in moved:
        c.alter_isr("t", p, c.replicas("t")[p])
    c.heartbeats()
    assert [s.leader for s in c.states("t")] != preferred
    c.pass_time(START_MS + 30_000 - c.now - 1)
    assert [s.leader for s in c.states("t")] != preferred
    c.heartbeats()
    c.advance(1)
    assert [s.leader for s in c.states("t")] == preferred


def test_epochs_and_the_version_never_go_back_across_restarts() -> None:
    c = live_cluster()
    created(c, "t", 1, 3)
    c.answer(NodeDown(c.state("t").leader, 1))  # a pid that is not the node's: ignored
    leader = c.state("t").leader
    c.answer(NodeDown(leader, c.pids[leader]))
    epoch, version = c.state("t").leader_epoch, c.version
    c.start()
    assert c.state("t").leader_epoch == epoch
    assert c.version > version


# -- the rest -------------------------------------------------------------------------------


def test_producer_ids_are_durable_and_never_reused() -> None:
    c = Cluster()
    first = [c.answer(InitProducerId()).body for _ in range(3)]
    assert first == [ProducerIdAnswer(1000 + i, 0) for i in range(3)]
    c.start()
    assert c.answer(InitProducerId()).body == ProducerIdAnswer(1003, 0)


def test_watch_metadata_is_a_long_poll() -> None:
    c = live_cluster()
    body = c.answer(WatchMetadata(-1, 1000)).body
    assert isinstance(body, MetadataAnswer) and body.version == c.version
    parked = c.request(WatchMetadata(c.version, 1000))
    assert parked not in c.replies
    c.advance(1000)
    assert c.replies[parked].body == MetadataUnchanged(c.version)
    parked = c.request(WatchMetadata(c.version, 1000))
    c.request(CreateTopic("t", 1, 1))
    body = c.replies[parked].body
    assert isinstance(body, MetadataAnswer) and [t.name for t in body.topics] == ["t"]


def test_acls_are_added_listed_and_removed() -> None:
    c = Cluster()
    entry = AclEntry("alice", "topic", "t", "read")
    assert c.answer(AclAdd(entry)).body == AclAdded(True)
    assert c.answer(AclAdd(entry)).body == AclAdded(False)
    c.answer(AclAdd(AclEntry("bob", "group", "g", "read")))
    assert [e.principal for e in c.answer(AclList()).body.acls] == ["alice", "bob"]
    assert c.answer(AclRemove(principal="alice")).body.removed == [entry]
    assert [e.principal for e in c.answer(AclList()).body.acls] == ["bob"]


def test_ping_and_the_timer_with_nothing_parked() -> None:
    c = Cluster(leader_imbalance_check_interval_ms=30_000)
    body = c.answer(Ping()).body
    assert body.version == c.version and body.nodes == []
    # nothing registered yet: the timer is the end of the grace period
    assert c.deadline_ms == START_MS + NODE_TIMEOUT_MS + 1


def test_elections_and_isr_changes_are_counted_as_they_commit() -> None:
    # The metrics read these counts; a shrink undone before anyone looks still counts.
    c = live_cluster()
    created(c, "t", 1, 3)
    moved = c.core.state.transitions
    assert (moved.elections, moved.shrinks, moved.expands) == (0, 0, 0), "creation is no move"
    state = c.state("t")
    leader, followers = state.leader, [r for r in state.isr if r != state.leader]
    c.alter_isr("t", 0, [leader])
    c.alter_isr("t", 0, [leader, *followers])
    assert (moved.elections, moved.shrinks, moved.expands) == (0, 2, 2)
    assert c.answer(NodeDown(leader, c.pids[leader])).body.moved is True
    assert (moved.elections, moved.shrinks, moved.expands) == (1, 3, 2)
    assert c.state("t").leader != leader
