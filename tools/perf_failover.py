"""``kvlog perf failover``: time from a partition leader's SIGKILL to the first
acknowledged produce on its new leader.

An embedded broker runs ``--log-dirs`` node processes (default 3); the topic has one
partition with replication factor ``--replication-factor`` (default 3) and
``min.insync.replicas`` 2. One producer (acks=all, idempotent, ``linger.ms=0``) sends a
record every ``1 / --rate`` s from its own thread; a callback stamps every
acknowledgement. Each repetition:

1. waits until every replica is in the ISR and acknowledgements flow;
2. looks up the partition's leader (Admin.describe_topic) and its node process's pid
   (the supervisor's process table), and SIGKILLs it: the clock starts;
3. stops the clock at the first acknowledgement of a record *sent* after the kill
   (``seconds_to_record_sent_after_kill``, the figure reported): only the new leader can
   acknowledge it. The first acknowledgement *received* after the kill is noted too
   (``seconds``), but it can be a reply the old leader sent just before it died;
4. waits for the supervisor to restart the node, for it to rejoin the ISR, and then
   ``--settle-s`` more, so each kill meets a settled cluster.

The supervisor delays the restart of a process that dies again within 30 s of its last
start (0.2 s, doubling up to 10 s), so repeated kills in one broker measure failover under
a crash loop; ``--fresh-broker`` starts a new embedded broker for every repetition, so each
kill is a first crash.

The leader moves because the supervisor sees its child die and tells the coordinator at
once (``node_down``); without that the coordinator would wait ``node.session.timeout.ms``.
Default broker and client settings otherwise. ``--json`` prints each repetition and the
median / maximum.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
import uuid
from bisect import bisect_right
from pathlib import Path
from typing import Any

import click

from .common import Command, make_console

WAIT_S = 60.0


class SteadyProducer:
    """A producer thread sending one record every ``interval_s``; acknowledgement times
    (perf_counter) are appended in the order the I/O thread resolves them."""

    def __init__(self, bootstrap: str, topic: str, rate: int) -> None:
        from kvlog.ipc.producer import Producer

        self.producer = Producer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        self.topic = topic
        self.interval_s = 1.0 / rate
        self.acks: list[tuple[float, float]] = []  # (acknowledged at, sent at)
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="perf-failover-producer", daemon=True)

    def start(self) -> None:
        self.producer.send(self.topic, value=b"warm-up").get(timeout=30)
        self.thread.start()

    def _run(self) -> None:
        clock = time.perf_counter
        value = os.urandom(100)
        key_base = os.urandom(8)
        acks = self.acks
        i = 0
        next_at = clock()
        while not self._stop.is_set():
            sent = clock()
            future = self.producer.send(self.topic, value, key_base + i.to_bytes(8, "big"))

            def done(_meta: Any, sent: float = sent) -> None:
                acks.append((clock(), sent))

            future.add_callback(done)
            future.add_errback(self.errors.append)
            i += 1
            next_at += self.interval_s
            pause = next_at - clock()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = clock()

    def first_ack_after(self, t: float, timeout_s: float) -> tuple[float, float]:
        """(first acknowledgement after t, first acknowledgement of a record sent after t)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            snapshot = list(self.acks)
            times = [a for a, _ in snapshot]
            index = bisect_right(times, t)
            after = snapshot[index:]
            sent_after = [a for a, s in after if s > t]
            if after and sent_after:
                return after[0][0], sent_after[0]
            time.sleep(0.002)
        raise click.ClickException(f"no acknowledgement within {timeout_s:.0f} s of the kill")

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.producer.close()


def _leader(admin: Any, topic: str) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    part = admin.describe_topic(topic).partitions[0]
    return part.leader, tuple(part.replicas), tuple(part.isr)


def _wait_full_isr(admin: Any, topic: str, replicas: int) -> int:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            leader, _, isr = _leader(admin, topic)
            if leader >= 0 and len(isr) == replicas:
                return leader
        except Exception:  # the broker may be answering from a moving cluster
            pass
        time.sleep(0.1)
    raise click.ClickException(f"the ISR did not get back to {replicas} replicas in {WAIT_S} s")


def _session(
    kills: int,
    log_dirs: int,
    replication_factor: int,
    rate: int,
    settle_s: float,
    report: Any,
) -> None:
    """One embedded broker, one topic, one steady producer, ``kills`` leader kills."""
    from kvlog.ipc.admin import Admin
    from kvlog.workers.supervisor import Broker

    root = Path(tempfile.mkdtemp(prefix="kvlog-perf-failover-"))
    topic = f"perf-failover-{uuid.uuid4().hex[:8]}"
    try:
        dirs = [root / "logs" / str(i) for i in range(log_dirs)]
        with Broker(root, "tcp://127.0.0.1:0", log_dirs=dirs) as broker:
            admin = Admin(bootstrap_servers=broker.bootstrap)
            try:
                admin.create_topic(topic, 1, replication_factor, config={"min.insync.replicas": 2})
                producer = SteadyProducer(broker.bootstrap, topic, rate)
                producer.start()
                try:
                    for _ in range(kills):
                        _wait_full_isr(admin, topic, replication_factor)
                        time.sleep(settle_s)
                        leader = _wait_full_isr(admin, topic, replication_factor)
                        producer.first_ack_after(time.perf_counter(), WAIT_S)  # flowing
                        pid = next(
                            p["pid"]
                            for p in broker.processes()
                            if p["role"] == "node" and p["node_id"] == leader
                        )
                        killed_at = time.perf_counter()
                        os.kill(pid, signal.SIGKILL)
                        first, first_new = producer.first_ack_after(killed_at, WAIT_S)
                        report(
                            {
                                "killed_node": leader,
                                "new_leader": _leader(admin, topic)[0],
                                "seconds": round(first - killed_at, 4),
                                "seconds_to_record_sent_after_kill": round(
                                    first_new - killed_at, 4
                                ),
                            }
                        )
                finally:
                    producer.close()
                if producer.errors:
                    raise click.ClickException(
                        f"{len(producer.errors)} record(s) failed; the first: {producer.errors[0]}"
                    )
            finally:
                admin.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@click.command("failover", cls=Command)
@click.option("--repeat", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--log-dirs", type=click.IntRange(min=2), default=3, show_default=True)
@click.option("--replication-factor", type=click.IntRange(min=2), default=3, show_default=True)
@click.option(
    "--rate",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Records/s of the steady producer.",
)
@click.option(
    "--settle-s",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Wait after the ISR is full again, before the next kill.",
)
@click.option(
    "--fresh-broker",
    is_flag=True,
    help="A new embedded broker for every repetition: each kill is the cluster's first "
    "(no supervisor restart backoff from earlier kills).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def perf_failover(
    repeat: int,
    log_dirs: int,
    replication_factor: int,
    rate: int,
    settle_s: float,
    fresh_broker: bool,
    as_json: bool,
) -> None:
    """Leader SIGKILL -> first acknowledged produce on the new leader."""
    if replication_factor > log_dirs:
        raise click.BadParameter("at most --log-dirs", param_hint="--replication-factor")
    console = make_console(stderr=True)
    reps: list[dict[str, Any]] = []

    def report(rep: dict[str, Any]) -> None:
        reps.append(rep)
        if not as_json:
            console.print(
                f"repetition {len(reps)}: node {rep['killed_node']} killed, node "
                f"{rep['new_leader']} acknowledged a new record after "
                f"{rep['seconds_to_record_sent_after_kill'] * 1000:.0f} ms"
            )

    if fresh_broker:
        for _ in range(repeat):
            _session(1, log_dirs, replication_factor, rate, settle_s, report)
    else:
        _session(repeat, log_dirs, replication_factor, rate, settle_s, report)
    times = [r["seconds_to_record_sent_after_kill"] for r in reps]
    result = {
        "test": "failover",
        "repeat": repeat,
        "log_dirs": log_dirs,
        "replication_factor": replication_factor,
        "min_insync_replicas": 2,
        "rate": rate,
        "settle_s": settle_s,
        "fresh_broker": fresh_broker,
        "repetitions": reps,
        "median_s": round(statistics.median(times), 4),
        "max_s": round(max(times), 4),
        "min_s": round(min(times), 4),
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"failover over {repeat} repetitions: median {result['median_s'] * 1000:.0f} ms, "
            f"max {result['max_s'] * 1000:.0f} ms"
        )
