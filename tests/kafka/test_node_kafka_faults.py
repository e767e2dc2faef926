"""A node's Kafka listener under faults: requests for partitions another node leads,
SIGKILL of the whole process group after acknowledged Kafka produces, and generated bad
input (truncated frames, lying lengths, garbage bodies and batches) that must leave the
node serving and its log as it was."""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.protocol.metadata import ApiVersionsRequest
from kafka_wire import RawClient
from node_kafka_util import (
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "broker"))
from brokertest_util import ServedBroker, wait_until


def topic_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- leadership --------------------------------------------------------------------------


def test_a_node_refuses_partitions_it_does_not_lead(tmp_path: Path) -> None:
    logs = [tmp_path / "logs" / str(i) for i in range(2)]
    with kvlog.Broker(
        tmp_path / "data",
        "tcp://127.0.0.1:0",
        console_listen="none",
        log_dirs=logs,
        kafka_listen="127.0.0.1:0",
    ) as broker:
        topic = topic_name("led")
        led = create_topic(broker, topic, partitions=2, rf=2)
        for partition, leader in led.items():
            follower = 1 - leader
            with RawClient(node_address(broker, follower)) as client:
                asks = [
                    produce(8, [(topic, partition, record_set([b"x"]))]),
                    fetch(11, [(topic, partition, 0)]),
                    list_offsets(5, [(topic, partition, -1)]),
                    offset_for_leader_epoch(3, [(topic, partition, 0)]),
                    delete_records(1, [(topic, partition, 0)]),
                ]
                for request in asks:
                    [entry] = partition_results(client.send(request))
                    assert entry.error_code == ErrorCode.NOT_LEADER_OR_FOLLOWER, request
            with RawClient(node_address(broker, leader)) as client:
                [ok] = partition_results(
                    client.send(produce(8, [(topic, partition, record_set([b"y"]))]))
                )
                assert (ok.error_code, ok.base_offset) == (0, 0)


# -- SIGKILL -----------------------------------------------------------------------------


def node_kafka(served: ServedBroker) -> str:
    [node] = [p for p in served.processes() if p["role"] == "node"]
    return str(node["kafka"])


def test_sigkill_after_acknowledged_kafka_produces_loses_nothing(tmp_path: Path) -> None:
    served = ServedBroker(tmp_path / "data").start()
    topic = topic_name("killed")
    acked: dict[int, list[bytes]] = {}
    try:
        with kvlog.Admin(bootstrap_servers=served.bootstrap) as admin:
            admin.create_topic(topic, partitions=1)
        address = node_kafka(served)
        wait_until(lambda: _leads(address, topic), 20, what="the node to lead the topic")
        stop = threading.Event()
        failures: list[BaseException] = []

        def produce_until_killed() -> None:
            pid, seq = 4242, 0
            try:
                with RawClient(address) as client:
                    while not stop.is_set():
                        values = [b"r-%d" % (seq + i) for i in range(50)]
                        batch = record_set(values, codec=1, producer=(pid, 0, seq))
                        [entry] = partition_results(client.send(produce(8, [(topic, 0, batch)])))
                        assert entry.error_code == 0, entry
                        acked[entry.base_offset] = values
                        seq += len(values)
            except (OSError, AssertionError) as exc:
                if not stop.is_set():  # after the kill, the connection breaks: expected
                    failures.append(exc)

        writer = threading.Thread(target=produce_until_killed)
        writer.start()
        wait_until(lambda: len(acked) >= 20, 30, what="acknowledged produces")
        stop.set()  # from here on a broken connection is the kill's doing
        served.kill()
        writer.join(10)
        assert not failures, failures
        snapshot = dict(acked)
        served.start()
        address = node_kafka(served)
        wait_until(lambda: _leads(address, topic), 30, what="the node to lead again")
        stored: dict[int, bytes] = {}
        with RawClient(address) as client:
            offset = 0
            [end] = partition_results(client.send(list_offsets(1, [(topic, 0, -1)])))
            while offset < end.offset:
                [part] = partition_results(client.send(fetch(11, [(topic, 0, offset)])))
                assert part.error_code == 0
                for record in records_of(part.records):
                    stored[record[0]] = record[2]
                offset = max(stored) + 1
        for base, values in snapshot.items():
            for i, value in enumerate(values):
                assert stored.get(base + i) == value, f"acknowledged offset {base + i} lost"
    finally:
        served.kill()


def _leads(address: str, topic: str) -> bool:
    try:
        with RawClient(address) as client:
            [entry] = partition_results(client.send(list_offsets(1, [(topic, 0, -1)])))
            return entry.error_code == 0
    except OSError:
        return False


# -- bad input ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data_dir = tmp_path_factory.mktemp("node-kafka-bad")
    broker = kvlog.Broker(
        data_dir, "tcp://127.0.0.1:0", console_listen="none", kafka_listen="127.0.0.1:0"
    )
    broker.start()
    topic = topic_name("intact")
    create_topic(broker, topic)
    create_topic(broker, FUZZED)
    with RawClient(node_address(broker)) as client:
        client.send(produce(8, [(topic, 0, record_set([b"keep-%d" % i for i in range(5)]))]))
    try:
        yield broker, topic, _snapshot(broker, topic)
    finally:
        broker.stop()


def _snapshot(broker: Any, topic: str) -> Any:
    with RawClient(node_address(broker)) as client:
        [part] = partition_results(client.send(fetch(11, [(topic, 0, 0)])))
        return part.high_watermark, bytes(part.records)


def _frame(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def _header(api_key: int, version: int, correlation_id: int = 1) -> bytes:
    return struct.pack(">hhih", api_key, version, correlation_id, 4) + b"test"


def _request_bytes(request: Any) -> bytes:
    request.with_header(correlation_id=3, client_id="fuzz")
    return bytes(request.encode(header=True, framed=True))


FUZZED = "fuzzed"  # where generated produce requests go: a valid one may be stored


def bad_streams(topic: str) -> st.SearchStrategy[bytes]:
    served = st.sampled_from([(0, 3), (0, 8), (1, 4), (1, 11), (2, 1), (2, 5), (23, 2), (21, 0)])
    garbage_body = st.builds(
        lambda kv, body: _frame(_header(*kv) + body), served, st.binary(max_size=200)
    )
    lying = st.builds(
        lambda n, body: struct.pack(">i", n) + body,
        st.integers(-(2**31), 2**31 - 1),
        st.binary(max_size=64),
    )
    valid = _request_bytes(produce(8, [(topic, 0, record_set([b"fuzz"]))]))
    truncated = st.integers(1, len(valid) - 1).map(lambda n: valid[:n])
    garbage_batch = st.binary(min_size=0, max_size=300).map(
        lambda raw: _request_bytes(produce(8, [(topic, 0, raw)]))
    )
    flipped = st.tuples(st.integers(61, len(valid) - 1), st.integers(1, 255)).map(
        lambda f: valid[: f[0]] + bytes([valid[f[0]] ^ f[1]]) + valid[f[0] + 1 :]
    )
    return st.one_of(
        garbage_body, lying, truncated, garbage_batch, flipped, st.binary(max_size=100)
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_generated_bad_input_leaves_the_node_serving_and_the_log_intact(
    target: Any, data: Any
) -> None:
    broker, topic, before = target
    stream = data.draw(bad_streams(FUZZED))
    host, _, port = node_address(broker).rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(stream)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        try:
            while sock.recv(65536):
                pass  # Kafka's error responses, then the close
        except (TimeoutError, ConnectionResetError):
            pass
    with RawClient(node_address(broker)) as client:
        assert client.send(ApiVersionsRequest(version=2)).error_code == 0
    assert _snapshot(broker, topic) == before, "bad input changed the stored data"
    # What a mutated request got stored is only ever a whole batch that was sent intact.
    hw, raw = _snapshot(broker, FUZZED)
    assert {r[2] for r in records_of(raw)} <= {b"fuzz"} and len(records_of(raw)) == hw


def test_the_node_logs_what_it_closed(target: Any) -> None:
    broker, topic, before = target
    with RawClient(node_address(broker)) as client:
        client.sock.sendall(struct.pack(">i", -5))
        assert client.closed_by_peer()
    time.sleep(0.1)
    assert _snapshot(broker, topic) == before
