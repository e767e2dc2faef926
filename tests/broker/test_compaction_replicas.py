"""Compaction with replication factor 3, in real processes.

Three log dirs (three nodes), one compacted partition replicated on all of them. An
idempotent acks=all producer writes many values for a few keys, and tombstones; each
replica compacts its own copy (the sweeper runs over every log dir); then the leader is
SIGKILLed and another replica takes over. Checked: every replica did compact, the
replicas' compacted logs agree on every key's latest value, a consumer reading from
offset 0 on the new leader rebuilds exactly the table that was written, the producer
goes on writing to the new leader (its idempotence state survived), and the old leader,
restarted, catches up into a log that agrees too.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from brokertest_util import read_partitions, wait_until

import kvlog
from kvlog import batch as batch_format
from kvlog.lmdb_store import LogDir
from kvlog.types import TopicPartition
from kvlog.workers import compact_requests

TOPIC = "table"
TP = TopicPartition(TOPIC, 0)
KEYS = [f"key-{i}".encode() for i in range(20)]
ROUNDS = 30


def replica_log(log_dir: Path) -> tuple[dict[bytes, bytes | None], int, int]:
    """A replica's latest value per key (None: tombstone), its record count and LEO."""
    store = LogDir(log_dir, readonly=True)
    try:
        with store.reader() as r:
            state = r.offsets(TP)
            stored = r.read(TP, state.log_start_offset, 1 << 40)
    finally:
        store.close()
    table: dict[bytes, bytes | None] = {}
    count = 0
    last = -1
    for base, value in stored:
        for rec in batch_format.decode(value, base):
            assert rec.offset > last
            last = rec.offset
            table[rec.key] = rec.value
            count += 1
    return table, count, state.log_end_offset


def full_isr(admin: kvlog.Admin) -> int | None:
    part = admin.describe_topic(TOPIC).partitions[0]
    return part.leader if part.leader >= 0 and len(part.isr) == 3 else None


def test_replicas_compact_and_agree_across_a_leader_election(tmp_path: Path) -> None:
    log_dirs = [tmp_path / "logs" / name for name in ("a", "b", "c")]
    config = {"log.cleaner.backoff.ms": 100, "replica.fetch.wait.max.ms": 50}
    with kvlog.Broker(
        tmp_path, "tcp://127.0.0.1:0", console_listen="none", log_dirs=log_dirs, config=config
    ) as broker:
        admin = kvlog.Admin(bootstrap_servers=broker.bootstrap)
        admin.create_topic(
            TOPIC,
            1,
            3,
            config={
                "cleanup.policy": "compact",
                "min.cleanable.dirty.ratio": 0.01,
                "min.insync.replicas": 2,
            },
        )
        wait_until(lambda: full_isr(admin) is not None, 30, what="a full ISR")
        expected: dict[bytes, bytes | None] = {}
        producer = kvlog.Producer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
        try:
            for r in range(ROUNDS):
                futures = []
                for i, key in enumerate(KEYS):
                    value = None if (r + i) % 11 == 0 else f"{key.decode()}@{r}".encode()
                    futures.append(producer.send(TOPIC, value=value, key=key))
                    expected[key] = value
                for f in futures:
                    f.get(30)
            produced = ROUNDS * len(KEYS)

            # Every replica compacts its own copy (the sweeper's regular look, or forced).
            def compacted() -> bool:
                request = compact_requests.submit(tmp_path, TOPIC, int(time.time() * 1000))
                answer = compact_requests.wait(tmp_path, request, 30) or {}
                done = {p["log_dir"] for p in answer.get("partitions", [])}
                counts = [replica_log(d)[1] for d in log_dirs]
                return len(done) == 3 and all(c < produced // 2 for c in counts)

            wait_until(compacted, 60, interval_s=0.2, what="every replica compacted")
            tables = [replica_log(d)[0] for d in log_dirs]
            assert tables[0] == tables[1] == tables[2] == expected

            # The leader dies; another replica takes over and serves the compacted log.
            leader = wait_until(lambda: full_isr(admin), 30, what="a full ISR")
            nodes = {c.node_id: c for c in broker.children if c.role == "node"}
            os.kill(nodes[leader].pid, signal.SIGKILL)
            wait_until(
                lambda: admin.describe_topic(TOPIC).partitions[0].leader not in (-1, leader),
                30,
                what="a new leader",
            )
            for key in KEYS[:5]:  # the same producer goes on (idempotence)
                value = f"{key.decode()}@after".encode()
                producer.send(TOPIC, value=value, key=key).get(30)
                expected[key] = value
            consumed = read_partitions(broker.bootstrap, [TP], start=0)[TP]
            table: dict[bytes, bytes | None] = {}
            for rec in consumed:
                table[rec.key] = rec.value
            assert table == expected
            assert len(consumed) < produced // 2  # the new leader's log is compacted
            offsets = [rec.offset for rec in consumed]
            assert offsets == sorted(set(offsets))

            # The old leader restarts, catches up, and agrees as well.
            wait_until(lambda: full_isr(admin) is not None, 60, what="the ISR whole again")
            ends = {replica_log(d)[2] for d in log_dirs}
            wait_until(
                lambda: len({replica_log(d)[2] for d in log_dirs}) == 1,
                30,
                what=f"every replica at the same log end ({ends})",
            )
            assert all(replica_log(d)[0] == expected for d in log_dirs)
        finally:
            producer.close()
            admin.close()
