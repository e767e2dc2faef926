"""Transactional against idempotent produce throughput with kvlog's Producer, paired in
one run on one broker (BENCHMARKS.md), and the commit latency of a 1,000-record
transaction over 3 partitions.

    PYTHONPATH=$PWD python tests/broker/bench_txn.py [records_per_run] [rounds]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import kvlog

VALUE = b"x" * 100


def idempotent(bootstrap: str, topic: str, n: int) -> float:
    with kvlog.Producer(bootstrap_servers=bootstrap, linger_ms=5) as p:
        p.send(topic, VALUE).get(30)  # connected, producer id known
        start = time.perf_counter()
        for _ in range(n):
            p.send(topic, VALUE)
        p.flush()
        return n / (time.perf_counter() - start)


def transactional(bootstrap: str, topic: str, n: int, per_txn: int, tid: str) -> float:
    with kvlog.Producer(bootstrap_servers=bootstrap, linger_ms=5, transactional_id=tid) as p:
        p.init_transactions()
        p.begin_transaction()
        p.send(topic, VALUE)
        p.commit_transaction()
        start = time.perf_counter()
        for first in range(0, n, per_txn):
            p.begin_transaction()
            for _ in range(min(per_txn, n - first)):
                p.send(topic, VALUE)
            p.commit_transaction()
        return n / (time.perf_counter() - start)


def commit_latency(bootstrap: str, topic: str, rounds: int) -> list[float]:
    out = []
    with kvlog.Producer(bootstrap_servers=bootstrap, linger_ms=5, transactional_id="lat") as p:
        p.init_transactions()
        for r in range(rounds + 2):
            p.begin_transaction()
            for i in range(1000):
                p.send(topic, VALUE, partition=i % 3)
            p.flush()
            start = time.perf_counter()
            p.commit_transaction()
            if r >= 2:
                out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory() as d:
        broker = kvlog.Broker(data_dir=d, listen="tcp://127.0.0.1:0").start()
        try:
            admin = kvlog.Admin(bootstrap_servers=broker.bootstrap)
            admin.create_topic("bench", partitions=3)
            admin.close()
            pairs = []
            for r in range(rounds):
                i = idempotent(broker.bootstrap, "bench", n)
                t = transactional(broker.bootstrap, "bench", n, 10_000, f"bench-{r}")
                pairs.append((i, t))
                print(f"round {r}: idempotent {i:,.0f}/s  transactional {t:,.0f}/s  {t / i:.0%}")
            ratio = statistics.median(t / i for i, t in pairs)
            print(f"median transactional/idempotent: {ratio:.0%}")
            lat = commit_latency(broker.bootstrap, "bench", 20)
            print(
                f"commit of 1,000 records over 3 partitions: p50 {statistics.median(lat):.1f} ms, "
                f"max {max(lat):.1f} ms"
            )
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
