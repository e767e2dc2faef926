"""Bad input to the coordinator's and the broker's Kafka listeners, real processes: frames
that do not decode, unknown API keys, versions out of range, and requests that decode but
say nonsense. Each gets Kafka's error or a closed connection, never a crash; afterwards
both listeners still serve and the stored topics and offsets are as they were."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.protocol.admin import (
    AlterConfigsRequest,
    CreatePartitionsRequest,
    CreateTopicsRequest,
    DeleteGroupsRequest,
    DescribeConfigsRequest,
    IncrementalAlterConfigsRequest,
)
from kafka.protocol.consumer.group import (
    HeartbeatRequest,
    JoinGroupRequest,
    OffsetCommitRequest,
    OffsetFetchRequest,
    SyncGroupRequest,
)
from kafka.protocol.metadata import FindCoordinatorRequest, MetadataRequest
from kafka_broker import KafkaBroker
from kafka_wire import RawClient

import kvlog
from kvlog.ipc.kafka.versions import SERVED

TOPIC = "kept"


@pytest.fixture(scope="module")
def broker(kafka_broker: KafkaBroker) -> KafkaBroker:
    """The shared broker (tests/kafka/conftest.py), with this module's topic and group."""
    with kvlog.Admin({"bootstrap.servers": kafka_broker.bootstrap}) as admin:
        admin.create_topic(TOPIC, 2, 1)
        admin.alter_group_offsets("g", {kvlog.TopicPartition(TOPIC, 0): 7})
    return kafka_broker


def frame(api_key: int, version: int, body: bytes, correlation_id: int = 1) -> bytes:
    header = struct.pack(">hhih", api_key, version, correlation_id, 4) + b"junk"
    return struct.pack(">i", len(header) + len(body)) + header + body


def closes(address: str, data: bytes) -> bool:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def assert_intact(broker: KafkaBroker) -> None:
    for address in (broker.kafka_bootstrap, broker.kafka_coordinator):
        with RawClient(address) as c:
            response = c.send(
                MetadataRequest(
                    version=1, topics=[MetadataRequest.MetadataRequestTopic(name=TOPIC)]
                )
            )
        assert [(t.name, t.error_code, len(t.partitions)) for t in response.topics] == [
            (TOPIC, 0, 2)
        ]
    with kvlog.Admin({"bootstrap.servers": broker.bootstrap}) as admin:
        assert admin.list_group_offsets("g") == {kvlog.TopicPartition(TOPIC, 0): 7}


def test_undecodable_bodies_unknown_apis_and_versions_close_the_connection(broker):
    cases = []
    for entry in SERVED:
        for version in (entry.min_version, entry.max_version):
            cases.append(frame(entry.api_key, version, b"\xff\xfe\x00garbage" * 3))
            cases.append(frame(entry.api_key, version, b"\x00\x00\x00\x05"))
        if entry.min_version > 0:
            cases.append(frame(entry.api_key, entry.min_version - 1, b""))
        cases.append(frame(entry.api_key, entry.max_version + 1, b""))
    cases += [frame(0, 3, b""), frame(1, 11, b""), frame(9999, 0, b""), frame(-5, 0, b"")]
    for address in (broker.kafka_bootstrap, broker.kafka_coordinator):
        for data in cases:
            assert closes(address, data), data[:12]
    assert_intact(broker)


def _nonsense() -> list[object]:
    J = JoinGroupRequest
    return [
        CreateTopicsRequest(
            version=4,
            topics=[
                CreateTopicsRequest.CreatableTopic(
                    name=name,
                    num_partitions=parts,
                    replication_factor=rf,
                    assignments=[],
                    configs=[],
                )
                for name, parts, rf in [
                    ("", 1, 1),
                    ("bad/name", 1, 1),
                    ("x", -7, 1),
                    ("y", 1, 99),
                    (TOPIC, 1, 1),
                ]
            ],
            timeout_ms=1000,
            validate_only=False,
        ),
        CreatePartitionsRequest(
            version=1,
            topics=[
                CreatePartitionsRequest.CreatePartitionsTopic(name=TOPIC, count=1, assignments=None)
            ],
            timeout_ms=1000,
            validate_only=False,
        ),
        DescribeConfigsRequest(
            version=1,
            resources=[
                DescribeConfigsRequest.DescribeConfigsResource(
                    resource_type=t, resource_name=n, configuration_keys=None
                )
                for t, n in [(99, "x"), (2, "missing"), (4, "not-a-number")]
            ],
            include_synonyms=True,
        ),
        AlterConfigsRequest(
            version=1,
            resources=[
                AlterConfigsRequest.AlterConfigsResource(
                    resource_type=2,
                    resource_name=TOPIC,
                    configs=[
                        AlterConfigsRequest.AlterConfigsResource.AlterableConfig(
                            name="retention.ms", value="soon"
                        )
                    ],
                )
            ],
            validate_only=False,
        ),
        IncrementalAlterConfigsRequest(
            version=1,
            resources=[
                IncrementalAlterConfigsRequest.AlterConfigsResource(
                    resource_type=2,
                    resource_name=TOPIC,
                    configs=[
                        IncrementalAlterConfigsRequest.AlterConfigsResource.AlterableConfig(
                            name="no.such.key", config_operation=op, value="1"
                        )
                        for op in (0, 2, 9)
                    ],
                )
            ],
            validate_only=False,
        ),
        J(
            version=5,
            group_id="",
            session_timeout_ms=10,
            rebalance_timeout_ms=-5,
            member_id="who",
            group_instance_id=None,
            protocol_type="consumer",
            protocols=[],
        ),
        J(
            version=5,
            group_id="g2",
            session_timeout_ms=10_000,
            rebalance_timeout_ms=10_000,
            member_id="",
            group_instance_id=None,
            protocol_type="consumer",
            protocols=[],
        ),
        SyncGroupRequest(
            version=3,
            group_id="g",
            generation_id=99,
            member_id="ghost",
            group_instance_id=None,
            assignments=[],
        ),
        HeartbeatRequest(
            version=3, group_id="", generation_id=-1, member_id="", group_instance_id="x"
        ),
        OffsetCommitRequest(
            version=7,
            group_id="g",
            generation_id_or_member_epoch=5,
            member_id="ghost",
            group_instance_id=None,
            topics=[],
        ),
        OffsetFetchRequest(version=1, group_id="", topics=[]),
        FindCoordinatorRequest(version=2, key="g", key_type=7),
        DeleteGroupsRequest(version=1, groups_names=["g-missing", ""]),
    ]


def test_requests_that_decode_but_make_no_sense_get_kafka_errors(broker):
    with RawClient(broker.kafka_coordinator) as c:
        for request in _nonsense():
            response = c.send(request)  # an answer, not a closed connection
            assert response is not None
    created = _nonsense()[0]
    with RawClient(broker.kafka_coordinator) as c:
        codes = [t.error_code for t in c.send(created).topics]
    assert codes == [17, 17, 37, 38, 36]  # invalid names, partitions, rf; exists already
    assert_intact(broker)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    api=st.sampled_from([r.api_key for r in SERVED]),
    version=st.integers(0, 12),
    body=st.binary(max_size=64),
)
def test_generated_frames_never_stop_the_listeners(broker, api, version, body):
    for address in (broker.kafka_coordinator, broker.kafka_bootstrap):
        host, _, port = address.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(frame(api, version, body))
            sock.settimeout(2)
            try:
                sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                pass


def test_after_the_generated_frames_the_store_is_intact(broker):
    assert_intact(broker)
