"""Admin and metadata on Kafka's wire, against real processes (kvlog.Broker with Kafka
listeners on the coordinator and the broker): kafka-python's KafkaAdminClient,
confluent-kafka's AdminClient, kcat -L, and raw requests for the versions and corners
the clients do not reach (Metadata's shape and auto-creation, FindCoordinator's key
types, InitProducerId)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions
from confluent_kafka.admin import NewTopic as CNewTopic
from kafka.admin import ConfigResource as KConfigResource
from kafka.admin import ConfigResourceType, KafkaAdminClient
from kafka.admin import NewPartitions as KNewPartitions
from kafka.admin import NewTopic as KNewTopic
from kafka.errors import InvalidPartitionsError, TopicAlreadyExistsError
from kafka.protocol.metadata import FindCoordinatorRequest, MetadataRequest
from kafka.protocol.producer import InitProducerIdRequest
from kafka_broker import KafkaBroker
from kafka_wire import RawClient

from kvlog.workers.controller_events import COORDINATOR_BROKER_ID

EC_NONE, EC_UNKNOWN_TOPIC, EC_LEADER_NOT_AVAILABLE, EC_UNSUPPORTED = 0, 3, 5, 35


def start(tmp: str, **config: object) -> KafkaBroker:
    return KafkaBroker(
        tmp, listen="tcp://127.0.0.1:0", console_listen="none", config=config or None
    ).start()


@pytest.fixture(scope="module")
def broker(kafka_broker: KafkaBroker) -> KafkaBroker:
    return kafka_broker  # shared (tests/kafka/conftest.py); default config


@pytest.fixture
def kadmin(broker: KafkaBroker) -> Iterator[KafkaAdminClient]:
    admin = KafkaAdminClient(bootstrap_servers=broker.kafka_bootstrap, request_timeout_ms=15000)
    try:
        yield admin
    finally:
        admin.close()


@pytest.fixture
def cadmin(broker: KafkaBroker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.kafka_bootstrap})


def metadata(address: str, topics: list[str] | None, version: int = 8, **kw: object) -> object:
    request = MetadataRequest(
        version=version,
        topics=None
        if topics is None
        else [MetadataRequest.MetadataRequestTopic(name=t) for t in topics],
        **kw,
    )
    with RawClient(address) as client:
        return client.send(request)


# -- metadata ------------------------------------------------------------------------------


def test_metadata_names_the_coordinator_as_controller_and_broker(broker, kadmin):
    kadmin.create_topics([KNewTopic("shape", 3, 1)])
    for address in (broker.kafka_bootstrap, broker.kafka_coordinator):
        response = metadata(address, ["shape"])
        host, port = broker.kafka_coordinator.split(":")
        assert response.controller_id == COORDINATOR_BROKER_ID
        brokers = {(b.node_id, b.host, b.port) for b in response.brokers}
        assert (COORDINATOR_BROKER_ID, host, int(port)) in brokers
        [topic] = response.topics
        assert (topic.name, topic.error_code) == ("shape", 0)
        assert [p.partition_index for p in topic.partitions] == [0, 1, 2]
        assert all(p.leader_id == 0 and p.replica_nodes == [0] for p in topic.partitions)
    # The coordinator (its state) and the broker (its cache) answer the same thing.
    a, b = (metadata(x, None) for x in (broker.kafka_bootstrap, broker.kafka_coordinator))
    assert a.brokers == b.brokers and a.controller_id == b.controller_id
    assert sorted(t.name for t in a.topics) == sorted(t.name for t in b.topics)


@pytest.mark.parametrize("version", [0, 1, 4, 7, 8])
def test_every_metadata_version_answers(broker, version):
    response = metadata(
        broker.kafka_bootstrap,
        [f"no-such-topic-v{version}"],
        version,
        **({"allow_auto_topic_creation": False} if version >= 4 else {}),
    )
    if version >= 4:
        assert [(t.name, t.error_code) for t in response.topics] == [
            (f"no-such-topic-v{version}", EC_UNKNOWN_TOPIC)
        ]
    else:  # before v4 Kafka always allowed auto-creation, and so does kvlog's default
        assert response.topics[0].error_code in (EC_NONE, EC_LEADER_NOT_AVAILABLE)


def test_metadata_auto_creates_topics_when_allowed(broker):
    for address, name in ((broker.kafka_bootstrap, "auto-b"), (broker.kafka_coordinator, "auto-c")):
        first = metadata(address, [name], allow_auto_topic_creation=True)
        assert first.topics[0].error_code in (EC_NONE, EC_LEADER_NOT_AVAILABLE)
        deadline = time.monotonic() + 10
        while True:
            again = metadata(address, [name], allow_auto_topic_creation=False)
            if again.topics[0].error_code == 0:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert len(again.topics[0].partitions) == 1  # num.partitions


def test_auto_creation_off_and_num_partitions(tmp_path):
    b = start(str(tmp_path / "off"), **{"auto.create.topics.enable": False})
    try:
        response = metadata(b.kafka_bootstrap, ["nope"], allow_auto_topic_creation=True)
        assert response.topics[0].error_code == EC_UNKNOWN_TOPIC
        assert metadata(b.kafka_coordinator, ["nope"]).topics[0].error_code == EC_UNKNOWN_TOPIC
    finally:
        b.stop()
    b = start(str(tmp_path / "three"), **{"num.partitions": 3})
    try:
        metadata(b.kafka_coordinator, ["grown"], allow_auto_topic_creation=True)
        response = metadata(b.kafka_coordinator, ["grown"], allow_auto_topic_creation=False)
        assert len(response.topics[0].partitions) == 3
    finally:
        b.stop()


def test_kcat_lists_brokers_and_partitions(broker, kadmin):
    if shutil.which("kcat") is None:
        pytest.skip("kcat is not installed (apt-get install kcat)")
    kadmin.create_topics([KNewTopic("for-kcat", 2, 1)])
    out = subprocess.run(
        ["kcat", "-b", broker.kafka_bootstrap, "-L", "-t", "for-kcat"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert f"broker {COORDINATOR_BROKER_ID} at {broker.kafka_coordinator} (controller)" in out
    assert 'topic "for-kcat" with 2 partitions' in out
    assert "partition 0, leader 0, replicas: 0, isrs: 0" in out


# -- FindCoordinator and InitProducerId -------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 2])
def test_find_coordinator_for_groups(broker, version):
    kw = {"key_type": 0} if version >= 1 else {}
    for address in (broker.kafka_bootstrap, broker.kafka_coordinator):
        with RawClient(address) as c:
            r = c.send(FindCoordinatorRequest(version=version, key="g", **kw))
        host, port = broker.kafka_coordinator.split(":")
        assert (r.error_code, r.node_id, r.host, r.port) == (
            0,
            COORDINATOR_BROKER_ID,
            host,
            int(port),
        )


def test_find_coordinator_for_transactions_names_the_coordinator(broker):
    host, port = broker.kafka_coordinator.rsplit(":", 1)
    with RawClient(broker.kafka_bootstrap) as c:
        r = c.send(FindCoordinatorRequest(version=1, key="txn", key_type=1))
    assert (r.error_code, r.node_id, r.host, r.port) == (0, COORDINATOR_BROKER_ID, host, int(port))


def test_init_producer_id(broker):
    with RawClient(broker.kafka_coordinator) as c:
        first = c.send(
            InitProducerIdRequest(version=1, transactional_id=None, transaction_timeout_ms=60000)
        )
        second = c.send(
            InitProducerIdRequest(version=0, transactional_id=None, transaction_timeout_ms=60000)
        )
        txn = c.send(
            InitProducerIdRequest(version=1, transactional_id="t", transaction_timeout_ms=60000)
        )
        again = c.send(
            InitProducerIdRequest(version=1, transactional_id="t", transaction_timeout_ms=60000)
        )
    assert first.error_code == second.error_code == 0
    assert second.producer_id > first.producer_id >= 0 and first.producer_epoch == 0
    # A transactional id keeps its producer id; each InitProducerId bumps its epoch.
    assert (txn.error_code, txn.producer_epoch) == (0, 0) and txn.producer_id > 0
    assert (again.error_code, again.producer_id, again.producer_epoch) == (0, txn.producer_id, 1)


def test_init_producer_id_bumps_its_own_epoch_kip_360(broker):
    """v3+: a transactional producer bumps its epoch with its current id and epoch; a
    stale epoch is fenced (PRODUCER_FENCED from v4, INVALID_PRODUCER_EPOCH before);
    an idempotent producer's id and epoch are ignored (a new producer id)."""

    def init(c, version, tid, pid=-1, epoch=-1):
        return c.send(
            InitProducerIdRequest(
                version=version,
                transactional_id=tid,
                transaction_timeout_ms=60000,
                producer_id=pid,
                producer_epoch=epoch,
            )
        )

    with RawClient(broker.kafka_coordinator) as c:
        first = init(c, 4, "kip360")
        bumped = init(c, 4, "kip360", first.producer_id, first.producer_epoch)
        stale_v4 = init(c, 4, "kip360", first.producer_id, first.producer_epoch)
        stale_v3 = init(c, 3, "kip360", first.producer_id, first.producer_epoch)
        again = init(c, 3, "kip360", bumped.producer_id, bumped.producer_epoch)
        idempotent = init(c, 4, None, first.producer_id, first.producer_epoch)
    assert first.error_code == 0 and first.producer_id >= 0
    assert (bumped.error_code, bumped.producer_id) == (0, first.producer_id)
    assert bumped.producer_epoch == first.producer_epoch + 1
    assert stale_v4.error_code == 90  # PRODUCER_FENCED
    assert stale_v3.error_code == 47  # INVALID_PRODUCER_EPOCH
    assert (again.error_code, again.producer_epoch) == (0, bumped.producer_epoch + 1)
    assert idempotent.error_code == 0 and idempotent.producer_id not in (-1, first.producer_id)


# -- topics, partitions, configs ---------------------------------------------------------------


def test_kafka_python_admin_topics_and_configs(broker, kadmin):
    kadmin.create_topics([KNewTopic("kp-topic", 2, 1, topic_configs={"retention.ms": "60000"})])
    with pytest.raises(TopicAlreadyExistsError):
        kadmin.create_topics([KNewTopic("kp-topic", 2, 1)])
    kadmin.create_topics([KNewTopic("kp-validated", 2, 1)], validate_only=True)
    assert "kp-validated" not in kadmin.list_topics()
    assert "kp-topic" in kadmin.list_topics()
    kadmin.create_partitions({"kp-topic": KNewPartitions(4)})
    [described] = kadmin.describe_topics(["kp-topic"])
    assert len(described["partitions"]) == 4
    with pytest.raises(InvalidPartitionsError):
        kadmin.create_partitions({"kp-topic": KNewPartitions(3)})
    kadmin.create_partitions({"kp-topic": KNewPartitions(9)}, validate_only=True)
    assert len(kadmin.describe_topics(["kp-topic"])[0]["partitions"]) == 4
    configs = kadmin.describe_configs([KConfigResource(ConfigResourceType.TOPIC, "kp-topic")])
    assert configs["topic"]["kp-topic"]["retention.ms"]["value"] == "60000"
    resource = KConfigResource(ConfigResourceType.TOPIC, "kp-topic", {"retention.bytes": "1000"})
    kadmin.alter_configs([resource], incremental=False)
    configs = kadmin.describe_configs([KConfigResource(ConfigResourceType.TOPIC, "kp-topic")])
    # kafka-python's AlterConfigs sends the overrides it keeps along (AlterConfigs
    # replaces a topic's overrides).
    values = {name: e["value"] for name, e in configs["topic"]["kp-topic"].items()}
    assert values == {"retention.ms": "60000", "retention.bytes": "1000"}
    kadmin.delete_topics(["kp-topic"])
    assert "kp-topic" not in kadmin.list_topics()


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")
def test_confluent_admin_topics_and_configs(broker, cadmin):
    for f in cadmin.create_topics([CNewTopic("ck-topic", 2, 1)]).values():
        f.result(15)
    for f in cadmin.create_topics([CNewTopic("ck-validated", 1, 1)], validate_only=True).values():
        f.result(15)
    topics = cadmin.list_topics(timeout=10).topics
    assert "ck-topic" in topics and "ck-validated" not in topics
    [f] = cadmin.create_topics([CNewTopic("ck-topic", 2, 1)]).values()
    with pytest.raises(Exception, match="TOPIC_ALREADY_EXISTS"):
        f.result(15)
    for f in cadmin.create_partitions([NewPartitions("ck-topic", 3)]).values():
        f.result(15)
    assert len(cadmin.list_topics("ck-topic", timeout=10).topics["ck-topic"].partitions) == 3
    resource = ConfigResource("topic", "ck-topic", set_config={"retention.ms": "1000"})
    for f in cadmin.alter_configs([resource]).values():
        f.result(15)
    [f] = cadmin.describe_configs([ConfigResource("topic", "ck-topic")]).values()
    entries = f.result(15)
    assert entries["retention.ms"].value == "1000" and entries["retention.ms"].source == 1
    assert entries["retention.bytes"].value == "-1" and entries["retention.bytes"].is_default
    [f] = cadmin.describe_configs([ConfigResource("broker", str(COORDINATOR_BROKER_ID))]).values()
    broker_entries = f.result(15)
    assert broker_entries["auto.create.topics.enable"].value == "true"
    assert broker_entries["num.partitions"].is_default
    [f] = cadmin.alter_configs(
        [ConfigResource("broker", str(COORDINATOR_BROKER_ID), set_config={"num.partitions": "2"})]
    ).values()
    with pytest.raises(Exception, match="INVALID_CONFIG"):
        f.result(15)
    for f in cadmin.incremental_alter_configs(
        [
            ConfigResource(
                "topic",
                "ck-topic",
                incremental_configs=[_incremental("retention.ms", None, "DELETE")],
            )
        ]
    ).values():
        f.result(15)
    [f] = cadmin.describe_configs([ConfigResource("topic", "ck-topic")]).values()
    assert f.result(15)["retention.ms"].is_default
    for f in cadmin.delete_topics(["ck-topic"]).values():
        f.result(15)
    assert "ck-topic" not in cadmin.list_topics(timeout=10).topics


def _incremental(name: str, value: str | None, op: str) -> object:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry

    return ConfigEntry(name, value, incremental_operation=getattr(AlterConfigOpType, op))
