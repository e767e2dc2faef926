"""A node's Kafka listener with raw kafka.protocol requests (any version, straight to the
node's Kafka port from the supervisor's plan): Produce into the leader's group commit
(every codec, idempotence, acks 0/1/-1, Kafka's refusals), Fetch of both batch formats
(long polls, limits, sessions declined), ListOffsets, OffsetForLeaderEpoch,
DeleteRecords, and records crossing between Kafka's wire and kvlog's clients."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from kafka.protocol.metadata import ApiVersionsRequest
from kafka_wire import RawClient
from node_kafka_util import (
    batch_bases,
    control_record_set,
    create_topic,
    delete_records,
    fetch,
    list_offsets,
    node_address,
    offset_for_leader_epoch,
    partition_results,
    produce,
    record_set,
    records_of,
)

import kvlog
from kvlog.errors import ErrorCode
from kvlog.ipc.kafka.versions import SERVED
from kvlog.types import TopicPartition

CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


@pytest.fixture(scope="module")
def broker(kafka_broker: Any) -> Any:
    return kafka_broker  # shared (tests/kafka/conftest.py); default config


@pytest.fixture
def client(broker: Any) -> Iterator[RawClient]:
    with RawClient(node_address(broker)) as c:
        yield c


def topic_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def read_with_kvlog(
    broker: Any, tp: TopicPartition, count: int, timeout_s: float = 20
) -> list[Any]:
    """What kvlog's consumer reads of ``tp`` from the earliest offset: ``count`` records,
    or what came within ``timeout_s``."""
    consumer = kvlog.Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    try:
        consumer.assign([tp])
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out += records
        return out
    finally:
        consumer.close()


def log_start_seen_by_kvlog(broker: Any, tp: TopicPartition) -> tuple[int, int]:
    """(where kvlog's consumer starts reading with auto_offset_reset=earliest, the end)."""
    consumer = kvlog.Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    try:
        consumer.assign([tp])
        return consumer.position(tp), consumer.end_offsets([tp])[tp]
    finally:
        consumer.close()


# -- ApiVersions -----------------------------------------------------------------------------


def test_the_node_answers_api_versions_with_the_served_table(client: RawClient) -> None:
    response = client.send(ApiVersionsRequest(version=2))
    assert response.error_code == 0
    assert [(k.api_key, k.min_version, k.max_version) for k in response.api_keys] == [
        (r.api_key, r.min_version, r.max_version) for r in SERVED
    ]


# -- Produce ---------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", sorted(CODECS), ids=CODECS.get)
def test_idempotent_acks_all_produce_every_codec_read_back_on_both_wires(
    broker: Any, client: RawClient, codec: int
) -> None:
    topic = topic_name(f"codec-{CODECS[codec]}")
    create_topic(broker, topic)
    pid = 7000 + codec
    values = [b"value-%d" % i + b"x" * 90 for i in range(10)]
    keys = [b"key-%d" % i for i in range(10)]
    headers = [[("h", b"%d" % i), ("null", None)] for i in range(10)]
    stamps = [1_700_000_000_000 + i for i in range(10)]
    first = record_set(
        values[:6], codec=codec, keys=keys[:6], headers=headers[:6], timestamps=stamps[:6],
        producer=(pid, 0, 0),
    )  # fmt: skip
    second = record_set(
        values[6:], codec=codec, keys=keys[6:], headers=headers[6:], timestamps=stamps[6:],
        producer=(pid, 0, 6),
    )  # fmt: skip
    version = 8
    [a] = partition_results(client.send(produce(version, [(topic, 0, first)])))
    [b] = partition_results(client.send(produce(version, [(topic, 0, second)])))
    assert (a.error_code, a.base_offset, b.error_code, b.base_offset) == (0, 0, 0, 6)
    assert a.log_start_offset == 0
    # A retry of an acknowledged batch is answered with its offset, not stored again.
    [again] = partition_results(client.send(produce(version, [(topic, 0, first)])))
    assert (again.error_code, again.base_offset) == (0, 0)
    gap = record_set([b"gap"], codec=codec, producer=(pid, 0, 20))
    [out_of_order] = partition_results(client.send(produce(version, [(topic, 0, gap)])))
    assert out_of_order.error_code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER

    # Kafka's wire: the stored batches come back as they were sent, with their offsets.
    [fetched] = partition_results(client.send(fetch(11, [(topic, 0, 0)])))
    assert (fetched.error_code, fetched.high_watermark, fetched.last_stable_offset) == (0, 10, 10)
    assert batch_bases(fetched.records) == [0, 6]
    got = records_of(fetched.records)
    assert [(o, k, v, h, t) for o, k, v, h, t in got] == [
        (i, keys[i], values[i], headers[i], stamps[i]) for i in range(10)
    ]
    # kvlog's consumer reads the same records, headers included.
    records = read_with_kvlog(broker, TopicPartition(topic, 0), 10)
    assert [(r.offset, r.key, r.value, list(r.headers), r.timestamp) for r in records] == [
        (i, keys[i], values[i], headers[i], stamps[i]) for i in range(10)
    ]


def test_produce_refusals_are_kafkas_and_store_nothing(broker: Any, client: RawClient) -> None:
    topic = topic_name("refused")
    create_topic(broker, topic)
    good = record_set([b"ok"])
    corrupt = bytearray(good)
    corrupt[-1] ^= 0xFF  # the CRC no longer holds
    legacy = bytearray(good)
    legacy[16] = 1  # magic 1: Kafka's message format before 0.11
    cases = [
        (2, [(topic, 0, good)], -1, ErrorCode.UNSUPPORTED_VERSION),
        (8, [(topic, 0, bytes(legacy))], -1, ErrorCode.UNSUPPORTED_VERSION),
        (8, [(topic, 0, good + good)], -1, ErrorCode.INVALID_RECORD),
        (8, [(topic, 0, bytes(corrupt))], -1, ErrorCode.CORRUPT_MESSAGE),
        (8, [(topic, 0, control_record_set())], -1, ErrorCode.INVALID_RECORD),
        (8, [(topic, 0, good)], 2, ErrorCode.INVALID_REQUIRED_ACKS),
        (6, [(topic, 0, record_set([b"z" * 1000], codec=4))], -1,
         ErrorCode.UNSUPPORTED_COMPRESSION_TYPE),
        (8, [(topic, 0, None)], -1, ErrorCode.INVALID_RECORD),
        (8, [(topic, 5, good)], -1, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
        (3, [(topic_name("nope"), 0, good)], -1, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
    ]  # fmt: skip
    for version, parts, acks, code in cases:
        response = client.send(produce(version, parts, acks=acks))
        [entry] = partition_results(response)
        assert entry.error_code == code, (version, code)
        assert entry.base_offset == -1
    [listed] = partition_results(client.send(list_offsets(1, [(topic, 0, -1)])))
    assert listed.offset == 0, "nothing was stored"
    # One request mixing a good and a bad partition: each gets its own answer.
    response = client.send(produce(8, [(topic, 0, bytes(corrupt)), (topic, 0, good)]))
    assert [(e.error_code, e.base_offset) for e in partition_results(response)] == [
        (ErrorCode.CORRUPT_MESSAGE, -1),
        (0, 0),
    ]
    assert partition_results(response)[0].error_message, "v8 says why"


def test_acks_0_has_no_response_and_a_failure_closes_the_connection(
    broker: Any, client: RawClient
) -> None:
    topic = topic_name("acks0")
    create_topic(broker, topic)
    for i in range(3):
        client.protocol.send_request(produce(8, [(topic, 0, record_set([b"%d" % i]))], acks=0))
    client.sock.sendall(client.protocol.send_bytes())
    # The next request's response is the first to come back: acks=0 got none, and the
    # three were stored before it.
    [acked] = partition_results(client.send(produce(8, [(topic, 0, record_set([b"3"]))], acks=1)))
    assert (acked.error_code, acked.base_offset) == (0, 3)
    failing = produce(8, [(topic, 9, record_set([b"x"]))], acks=0)
    client.protocol.send_request(failing)
    client.sock.sendall(client.protocol.send_bytes())
    assert client.closed_by_peer(), "Kafka's signal that an acks=0 produce failed"


def test_acks_1_and_all_are_answered_after_the_write(broker: Any, client: RawClient) -> None:
    topic = topic_name("acks")
    create_topic(broker, topic)
    for acks in (1, -1):
        response = client.send(produce(3, [(topic, 0, record_set([b"a", b"b"]))], acks=acks))
        assert [e.error_code for e in partition_results(response)] == [0]
    [fetched] = partition_results(client.send(fetch(4, [(topic, 0, 0)])))
    assert [r[2] for r in records_of(fetched.records)] == [b"a", b"b", b"a", b"b"]


# -- Fetch -----------------------------------------------------------------------------------


def test_a_native_batch_reaches_a_kafka_client_exact(broker: Any, client: RawClient) -> None:
    topic = topic_name("native")
    create_topic(broker, topic)
    producer = kvlog.Producer(
        bootstrap_servers=broker.bootstrap, compression_type="zstd", linger_ms=50
    )
    sent = []
    for i in range(20):
        headers = [("i", b"%d" % i)] if i % 2 else []
        ts = 1_700_000_000_000 + 7 * i
        producer.send(topic, b"v%d" % i, key=b"k%d" % i, headers=headers, timestamp_ms=ts)
        sent.append((i, b"k%d" % i, b"v%d" % i, headers, ts))
    producer.flush()
    producer.close()
    [fetched] = partition_results(client.send(fetch(11, [(topic, 0, 0)])))
    assert fetched.error_code == 0 and fetched.high_watermark == 20
    assert records_of(fetched.records) == sent
    # From the middle of a batch: the batch that contains the offset comes first.
    bases = batch_bases(fetched.records)
    middle = max(b for b in bases if b < 20) + (1 if len(bases) == 1 else 0)
    [again] = partition_results(client.send(fetch(4, [(topic, 0, middle)])))
    assert batch_bases(again.records)[0] <= middle
    assert records_of(again.records)[-1] == sent[-1]


def test_fetch_limits_and_offsets_out_of_range(broker: Any, client: RawClient) -> None:
    topic = topic_name("limits")
    create_topic(broker, topic, partitions=2)
    big = [b"x" * 1000] * 5
    for p in (0, 1):
        for _ in range(3):
            client.send(produce(8, [(topic, p, record_set(big))]))
    [one] = partition_results(client.send(fetch(11, [(topic, 0, 0)], partition_max_bytes=10)))
    assert batch_bases(one.records) == [0], "the first batch whole, however small the limit"
    # The request's max_bytes (soft, as kvlog's fetch: PROTOCOL.md 3.5): once used up,
    # later partitions return nothing.
    response = client.send(fetch(11, [(topic, 0, 0), (topic, 1, 0)], max_bytes=5000))
    first, second = partition_results(response)
    assert batch_bases(first.records) == [0] and not second.records, "request max_bytes"
    assert second.error_code == 0 and second.high_watermark == 15
    [past] = partition_results(client.send(fetch(11, [(topic, 0, 99)])))
    assert past.error_code == ErrorCode.OFFSET_OUT_OF_RANGE and not past.records


def test_a_long_poll_returns_as_soon_as_data_arrives(broker: Any, client: RawClient) -> None:
    topic = topic_name("longpoll")
    create_topic(broker, topic)
    started = time.monotonic()
    [empty] = partition_results(client.send(fetch(11, [(topic, 0, 0)], max_wait_ms=300)))
    assert not empty.records and time.monotonic() - started >= 0.25, "waited out max_wait_ms"

    def later() -> None:
        time.sleep(0.5)
        with RawClient(node_address(broker)) as other:
            other.send(produce(8, [(topic, 0, record_set([b"now"]))]))

    writer = threading.Thread(target=later)
    started = time.monotonic()
    writer.start()
    [fetched] = partition_results(client.send(fetch(11, [(topic, 0, 0)], max_wait_ms=20_000)))
    took = time.monotonic() - started
    writer.join()
    assert [r[2] for r in records_of(fetched.records)] == [b"now"]
    assert 0.4 < took < 5, f"answered {took:.2f} s after the fetch, not when data came"


def test_fetch_sessions_are_declined_and_read_committed_stops_at_the_hw(
    broker: Any, client: RawClient
) -> None:
    topic = topic_name("sessions")
    create_topic(broker, topic)
    client.send(produce(8, [(topic, 0, record_set([b"a"]))]))
    new_session = client.send(fetch(11, [(topic, 0, 0)], session_epoch=0))
    assert (new_session.error_code, new_session.session_id) == (0, 0), "no session created"
    assert len(records_of(partition_results(new_session)[0].records)) == 1
    named = client.send(fetch(11, [(topic, 0, 0)], session_id=77, session_epoch=3))
    assert named.error_code == ErrorCode.FETCH_SESSION_ID_NOT_FOUND and not named.responses
    epoch_only = client.send(fetch(7, [(topic, 0, 0)], session_epoch=2))
    assert epoch_only.error_code == ErrorCode.INVALID_FETCH_SESSION_EPOCH
    committed = client.send(fetch(11, [(topic, 0, 0)], isolation_level=1))
    [entry] = partition_results(committed)
    assert entry.last_stable_offset == entry.high_watermark == 1
    assert entry.aborted_transactions == []


def test_zstd_batches_need_fetch_v10(broker: Any, client: RawClient) -> None:
    topic = topic_name("zstd")
    create_topic(broker, topic)
    client.send(produce(7, [(topic, 0, record_set([b"z" * 1000], codec=4))]))
    [old] = partition_results(client.send(fetch(9, [(topic, 0, 0)])))
    assert old.error_code == ErrorCode.UNSUPPORTED_COMPRESSION_TYPE
    [new] = partition_results(client.send(fetch(10, [(topic, 0, 0)])))
    assert new.error_code == 0 and records_of(new.records)[0][2] == b"z" * 1000


# -- offsets, epochs, DeleteRecords --------------------------------------------------------


def test_list_offsets_earliest_latest_and_by_timestamp(broker: Any, client: RawClient) -> None:
    topic = topic_name("offsets")
    create_topic(broker, topic)
    stamps = [1000, 2000, 3000]
    client.send(produce(8, [(topic, 0, record_set([b"a", b"b", b"c"], timestamps=stamps))]))
    asks = [(topic, 0, -2), (topic, 0, -1), (topic, 0, 1500), (topic, 0, 9999)]
    v1 = partition_results(client.send(list_offsets(1, asks)))
    assert [(e.error_code, e.offset, e.timestamp) for e in v1] == [
        (0, 0, -1),
        (0, 3, -1),
        (0, 1, 2000),
        (0, -1, -1),
    ]
    v5 = partition_results(client.send(list_offsets(5, asks, isolation=1)))
    assert [(e.offset, e.leader_epoch) for e in v5] == [(0, 0), (3, 0), (1, 0), (-1, -1)]
    [fenced] = partition_results(client.send(list_offsets(5, asks[:1], leader_epoch=7)))
    assert fenced.error_code == ErrorCode.UNKNOWN_LEADER_EPOCH


def test_offset_for_leader_epoch_from_the_epoch_cache(broker: Any, client: RawClient) -> None:
    topic = topic_name("epochs")
    create_topic(broker, topic)
    client.send(produce(8, [(topic, 0, record_set([b"a", b"b"]))]))
    for version in (2, 3):
        response = client.send(offset_for_leader_epoch(version, [(topic, 0, 0), (topic, 0, 5)]))
        assert [
            (e.error_code, e.leader_epoch, e.end_offset) for e in partition_results(response)
        ] == [
            (0, 0, 2),
            (0, 0, 2),
        ]
    stale = client.send(offset_for_leader_epoch(3, [(topic, 0, 0)], current=9))
    assert partition_results(stale)[0].error_code == ErrorCode.UNKNOWN_LEADER_EPOCH


def test_delete_records_moves_the_log_start(broker: Any, client: RawClient) -> None:
    topic = topic_name("delete")
    create_topic(broker, topic)
    for i in range(4):
        client.send(produce(8, [(topic, 0, record_set([b"%d" % i]))]))
    [moved] = partition_results(client.send(delete_records(0, [(topic, 0, 2)])))
    assert (moved.error_code, moved.low_watermark) == (0, 2)
    [past] = partition_results(client.send(delete_records(1, [(topic, 0, 99)])))
    assert past.error_code == ErrorCode.OFFSET_OUT_OF_RANGE
    [gone] = partition_results(client.send(fetch(11, [(topic, 0, 0)])))
    assert gone.error_code == ErrorCode.OFFSET_OUT_OF_RANGE and gone.log_start_offset == 2
    [earliest] = partition_results(client.send(list_offsets(1, [(topic, 0, -2)])))
    assert earliest.offset == 2
    [to_hw] = partition_results(client.send(delete_records(1, [(topic, 0, -1)])))
    assert to_hw.low_watermark == 4
    # kvlog's consumer starts at the new log start, which is the end: nothing to read
    # (the positions say so at once; a short read confirms no deleted record comes back).
    assert log_start_seen_by_kvlog(broker, TopicPartition(topic, 0)) == (4, 4)
    assert read_with_kvlog(broker, TopicPartition(topic, 0), 1, timeout_s=2) == []


# -- both formats in one partition ---------------------------------------------------------


def test_kvlog_dump_shows_both_batch_formats(broker: Any, client: RawClient) -> None:
    from kvlog.tools.cli import main

    topic = topic_name("dump")
    create_topic(broker, topic)
    client.send(produce(8, [(topic, 0, record_set([b"from-kafka"], keys=[b"k"]))]))
    producer = kvlog.Producer(bootstrap_servers=broker.bootstrap)
    producer.send(topic, b"from-kvlog", key=b"n")
    producer.flush()
    producer.close()
    log_dir = str(broker.log_dirs[0])
    runner = CliRunner()
    result = runner.invoke(
        main, ["dump", "--log-dir", log_dir, "--topic", topic, "--records", "--json"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    batches = [x for x in lines if x["type"] == "batch"]
    assert [(b["base_offset"], b["format"], b["crc"]) for b in batches] == [
        (0, "kafka", "ok"),
        (1, "kvlog", "ok"),
    ]
    records = [(x["offset"], x["key"], x["value"]) for x in lines if x["type"] == "record"]
    assert records == [(0, "k", "from-kafka"), (1, "n", "from-kvlog")]
    text = runner.invoke(main, ["dump", "--log-dir", log_dir, "--topic", topic]).output
    assert "@0..0 kafka count 1" in text and "@1..1 kvlog count 1" in text


# -- misbehaving clients ---------------------------------------------------------------------


def test_a_client_that_sends_half_a_request_holds_up_nobody(broker: Any, client: RawClient) -> None:
    topic = topic_name("stall")
    create_topic(broker, topic)
    request = produce(8, [(topic, 0, record_set([b"half"]))])
    client.protocol.send_request(request)
    whole = client.protocol.send_bytes()
    client.sock.sendall(whole[: len(whole) // 2])  # and then nothing
    with RawClient(node_address(broker)) as other:
        [ok] = partition_results(other.send(produce(8, [(topic, 0, record_set([b"full"]))])))
        assert (ok.error_code, ok.base_offset) == (0, 0)
        [listed] = partition_results(other.send(list_offsets(1, [(topic, 0, -1)])))
        assert listed.offset == 1, "the half request stored nothing"


# -- what a node relays to the coordinator -------------------------------------------------


def test_a_node_relays_what_the_coordinator_answers(broker: Any, client: RawClient) -> None:
    from kafka.protocol.admin import DescribeConfigsRequest, ListGroupsRequest
    from kafka.protocol.metadata import FindCoordinatorRequest, MetadataRequest
    from kafka.protocol.producer import InitProducerIdRequest

    topic = topic_name("relayed")
    create_topic(broker, topic, partitions=2)
    coordinator = broker.kafka_plan.coordinator.advertised
    asked = MetadataRequest(
        version=8,
        topics=[MetadataRequest.MetadataRequestTopic(name=topic)],
        allow_auto_topic_creation=False,
        include_cluster_authorized_operations=False,
        include_topic_authorized_operations=False,
    )
    at_node = client.send(asked)
    with RawClient(coordinator) as direct:
        at_coordinator = direct.send(asked)
    assert at_node == at_coordinator, "a node's Metadata is the coordinator's"
    brokers = {b.node_id: f"{b.host}:{b.port}" for b in at_node.brokers}
    assert brokers[0] == node_address(broker) and brokers[at_node.controller_id] == coordinator
    [t] = at_node.topics
    assert [(p.partition_index, p.leader_id) for p in t.partitions] == [(0, 0), (1, 0)]

    found = client.send(FindCoordinatorRequest(version=2, key="some-group", key_type=0))
    assert (found.error_code, f"{found.host}:{found.port}") == (0, coordinator)
    pid = client.send(
        InitProducerIdRequest(version=1, transactional_id=None, transaction_timeout_ms=-1)
    )
    assert pid.error_code == 0 and pid.producer_id >= 0
    R = DescribeConfigsRequest.DescribeConfigsResource
    configs = client.send(
        DescribeConfigsRequest(version=1, resources=[R(resource_type=2, resource_name=topic,
                               configuration_keys=None)], include_synonyms=False)
    )  # fmt: skip
    assert configs.results[0].error_code == 0 and configs.results[0].configs
    # ListGroups asks every broker for the groups it coordinates: a node has none.
    listed = client.send(ListGroupsRequest(version=2))
    assert (listed.error_code, listed.groups) == (0, [])
