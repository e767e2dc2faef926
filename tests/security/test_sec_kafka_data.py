"""The data path over SASL (real processes): a confluent-kafka producer and a kafka-python
consumer group, both logged in with SCRAM, through the nodes' Kafka listeners; the ACLs
decide per principal (bob may not write), a node relays the admin requests it gets with
its client's principal, kvlog's own consumer reads what the Kafka clients wrote, quotas
hold back the principal over its byte rate only, and kcat produces and consumes."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kafka_sasl_util import PASSWORDS, confluent_config, kafka_python_config
from sectest_util import (
    KeyRing,
    SecuredBroker,
    start_secured_broker,
    stop_and_check,
    unique,
    wait_until,
)


def test_produce_and_consume_over_sasl(sasl: SecuredBroker) -> None:
    from confluent_kafka import KafkaError, Producer
    from kafka import KafkaConsumer

    topic, group = unique("sasl-data"), unique("sasl-group")
    with sasl.admin() as admin:
        admin.create_topic(topic, partitions=2)
        for operation in ("write", "read"):
            admin.add_acl("alice", "topic", topic, operation)
        admin.add_acl("alice", "group", group, "read")
    bootstrap = sasl.broker.kafka_bootstrap

    producer = Producer(
        confluent_config(
            bootstrap,
            "alice",
            PASSWORDS["alice"],
            "SCRAM-SHA-512",
            **{"enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"},
        )
    )
    delivered: list[tuple[int, int]] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: object) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append((msg.partition(), msg.offset()))  # type: ignore[attr-defined]

    def produced() -> bool:
        errors.clear()
        for i in range(20):
            producer.produce(topic, key=b"k%d" % i, value=b"v%d" % i, on_delivery=on_delivery)
        producer.flush(15)
        assert all(e.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED for e in errors), errors
        return not errors  # the nodes pick the new ACLs up within a moment

    wait_until(produced, 20, 0.5, "alice's write ACL at the nodes")
    assert len(delivered) >= 20

    consumer = KafkaConsumer(
        topic,
        **kafka_python_config(
            bootstrap,
            "alice",
            PASSWORDS["alice"],
            group_id=group,
            auto_offset_reset="earliest",
            consumer_timeout_ms=20_000,
        ),
    )
    try:
        values = set()
        for record in consumer:
            values.add(record.value)
            if values >= {b"v%d" % i for i in range(20)}:
                break
        assert values >= {b"v%d" % i for i in range(20)}
        consumer.commit()
    finally:
        consumer.close()

    # bob may see the topic but not write it: the node leading the partition refuses his
    # produce, naming him.
    with sasl.admin() as admin:
        admin.add_acl("bob", "topic", topic, "describe")
    refused: list[KafkaError] = []
    bob = Producer(
        confluent_config(
            bootstrap,
            "bob",
            PASSWORDS["bob"],
            **{"enable.idempotence": False, "acks": "all", "message.timeout.ms": 10_000},
        )
    )

    def bob_refused_by_the_node() -> bool:
        refused.clear()
        bob.produce(topic, value=b"nope", on_delivery=lambda err, msg: refused.append(err))
        bob.flush(15)
        assert [e.code() for e in refused] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
        return f"refused Produce: principal 'bob' may not write topic '{topic}'" in (
            sasl.log_text()
        )

    wait_until(bob_refused_by_the_node, 20, 0.5, "bob's describe ACL at the nodes")

    # kvlog's own consumer (CURVE, as the super user) reads what the Kafka clients wrote.
    import kvlog

    with kvlog.Consumer(
        **sasl.config("admin", auto_offset_reset="earliest", enable_auto_commit=False)
    ) as native:
        native.assign([kvlog.TopicPartition(topic, p) for p in range(2)])
        seen: set[bytes] = set()

        def read_all() -> bool:
            for records in native.poll(1000).values():
                seen.update(record.value for record in records)
            return seen >= {b"v%d" % i for i in range(20)}

        wait_until(read_all, 20, 0.1, "kvlog's consumer reading the Kafka records")
    assert b"nope" not in seen


def test_a_node_relays_requests_as_its_clients_principal(sasl: SecuredBroker) -> None:
    """Clients send admin requests to any broker: a node relays them to the coordinator,
    which decides as the client's principal (not the node's, which may do anything)."""
    from kafka.protocol.admin import CreateTopicsRequest
    from kafka_sasl_util import DescribeAclsRequest, RawKafka, scram_login

    assert sasl.broker.kafka_plan is not None
    node = sasl.broker.kafka_plan.nodes[0].advertised
    mine, theirs = unique("relay-alice"), unique("relay-bob")
    with sasl.admin() as admin:
        admin.add_acl("alice", "topic", mine, "create")

    def create(user: str, name: str) -> object:
        with RawKafka(node) as raw:
            assert scram_login(raw, user, PASSWORDS[user]).ok
            topic = CreateTopicsRequest.CreatableTopic(
                name=name, num_partitions=1, replication_factor=1, assignments=[], configs=[]
            )
            response = raw.send(
                CreateTopicsRequest(
                    topics=[topic], timeout_ms=15_000, validate_only=False, version=4
                )
            )
            return response.topics[0]

    wait_until(lambda: create("alice", mine).error_code == 0, 10, 0.2, "alice's create ACL")
    refused = create("bob", theirs)
    assert refused.error_code == 29
    assert f"principal 'bob' may not create topic '{theirs}'" in refused.error_message
    everything = {
        "resource_type_filter": 1,
        "resource_name_filter": None,
        "pattern_type_filter": 1,
        "principal_filter": None,
        "host_filter": None,
        "operation": 1,
        "permission_type": 1,
    }
    for user, code in (("admin", 0), ("bob", 31)):
        with RawKafka(node) as raw:
            assert scram_login(raw, user, PASSWORDS[user]).ok
            assert raw.send(DescribeAclsRequest(version=1, **everything)).error_code == code


@pytest.fixture(scope="module")
def throttled(tmp_path_factory: pytest.TempPathFactory, ring: KeyRing) -> Iterator[SecuredBroker]:
    b = start_secured_broker(
        tmp_path_factory.mktemp("sasl-quota"),
        ring,
        config={"quota.producer.byte.rate": 20_000},
        kafka_listen="127.0.0.1:0",
        kafka_sasl_mechanisms=["SCRAM-SHA-256"],
    )
    try:
        with b.admin() as admin:
            for user in ("alice", "bob"):
                admin.upsert_scram_user(user, PASSWORDS[user])
        yield b
    finally:
        stop_and_check(b)


def test_quotas_are_per_sasl_principal(throttled: SecuredBroker) -> None:
    """A principal over quota.producer.byte.rate is held back by the node (Produce v5
    says so in throttle_time_ms, before KIP-219); another principal is not."""
    from kafka.protocol.producer import ProduceRequest
    from kafka.record.memory_records import MemoryRecordsBuilder
    from kafka_sasl_util import RawKafka, scram_login

    topic = unique("quota")
    with throttled.admin() as admin:
        admin.create_topic(topic)
        for user in ("alice", "bob"):
            admin.add_acl(user, "topic", topic, "write")
    assert throttled.broker.kafka_plan is not None
    node = throttled.broker.kafka_plan.nodes[0].advertised

    def produce(raw: RawKafka, size: int) -> Any:
        builder = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 24)
        builder.append(timestamp=0, key=None, value=b"x" * size, headers=[])
        builder.close()
        data = ProduceRequest.TopicProduceData
        request = ProduceRequest(
            version=5,
            transactional_id=None,
            acks=-1,
            timeout_ms=10_000,
            topic_data=[
                data(
                    name=topic,
                    partition_data=[
                        data.PartitionProduceData(index=0, records=bytes(builder.buffer()))
                    ],
                )
            ],
        )
        return raw.send(request)

    def logged_in(user: str) -> RawKafka | None:
        raw = RawKafka(node)
        if scram_login(raw, user, PASSWORDS[user]).ok:
            return raw
        raw.close()  # the node loads new users within a moment
        return None

    alice = wait_until(lambda: logged_in("alice"), 5, 0.1, "alice's login at the node")
    bob = wait_until(lambda: logged_in("bob"), 5, 0.1, "bob's login at the node")
    with alice, bob:

        def alice_written() -> Any:
            response = produce(alice, 60_000)
            error = response.responses[0].partition_responses[0].error_code
            return response if error == 0 else None  # the ACL on its way to the node

        response = wait_until(alice_written, 20, 0.2, "alice's write ACL at the node")
        assert response.throttle_time_ms > 0  # 60 KB over a 20 KB/s budget
        started = time.monotonic()
        response = produce(bob, 1000)
        assert response.responses[0].partition_responses[0].error_code == 0
        assert response.throttle_time_ms == 0  # bob's own budget
        assert time.monotonic() - started < 1.0


@pytest.mark.skipif(
    shutil.which("kcat") is None, reason="kcat is not installed (apt-get install kcat)"
)
def test_kcat_produces_and_consumes_with_scram(sasl: SecuredBroker) -> None:
    topic, group = unique("kcat-data"), unique("kcat-group")
    with sasl.admin() as admin:
        admin.create_topic(topic)
        for operation in ("write", "read"):
            admin.add_acl("alice", "topic", topic, operation)
        admin.add_acl("alice", "group", group, "read")
    base = [
        "kcat",
        "-b",
        sasl.broker.kafka_bootstrap,
        "-X",
        "security.protocol=SASL_PLAINTEXT",
        "-X",
        "sasl.mechanisms=SCRAM-SHA-256",
        "-X",
        "sasl.username=alice",
        "-X",
        f"sasl.password={PASSWORDS['alice']}",
    ]

    def produced() -> bool:
        done = subprocess.run(
            [*base, "-P", "-t", topic],
            input="one\ntwo\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.returncode == 0

    wait_until(produced, 20, 0.5, "kcat's produce (alice's ACLs at the node)")
    consumed = subprocess.run(
        [*base, "-C", "-t", topic, "-o", "beginning", "-e", "-c", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.split()[:2] == ["one", "two"]
