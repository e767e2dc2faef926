"""A whole fault run (issue 5): a fresh 3-node cluster (replication factor 3,
min.insync.replicas=2), producers and a consumer group from :mod:`checker`, the
:mod:`nemesis`; then the cluster settles and :func:`checker.analyse` checks it.

:func:`run_scenario` never raises for a broken invariant: its :class:`Outcome` says, with
a report (seed, kills, failures, problems, a timeline) and the figures of the run.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checker import (
    ConsumerWorker,
    Ledger,
    ProducerWorker,
    Seen,
    Verdict,
    analyse,
    keys_covering,
    leaders_from_metadata,
    read_replicas,
    replicas_settled,
    unseen_count,
)
from nemesis import BROKER_CONFIG, SEED_ENV, Cluster, DiskEpisode, Kill, Nemesis

import kvlog


@dataclass
class Scenario:
    seed: int
    kills: int
    producers: int = 2
    consumers: int = 2
    rate: float = 300.0  # records/s per producer
    partitions: int = 6
    gap_s: tuple[float, float] = (0.3, 1.5)
    disk_after: int | None = None  # full-disk episode after this many kills (None: none)
    disk_hold_s: float = 4.0
    disk_kills: int = 0  # broker/coordinator kills during the episode
    settle_timeout_s: float = 60.0
    consume_timeout_s: float = 45.0


@dataclass
class Outcome:
    scenario: Scenario
    verdict: Verdict
    kills: list[Kill]
    episode: DiskEpisode | None
    sent: int
    error_kinds: Counter[str]
    consumer_errors: Counter[str]
    run_s: float
    error_examples: list[str] = field(default_factory=list)
    liveness: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.liveness

    def kills_by_role(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for k in self.kills:
            out[k.role] += 1
            if k.role == "node" and k.led:
                out["node (leading)"] += 1
        return dict(out)

    def recovery_times(self) -> dict[str, float]:
        """From a node's SIGKILL until every partition had its full ISR again."""
        times = sorted(
            k.whole_after_s for k in self.kills if k.role == "node" and k.whole_after_s >= 0
        )
        if not times:
            return {}
        return {
            "median": round(times[len(times) // 2], 2),
            "p90": round(times[int(len(times) * 0.9)], 2),
            "max": round(times[-1], 2),
        }

    def figures(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "seed": self.scenario.seed,
            "kills": len(self.kills),
            "kills_by_role": self.kills_by_role(),
            "records_sent": self.sent,
            "acknowledged": v.acknowledged,
            "failed": v.failed,
            "failed_stored": v.failed_stored,
            "lost": v.lost + v.misplaced,
            "duplicated": v.duplicated,
            "reordered": v.reordered,
            "replicas_identical": v.replicas_identical,
            "consumer_coverage": f"{v.consumer_seen}/{v.acknowledged}",
            "node_kill_to_whole_s": self.recovery_times(),
            "slow_recoveries": len(self.slow),
            "run_s": round(self.run_s, 1),
        }

    def report(self) -> str:
        s = self.scenario
        lines = [
            f"fault run: seed {s.seed} (replay: {SEED_ENV}={s.seed}), {len(self.kills)} kills "
            f"{self.kills_by_role()}, {self.run_s:.1f} s",
            f"sent {self.sent}; failures by error: {dict(self.error_kinds)}",
            *(f"  e.g. {m}" for m in self.error_examples),
            f"consumer errors: {dict(self.consumer_errors)}",
            self.verdict.summary(),
        ]
        if self.episode is not None:
            lines.append("disk: " + self.episode.describe())
        if self.liveness:
            lines.append("liveness problems:")
            lines.extend(f"  {x}" for x in self.liveness)
        if self.slow:
            lines.append("slow recoveries (not failures):")
            lines.extend(f"  {x}" for x in self.slow)
        lines.append("events:")
        lines.extend(f"  t={at:7.2f} s  {text}" for at, text in self.events)
        return "\n".join(lines)


def run_scenario(data_dir: Path, s: Scenario) -> Outcome:
    """Start a 3-node cluster in ``data_dir``, run the workload under the nemesis, settle,
    check. Never raises for a failed invariant: the Outcome says."""
    print(f"[fault] {SEED_ENV}={s.seed}", flush=True)
    t0 = time.monotonic()
    topic = "fault"
    log_dirs = [data_dir / name for name in ("a", "b", "c")]
    broker = kvlog.Broker(
        data_dir, "tcp://127.0.0.1:0", log_dirs=log_dirs, config=dict(BROKER_CONFIG)
    ).start()
    ledger, seen = Ledger(), Seen()
    producers: list[ProducerWorker] = []
    consumers: list[ConsumerWorker] = []
    nemesis: Nemesis | None = None
    liveness: list[str] = []
    events: list[tuple[float, str]] = []

    def phase(text: str) -> None:
        events.append((time.monotonic() - t0, text))
        print(f"[fault] t={events[-1][0]:7.2f} s  {text}", flush=True)

    try:
        with kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin:
            admin.create_topic(
                topic,
                partitions=s.partitions,
                replication_factor=3,
                config={"min.insync.replicas": 2},
            )
        cluster = Cluster(broker, topic, s.partitions, 3)
        keys = keys_covering(s.partitions)
        rng = random.Random(s.seed)
        consumers = [
            ConsumerWorker(f"c{i}", broker.bootstrap, topic, "fault-group", seen)
            for i in range(s.consumers)
        ]
        producers = [
            ProducerWorker(
                f"p{i}",
                broker.bootstrap,
                topic,
                keys,
                ledger,
                seed=rng.randrange(1 << 32),
                rate=s.rate,
            )
            for i in range(s.producers)
        ]
        for worker in [*consumers, *producers]:
            worker.start()
        deadline = time.monotonic() + 20
        while not ledger.acked and time.monotonic() < deadline:
            time.sleep(0.05)
        if not ledger.acked:
            liveness.append("no record was acknowledged within 20 s of the start")
        nemesis = Nemesis(
            cluster,
            s.seed,
            s.kills,
            t0,
            gap_s=s.gap_s,
            disk_after=s.disk_after,
            disk_hold_s=s.disk_hold_s,
            disk_kills=s.disk_kills,
            ledger=ledger,
        )
        phase(f"{ledger.resolved} records resolved; nemesis starts")
        nemesis.start()
        nemesis.join()
        if nemesis.error is not None:
            liveness.append(f"the nemesis failed: {nemesis.error!r}")
        time.sleep(1.0)  # some writes after the last fault
        phase("faults over")
        for p in producers:
            p.stop_event.set()
        for p in producers:
            p.join(timeout=180)
            if p.is_alive():
                liveness.append(f"producer {p.producer_name} did not finish flushing")
            elif p.error is not None:
                liveness.append(f"producer {p.producer_name} failed: {p.error!r}")
            elif p.unflushed:
                liveness.append(f"producer {p.producer_name}: {p.unflushed} records unresolved")
        phase("producers flushed")
        why = cluster.wait_healthy(s.settle_timeout_s)
        if why is not None:
            liveness.append(f"not whole {s.settle_timeout_s:.0f} s after the run: {why}")
        phase("cluster whole")
        deadline = time.monotonic() + s.settle_timeout_s
        while True:
            not_yet = replicas_settled(
                read_replicas(cluster.log_dirs(), topic, s.partitions, with_batches=False), 3
            )
            if not not_yet or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not_yet:
            liveness.append(f"replicas did not converge: {not_yet}")
        phase("replicas converged")
        # Generous: before 3684ed8 a consumer whose fetch was parked on a killed node
        # stalled 30 s (test_consumer_resumes_soon_after_leader_restart).
        deadline = time.monotonic() + s.consume_timeout_s
        while unseen_count(ledger.acked, seen) and time.monotonic() < deadline:
            time.sleep(0.2)
        for c in consumers:
            c.stop_event.set()
        for c in consumers:
            c.join(timeout=30)
            if c.error is not None:
                liveness.append(f"consumer {c.consumer_name} failed: {c.error!r}")
        phase("consumers done")
        md = cluster.metadata(timeout_s=5.0) or {}
        replicas = read_replicas(cluster.log_dirs(), topic, s.partitions)
        verdict = analyse(
            dict(ledger.acked),
            dict(ledger.failed),
            replicas,
            leaders_from_metadata(md, topic),
            dict(seen.at),
        )
        for text in seen.conflicts:
            verdict.consumer_inconsistent += 1
            verdict.note("one offset read with two values", text)
    finally:
        if nemesis is not None:
            nemesis.stop_event.set()
        for worker in [*producers, *consumers]:
            worker.stop_event.set()
        broker.stop()
    consumer_errors: Counter[str] = Counter()
    for c in consumers:
        consumer_errors.update(c.errors)
    assert nemesis is not None
    return Outcome(
        scenario=s,
        verdict=verdict,
        kills=nemesis.kills,
        episode=nemesis.episode,
        sent=ledger.sent,
        error_kinds=ledger.error_kinds(),
        consumer_errors=consumer_errors,
        run_s=time.monotonic() - t0,
        error_examples=ledger.error_examples(t0),
        liveness=liveness + nemesis.liveness,
        slow=nemesis.slow,
        events=sorted(nemesis.events + events),
    )
