"""A consumer group of three Kafka-client processes (confluent-kafka and kafka-python mixed)
on kvlog: the members split the partitions, the group survives a member's SIGKILL and
another's leave, every record is read, a record is read twice only if the killed member
read it and had not committed it yet, and a restarted member resumes from the committed
offsets (kvlog's own tool shows them)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka_broker import KafkaBroker

import kvlog

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("_group_member_child.py")
TOPIC = "shipments"
PARTITIONS = 6
PER_PHASE = 60

pytestmark = pytest.mark.timeout(240)


class Member:
    """A member process and what it said, read on a thread (one JSON object per line)."""

    def __init__(self, broker: KafkaBroker, library: str, name: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), library, broker.kafka_bootstrap, "trio", TOPIC, name],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.assignment: list[int] = []
        self.consumed: list[tuple[int, int]] = []
        self.committed: dict[int, int] = {}
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def drain(self) -> None:
        while True:
            try:
                said = self.lines.get_nowait()
            except queue.Empty:
                return
            if "assignment" in said:
                self.assignment = said["assignment"]
            if "consumed" in said:
                self.consumed.extend((p, o) for p, o in said["consumed"])
            if "committed" in said:
                self.committed.update({int(p): o for p, o in said["committed"].items()})
            if "closed" in said:
                self.closed = True

    def uncommitted(self) -> set[tuple[int, int]]:
        """Records this member read but whose commit it never saw return."""
        return {(p, o) for p, o in self.consumed if o >= self.committed.get(p, 0)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def wait_for(check: Callable[[], bool], members: list[Member], what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        for member in members:
            member.drain()
        if check():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}: " + "; ".join(
            f"{m.name} owns {m.assignment}, read {len(m.consumed)}" for m in members
        )
        time.sleep(0.1)


@pytest.fixture
def broker(kafka_groups_broker: KafkaBroker) -> KafkaBroker:
    """The shared groups broker (tests/kafka/conftest.py), with this module's topic (the
    members kill each other, not the broker)."""
    with kvlog.Admin({"bootstrap.servers": kafka_groups_broker.bootstrap}) as admin:
        admin.create_topic(TOPIC, PARTITIONS, 1)
    return kafka_groups_broker


def test_three_mixed_members_survive_a_kill_and_a_leave(broker: KafkaBroker) -> None:
    produced: list[tuple[int, int]] = []
    producer = kvlog.Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})

    def produce_phase() -> None:
        futures = [
            producer.send(TOPIC, value=b"parcel %d" % i, partition=i % PARTITIONS)
            for i in range(PER_PHASE)
        ]
        producer.flush()
        produced.extend((f.get().partition, f.get().offset) for f in futures)

    def read_everything(members: list[Member]) -> Callable[[], bool]:
        return lambda: set(produced) <= {r for m in members for r in m.consumed}

    everyone: list[Member] = []
    try:
        produce_phase()
        a = Member(broker, "ck", "a-confluent")
        b = Member(broker, "kp", "b-kafka-python")
        c = Member(broker, "ck", "c-confluent")
        everyone += [a, b, c]
        trio = [a, b, c]
        wait_for(
            lambda: (
                all(m.assignment for m in trio)
                and sorted(p for m in trio for p in m.assignment) == list(range(PARTITIONS))
            ),
            trio,
            "three members to split six partitions",
        )
        wait_for(read_everything(trio), trio, "the first records")

        # A crash: the survivors take the dead member's partitions after its session ends.
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(timeout=10)
        b.drain()
        produce_phase()
        wait_for(
            lambda: sorted(a.assignment + c.assignment) == list(range(PARTITIONS)),
            [a, c],
            "the survivors to own every partition",
        )
        wait_for(read_everything(everyone), [a, c], "the records after the kill")

        # A leave: the last member takes everything at once.
        c.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: c.closed, [a, c], "c to close")
        assert c.proc.wait(timeout=10) == 0
        produce_phase()
        wait_for(lambda: a.assignment == list(range(PARTITIONS)), [a], "a to own everything")
        wait_for(read_everything(everyone), [a], "the records after the leave")

        # A restarted member joins and resumes from the committed offsets.
        b2 = Member(broker, "kp", "b-restarted")
        everyone.append(b2)
        wait_for(lambda: bool(b2.assignment), [a, b2], "the restarted member's assignment")
        produce_phase()
        wait_for(read_everything(everyone), [a, b2], "the records after the restart")
        assert b2.consumed, "the restarted member read nothing"

        # Every record was read; a record was read twice only if the killed member had
        # read it without its commit returning.
        seen: dict[tuple[int, int], int] = {}
        for member in everyone:
            for record in member.consumed:
                seen[record] = seen.get(record, 0) + 1
        assert set(seen) == set(produced)
        twice = {r for r, n in seen.items() if n > 1}
        assert twice <= b.uncommitted(), (twice, b.uncommitted())

        # The restarted member (auto.offset.reset earliest) resumed from the committed
        # offsets: it read only records produced after it joined.
        assert set(b2.consumed) <= set(produced[-PER_PHASE:])

        # kvlog's own tool sees the group's committed offsets at the log end.
        def all_committed() -> bool:
            report = _describe(broker)
            rows = {r["partition"]: r["committed_offset"] for r in report["partitions"]}
            return rows == {p: 4 * PER_PHASE // PARTITIONS for p in range(PARTITIONS)}

        wait_for(all_committed, [a, b2], "kvlog groups describe to show the commits")
    finally:
        producer.close()
        for member in everyone:
            member.stop()


def _describe(broker: KafkaBroker) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvlog.tools.cli",
            "groups",
            "describe",
            "trio",
            "--json",
            "--bootstrap-server",
            broker.bootstrap,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    ).stdout
    return json.loads(out)[0]
