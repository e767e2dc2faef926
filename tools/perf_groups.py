"""``kvlog perf groups``: how long a consumer group takes to rebalance.

Every member is a :class:`kvlog.Consumer` driven by its own thread (a consumer is used
from one thread only: that thread subscribes, polls every ``POLL_MS`` and closes it), all
in one group subscribed to one topic of ``--partitions`` partitions. A rebalance listener
stamps each ``on_partitions_assigned`` with ``time.perf_counter()`` and the set assigned.

A repetition waits until the group is stable (every member has had its assignment, the
assignments are disjoint and cover every partition), then:

- ``--scenario leave``: one member (not the group leader's thread in particular: the
  newest) closes, i.e. commits, revokes and sends LeaveGroup. The clock starts when its
  thread calls ``close()``;
- ``--scenario join``: one new member subscribes; the clock starts when its thread is
  started (its metadata lookup and JoinGroup are part of the time);
- ``--scenario grow``: ``--grow-to`` minus ``--members`` new members start at once.

The clock stops at the last ``on_partitions_assigned`` (after the start) that makes the
group complete again: every member present has been assigned after the start, and the
assignments are disjoint and cover every partition. Members learn that a rebalance began
from their parked (long-poll) heartbeat, answered the moment it begins, so the time is the
JoinGroup/SyncGroup round; ``--heartbeat-interval-ms`` sets the members' interval (with an
older coordinator that answers heartbeats at once, the interval bounds the time).

Without ``--bootstrap-server`` an embedded broker runs with
``group.initial.rebalance.delay.ms=0`` (issue 4's setting). ``--json`` prints one object
with each repetition's seconds and their median and maximum.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from kvlog.ipc.config import CONSUMER_SETTINGS

from .common import Command, client_config, make_console

POLL_MS = 50
STABLE_TIMEOUT_S = 120.0


@dataclass
class Assigned:
    """One member's assignment history (written by its thread, read by the driver)."""

    events: list[tuple[float, frozenset[Any]]] = field(default_factory=list)

    def latest_since(self, t0: float) -> tuple[float, frozenset[Any]] | None:
        for t, tps in reversed(self.events):
            if t >= t0:
                return t, tps
            break
        return None


class Member:
    """A consumer on its own thread; ``close()`` asks that thread to close it."""

    def __init__(self, index: int, config: dict[str, Any], topic: str) -> None:
        self.index = index
        self.config = config
        self.topic = topic
        self.assigned = Assigned()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.closing_at = 0.0
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"perf-member-{index}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        from kvlog.ipc.consumer import Consumer, ConsumerRebalanceListener

        member = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_assigned(self, assigned: set[Any]) -> None:
                member.assigned.events.append((time.perf_counter(), frozenset(assigned)))

        try:
            consumer = Consumer(self.config)
            try:
                consumer.subscribe([self.topic], listener=Listener())
                while not self._stop.is_set():
                    consumer.poll(timeout_ms=POLL_MS)
            finally:
                self.closing_at = time.perf_counter()
                consumer.close()
        except BaseException as exc:  # reported by the driver
            self.error = exc
        finally:
            self.closed.set()


@dataclass
class Options:
    bootstrap_server: str | None
    command_config: Path | None
    partitions: int
    members: int
    scenario: str
    grow_to: int
    repeat: int
    heartbeat_interval_ms: int | None
    session_timeout_ms: int | None
    assignor: str
    as_json: bool


class Group:
    """The members of one group, and the check that they are complete."""

    def __init__(self, options: Options, bootstrap: str, topic: str) -> None:
        self.options = options
        self.topic = topic
        self.group_id = f"perf-group-{uuid.uuid4().hex[:8]}"
        config = client_config(bootstrap, options.command_config)
        config.update(
            {
                "group.id": self.group_id,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": [options.assignor],
            }
        )
        if options.heartbeat_interval_ms is not None:
            config["heartbeat.interval.ms"] = options.heartbeat_interval_ms
        if options.session_timeout_ms is not None:
            config["session.timeout.ms"] = options.session_timeout_ms
        self.config = config
        self.members: list[Member] = []
        self._next = 0

    def add(self, count: int) -> list[Member]:
        new = []
        for _ in range(count):
            member = Member(self._next, dict(self.config), self.topic)
            self._next += 1
            new.append(member)
        self.members.extend(new)
        for member in new:
            member.start()
        return new

    def remove(self, members: list[Member]) -> float:
        """Close ``members`` (all at once) and drop them; returns when the first close began.

        Count the group's completion from that time, not from when the last close returned:
        a member's LeaveGroup lets the group rebalance at once while its close() still has
        cleanup to do (stopping its heartbeat thread, its I/O), so the members left can be
        assigned before every closing thread is done."""
        t0 = time.perf_counter()
        for member in members:
            member.close()
        for member in members:
            member.closed.wait(30)
            self.members.remove(member)
        return t0

    def check_errors(self) -> None:
        for member in self.members:
            if member.error is not None:
                raise click.ClickException(f"member {member.index} failed: {member.error!r}")

    def complete_since(self, t0: float) -> float | None:
        """The time the group became complete after ``t0``, or None if it is not.

        Eager assignors revoke everything, so every member must have been assigned since
        ``t0``. Cooperative members that keep their partitions get no callback: their
        latest assignment stands, and at least one member must have been assigned since."""
        cooperative = self.options.assignor == "cooperative-sticky"
        latest = []
        for member in self.members:
            event = member.assigned.latest_since(t0)
            if event is None:
                if not cooperative or not member.assigned.events:
                    return None
                event = member.assigned.events[-1]
            latest.append(event)
        if cooperative and max(t for t, _ in latest) < t0:
            return None
        seen: set[Any] = set()
        for _, tps in latest:
            if seen & tps:
                return None
            seen |= tps
        if len(seen) != self.options.partitions:
            return None
        return max(t for t, _ in latest)

    def wait_complete(self, t0: float, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_errors()
            done = self.complete_since(t0)
            if done is not None:
                # A later callback may still move partitions (a follow-up rebalance): the
                # group is complete once it stays so for a few poll periods.
                time.sleep(POLL_MS * 4 / 1000)
                again = self.complete_since(t0)
                if again == done:
                    return done
                continue
            if time.monotonic() > deadline:
                counts = [len(m.assigned.events) for m in self.members]
                latest = [
                    f"{len(m.assigned.events[-1][1])} at {m.assigned.events[-1][0] - t0:+.3f} s"
                    if m.assigned.events
                    else "none"
                    for m in self.members
                ]
                raise click.ClickException(
                    f"group {self.group_id} not complete {timeout_s:.0f} s after the change "
                    f"(assignment callbacks per member: {counts}; latest assignment per "
                    f"member, partitions at seconds after the change: {latest})"
                )
            time.sleep(0.005)

    def close_all(self) -> None:
        for member in self.members:
            member.close()
        for member in self.members:
            member.closed.wait(30)


@contextlib.contextmanager
def broker_for(options: Options) -> Iterator[str]:
    if options.bootstrap_server is not None:
        yield options.bootstrap_server
        return
    from kvlog.workers.supervisor import Broker

    root = Path(tempfile.mkdtemp(prefix="kvlog-perf-groups-"))
    try:
        with Broker(
            root, "tcp://127.0.0.1:0", config={"group.initial.rebalance.delay.ms": 0}
        ) as broker:
            yield broker.bootstrap
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(options: Options, bootstrap: str, progress: Any) -> list[float]:
    from kvlog.ipc.admin import Admin

    topic = f"perf-groups-{uuid.uuid4().hex[:8]}"
    with Admin(client_config(bootstrap, options.command_config)) as admin:
        admin.create_topic(topic, options.partitions, 1)
    group = Group(options, bootstrap, topic)
    times: list[float] = []
    try:
        group.add(options.members)
        group.wait_complete(0.0, STABLE_TIMEOUT_S)
        for rep in range(options.repeat):
            if options.scenario == "leave":
                leaving = group.members[-1]
                t0 = time.perf_counter()
                leaving.close()
                leaving.closed.wait(30)
                t0 = leaving.closing_at or t0
                group.members.remove(leaving)
                done = group.wait_complete(t0, STABLE_TIMEOUT_S)
                # Put the group back to its size for the next repetition (untimed).
                t1 = time.perf_counter()
                group.add(1)
                group.wait_complete(t1, STABLE_TIMEOUT_S)
            elif options.scenario == "join":
                t0 = time.perf_counter()
                joined = group.add(1)
                done = group.wait_complete(t0, STABLE_TIMEOUT_S)
                if rep + 1 < options.repeat:  # back to its size (untimed)
                    group.wait_complete(group.remove(joined), STABLE_TIMEOUT_S)
            else:  # grow
                t0 = time.perf_counter()
                grown = group.add(options.grow_to - options.members)
                done = group.wait_complete(t0, STABLE_TIMEOUT_S)
                if rep + 1 < options.repeat:  # back to its size (untimed)
                    group.wait_complete(group.remove(grown), STABLE_TIMEOUT_S)
            times.append(done - t0)
            progress(rep + 1, done - t0)
    finally:
        group.close_all()
    return times


@click.command("groups", cls=Command)
@click.option(
    "--bootstrap-server",
    default=None,
    metavar="HOST:PORT",
    help="Broker to test (default: an embedded broker with "
    "group.initial.rebalance.delay.ms=0 on a temporary data dir).",
)
@click.option(
    "--command-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Client settings file (dotted names; TOML or .properties).",
)
@click.option("--partitions", type=click.IntRange(min=1), default=40, show_default=True)
@click.option(
    "--members",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Members before each change.",
)
@click.option(
    "--scenario",
    type=click.Choice(["leave", "join", "grow"]),
    default="leave",
    show_default=True,
    help="leave: one member closes; join: one subscribes; grow: --members -> --grow-to.",
)
@click.option("--grow-to", type=click.IntRange(min=2), default=50, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--heartbeat-interval-ms",
    type=click.IntRange(min=1),
    default=None,
    help="Members' heartbeat.interval.ms [default: the consumer's, "
    f"{CONSUMER_SETTINGS.default('heartbeat.interval.ms')}].",
)
@click.option(
    "--session-timeout-ms",
    type=click.IntRange(min=1),
    default=None,
    help="Members' session.timeout.ms [default: the consumer's, "
    f"{CONSUMER_SETTINGS.default('session.timeout.ms')}].",
)
@click.option(
    "--assignor",
    type=click.Choice(["range", "roundrobin", "sticky", "cooperative-sticky"]),
    default="range",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def perf_groups(**kwargs: Any) -> None:
    """Time for a consumer group to rebalance when a member leaves or joins."""
    options = Options(**kwargs)
    if options.scenario == "grow" and options.grow_to <= options.members:
        raise click.BadParameter("--grow-to must be larger than --members", param_hint="--grow-to")
    console = make_console(stderr=True)

    def progress(rep: int, seconds: float) -> None:
        if not options.as_json:
            console.print(f"repetition {rep}: {seconds * 1000:.1f} ms")

    with broker_for(options) as bootstrap:
        times = run(options, bootstrap, progress)
    result = {
        "test": "groups",
        "scenario": options.scenario,
        "partitions": options.partitions,
        "members": options.members,
        "grow_to": options.grow_to if options.scenario == "grow" else None,
        "repeat": options.repeat,
        "seconds": [round(t, 4) for t in times],
        "median_s": round(statistics.median(times), 4),
        "max_s": round(max(times), 4),
        "min_s": round(min(times), 4),
        "heartbeat_interval_ms": options.heartbeat_interval_ms,
        "session_timeout_ms": options.session_timeout_ms,
        "assignor": options.assignor,
        "embedded_broker": options.bootstrap_server is None,
    }
    if options.as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"{options.scenario}: {options.members} members on {options.partitions} partitions, "
            f"{options.repeat} repetitions: median {result['median_s'] * 1000:.0f} ms, "
            f"max {result['max_s'] * 1000:.0f} ms"
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit("usage: kvlog perf groups")
