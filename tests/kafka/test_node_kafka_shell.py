"""The node's Kafka shell applies quotas the way the ZeroMQ shell does (in one process, with
the clock injected): a response over its principal's byte rate is held back, and says so
(``throttle_time_ms``) to versions that expect the broker to delay (before KIP-219), not
to later ones, which would wait again themselves; and, with real processes, the in-flight
cap (``max.inflight.requests.per.client``) pauses reading a Kafka connection."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka_wire import RawClient
from node_kafka_util import create_topic, fetch, node_address, partition_results

import kvlog
from kvlog import clock
from kvlog.ipc.kafka.connection import KafkaConnection, KafkaRequest
from kvlog.types import TopicPartition
from kvlog.workers.core_result import Reply
from kvlog.workers.kafka_handlers import KafkaContext
from kvlog.workers.kafka_handlers import fetch as fetch_handler
from kvlog.workers.kafka_listener import KafkaToken
from kvlog.workers.kafka_node_shell import KafkaCall, NodeKafkaShell
from kvlog.workers.node_model import FetchedPartition, FetchResponse
from kvlog.workers.quotas import Quotas

NOW = 1_700_000_000_000


class FakeListener:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []
        self.closed: list[Any] = []

    def respond(self, token: Any, response: Any) -> bool:
        self.sent.append((token, response))
        return True

    def close_connection(self, token: Any, reason: str) -> None:
        self.closed.append(token)

    def next_deadline(self) -> float | None:
        return None

    def expire_idle(self, now: float | None = None) -> int:
        return 0


class Shell(NodeKafkaShell):
    def __init__(self, quotas: Quotas) -> None:
        self.name = "test node"
        self.kafka = FakeListener()  # type: ignore[assignment]
        self.quotas = quotas
        self._kafka_delayed = []
        self._kafka_replies = []
        self._relayed = []


def fetch_call(version: int) -> KafkaCall:
    request = fetch(version, [("t", 0, 0)])
    request.with_header(correlation_id=1, client_id="c")
    conn = KafkaConnection()
    conn.receive_data(bytes(request.encode(header=True, framed=True)))
    event = conn.next_event()
    assert isinstance(event, KafkaRequest)
    plan = fetch_handler.fetch(event, KafkaContext(broker_id=0))
    return KafkaCall(KafkaToken(1, event), plan, "alice")


def fetched(size: int) -> FetchResponse:
    from kvlog import batch as batch_format

    batch = batch_format.build_batch([(None, b"x" * size)])
    part = FetchedPartition(TopicPartition("t", 0), None, 1, 0, 1, [(0, batch)])
    return FetchResponse([part])


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    current = [NOW]
    monkeypatch.setattr(clock, "now_ms", lambda: current[0])
    return current


@pytest.mark.parametrize(("version", "reported"), [(7, True), (11, False)])
def test_a_response_over_the_quota_is_held_back(
    now: list[int], version: int, reported: bool
) -> None:
    shell = Shell(Quotas(-1, 1000))  # 1,000 fetched bytes a second, a second's burst
    listener: FakeListener = shell.kafka  # type: ignore[assignment]
    first, second = fetch_call(version), fetch_call(version)
    shell.deliver_kafka(Reply(first, fetched(500)))
    shell.deliver_kafka(Reply(second, fetched(1500)))
    shell.flush_kafka()
    assert [t for t, _ in listener.sent] == [first.token], "within the burst: at once"
    assert listener.sent[0][1].throttle_time_ms == 0
    due = shell.kafka_deadline_ms()
    assert due is not None and due > NOW
    now[0] = math.ceil(due) - 1
    shell.kafka_timers()
    assert len(listener.sent) == 1, "held back until its time"
    now[0] = math.ceil(due)
    shell.kafka_timers()
    [(token, response)] = listener.sent[1:]
    assert token == second.token
    assert response.throttle_time_ms == (int(due - NOW) if reported else 0)


def test_without_quotas_nothing_waits(now: list[int]) -> None:
    shell = Shell(Quotas(-1, -1))
    call = fetch_call(11)
    shell.deliver_kafka(Reply(call, fetched(1 << 20)))
    shell.flush_kafka()
    assert len(shell.kafka.sent) == 1 and shell.kafka_deadline_ms() is None  # type: ignore[union-attr]


# -- the in-flight cap, with real processes ------------------------------------------------


@pytest.fixture
def capped(tmp_path: Any) -> Iterator[Any]:
    with kvlog.Broker(
        tmp_path,
        "tcp://127.0.0.1:0",
        console_listen="none",
        kafka_listen="127.0.0.1:0",
        config={"max.inflight.requests.per.client": 2},
    ) as broker:
        yield broker


def test_the_in_flight_cap_pauses_a_kafka_connection(capped: Any) -> None:
    topic = f"capped-{uuid.uuid4().hex[:6]}"
    create_topic(capped, topic)
    with RawClient(node_address(capped)) as client:
        started = time.monotonic()
        for _ in range(3):  # long polls with nothing to find: each waits out 1 s
            client.protocol.send_request(fetch(11, [(topic, 0, 0)], max_wait_ms=1000))
        client.sock.sendall(client.protocol.send_bytes())
        done = []
        while len(done) < 3:
            data = client.sock.recv(65536)
            assert data
            for _, response in client.protocol.receive_bytes(data):
                assert partition_results(response)[0].error_code == 0
                done.append(time.monotonic() - started)
    # Two were read at once and waited together; the third only once one was answered.
    assert done[1] < 1.8 and done[2] >= 1.9, done
