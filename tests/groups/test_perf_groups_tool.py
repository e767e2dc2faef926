"""``kvlog perf groups`` counts a group's completion from before the change that caused it.

The grow scenario's untimed step closes the grown members at once; each close() sends
LeaveGroup and then still stops its heartbeat thread and its I/O. The last LeaveGroup lets
the coordinator finish the rebalance, and the members left can be assigned (every
partition covered) before the last closing thread is done. The tool used to take the start
of that step *after* every close had returned, so it missed those assignments and waited
for one that never came ("not complete 120 s after the change", about one run in three
of ``--members 2 --partitions 100 --scenario grow --grow-to 50 --repeat 3``) although the
group was complete. These tests drive ``run()`` with members that are assigned exactly
that early, deterministically, without a broker.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import click
import pytest

import kvlog.ipc.admin
from kvlog.tools import perf_groups

PARTITIONS = 6


class FakeCoordinator:
    """Every change assigns the members present at once (range-like, disjoint, covering)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.present: list[FakeMember] = []

    def _rebalance(self) -> None:
        now = time.perf_counter()
        n = len(self.present)
        for i, member in enumerate(self.present):
            member.assigned.events.append((now, frozenset(range(i, PARTITIONS, n))))

    def join(self, member: FakeMember) -> None:
        with self.lock:
            self.present.append(member)
            self._rebalance()

    def leave(self, member: FakeMember) -> None:
        with self.lock:
            self.present.remove(member)
            if self.present:
                self._rebalance()


class FakeMember(perf_groups.Member):
    coordinator: FakeCoordinator

    def start(self) -> None:
        self.coordinator.join(self)

    def close(self) -> None:
        self.closing_at = time.perf_counter()
        # The LeaveGroup: the members left are assigned at once...
        self.coordinator.leave(self)
        # ...while close() still stops the heartbeat thread and the I/O.
        time.sleep(0.01)
        self.closed.set()


class FakeAdmin:
    def __init__(self, config: dict[str, Any]) -> None:
        pass

    def __enter__(self) -> FakeAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def create_topic(self, topic: str, partitions: int, replication: int) -> None:
        assert partitions == PARTITIONS


@pytest.mark.parametrize("scenario", ["grow", "join", "leave"])
def test_untimed_steps_count_from_before_the_change(
    monkeypatch: pytest.MonkeyPatch, scenario: str
) -> None:
    monkeypatch.setattr(kvlog.ipc.admin, "Admin", FakeAdmin)
    monkeypatch.setattr(FakeMember, "coordinator", FakeCoordinator(), raising=False)
    monkeypatch.setattr(perf_groups, "Member", FakeMember)
    monkeypatch.setattr(perf_groups, "STABLE_TIMEOUT_S", 2.0)
    monkeypatch.setattr(perf_groups, "POLL_MS", 5)
    options = perf_groups.Options(
        bootstrap_server="127.0.0.1:7092",
        command_config=None,
        partitions=PARTITIONS,
        members=2,
        scenario=scenario,
        grow_to=5,
        repeat=3,
        heartbeat_interval_ms=None,
        session_timeout_ms=None,
        assignor="range",
        as_json=True,
    )
    try:
        times = perf_groups.run(options, "127.0.0.1:7092", lambda rep, seconds: None)
    except click.ClickException as exc:  # the old tool: the group was complete all along
        pytest.fail(exc.message)
    assert len(times) == 3
    assert all(0 <= t < 1.0 for t in times)
