"""Consumer groups on Kafka's wire, against real processes: kafka-python's KafkaConsumer
and confluent-kafka's Consumer join one group at the coordinator's Kafka listener, split
the partitions, commit offsets that kvlog's own tools see (and move), static members come
back without a rebalance, and JoinGroup v4's MEMBER_ID_REQUIRED flow. No records are
produced (the nodes' Kafka listeners serve Produce and Fetch): the group protocol and the
offsets are what is tested."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer as CConsumer
from confluent_kafka import TopicPartition as CTP
from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.protocol.consumer.group import JoinGroupRequest, LeaveGroupRequest, SyncGroupRequest
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KTP
from kafka_broker import KafkaBroker
from kafka_wire import RawClient

import kvlog

REPO = Path(__file__).resolve().parents[2]
TOPIC = "orders"


@pytest.fixture(scope="module")
def broker(kafka_groups_broker: KafkaBroker) -> KafkaBroker:
    """The shared groups broker (tests/kafka/conftest.py), with this module's topic."""
    with kvlog.Admin({"bootstrap.servers": kafka_groups_broker.bootstrap}) as admin:
        admin.create_topic(TOPIC, 4, 1)
    return kafka_groups_broker


def wait_for(
    check: Callable[[], bool],
    poll: Callable[[], object],
    timeout: float = 30,
    what: Callable[[], object] = lambda: None,
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what()}"
        poll()


def kvlog_groups(broker: KafkaBroker, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kvlog.tools.cli",
            "groups",
            *args,
            "--bootstrap-server",
            broker.bootstrap,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    ).stdout


def describe(broker: KafkaBroker, group: str) -> dict:
    return json.loads(kvlog_groups(broker, "describe", group, "--json"))[0]


def kafka_python_consumer(broker: KafkaBroker, group: str, **kw: object) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=broker.kafka_bootstrap,
        group_id=group,
        client_id=kw.pop("client_id", "kp"),
        enable_auto_commit=False,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=500,
        **kw,
    )


def confluent_consumer(broker: KafkaBroker, group: str, **kw: str) -> CConsumer:
    return CConsumer(
        {
            "bootstrap.servers": broker.kafka_bootstrap,
            "group.id": group,
            "client.id": "ck",
            "enable.auto.commit": False,
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 500,
            "partition.assignment.strategy": "range",
            **kw,
        }
    )


def test_kafka_python_and_confluent_share_a_group_and_its_offsets(broker):
    group = "mixed"
    kp = kafka_python_consumer(broker, group, partition_assignment_strategy=_range())
    ck = confluent_consumer(broker, group)
    try:
        kp.subscribe([TOPIC], listener=_NoFetching(kp))
        ck.subscribe([TOPIC])

        def both_assigned() -> bool:
            mine, theirs = kp.assignment(), ck.assignment()
            return len(mine) + len(theirs) == 4 and bool(mine) and bool(theirs)

        def poll_both() -> None:
            kp.poll(timeout_ms=2000)  # shorter polls can cut its join short (kafka-python 3.0)
            ck.poll(0.1)

        wait_for(both_assigned, poll_both, what=lambda: (kp.assignment(), ck.assignment()))
        kp_parts = sorted(tp.partition for tp in kp.assignment())
        ck_parts = sorted(tp.partition for tp in ck.assignment())
        assert sorted(kp_parts + ck_parts) == [0, 1, 2, 3]
        kp.commit({KTP(TOPIC, p): OffsetAndMetadata(10 + p, "", -1) for p in kp_parts})
        ck.commit(offsets=[CTP(TOPIC, p, 20 + p) for p in ck_parts], asynchronous=False)
        # kvlog's own tool sees the Kafka members, what each owns, and the offsets.
        report = describe(broker, group)
        assert report["state"] == "Stable"
        owned = {m["client_id"]: sorted(m["assignment"]) for m in report["members"]}
        assert owned == {
            "kp": [f"{TOPIC}-{p}" for p in kp_parts],
            "ck": [f"{TOPIC}-{p}" for p in ck_parts],
        }
        committed = {r["partition"]: r["committed_offset"] for r in report["partitions"]}
        assert committed == {
            **{p: 10 + p for p in kp_parts},
            **{p: 20 + p for p in ck_parts},
        }
        assert kp.committed(KTP(TOPIC, kp_parts[0])) == 10 + kp_parts[0]
    finally:
        kp.close()
        ck.close()
    # Both left: the group is empty, and kvlog's reset moves the offsets for Kafka clients.
    wait_for(lambda: describe(broker, group)["state"] == "Empty", lambda: time.sleep(0.1))
    reset = ("reset-offsets", "--group", group, "--topic", TOPIC, "--to-offset", "3", "--execute")
    kvlog_groups(broker, *reset)
    ck = confluent_consumer(broker, group)
    try:
        committed = ck.committed([CTP(TOPIC, p) for p in range(4)], timeout=10)
        assert [tp.offset for tp in committed] == [0, 0, 0, 0]
    finally:
        ck.close()


class _NoFetching(ConsumerRebalanceListener):
    """Gives assigned partitions a position and pauses them: the nodes' Kafka listeners
    (Fetch, ListOffsets) are not part of this test."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self.consumer = consumer

    def on_partitions_revoked(self, revoked: object) -> None:
        pass

    def on_partitions_assigned(self, assigned: list) -> None:
        for tp in assigned:
            self.consumer.seek(tp, 0)
        self.consumer.pause(*assigned)


def _range() -> tuple:
    from kafka.coordinator.assignors.range import RangePartitionAssignor

    return (RangePartitionAssignor,)


def test_static_member_comes_back_without_a_rebalance(broker):
    group = "static"
    settings = {"group.instance.id": "worker-1", "session.timeout.ms": "10000"}
    first = confluent_consumer(broker, group, **settings)
    first.subscribe([TOPIC])
    wait_for(lambda: len(first.assignment()) == 4, lambda: first.poll(0.1))
    generation = describe(broker, group)["generation"]
    first.close()  # a static member's close does not leave the group (Kafka's behaviour)
    report = describe(broker, group)
    assert report["state"] == "Stable" and len(report["members"]) == 1
    again = confluent_consumer(broker, group, **settings)
    try:
        again.subscribe([TOPIC])
        wait_for(lambda: len(again.assignment()) == 4, lambda: again.poll(0.1))
        report = describe(broker, group)
        assert report["generation"] == generation
        assert [m["instance_id"] for m in report["members"]] == ["worker-1"]
    finally:
        again.close()


def test_join_group_v4_asks_for_a_known_member_id(broker):
    protocols = [JoinGroupRequest.JoinGroupRequestProtocol(name="range", metadata=b"")]

    def join(version: int, member_id: str) -> object:
        return JoinGroupRequest(
            version=version,
            group_id="kip394",
            session_timeout_ms=10_000,
            rebalance_timeout_ms=10_000,
            member_id=member_id,
            protocol_type="consumer",
            protocols=protocols,
        )

    with RawClient(broker.kafka_coordinator, client_id="raw") as c:
        first = c.send(join(4, ""))
        assert first.error_code == 79 and first.member_id.startswith("raw-")
        joined = c.send(join(4, first.member_id))
        assert (joined.error_code, joined.member_id, joined.leader) == (
            0,
            first.member_id,
            first.member_id,
        )
        assert [m.member_id for m in joined.members] == [first.member_id]
        synced = c.send(
            SyncGroupRequest(
                version=3,
                group_id="kip394",
                generation_id=joined.generation_id,
                member_id=first.member_id,
                group_instance_id=None,
                assignments=[
                    SyncGroupRequest.SyncGroupRequestAssignment(
                        member_id=first.member_id, assignment=b"opaque"
                    )
                ],
            )
        )
        assert (synced.error_code, synced.assignment) == (0, b"opaque")
        left = c.send(
            LeaveGroupRequest(
                version=3,
                group_id="kip394",
                members=[
                    LeaveGroupRequest.MemberIdentity(
                        member_id=first.member_id, group_instance_id=None
                    )
                ],
            )
        )
        assert left.error_code == 0 and [m.error_code for m in left.members] == [0]
