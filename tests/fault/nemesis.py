"""The fault tests' nemesis (issue 5).

:class:`Nemesis` SIGKILLs, at random moments, a node (whatever it leads), the broker or
the coordinator of a ``kvlog.Broker`` process group, and can turn one node's log dir
"full" for a while. Its choices come from one seeded RNG (``KVLOG_FAULT_SEED`` replays a
seed; the moments still depend on real process timing, so a replay is close, not exact).
It never has two processes down at once, and kills a node only when every partition has
its full ISR, so ``min.insync.replicas=2`` of 3 can always hold.

A full log dir is made with ``prlimit(RLIMIT_FSIZE)`` on the node process, capped at its
``data.mdb``'s current size (the node ignores SIGXFSZ, so writes fail instead of killing
it). ``chmod`` cannot make a log dir read-only here: the tests run as root, whom file
modes do not stop.

Used by :mod:`scenario`, which runs it against a fresh cluster under load.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checker import Ledger, leaders_from_metadata

from kvlog.errors import KvlogError
from kvlog.ipc.rpc import blocking_call

SEED_ENV = "KVLOG_FAULT_SEED"

BROKER_CONFIG = {
    "replica.lag.time.max.ms": 2000,
    "group.min.session.timeout.ms": 100,
    "group.initial.rebalance.delay.ms": 0,
    # Preferred leaders come back within seconds, so leadership keeps moving and every
    # node keeps leading something worth killing.
    "leader.imbalance.check.interval.ms": 3000,
    # A process killed again within 30 s of its start comes back after 0.2 s doubling up
    # to 1 s, not up to 10 s: the run spends its time on faults, not waiting for restarts.
    "restart.backoff.max.ms": 1000,
}


def seed_from_env() -> int:
    raw = os.environ.get(SEED_ENV)
    return int(raw) if raw else random.randrange(1 << 32)


# -- the cluster as the nemesis sees it ------------------------------------------------------


class Cluster:
    """A started ``kvlog.Broker`` plus the one topic under test."""

    def __init__(self, broker: Any, topic: str, partitions: int, rf: int) -> None:
        self.broker = broker
        self.topic = topic
        self.partitions = partitions
        self.rf = rf

    def child(self, role: str, node_id: int | None = None) -> Any:
        for c in self.broker.children:
            if c.role == role and (node_id is None or c.node_id == node_id):
                return c
        raise LookupError(f"no {role} {node_id}")

    @property
    def node_ids(self) -> list[int]:
        return sorted(c.node_id for c in self.broker.children if c.role == "node")

    def log_dirs(self) -> dict[int, str]:
        return {c.node_id: c.log_dir for c in self.broker.children if c.role == "node"}

    def metadata(self, timeout_s: float = 1.0) -> dict[str, Any] | None:
        """The topic's metadata from the broker, else straight from the coordinator
        (either may be the one just killed); None if neither answers."""
        for endpoint in (self.broker.bootstrap, self.broker.coordinator_endpoint):
            try:
                return blocking_call(
                    endpoint, "metadata", {"topics": [self.topic]}, timeout_s=timeout_s
                )
            except KvlogError:
                continue
        return None

    def processes_alive(self) -> bool:
        return all(c.process is not None and c.process.is_alive() for c in self.broker.children)

    def unhealthy(self) -> str | None:
        """Why the cluster is not whole (every process up, every node alive, every
        partition led with its full ISR), or None."""
        if not self.processes_alive():
            return "a process is down"
        md = self.metadata()
        if md is None:
            return "no metadata"
        dead = [n["node_id"] for n in md.get("nodes", []) if not n.get("alive")]
        if dead or len(md.get("nodes", [])) < len(self.node_ids):
            return f"nodes not alive: {dead or 'unregistered'}"
        for t in md.get("topics", []):
            for p in t.get("partitions", []):
                if p["leader"] < 0 or sorted(p["isr"]) != sorted(p["replicas"]):
                    return f"partition {p['partition']}: leader {p['leader']} isr {p['isr']}"
        return None

    def wait_healthy(self, timeout_s: float) -> str | None:
        """None once healthy, else the last reason after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            why = self.unhealthy()
            if why is None or time.monotonic() > deadline:
                return why
            time.sleep(0.1)

    def node_alive(self, node_id: int) -> bool | None:
        md = self.metadata(timeout_s=0.5)
        if md is None:
            return None
        for n in md.get("nodes", []):
            if n["node_id"] == node_id:
                return bool(n.get("alive"))
        return False

    def led_by(self, node_id: int) -> list[int]:
        md = self.metadata() or {}
        return sorted(p for p, n in leaders_from_metadata(md, self.topic).items() if n == node_id)


def set_file_size_limit(pid: int, limit: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def data_file_size(log_dir: str | Path) -> int:
    return (Path(log_dir) / "data.mdb").stat().st_size


# -- the nemesis ------------------------------------------------------------------------------


@dataclass
class Kill:
    at_s: float  # since the run started
    role: str
    node_id: int | None
    pid: int
    led: list[int]  # partitions the node led just before (nodes only)
    back_after_s: float = -1.0  # until the supervisor's replacement ran (-1: never)
    whole_after_s: float = -1.0  # until every partition had its full ISR again

    def describe(self) -> str:
        who = self.role if self.node_id is None else f"node {self.node_id} (led {self.led})"
        back = f"back after {self.back_after_s:.2f} s" if self.back_after_s >= 0 else "NOT BACK"
        return f"SIGKILL {who} pid {self.pid} at t={self.at_s:.2f} s; {back}"

    def describe_whole(self) -> str:
        return (
            f"cluster whole again {self.whole_after_s:.2f} s after the kill at t={self.at_s:.2f} s"
        )


@dataclass
class DiskEpisode:
    node_id: int
    pid: int = 0
    limit: int = 0
    start_s: float = 0.0
    end_s: float = 0.0
    offline_after_s: float = -1.0  # from the cap until the node was reported offline
    flaps: int = 0  # times it was seen coming back (and failing again) while capped
    recovered_after_s: float = -1.0  # from the restore until the cluster was whole again
    acks_during: int = 0  # acknowledgements from its going offline to its recovery

    def describe(self) -> str:
        return (
            f"node {self.node_id} (pid {self.pid}) log dir capped at {self.limit} bytes from "
            f"t={self.start_s:.2f} to t={self.end_s:.2f} s; offline after "
            f"{self.offline_after_s:.2f} s, flapped back {self.flaps} time(s), "
            f"{self.acks_during} acks meanwhile; whole again {self.recovered_after_s:.2f} s "
            "after the restore"
        )


class Nemesis(threading.Thread):
    """Kills ``kills`` processes, one at a time; optionally one full-disk episode after
    kill number ``disk_after``. Everything it decides comes from ``seed``."""

    def __init__(
        self,
        cluster: Cluster,
        seed: int,
        kills: int,
        t0: float,
        *,
        gap_s: tuple[float, float] = (0.3, 1.5),
        disk_after: int | None = None,
        disk_hold_s: float = 4.0,
        disk_kills: int = 0,
        ledger: Ledger | None = None,
        health_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(name="fault-nemesis", daemon=True)
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.kills_planned = kills
        self.t0 = t0
        self.gap_s = gap_s
        self.disk_after = disk_after
        self.disk_hold_s = disk_hold_s
        self.disk_kills = disk_kills
        self.ledger = ledger
        self.health_timeout_s = health_timeout_s
        self.kills: list[Kill] = []
        self.episode: DiskEpisode | None = None
        self.events: list[tuple[float, str]] = []
        self.liveness: list[str] = []  # failures: a process not back, a disk never "full"
        # Recoveries slower than health_timeout_s: reported, not failed (the final settle
        # decides). Before ad6cf34 a restarted follower could stay out of the ISR for as
        # long as producers kept writing (test_followers_that_keep_up_stay_in_and_...).
        self.slow: list[str] = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._unsettled: list[Kill] = []  # kills the cluster is not yet whole after
        # The plan, drawn up front so a seed always means the same choices.
        roles = [("node", n) for n in cluster.node_ids] + [("broker", None), ("coordinator", None)]
        self.plan = [(self.rng.uniform(*gap_s), self.rng.choice(roles)) for _ in range(kills)]
        self.disk_node = self.rng.choice(cluster.node_ids)
        self.disk_plan = [
            (self.rng.uniform(0.2, 0.8), self.rng.choice(["broker", "coordinator"]))
            for _ in range(disk_kills)
        ]

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        self.events.append((self.now(), text))
        print(f"[nemesis] t={self.now():7.2f} s  {text}", flush=True)

    def run(self) -> None:
        try:
            for i, (gap, (role, node_id)) in enumerate(self.plan):
                if self.disk_after is not None and i == self.disk_after:
                    self.disk_episode()
                if self._idle(gap):
                    return
                self.kill(role, node_id)
            if self.disk_after is not None and self.disk_after >= len(self.plan):
                self.disk_episode()
            why = self.wait_whole(self.health_timeout_s)
            if why is not None:
                self.slow.append(
                    f"not whole {self.health_timeout_s:.0f} s after the last fault: {why}"
                )
        except BaseException as exc:
            self.error = exc
            self.say(f"nemesis failed: {exc!r}")

    def _note_whole(self) -> bool:
        """Check the cluster once; stamp the kills it has recovered from."""
        if not self._unsettled:
            return True
        if self.cluster.unhealthy() is not None:
            return False
        for kill in self._unsettled:
            kill.whole_after_s = self.now() - kill.at_s
            self.say(kill.describe_whole())
        self._unsettled = []
        return True

    def _idle(self, seconds: float) -> bool:
        """Wait ``seconds``, watching the cluster recover; True if told to stop."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._note_whole()
            if self.stop_event.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
                return True
        return False

    def wait_whole(self, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        while not self._note_whole() or self.cluster.unhealthy() is not None:
            if time.monotonic() > deadline:
                return self.cluster.unhealthy()
            time.sleep(0.1)
        return None

    # -- kills ---------------------------------------------------------------------------

    def _await_processes(self) -> None:
        deadline = time.monotonic() + self.health_timeout_s
        while not self.cluster.processes_alive():
            if time.monotonic() > deadline:
                self.liveness.append(f"t={self.now():.2f} s: a process stayed down")
                return
            time.sleep(0.05)

    def kill(self, role: str, node_id: int | None) -> Kill | None:
        self._await_processes()
        if role == "node":
            why = self.wait_whole(self.health_timeout_s)
            if why is not None:
                self.slow.append(
                    f"t={self.now():.2f} s: not whole {self.health_timeout_s:.0f} s after the "
                    f"last fault ({why}); killing the broker instead of node {node_id}"
                )
                self.say(self.slow[-1])
                role, node_id = "broker", None
        child = self.cluster.child(role, node_id)
        led = self.cluster.led_by(node_id) if role == "node" and node_id is not None else []
        pid = child.pid
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            self.say(f"{role} {node_id} pid {pid} was already gone")
            return None
        kill = Kill(self.now(), role, node_id, pid, led)
        self.kills.append(kill)
        self._unsettled.append(kill)
        started = time.monotonic()
        deadline = started + self.health_timeout_s
        # Back means serving (it answers a ping), not merely spawned: a process killed
        # during its start-up is another fault (test_supervisor_survives_a_death_during_
        # start_up), which this nemesis leaves to that test.
        while time.monotonic() < deadline:
            if child.pid != pid and child.process is not None and child.process.is_alive():
                try:
                    blocking_call(child.endpoint, "ping", {}, timeout_s=0.5)
                except KvlogError:
                    continue
                kill.back_after_s = time.monotonic() - started
                break
            time.sleep(0.02)
        else:
            self.liveness.append(f"{kill.describe()}: the supervisor did not restart it")
        self.say(kill.describe())
        return kill

    # -- a full log dir ------------------------------------------------------------------

    def disk_episode(self) -> None:
        why = self.wait_whole(self.health_timeout_s)
        if why is not None:
            self.slow.append(f"t={self.now():.2f} s: not whole before the disk episode: {why}")
        node_id = self.disk_node
        child = self.cluster.child("node", node_id)
        ep = self.episode = DiskEpisode(node_id, child.pid)
        ep.limit = data_file_size(child.log_dir)
        set_file_size_limit(ep.pid, ep.limit)
        ep.start_s = self.now()
        self.say(f"log dir of node {node_id} (pid {ep.pid}) capped at {ep.limit} bytes")
        offline_at = None
        was_alive = True
        plan = list(self.disk_plan)
        next_kill = ep.start_s + (plan[0][0] * self.disk_hold_s if plan else 0)
        while self.now() - ep.start_s < self.disk_hold_s:
            alive = self.cluster.node_alive(node_id)
            if alive is False and was_alive:
                if offline_at is None:
                    offline_at = self.now()
                    ep.offline_after_s = offline_at - ep.start_s
                    self.say(f"node {node_id} reported offline")
            elif alive is True and not was_alive:
                ep.flaps += 1
                self.say(f"node {node_id} back online while its log dir is still capped")
            if alive is not None:
                was_alive = alive
            if plan and self.now() >= next_kill:
                _, role = plan.pop(0)
                self.kill(role, None)
                if plan:
                    next_kill = self.now() + plan[0][0] * self.disk_hold_s
            time.sleep(0.1)
        try:
            set_file_size_limit(ep.pid, resource.RLIM_INFINITY)
        except ProcessLookupError:
            self.say(f"node {node_id} pid {ep.pid} is gone; nothing to restore")
        ep.end_s = self.now()
        self.say(f"log dir of node {node_id} restored")
        restored = time.monotonic()
        why = self.wait_whole(max(self.health_timeout_s, 40.0))
        if why is None:
            ep.recovered_after_s = time.monotonic() - restored
        else:
            self.slow.append(f"node {node_id} not back in every ISR 40 s after the restore: {why}")
        if offline_at is None:
            self.liveness.append(f"node {node_id} never went offline with its log dir full")
        elif self.ledger is not None:
            # The others carry on: records are acknowledged while the node is out.
            ep.acks_during = self.ledger.acks_between(self.t0 + offline_at, time.monotonic())
            if not ep.acks_during:
                self.liveness.append(f"nothing was acknowledged while node {node_id} was out")
        self.say(ep.describe())
