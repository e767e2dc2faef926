"""Transactions through real processes with kvlog's own clients (issue 17): commit and
abort across partitions, read_committed against read_uncommitted, fencing, a transaction
left open by a SIGKILLed producer timing out, an exactly-once consume-transform-produce
loop SIGKILLed and restarted, and the coordinator SIGKILLed while a commit waits for its
markers."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import on_group_broker
import pytest
from brokertest_util import read_partitions, unique_topic, wait_until

import kvlog
from kvlog.errors import ErrorCode, InvalidTxnStateError, KvlogError, ProducerFencedError
from kvlog.types import TopicPartition

# New groups here start after 100 ms, not Kafka's 3 s (tests/broker/conftest.py).
broker, admin = on_group_broker.broker, on_group_broker.admin

CHILD = str(Path(__file__).resolve().parent / "_txn_child.py")


def _values(bootstrap: str, tps: list[TopicPartition], **config: Any) -> list[bytes]:
    got = read_partitions(bootstrap, tps, **config)
    return sorted(r.value for records in got.values() for r in records)


def _child(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, CHILD, *args], stdout=subprocess.PIPE, text=True, env=env
    )


def test_commit_shows_all_at_once_and_abort_shows_none(broker: Any, admin: Any) -> None:
    topic = unique_topic("txn")
    admin.create_topic(topic, partitions=3)
    tps = [TopicPartition(topic, p) for p in range(3)]
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, transactional_id=topic) as p:
        p.init_transactions()
        p.begin_transaction()
        for i in range(30):
            p.send(topic, b"c%02d" % i, partition=i % 3)
        p.flush()
        # Written but undecided: below every read_committed reader's LSO nothing moved.
        assert _values(broker.bootstrap, tps, isolation_level="read_committed") == []
        assert len(_values(broker.bootstrap, tps)) == 30
        p.commit_transaction()
        p.begin_transaction()
        for i in range(30):
            p.send(topic, b"a%02d" % i, partition=i % 3)
        p.abort_transaction()
        p.begin_transaction()
        p.send(topic, b"z", partition=0)
        p.commit_transaction()
    committed = _values(broker.bootstrap, tps, isolation_level="read_committed")
    assert committed == sorted([b"c%02d" % i for i in range(30)] + [b"z"])
    everything = _values(broker.bootstrap, tps)  # read_uncommitted: aborted ones too
    assert len(everything) == 61 and b"a00" in everything


def test_a_second_producer_fences_the_first(broker: Any, admin: Any) -> None:
    topic = unique_topic("fence")
    admin.create_topic(topic, partitions=1)
    tp = TopicPartition(topic, 0)
    first = kvlog.Producer(bootstrap_servers=broker.bootstrap, transactional_id=topic)
    second = kvlog.Producer(bootstrap_servers=broker.bootstrap, transactional_id=topic)
    try:
        first.init_transactions()
        first.begin_transaction()
        first.send(topic, b"zombie", partition=0)
        first.flush()
        second.init_transactions()  # aborts the first's open transaction, bumps the epoch
        with pytest.raises(ProducerFencedError):
            first.send(topic, b"late", partition=0)
            first.commit_transaction()
        with pytest.raises(ProducerFencedError):
            first.begin_transaction()  # fenced for good
        second.begin_transaction()
        second.send(topic, b"live", partition=0)
        second.commit_transaction()
        with pytest.raises(InvalidTxnStateError):
            second.send(topic, b"outside", partition=0)
    finally:
        first.close()
        second.close()
    assert _values(broker.bootstrap, [tp], isolation_level="read_committed") == [b"live"]


def test_a_killed_producers_open_transaction_times_out_and_aborts(broker: Any, admin: Any) -> None:
    topic = unique_topic("open")
    admin.create_topic(topic, partitions=1)
    tp = TopicPartition(topic, 0)
    child = _child("open", broker.bootstrap, topic)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "sent"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    with kvlog.Producer(bootstrap_servers=broker.bootstrap) as plain:
        plain.send(topic, b"after", partition=0).get(10)
    consumer = kvlog.Consumer(
        bootstrap_servers=broker.bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    try:
        consumer.assign([tp])
        seen: list[bytes] = []

        def after_visible() -> bool:
            for records in consumer.poll(200).values():
                seen.extend(r.value for r in records)
            return b"after" in seen

        # The open transaction holds the LSO until the coordinator aborts it (1.5 s).
        wait_until(after_visible, 30, what="the timed-out transaction to abort")
        assert seen == [b"after"]
    finally:
        consumer.close()
    assert len(_values(broker.bootstrap, [tp])) == 6  # read_uncommitted: the 5 as well


@pytest.mark.timeout(240)
def test_exactly_once_consume_transform_produce_survives_sigkills(broker: Any, admin: Any) -> None:
    source, sink, group = unique_topic("eos-in"), unique_topic("eos-out"), unique_topic("eos")
    admin.create_topic(source, partitions=3)
    admin.create_topic(sink, partitions=3)
    inputs = [b"r%04d" % i for i in range(2000)]
    with kvlog.Producer(bootstrap_servers=broker.bootstrap) as p:
        for i, value in enumerate(inputs):
            p.send(source, value, key=b"%d" % i)
    rng = random.Random(17)
    kills = 0
    while kills < 20:
        child = _child("eos", broker.bootstrap, source, sink, group)
        assert child.stdout is not None
        # Kill it at a random moment after its 1st to 3rd commit: between transactions or
        # inside one (each is up to 10 records), at most ~50 records a life, so the
        # input lasts for all 20 kills.
        for _ in range(rng.randint(1, 3)):
            line = child.stdout.readline()
            assert line.startswith("committed"), f"the loop ended early: {line!r}"
        time.sleep(rng.uniform(0.0, 0.02))
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += 1
    assert kills == 20
    child = _child("eos", broker.bootstrap, source, sink, group)  # finishes the rest
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0, out
    sink_tps = [TopicPartition(sink, p) for p in range(3)]
    produced = _values(broker.bootstrap, sink_tps, isolation_level="read_committed")
    assert produced == sorted(v.upper() for v in inputs), "not exactly once"
    consumer = kvlog.Consumer(bootstrap_servers=broker.bootstrap, group_id=group)
    try:
        source_tps = [TopicPartition(source, p) for p in range(3)]
        ends = consumer.end_offsets(source_tps)
        assert {tp: consumer.committed(tp) for tp in source_tps} == ends
    finally:
        consumer.close(autocommit=False)


@pytest.mark.timeout(180)
def test_a_commit_survives_the_coordinator_killed_before_its_markers(tmp_path: Path) -> None:
    """The partition's only node is down, so the commit's markers cannot be written; the
    coordinator is SIGKILLed in PrepareCommit and restarted; once the node is back the
    commit completes and read_committed readers see the transaction."""
    with kvlog.Broker(tmp_path, "tcp://127.0.0.1:0") as broker:
        admin = kvlog.Admin(bootstrap_servers=broker.bootstrap)
        topic = unique_topic("prepare")
        admin.create_topic(topic, partitions=1)
        tp = TopicPartition(topic, 0)
        producer = kvlog.Producer(bootstrap_servers=broker.bootstrap, transactional_id=topic)
        try:
            producer.init_transactions()
            producer.begin_transaction()
            for i in range(10):
                producer.send(topic, b"v%d" % i, partition=0)
            producer.flush()
            [node] = [c for c in broker.children if c.role == "node"]
            [coordinator] = [c for c in broker.children if c.role == "coordinator"]
            node.started_at = coordinator.started_at = time.time()
            node.backoff_s = 4.0  # the node stays down a while
            os.kill(node.pid, signal.SIGKILL)
            producer.commit_transaction()  # durable PrepareCommit; markers still owed
            old = coordinator.pid
            os.kill(old, signal.SIGKILL)
            wait_until(lambda: coordinator.pid != old, 30, what="the coordinator's restart")
        finally:
            producer.close()
        values = wait_until(
            lambda: _values(broker.bootstrap, [tp], isolation_level="read_committed"),
            60,
            what="the commit to complete after the restarts",
        )
        assert values == [b"v%d" % i for i in range(10)]
        admin.close()


def _joined(bootstrap: str, topic: str, group: str, **config: Any) -> Any:
    consumer = kvlog.Consumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **config,
    )
    deadline = time.monotonic() + 30
    while not consumer.assignment():
        assert time.monotonic() < deadline, "the consumer never got its partitions"
        consumer.poll(100)
    return consumer


def test_offsets_of_a_consumer_the_group_moved_on_from_are_fenced(broker: Any, admin: Any) -> None:
    """KIP-447: send_offsets_to_transaction carries the consumer's group metadata, and a
    consumer the group rebalanced without (a zombie) cannot commit through its producer."""
    topic = unique_topic("kip447")
    admin.create_topic(topic, partitions=1)
    tp = TopicPartition(topic, 0)
    group = f"{topic}-g"
    zombie = _joined(broker.bootstrap, topic, group)
    stale = zombie.group_metadata()
    zombie.close(autocommit=False)  # leaves: the group moves on without it
    live = _joined(broker.bootstrap, topic, group)
    try:
        current = live.group_metadata()
        assert (current.member_id, current.generation_id) != (stale.member_id, stale.generation_id)
        with kvlog.Producer(bootstrap_servers=broker.bootstrap, transactional_id=topic) as p:
            p.init_transactions()
            p.begin_transaction()
            p.send(topic, b"zombie's", partition=0)
            with pytest.raises(KvlogError) as refused:
                p.send_offsets_to_transaction({tp: 5}, stale)
            assert refused.value.code in (ErrorCode.ILLEGAL_GENERATION, ErrorCode.UNKNOWN_MEMBER_ID)
            with pytest.raises(InvalidTxnStateError):
                p.commit_transaction()  # only an abort ends it now
            p.abort_transaction()
            assert live.committed(tp) is None

            p.begin_transaction()
            p.send(topic, b"live", partition=0)
            p.send_offsets_to_transaction({tp: 1}, current)
            p.commit_transaction()
        assert live.committed(tp) == 1
    finally:
        live.close(autocommit=False)
    assert _values(broker.bootstrap, [tp], isolation_level="read_committed") == [b"live"]


def test_a_producer_whose_sequence_a_leader_lost_bumps_its_epoch_after_the_abort(
    broker: Any, admin: Any
) -> None:
    """KIP-360: the partition is recreated under the producer, so its leader has no state
    for it (UNKNOWN_PRODUCER_ID at the next batch); the transaction aborts, the abort bumps
    the epoch with the producer's current id and epoch, and the next transaction's
    sequences restart at 0 and commit (before, every later transaction failed)."""
    topic = unique_topic("kip360")
    admin.create_topic(topic, partitions=1)
    tp = TopicPartition(topic, 0)
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, transactional_id=topic) as p:
        p.init_transactions()
        p.begin_transaction()
        for i in range(5):
            p.send(topic, b"old-%d" % i, partition=0)
        p.commit_transaction()
        admin.delete_topic(topic)
        wait_until(lambda: topic not in admin.list_topics(), 30, what="the topic's deletion")
        admin.create_topic(topic, partitions=1)
        p.begin_transaction()
        lost = p.send(topic, b"lost", partition=0)
        with pytest.raises(InvalidTxnStateError):
            p.commit_transaction()
        assert isinstance(lost.exception(5), KvlogError)
        assert lost.exception(5).code is ErrorCode.UNKNOWN_PRODUCER_ID
        epoch = p._txn.producer_epoch
        p.abort_transaction()
        assert p._txn.producer_epoch == epoch + 1
        p.begin_transaction()
        p.send(topic, b"new", partition=0)
        p.commit_transaction()
    assert _values(broker.bootstrap, [tp], isolation_level="read_committed") == [b"new"]
