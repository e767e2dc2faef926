"""Idempotent producer against a node that loses produce replies.

The broker config ``test.drop.produce.replies`` makes each node commit a produce request
and then drop its reply, so the producer times out (request.timeout.ms) and retries the
same batch with the same sequence: the leader must answer the retry with the original
offset instead of storing the batch again. With idempotence off, the same fault stores a
duplicate (the control that shows the test can fail).
"""

from __future__ import annotations

from typing import Any

import pytest
from brokertest_util import read_partitions, unique_topic

import kvlog
from kvlog.types import TopicPartition

FAST_RETRY = {"request_timeout_ms": 1500, "retry_backoff_ms": 20, "linger_ms": 0}


def retries(producer: Any) -> int:
    """Records sent again after a failed attempt (Kafka's record-retry-total)."""
    return int(producer.metrics()["producer-metrics"]["record-retry-total"])


def _setup(make_broker: Any, drops: int) -> tuple[Any, str, TopicPartition]:
    broker = make_broker({"test.drop.produce.replies": drops})
    topic = unique_topic("idem")
    with kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin:
        admin.create_topic(topic, partitions=1)
    return broker, topic, TopicPartition(topic, 0)


def test_lost_reply_is_retried_and_stored_once(make_broker: Any) -> None:
    broker, topic, tp = _setup(make_broker, drops=1)
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, acks="all", **FAST_RETRY) as p:
        meta = p.send(topic, value=b"only-once", key=b"k", partition=0).get(timeout=20)
        assert meta.offset == 0
        assert retries(p) >= 1, "the dropped reply was never retried"
    records = read_partitions(broker.bootstrap, [tp])[tp]
    assert [(r.offset, r.value) for r in records] == [(0, b"only-once")]
    consumer = kvlog.Consumer(bootstrap_servers=broker.bootstrap)
    try:
        assert consumer.end_offsets([tp]) == {tp: 1}
    finally:
        consumer.close()


def test_lost_reply_with_five_in_flight_keeps_order(make_broker: Any) -> None:
    broker, topic, tp = _setup(make_broker, drops=1)
    count = 60
    with kvlog.Producer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        max_in_flight_requests_per_connection=5,
        batch_size=64,  # about one record per batch: many requests in flight
        **FAST_RETRY,
    ) as p:
        futures = [p.send(topic, value=b"%04d" % i, partition=0) for i in range(count)]
        p.flush(30)
        offsets = [f.get(timeout=0).offset for f in futures]
        assert retries(p) >= 1
        # Batches sent (a request carries every batch a partition may have in flight).
        metrics = p.metrics()["producer-metrics"]
        assert metrics["outgoing-byte-total"] / metrics["batch-size-avg"] > 10, (
            "records were not spread over batches"
        )
    assert offsets == list(range(count)), "acknowledged offsets are not in send order"
    records = read_partitions(broker.bootstrap, [tp])[tp]
    assert [r.value for r in records] == [b"%04d" % i for i in range(count)]
    assert [r.offset for r in records] == list(range(count))


def test_many_lost_replies_over_many_partitions(make_broker: Any) -> None:
    """Ten dropped replies (several in flight at once) across four partitions of keyed
    records: every record stored once, in send order per partition, none failed."""
    broker = make_broker({"test.drop.produce.replies": 10})
    topic = unique_topic("idem-many")
    with kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin:
        admin.create_topic(topic, partitions=4)
    count = 2000
    with kvlog.Producer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        batch_size=100,
        request_timeout_ms=1000,
        retry_backoff_ms=10,
        linger_ms=0,
    ) as p:
        futures = [p.send(topic, value=b"%05d" % i, key=b"k%d" % (i % 13)) for i in range(count)]
        p.flush(60)
        assert [f.exception(0) for f in futures if f.exception(0) is not None] == []
        assert retries(p) >= 10
    tps = [TopicPartition(topic, n) for n in range(4)]
    read = read_partitions(broker.bootstrap, tps)
    stored = [r.value for tp in tps for r in read[tp]]
    assert sorted(stored) == [b"%05d" % i for i in range(count)]
    for tp in tps:
        values = [r.value for r in read[tp]]
        assert values == sorted(values), f"{tp}: out of send order"
    by_offset = {(tp.partition, r.offset): r.value for tp in tps for r in read[tp]}
    for i, future in enumerate(futures):  # each acknowledged offset holds its own record
        meta = future.get(0)
        assert by_offset[(meta.partition, meta.offset)] == b"%05d" % i


@pytest.mark.parametrize("drops", [1])
def test_without_idempotence_a_lost_reply_duplicates(make_broker: Any, drops: int) -> None:
    """The control: the same fault with enable_idempotence=False stores the record twice,
    so the tests above would notice if the leader's duplicate check stopped working."""
    broker, topic, tp = _setup(make_broker, drops=drops)
    with kvlog.Producer(
        bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=False, **FAST_RETRY
    ) as p:
        p.send(topic, value=b"twice", partition=0).get(timeout=20)
    records = read_partitions(broker.bootstrap, [tp])[tp]
    assert [r.value for r in records] == [b"twice", b"twice"]
