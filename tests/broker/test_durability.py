"""The issue's main integration test, against a kvlog process group in its own session.

Produce 100,000 keyed records with acks=all from two threads sharing one Producer; every
future resolves; each key's records sit in ``partition_for_key(key, 4)`` in send order;
a consumer reads every record back exactly once from offset 0; then SIGKILL the whole
process group, restart it on the same data dir, and every acknowledged record must still
be at the offset its RecordMetadata gave.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from brokertest_util import ServedBroker, read_partitions, unique_topic

import kvlog
from kvlog.types import TopicPartition

PARTITIONS = 4
RECORDS = 100_000
THREADS = 2
KEYS = 300


def _key(i: int) -> bytes:
    return f"key-{i:04d}".encode()


def _value(thread: int, key: bytes, seq: int) -> bytes:
    return b"%d|%s|%d" % (thread, key, seq)


def _parse(value: bytes) -> tuple[int, bytes, int]:
    thread, key, seq = value.split(b"|")
    return int(thread), key, int(seq)


def _produce(bootstrap: str, topic: str) -> dict[tuple[int, int], bytes]:
    """Send RECORDS keyed records from THREADS threads; returns {(partition, offset): value}
    from the acknowledged RecordMetadata."""
    producer = kvlog.Producer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    sent: list[list[tuple[bytes, bytes, Any]]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []

    def run(thread: int) -> None:
        try:
            rng = random.Random(thread)
            seqs: dict[bytes, int] = defaultdict(int)
            for _ in range(RECORDS // THREADS):
                key = _key(rng.randrange(KEYS))
                value = _value(thread, key, seqs[key])
                seqs[key] += 1
                sent[thread].append((key, value, producer.send(topic, value=value, key=key)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    producer.flush(60)
    producer.close()
    assert not errors, errors

    acked: dict[tuple[int, int], bytes] = {}
    for thread_sent in sent:
        last: dict[bytes, tuple[int, int]] = {}
        for key, value, future in thread_sent:
            meta = future.get(timeout=0)  # flush() returned: every future is resolved
            assert meta.topic == topic
            assert meta.partition == kvlog.partition_for_key(key, PARTITIONS), key
            assert meta.offset >= 0
            assert (meta.partition, meta.offset) not in acked, "two records, one offset"
            acked[(meta.partition, meta.offset)] = value
            # per thread and key, the acknowledged offsets grow in send order
            assert last.get(key, (meta.partition, -1)) < (meta.partition, meta.offset)
            last[key] = (meta.partition, meta.offset)
    assert len(acked) == RECORDS
    return acked


def _check_log(bootstrap: str, topic: str, acked: dict[tuple[int, int], bytes]) -> None:
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    read = read_partitions(bootstrap, tps, start=0, timeout_s=60)
    seen: dict[tuple[int, int], bytes] = {}
    next_seq: dict[tuple[int, bytes], int] = defaultdict(int)
    for tp, records in read.items():
        offsets = [r.offset for r in records]
        assert offsets == list(range(len(records))), f"{tp}: offsets not 0..n-1 exactly once"
        for r in records:
            thread, key, seq = _parse(r.value)
            assert r.key == key
            assert kvlog.partition_for_key(r.key, PARTITIONS) == tp.partition
            # in the log, each thread's records of a key come in send order, none missing
            assert seq == next_seq[(thread, key)], (tp, r.offset, thread, key, seq)
            next_seq[(thread, key)] += 1
            seen[(tp.partition, r.offset)] = r.value
    assert len(seen) == RECORDS, f"read back {len(seen)} records, {RECORDS} were acknowledged"
    missing = [k for k in acked if seen.get(k) != acked[k]]
    assert not missing, f"{len(missing)} acknowledged records not found at their offsets"


def test_produce_consume_sigkill_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    served = ServedBroker(data_dir).start()
    try:
        admin = kvlog.Admin(bootstrap_servers=served.bootstrap)
        topic = unique_topic("durable")
        admin.create_topic(topic, partitions=PARTITIONS)
        admin.close()

        acked = _produce(served.bootstrap, topic)
        _check_log(served.bootstrap, topic, acked)

        served.kill()
        served = ServedBroker(data_dir).start()
        _check_log(served.bootstrap, topic, acked)
    finally:
        served.kill()


def test_sigkill_under_load_loses_no_acknowledged_record(tmp_path: Path) -> None:
    """Kill the group while a producer is busy: whatever was acknowledged survives, at its
    offset, exactly once, in order."""
    data_dir = tmp_path / "data"
    served = ServedBroker(data_dir).start()
    topic = unique_topic("load")
    try:
        admin = kvlog.Admin(bootstrap_servers=served.bootstrap)
        admin.create_topic(topic, partitions=2)
        admin.close()
        producer = kvlog.Producer(
            bootstrap_servers=served.bootstrap,
            acks="all",
            linger_ms=1,
            request_timeout_ms=2000,
            delivery_timeout_ms=4000,
            max_block_ms=2000,
        )
        acked: dict[tuple[int, int], bytes] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def on_ack(meta: Any, value: bytes) -> None:
            with lock:
                acked[(meta.partition, meta.offset)] = value

        def run() -> None:
            i = 0
            while not stop.is_set():
                value = b"%08d" % i
                try:
                    producer.send(topic, value=value, partition=i % 2).add_callback(on_ack, value)
                except kvlog.KvlogError:
                    return  # the broker is gone and the buffer is full
                i += 1
                if i % 500 == 0:
                    time.sleep(0.001)

        sender = threading.Thread(target=run)
        sender.start()
        deadline = time.monotonic() + 20
        while len(acked) < 20_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        served.kill()
        with lock:
            snapshot = dict(acked)
        stop.set()
        sender.join(10)
        producer.close(timeout=0)
        assert len(snapshot) > 1000, "the producer barely got going before the kill"

        served = ServedBroker(data_dir).start()
        read = read_partitions(
            served.bootstrap, [TopicPartition(topic, p) for p in range(2)], start=0
        )
        for tp, records in read.items():
            values = [r.value for r in records]
            assert [r.offset for r in records] == list(range(len(records)))
            assert len(set(values)) == len(values), f"{tp}: a record is stored twice"
            assert values == sorted(values), f"{tp}: records out of send order"
        stored = {(tp.partition, r.offset): r.value for tp, rs in read.items() for r in rs}
        lost = [k for k, v in snapshot.items() if stored.get(k) != v]
        assert not lost, f"{len(lost)} acknowledged records lost, e.g. {sorted(lost)[:5]}"
    finally:
        served.kill()
