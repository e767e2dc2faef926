"""Fetch is a long poll: the leader answers as soon as enough data is there, or when
``max_wait_ms`` runs out with nothing.

These are correctness checks of the parking logic with generous margins, not timings:
"well before max_wait" means under half of it, "after max_wait" means not early.
"""

from __future__ import annotations

import time
from typing import Any

from brokertest_util import RawClient, leader_endpoint, unique_topic

import kvlog
from kvlog import batch as batch_format
from kvlog.ipc import wire
from kvlog.types import TopicPartition

MAX_WAIT_MS = 2000


def _topic(broker: Any, admin: Any) -> TopicPartition:
    topic = unique_topic("poll")
    admin.create_topic(topic, partitions=1)
    return TopicPartition(topic, 0)


def _frame(op: str, rid: int, fields: dict[str, Any]) -> bytes:
    return wire.encode(wire.request_header(op, rid, **fields))


def _fetch_fields(
    tp: TopicPartition, offset: int, max_wait_ms: int, min_bytes: int
) -> dict[str, Any]:
    return {
        "max_wait_ms": max_wait_ms,
        "min_bytes": min_bytes,
        "max_bytes": 1 << 20,
        "partitions": [{"topic": tp.topic, "partition": tp.partition, "offset": offset}],
    }


def test_parked_fetch_answers_as_soon_as_a_record_arrives(broker: Any, admin: Any) -> None:
    tp = _topic(broker, admin)
    client = RawClient(leader_endpoint(broker.bootstrap, tp))
    producer = kvlog.Producer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
    try:
        producer.partitions_for(tp.topic)  # metadata and producer id before the clock runs
        rid = client.next_id()
        client.send_parts([_frame("fetch", rid, _fetch_fields(tp, 0, MAX_WAIT_MS, 1))])
        # Parked: no answer while the partition is empty.
        assert client.recv(0.3) is None, "the fetch did not wait for data"
        producer.send(tp.topic, value=b"wake up", partition=0).get(timeout=10)
        acked = time.monotonic()
        reply = client.recv(MAX_WAIT_MS / 1000)
        answered = time.monotonic()
        assert reply is not None
        header, frames = reply
        assert header["id"] == rid
        [entry] = header["partitions"]
        assert entry["error"] == 0 and entry["bases"] == [0]
        [record] = batch_format.decode(frames[0], 0)
        assert record.value == b"wake up"
        assert answered - acked < MAX_WAIT_MS / 1000 / 2, (
            f"answered {answered - acked:.3f} s after the record was acknowledged"
        )
    finally:
        producer.close()
        client.close()


def test_parked_fetch_returns_empty_when_max_wait_runs_out(broker: Any, admin: Any) -> None:
    tp = _topic(broker, admin)
    client = RawClient(leader_endpoint(broker.bootstrap, tp))
    try:
        wait_ms = 1000
        sent = time.monotonic()
        header, frames = client.request(
            "fetch", _fetch_fields(tp, 0, wait_ms, 1), timeout_s=wait_ms / 1000 + 5
        )
        elapsed = time.monotonic() - sent
        assert elapsed >= wait_ms / 1000 * 0.9, f"answered after {elapsed:.3f} s"
        [entry] = header["partitions"]
        assert entry["error"] == 0 and entry["bases"] == [] and frames == []
        assert entry["high_watermark"] == 0
    finally:
        client.close()


def test_min_bytes_holds_the_answer_until_enough_data(broker: Any, admin: Any) -> None:
    """With min_bytes above one record's batch, the first small record does not wake
    the fetch; once enough bytes are there it answers, with both batches."""
    tp = _topic(broker, admin)
    client = RawClient(leader_endpoint(broker.bootstrap, tp))
    producer = kvlog.Producer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
    try:
        producer.partitions_for(tp.topic)
        rid = client.next_id()
        client.send_parts([_frame("fetch", rid, _fetch_fields(tp, 0, 5000, 2000))])
        producer.send(tp.topic, value=b"small", partition=0).get(timeout=10)
        assert client.recv(0.3) is None, "answered before min_bytes were there"
        producer.send(tp.topic, value=b"x" * 4000, partition=0).get(timeout=10)
        reply = client.recv(4.0)
        assert reply is not None, "min_bytes reached but the fetch stayed parked"
        header, frames = reply
        assert header["partitions"][0]["bases"] == [0, 1]
        assert sum(len(f) for f in frames) >= 2000
    finally:
        producer.close()
        client.close()


def test_consumer_poll_gets_a_record_produced_during_its_long_poll(broker: Any, admin: Any) -> None:
    tp = _topic(broker, admin)
    consumer = kvlog.Consumer(
        bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=MAX_WAIT_MS, fetch_min_bytes=1
    )
    producer = kvlog.Producer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        assert consumer.poll(timeout_ms=300) == {}  # its fetch is parked at the leader now
        producer.send(tp.topic, value=b"v", partition=0).get(timeout=10)
        acked = time.monotonic()
        got = consumer.poll(timeout_ms=MAX_WAIT_MS * 2)
        assert [r.value for r in got.get(tp, [])] == [b"v"]
        assert time.monotonic() - acked < MAX_WAIT_MS / 1000 / 2
    finally:
        producer.close()
        consumer.close()
