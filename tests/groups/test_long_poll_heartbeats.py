"""Long-poll heartbeats end to end: with the consumer's default heartbeat.interval.ms
(3000), members hear of a rebalance the moment it starts, not at their next heartbeat.

Each consumer runs in its own thread (it polls every 50 ms, as an application's loop
would, and closes from that thread); a rebalance listener records its assignment. The
broker runs with group.initial.rebalance.delay.ms=0 (issue 4's setting).
"""

from __future__ import annotations

import threading
import time

import pytest
from group_procs import BROKER_CONFIG, Recorder, wait_until

import kvlog
from kvlog.types import TopicPartition as TP

pytestmark = pytest.mark.timeout(90)

DEFAULT_HEARTBEAT_MS = 3000


class Member(threading.Thread):
    """One consumer with default group settings, polled by its own thread."""

    def __init__(self, bootstrap: str, group: str, topic: str, name: str) -> None:
        super().__init__(name=f"member-{name}", daemon=True)
        self.bootstrap, self.group, self.topic, self.client_id = bootstrap, group, topic, name
        self.recorder = Recorder()
        self.leave = threading.Event()
        self.done = threading.Event()
        self.heartbeat_interval_ms: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        consumer = kvlog.Consumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            client_id=self.client_id,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        try:
            self.heartbeat_interval_ms = consumer.config["heartbeat_interval_ms"]
            consumer.subscribe([self.topic], listener=self.recorder)
            while not self.leave.is_set():
                consumer.poll(timeout_ms=50)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            consumer.close(autocommit=False)  # sends LeaveGroup
            self.done.set()

    def owned_since(self, t0: float) -> frozenset[TP] | None:
        """What it owns now, if it was (re)assigned after ``t0``; else None."""
        calls = list(self.recorder.calls)
        if not calls:
            return None
        kind, tps, at = calls[-1]
        if kind != "assigned" or at < t0:
            return None
        return frozenset(tps)


def stable_after(members: list[Member], t0: float, partitions: set[TP]) -> bool:
    """Every member was assigned after ``t0``, disjointly, covering every partition."""
    owned = [m.owned_since(t0) for m in members]
    if any(o is None for o in owned):
        return False
    flat = [tp for o in owned for tp in o or ()]
    return len(flat) == len(set(flat)) and set(flat) == partitions


def test_with_the_default_heartbeat_interval_a_leave_rebalances_well_under_it(
    tmp_path,
) -> None:
    topic, group = "long-poll", "long-poll-group"
    partitions = {TP(topic, p) for p in range(10)}
    with (
        kvlog.Broker(
            data_dir=tmp_path,
            listen="tcp://127.0.0.1:0",
            console_listen="none",
            config=BROKER_CONFIG,
        ) as b,
        kvlog.Admin(bootstrap_servers=b.bootstrap) as admin,
    ):
        admin.create_topic(topic, partitions=len(partitions))
        members = [Member(b.bootstrap, group, topic, f"lp{i}") for i in range(5)]
        try:
            start = time.monotonic()
            for m in members:
                m.start()
            wait_until(
                "five members to share the partitions",
                lambda: stable_after(members, start, partitions),
                timeout_s=45,
            )
            assert {m.heartbeat_interval_ms for m in members} == {DEFAULT_HEARTBEAT_MS}
            took = []
            for _ in range(2):  # two leaves: each must be well under the interval
                time.sleep(1.0)  # the others' heartbeats are parked at the coordinator now
                leaving = members.pop()
                t0 = time.monotonic()
                leaving.leave.set()
                wait_until(
                    f"{len(members)} members to share the partitions again",
                    lambda t0=t0: stable_after(members, t0, partitions),
                    timeout_s=30,
                )
                took.append(time.monotonic() - t0)
                assert leaving.done.wait(10) and leaving.error is None, leaving.error
            assert all(m.error is None for m in members), [m.error for m in members]
            # Heard at the next heartbeat, each leave would take up to 3 s (2.76 s median for
            # 20 members on 40 partitions); heard at once, a few hundred ms.
            print(f"rebalances took {took} s")
            assert max(took) < 1.5, f"rebalances took {took} s"
        finally:
            for m in members:
                m.leave.set()
            for m in members:
                m.done.wait(15)
