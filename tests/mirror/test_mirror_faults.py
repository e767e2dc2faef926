"""Store and forward under faults: an appliance (the source kvlog) keeps writing while
its uplink (the target, a second kvlog's Kafka listener) is down; ``kvlog mirror``, a
process of its own, forwards the backlog once the target is up, and is SIGKILLed and
restarted at random moments, the target's node and the source's node are SIGKILLed
(their supervisors restart them) and the link is cut again. At the end the target holds
every source record exactly once, in source order per partition. A long run
(KVLOG_LONG_TESTS=1) makes 24 kills."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mirror_util import FixedBroker, MirrorProcess, end_offsets, read_all, wait_until

import kvlog
from kvlog.types import TopicPartition

PARTITIONS = 3


class Appliance(threading.Thread):
    """Writes keyed records to the source without pause until stopped; counts what was
    acknowledged. Owned by the test; stop() joins it."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="appliance", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.sent = 0
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with kvlog.Producer(bootstrap_servers=self.bootstrap, linger_ms=5) as producer:
                while not self.halt.is_set():
                    start = self.sent
                    producer.send_batch(
                        self.topic,
                        [b"reading %d" % i for i in range(start, start + 500)],
                        keys=[b"sensor-%d" % (i % 41) for i in range(start, start + 500)],
                    ).get(60)
                    self.sent += 500
                    time.sleep(0.02)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> int:
        self.halt.set()
        self.join(90)
        assert self.error is None, f"the appliance's producer failed: {self.error!r}"
        return self.sent


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Any]:
    with kvlog.Broker(tmp_path / "source", "tcp://127.0.0.1:0") as broker:
        yield broker


def _restarted_node(broker: Any, killed: set[int]) -> int | None:
    """The broker's node process once its supervisor has restarted it after a kill."""
    [pid] = [p["pid"] for p in broker.processes() if p["role"] == "node"]
    return None if pid in killed else pid


def _kills() -> int:
    """Faults in one run: at least 20 in a long run (KVLOG_LONG_TESTS=1)."""
    return 24 if os.environ.get("KVLOG_LONG_TESTS") == "1" else 9


def test_the_appliance_writes_while_the_target_is_down_then_forwards_exactly_once(
    source: Any, tmp_path: Path
) -> None:
    topic = "readings"
    kvlog.Admin(bootstrap_servers=source.bootstrap).create_topic(topic, partitions=PARTITIONS)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    target = FixedBroker(tmp_path / "target")  # the uplink is down: not started yet
    mirror = MirrorProcess(
        [
            "--to",
            target.kafka,
            "--topics",
            topic,
            "--name",
            "site42",
            "--state-dir",
            str(tmp_path / "state"),
            "--bootstrap-server",
            source.bootstrap,
        ],
        tmp_path / "mirror.log",
    )
    appliance = Appliance(source.bootstrap, topic)
    rng = random.Random(1842)
    killed: set[int] = set()
    try:
        mirror.start()
        appliance.start()
        wait_until(lambda: appliance.sent >= 5_000, 60, "the appliance to write a backlog")
        assert mirror.alive(), mirror.log()
        target.start()  # the uplink is back
        wait_until(lambda: sum(end_offsets(target.bootstrap, tps).values()) > 0, 60, "forwarding")
        for kill in range(_kills()):
            time.sleep(rng.uniform(0.2, 1.5))
            fault = kill % 3
            if fault == 0:  # the mirror, mid-batch or between batches
                mirror.kill()
                mirror.start()
            else:  # the target's node, then the source's (each restarted by its supervisor)
                broker = target.broker if fault == 1 else source
                pid = wait_until(lambda b=broker: _restarted_node(b, killed), 30, "a node")
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        target.stop()  # the link is cut again while the appliance writes
        time.sleep(1.5)
        target.start()
        time.sleep(rng.uniform(0.2, 1.0))
        mirror.kill()  # one more kill once the link is back
        mirror.start()
        sent = appliance.stop()
        source_ends = end_offsets(source.bootstrap, tps)
        assert sum(source_ends.values()) == sent
        wait_until(
            lambda: end_offsets(target.bootstrap, tps) == source_ends,
            120,
            f"the target to reach the source's ends {source_ends}",
        )
        on_source = read_all(source.bootstrap, tps)
        on_target = read_all(target.bootstrap, tps)
        for tp in tps:
            assert [(r.key, r.value, r.timestamp) for r in on_target[tp]] == [
                (r.key, r.value, r.timestamp) for r in on_source[tp]
            ], f"{tp}: the target differs from the source"
        assert mirror.alive(), mirror.log()
    finally:
        appliance.halt.set()
        mirror.stop()
        target.stop()
