"""Acknowledgements follow durability, with the node's pipelined group commit.

With ``commit.pipelined``, ``test.commit.fail`` makes one group commit of the node fail in
its fsync phase, after its transaction's body ran and while the node's loop already stages
the next requests.
An acknowledgement sent before the fsync (at the hand-off to the committer) would tell
the producer its records are stored when they are not: every acknowledged record must
be in the log at its acknowledged offset, and no failed one may be.
"""

from __future__ import annotations

from typing import Any

from brokertest_util import read_partitions, unique_topic

import kvlog
from kvlog.types import TopicPartition

FAILING_COMMIT = 3


def test_records_of_a_failed_commit_fail_and_every_acknowledged_one_is_stored(
    make_broker: Any,
) -> None:
    broker = make_broker({"commit.pipelined": True, "test.commit.fail": FAILING_COMMIT})
    topic = unique_topic("commit-acks")
    tp = TopicPartition(topic, 0)
    with kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin:
        admin.create_topic(topic, partitions=1)
    acked: dict[bytes, int] = {}
    failed: list[bytes] = []
    with kvlog.Producer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        enable_idempotence=False,
        retries=0,
        linger_ms=0,
        request_timeout_ms=10_000,
    ) as producer:
        # One request per commit: commits 1 .. FAILING_COMMIT - 1 succeed.
        for i in range(FAILING_COMMIT - 1):
            value = f"before-{i}".encode()
            acked[value] = producer.send(topic, value=value, partition=0).get(timeout=30).offset
        # Many requests at once: the failing commit, and those staged during it.
        futures = [
            (f"burst-{i}".encode(), producer.send(topic, value=f"burst-{i}".encode(), partition=0))
            for i in range(300)
        ]
        for value, future in futures:
            try:
                acked[value] = future.get(timeout=30).offset
            except kvlog.KvlogError:
                failed.append(value)
    assert failed, f"commit {FAILING_COMMIT} failed, yet every record was acknowledged"
    assert failed[0] == b"burst-0", "the first record of the burst was in the failed commit"
    stored = {r.value: r.offset for r in read_partitions(broker.bootstrap, [tp])[tp]}
    assert stored == acked, "the log holds exactly the acknowledged records, at their offsets"
