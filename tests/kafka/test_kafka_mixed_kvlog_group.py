"""One consumer group of kvlog's own consumer (ZeroMQ wire) and Kafka clients
(confluent-kafka and kafka-python, Kafka's wire), against real processes: whichever kind
of client leads the group, every member gets a share of the partitions, no partition is
owned twice, and after the group settles each record produced is read exactly once, by
the member that owns its partition. The coordinator hands each member the others'
subscriptions and its own assignment in its wire's format (ipc/consumer_protocol.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer as CConsumer
from kafka import KafkaConsumer
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka_broker import KafkaBroker

import kvlog

TOPIC = "payments"
PARTITIONS = 6

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    b = KafkaBroker(
        str(tmp_path_factory.mktemp("mixed-group")),
        listen="tcp://127.0.0.1:0",
        config={"group.initial.rebalance.delay.ms": 100},
    ).start()
    try:
        with kvlog.Admin({"bootstrap.servers": b.bootstrap}) as admin:
            admin.create_topic(TOPIC, PARTITIONS, 1)
        yield b
    finally:
        b.stop()


class Member(threading.Thread):
    """Polls one client on its own thread (none of the three is shared across threads);
    keeps what it read and, after each poll, the partitions it owns."""

    def __init__(self, kind: str, make: Callable[[], Any]) -> None:
        super().__init__(daemon=True, name=kind)
        self.kind = kind
        self.make = make
        self.read: list[tuple[int, int]] = []
        self.owned: set[int] = set()
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.started_polling = threading.Event()

    def run(self) -> None:
        try:
            client = self.make()
            try:
                while not self.stopping.is_set():
                    self._poll(client)
                    self.started_polling.set()
            finally:
                client.close()
        except BaseException as exc:  # the test reports it
            self.error = exc
            self.started_polling.set()

    def _poll(self, client: Any) -> None:
        if self.kind == "confluent":
            msg = client.poll(0.1)
            if msg is not None and msg.error() is None:
                self.read.append((msg.partition(), msg.offset()))
            self.owned = {tp.partition for tp in client.assignment()}
            return
        # kvlog's Consumer and kafka-python's KafkaConsumer: the same call shape.
        for tp, records in client.poll(timeout_ms=100).items():
            self.read.extend((tp.partition, r.offset) for r in records)
        self.owned = {tp.partition for tp in client.assignment()}

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


def kvlog_member(broker: KafkaBroker, group: str) -> Member:
    return Member(
        "kvlog",
        lambda: kvlog.Consumer(
            TOPIC,
            group_id=group,
            client_id="kv",
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            heartbeat_interval_ms=500,
            session_timeout_ms=10_000,
        ),
    )


def confluent_member(broker: KafkaBroker, group: str) -> Member:
    def make() -> CConsumer:
        consumer = CConsumer(
            {
                "bootstrap.servers": broker.kafka_bootstrap,
                "group.id": group,
                "client.id": "ck",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 500,
                "partition.assignment.strategy": "range",
            }
        )
        consumer.subscribe([TOPIC])
        return consumer

    return Member("confluent", make)


def kafka_python_member(broker: KafkaBroker, group: str) -> Member:
    return Member(
        "kafka-python",
        lambda: KafkaConsumer(
            TOPIC,
            bootstrap_servers=broker.kafka_bootstrap,
            group_id=group,
            client_id="kp",
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=500,
            partition_assignment_strategy=[RangePartitionAssignor],
        ),
    )


def wait_for(check: Callable[[], bool], members: list[Member], what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not check():
        for m in members:
            assert m.error is None, f"{m.kind}: {m.error!r}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: " + "; ".join(
            f"{m.kind} owns {sorted(m.owned)}, read {len(m.read)}" for m in members
        )
        time.sleep(0.1)


def split_evenly(members: list[Member]) -> bool:
    owned = [m.owned for m in members]
    every = [p for parts in owned for p in parts]
    return sorted(every) == list(range(PARTITIONS)) and all(len(p) == 2 for p in owned)


def produce(broker: KafkaBroker, start: int, count: int) -> None:
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, acks="all") as producer:
        for i in range(start, start + count):
            producer.send(TOPIC, value=b"v%d" % i, partition=i % PARTITIONS)
        producer.flush()


def describe(broker: KafkaBroker, group: str) -> dict[str, Any]:
    with kvlog.Admin({"bootstrap.servers": broker.bootstrap}) as admin:
        return admin.describe_groups([group])[0]


@pytest.mark.parametrize("leader", ["kvlog", "confluent", "kafka-python"])
def test_kvlog_and_kafka_consumers_share_a_group(broker: KafkaBroker, leader: str) -> None:
    group = f"mixed-{leader}"
    makers = {
        "kvlog": kvlog_member,
        "confluent": confluent_member,
        "kafka-python": kafka_python_member,
    }
    first = makers[leader](broker, group)
    rest = [make(broker, group) for kind, make in makers.items() if kind != leader]
    members = [first, *rest]
    try:
        # The first member alone owns every partition and leads the group; the others
        # join it, and the leader (the same member: it rejoins first) splits the six.
        first.start()
        wait_for(lambda: len(first.owned) == PARTITIONS, [first], "the first member")
        for m in rest:
            m.start()
        wait_for(lambda: split_evenly(members), members, "a 2/2/2 split of the partitions")
        report = describe(broker, group)
        leader_member = next(m for m in report["members"] if m["member_id"] == report["leader"])
        assert leader_member["client_id"] == {"kvlog": "kv", "confluent": "ck"}.get(leader, "kp")
        settled = {m.kind: (set(m.owned), len(m.read)) for m in members}

        produce(broker, 0, 120)
        wait_for(
            lambda: sum(len(m.read) for m in members) - sum(n for _, n in settled.values()) >= 120,
            members,
            "120 records read",
        )
        time.sleep(0.5)  # a duplicate would arrive by now
        for m in members:
            owned, before = settled[m.kind]
            assert m.owned == owned, f"{m.kind}'s partitions moved without a member change"
            fresh = m.read[before:]
            assert sorted(p for p, _ in fresh) == sorted(
                p for p in (i % PARTITIONS for i in range(120)) if p in owned
            ), f"{m.kind} read {fresh}"
            assert len(set(fresh)) == len(fresh), f"{m.kind} read a record twice"
    finally:
        for m in members:
            m.stop()
    for m in members:
        assert m.error is None, f"{m.kind}: {m.error!r}"
