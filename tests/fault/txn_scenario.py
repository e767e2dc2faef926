"""A whole transactional fault run (issue 17): a fresh 3-node cluster (replication factor
3, min.insync.replicas=2), the :mod:`txn_workload` (transactional producers over two
topics, a feeder and an exactly-once transform), the :mod:`nemesis` killing nodes, the
broker and the coordinator (which hosts the transaction coordinator); then the workload
stops, the transform drains its input, the cluster settles, a read_committed and a
read_uncommitted reader read everything, and :func:`txn_checker.analyse_txns` checks it.

:func:`run_txn_scenario` never raises for a broken invariant: its :class:`TxnOutcome`
says, with a report (seed, kills, transactions in flight at each kill, problems with
their transactions' timelines, a timeline of the run).
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checker import Verdict, _check_replicas_identical, read_replicas, replicas_settled
from nemesis import BROKER_CONFIG, SEED_ENV, Cluster, Kill, Nemesis
from txn_checker import TxnVerdict, View, analyse_txns
from txn_workload import FeederWorker, TransformWorker, TxnHistory, TxnProducerWorker

import kvlog
from kvlog.errors import KvlogError
from kvlog.ipc.rpc import blocking_call
from kvlog.types import TopicPartition

TOPICS = {"eos-a": 3, "eos-b": 2}  # written by the transactional producers
SOURCE, SINK, GROUP = "eos-in", "eos-out", "eos-group"
SOURCE_PARTITIONS = SINK_PARTITIONS = 3


@dataclass
class TxnScenario:
    seed: int
    kills: int
    producers: int = 2  # transactional.ids writing eos-a / eos-b
    impatient_max_block_ms: int = 1500  # the first one's (the others': 15 s)
    feed_rate: float = 150.0  # input records/s
    gap_s: tuple[float, float] = (0.3, 1.2)
    settle_timeout_s: float = 60.0
    txn_timeout_ms: int = 10_000


@dataclass
class TxnOutcome:
    scenario: TxnScenario
    verdict: TxnVerdict
    kills: list[Kill]
    in_flight: list[str]  # per kill: the commits/aborts under way at that moment
    run_s: float
    client_errors: Counter[str]
    liveness: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)
    replica_problems: list[str] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.liveness and not self.replica_problems

    def kills_by_role(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for k in self.kills:
            out[k.role] += 1
            if k.role == "node" and k.led:
                out["node (leading)"] += 1
        return dict(out)

    def figures(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "seed": self.scenario.seed,
            "kills": len(self.kills),
            "kills_by_role": self.kills_by_role(),
            "transactions": dict(v.beliefs),
            "ends_in_flight_at_kills": sum(int(x.split()[0]) for x in self.in_flight),
            "aborted_records_in_read_uncommitted": v.aborted_in_uncommitted,
            "inputs": v.inputs,
            "ok": self.ok,
            "run_s": round(self.run_s, 1),
        }

    def report(self) -> str:
        s = self.scenario
        lines = [
            f"transactional fault run: seed {s.seed} (replay: {SEED_ENV}={s.seed}), "
            f"{len(self.kills)} kills {self.kills_by_role()}, {self.run_s:.1f} s",
            f"client errors: {dict(self.client_errors)}",
            self.verdict.summary(),
        ]
        if self.replica_problems:
            lines.append("replicas:")
            lines.extend(f"  {x}" for x in self.replica_problems)
        if self.liveness:
            lines.append("liveness problems:")
            lines.extend(f"  {x}" for x in self.liveness)
        if self.slow:
            lines.append("slow recoveries (not failures):")
            lines.extend(f"  {x}" for x in self.slow)
        lines.append("transactions ending at each kill:")
        lines.extend(f"  {x}" for x in self.in_flight)
        lines.append("events:")
        lines.extend(f"  t={at:7.2f} s  {text}" for at, text in self.events)
        return "\n".join(lines)


class TxnCluster(Cluster):
    """The nemesis' view of the cluster, healthy only when every topic of the run is."""

    def __init__(self, broker: Any, topics: dict[str, int]) -> None:
        super().__init__(broker, SINK, topics[SINK], 3)
        self.topics = topics

    def metadata(self, timeout_s: float = 1.0) -> dict[str, Any] | None:
        for endpoint in (self.broker.bootstrap, self.broker.coordinator_endpoint):
            try:
                return blocking_call(
                    endpoint, "metadata", {"topics": sorted(self.topics)}, timeout_s=timeout_s
                )
            except KvlogError:
                continue
        return None

    def led_by(self, node_id: int) -> list[int]:
        """Partitions (of all topics, numbered in topic order) the node leads."""
        md = self.metadata() or {}
        out, base = [], 0
        by_name = {t.get("name"): t for t in md.get("topics", [])}
        for topic, count in sorted(self.topics.items()):
            for p in by_name.get(topic, {}).get("partitions", []):
                if p["leader"] == node_id:
                    out.append(base + p["partition"])
            base += count
        return sorted(out)


class TxnNemesis(Nemesis):
    """The nemesis, killing the coordinator while a commit or abort is under way (waiting
    up to a second for one): the transaction coordinator dies mid-decision. A node drawn
    while it leads nothing (just back from a kill) gives way to the lowest-numbered node
    that leads something, so that every node kill takes leaderships down with it."""

    def __init__(self, history: TxnHistory, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history = history

    def kill(self, role: str, node_id: int | None) -> Kill | None:
        if role == "coordinator":
            deadline = time.monotonic() + 1.0
            while not self.history.ending_at(time.monotonic()) and time.monotonic() < deadline:
                time.sleep(0.002)
        if role == "node" and node_id is not None:
            self._await_processes()
            self.wait_whole(self.health_timeout_s)  # leaderships as they settled
        if role == "node" and node_id is not None and not self.cluster.led_by(node_id):
            leading = [n for n in self.cluster.node_ids if self.cluster.led_by(n)]
            if leading:
                self.say(f"node {node_id} leads nothing: killing node {leading[0]} instead")
                node_id = leading[0]
        return super().kill(role, node_id)


def _plan_with_coordinator_and_node(nemesis: Nemesis, rng: random.Random) -> None:
    """Every run kills the coordinator and a node at least once (the seed decides which
    kills they replace)."""
    roles = [role for _, (role, _) in nemesis.plan]
    nodes = nemesis.cluster.node_ids
    for role, target in (("coordinator", None), ("node", rng.choice(nodes))):
        if role in roles or not nemesis.plan:
            continue
        free = [i for i, r in enumerate(roles) if roles.count(r) > 1] or list(range(len(roles)))
        i = rng.choice(free)
        nemesis.plan[i] = (nemesis.plan[i][0], (role, target))
        roles[i] = role


def read_view(
    bootstrap: str, tps: list[TopicPartition], isolation: str, timeout_s: float
) -> tuple[View, list[str]]:
    """Every record of ``tps`` up to their high watermarks as the call starts, read with
    ``isolation``; and why it stopped short (read_committed stays below an open
    transaction)."""
    consumer = kvlog.Consumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        isolation_level=isolation,
        request_timeout_ms=3000,
    )
    out: View = {(tp.topic, tp.partition): [] for tp in tps}
    try:
        consumer.assign(tps)
        with kvlog.Consumer(bootstrap_servers=bootstrap) as plain:
            ends = plain.end_offsets(tps)  # read_uncommitted: high watermarks
        for tp in tps:
            consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                short = [
                    f"{tp.topic}/{tp.partition}: {isolation} reader at {consumer.position(tp)}, "
                    f"high watermark {ends[tp]}"
                    for tp in tps
                    if consumer.position(tp) < ends[tp]
                ]
                return out, short
            for tp, records in consumer.poll(timeout_ms=300, max_records=100_000).items():
                out[(tp.topic, tp.partition)].extend((r.offset, r.value) for r in records)
        return out, []
    finally:
        consumer.close()


def run_txn_scenario(data_dir: Path, s: TxnScenario) -> TxnOutcome:
    """Start a 3-node cluster in ``data_dir``, run the transactional workload under the
    nemesis, settle, check. Never raises for a failed invariant: the outcome says."""
    print(f"[txn-fault] {SEED_ENV}={s.seed}", flush=True)
    t0 = time.monotonic()
    topics = {**TOPICS, SOURCE: SOURCE_PARTITIONS, SINK: SINK_PARTITIONS}
    broker = kvlog.Broker(
        data_dir,
        "tcp://127.0.0.1:0",
        log_dirs=[data_dir / n for n in ("a", "b", "c")],
        config=dict(BROKER_CONFIG),
    ).start()
    history = TxnHistory(t0)
    rng = random.Random(s.seed)
    producers: list[TxnProducerWorker] = []
    feeder: FeederWorker | None = None
    transform: TransformWorker | None = None
    nemesis: Nemesis | None = None
    liveness: list[str] = []
    replica_problems: list[str] = []
    events: list[tuple[float, str]] = []

    def phase(text: str) -> None:
        events.append((time.monotonic() - t0, text))
        print(f"[txn-fault] t={events[-1][0]:7.2f} s  {text}", flush=True)

    def stop(worker: Any, name: str, timeout_s: float) -> None:
        worker.stop_event.set()
        worker.join(timeout=timeout_s)
        if worker.is_alive():
            liveness.append(f"{name} did not stop within {timeout_s:.0f} s")
        elif worker.error is not None:
            liveness.append(f"{name} failed: {worker.error!r}")

    try:
        with kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin:
            for topic, count in sorted(topics.items()):
                admin.create_topic(
                    topic, partitions=count, replication_factor=3, config={"min.insync.replicas": 2}
                )
        cluster = TxnCluster(broker, topics)
        phase("cluster started, topics created")
        feeder = FeederWorker(broker.bootstrap, SOURCE, s.feed_rate)
        transform = TransformWorker(
            "eos-transform",
            broker.bootstrap,
            history,
            SOURCE,
            SINK,
            GROUP,
            txn_timeout_ms=s.txn_timeout_ms,
        )
        producers = [
            TxnProducerWorker(
                f"eos-p{i}",
                broker.bootstrap,
                history,
                TOPICS,
                seed=rng.randrange(1 << 32),
                txn_timeout_ms=s.txn_timeout_ms,
                max_block_ms=s.impatient_max_block_ms if i == 0 else None,
            )
            for i in range(s.producers)
        ]
        for worker in [feeder, transform, *producers]:
            worker.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            b.endswith(" committed") for b in history.beliefs()
        ):
            time.sleep(0.05)
        if not history.beliefs():
            liveness.append("no transaction ended within 20 s of the start")
        nemesis = TxnNemesis(history, cluster, s.seed, s.kills, t0, gap_s=s.gap_s)
        _plan_with_coordinator_and_node(nemesis, rng)
        phase(f"{len(history.snapshot())} transactions begun; nemesis starts")
        nemesis.start()
        nemesis.join()
        if nemesis.error is not None:
            liveness.append(f"the nemesis failed: {nemesis.error!r}")
        phase("faults over")
        for i, worker in enumerate(producers):
            stop(worker, f"transactional producer eos-p{i}", 60)
        stop(feeder, "feeder", 90)
        if feeder.unflushed:
            liveness.append(f"feeder: {feeder.unflushed} input records unresolved")
        phase("producers stopped")
        ends = _wait_drained(broker.bootstrap, s.settle_timeout_s)
        if ends is not None:
            liveness.append(f"the transform did not catch up: {ends}; {transform.state}")
        stop(transform, "transform", 60)
        phase("transform drained")
        why = cluster.wait_healthy(s.settle_timeout_s)
        if why is not None:
            liveness.append(f"not whole {s.settle_timeout_s:.0f} s after the run: {why}")
        replica_problems = _replicas(cluster, topics, s.settle_timeout_s)
        phase("replicas converged")
        all_tps = [TopicPartition(t, p) for t, n in sorted(topics.items()) for p in range(n)]
        txn_tps = [tp for tp in all_tps if tp.topic != SOURCE]
        committed, short = read_view(broker.bootstrap, txn_tps, "read_committed", 30)
        liveness.extend(short)
        uncommitted, short = read_view(broker.bootstrap, all_tps, "read_uncommitted", 30)
        liveness.extend(short)
        source_tps = [tp for tp in all_tps if tp.topic == SOURCE]
        with kvlog.Consumer(bootstrap_servers=broker.bootstrap, group_id=GROUP) as c:
            input_ends = {tp.partition: o for tp, o in c.end_offsets(source_tps).items()}
            group_offsets = {tp.partition: c.committed(tp) for tp in source_tps}
            c.close(autocommit=False)
        phase("read back")
        verdict = analyse_txns(
            history.snapshot(),
            committed,
            uncommitted,
            input_log={p: uncommitted[(SOURCE, p)] for p in range(SOURCE_PARTITIONS)},
            input_acked=dict(feeder.acked),
            input_ends=input_ends,
            group_offsets=group_offsets,
            output_topic=SINK,
            t0=t0,
        )
    finally:
        if nemesis is not None:
            nemesis.stop_event.set()
        for worker in [*producers, feeder, transform]:
            if worker is not None:
                worker.stop_event.set()
        broker.stop()
    assert nemesis is not None and transform is not None
    in_flight = []
    for k in nemesis.kills:
        ending = history.ending_at(t0 + k.at_s)
        names = ", ".join(f"{t.name} ({t.belief})" for t in ending)
        in_flight.append(f"{len(ending)} at the {k.role} kill at t={k.at_s:.2f} s: {names}")
    stalls = _stalls(history, t0)
    errors = Counter(history.errors)
    errors["zombie instances fenced on purpose"] = sum(p.zombies for p in producers)
    errors.update(f"transform poll: {k}" for k in transform.poll_errors.elements())
    return TxnOutcome(
        scenario=s,
        verdict=verdict,
        kills=nemesis.kills,
        in_flight=in_flight,
        run_s=time.monotonic() - t0,
        client_errors=errors,
        liveness=liveness + nemesis.liveness,
        slow=nemesis.slow + stalls,
        replica_problems=replica_problems,
        events=sorted(
            nemesis.events
            + events
            + [(at - t0, text) for at, text in history.instances if "raised" in text]
        ),
    )


def _wait_drained(bootstrap: str, timeout_s: float) -> dict[int, tuple[int | None, int]] | None:
    """None once the group's committed offsets reach the input's end offsets, else
    partition -> (committed, end) when ``timeout_s`` ran out."""
    tps = [TopicPartition(SOURCE, p) for p in range(SOURCE_PARTITIONS)]
    deadline = time.monotonic() + timeout_s
    behind: dict[int, tuple[int | None, int]] = {}
    why = ""
    with kvlog.Consumer(bootstrap_servers=bootstrap, group_id=GROUP) as c:
        # Assigned (never polled) so that its offset lookups refresh these partitions'
        # leaders: test_known_bugs.test_end_offsets_follow_a_moved_leader_unassigned.
        c.assign(tps)
        while time.monotonic() < deadline:
            try:
                ends = c.end_offsets(tps)
                behind = {
                    tp.partition: (c.committed(tp), end)
                    for tp, end in ends.items()
                    if (c.committed(tp) or 0) < end
                }
            except KvlogError as exc:
                behind = {-1: (None, -1)}
                why = f"{type(exc).__name__}: {exc}"
                time.sleep(0.2)
                continue
            why = ""
            if not behind:
                c.close(autocommit=False)
                return None
            time.sleep(0.2)
        c.close(autocommit=False)
    print(f"[txn-fault] drain: {behind} {why}", flush=True)
    return behind


def _replicas(cluster: TxnCluster, topics: dict[str, int], timeout_s: float) -> list[str]:
    """Replicas converge, and hold the same batches (markers too) below the high watermark."""
    problems: list[str] = []
    deadline = time.monotonic() + timeout_s
    for topic, count in sorted(topics.items()):
        while True:
            replicas = read_replicas(cluster.log_dirs(), topic, count, with_batches=False)
            not_yet = replicas_settled(replicas, 3)
            if not not_yet or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not_yet:
            problems.append(f"{topic}: replicas did not converge: {not_yet}")
        v = Verdict()
        for p, by_node in sorted(read_replicas(cluster.log_dirs(), topic, count).items()):
            _check_replicas_identical(v, p, by_node)
        problems.extend(f"{topic}: {t}" for texts in v.problems.values() for t in texts)
    return problems


def _stalls(history: TxnHistory, t0: float, gap_s: float = 3.0) -> list[str]:
    """Gaps of more than ``gap_s`` between one transaction's end and the next, per
    transactional.id (each instance's first wait included)."""
    ends: dict[str, list[float]] = {}
    for t in history.snapshot():
        if t.ended_at >= 0:
            ends.setdefault(t.tid, []).append(t.ended_at)
    out = []
    for tid, times in sorted(ends.items()):
        times.sort()
        for a, b in itertools.pairwise(times):
            if b - a > gap_s:
                out.append(f"{tid}: no transaction ended from t={a - t0:.2f} to {b - t0:.2f} s")
    return out
