"""The coordinator process's metrics (docs/METRICS.md, "Cluster and groups").

Once a second the coordinator's loop reads its own state: each partition's leader,
epoch and ISR (under-replicated and offline partitions), the controller's counts of
elections and ISR shrinks/expands (counted as each change commits:
``ControllerState.transitions``, so a shrink undone within the second still counts), the
groups in memory (state, members, generation: each generation step is a rebalance) and
every committed offset.

Owned by the coordinator's loop thread; not thread-safe.
"""

from __future__ import annotations

from typing import Any

from kvlog.metadata_store import all_offsets

from .group_model import GroupState
from .metrics import GaugeSet, ProcessMetrics, gauge


class CoordinatorMetrics(ProcessMetrics):
    def __init__(self) -> None:
        super().__init__("coordinator")
        from prometheus_client import Counter

        self.partitions = gauge("kvlog_partitions", "partitions in the cluster", [])
        self.under_replicated = gauge(
            "kvlog_under_replicated_partitions", "partitions with a short ISR", []
        )
        self.offline = gauge("kvlog_offline_partitions", "partitions with no live leader", [])
        self.elections = Counter("kvlog_leader_elections", "leader changes", [])
        self.shrinks = Counter("kvlog_isr_shrinks", "replicas removed from an ISR", [])
        self.expands = Counter("kvlog_isr_expands", "replicas added to an ISR", [])
        self.rebalances = Counter("kvlog_group_rebalances", "rebalances completed", ["group"])
        self.committed = GaugeSet(
            gauge(
                "kvlog_group_committed_offset",
                "a group's committed offset",
                ["group", "topic", "partition"],
            )
        )
        self.members = GaugeSet(gauge("kvlog_group_members", "members of a group", ["group"]))
        self.state = GaugeSet(
            gauge("kvlog_group_state", "1 for the group's state", ["group", "state"])
        )
        # The controller's transition counts at the last look (its own counters: they
        # see every change, where comparing states between looks would miss some).
        self._counted = (0, 0, 0)
        # Each group's generation at the last sample; None before the first (the groups
        # loaded at start-up: their earlier rebalances are not this process's to count).
        self._generations: dict[str, int] | None = None

    def collect(self, server: Any) -> None:
        core = server.core
        self._partitions(core.controller.state)
        self._groups(core.groups.groups)
        with core.store.reader() as r:
            committed = {
                (group, tp.topic, str(tp.partition)): float(c.offset)
                for group, tp, c in all_offsets(r)
            }
        self.committed.update(committed)

    def _partitions(self, state: Any) -> None:
        total = under = offline = 0
        for view in state.topics():
            meta = view.meta
            for p, part in enumerate(view.states):
                total += 1
                if len(part.isr) < len(meta.replicas[p]):
                    under += 1
                if part.leader < 0 or not state._alive(part.leader):
                    offline += 1
        self.partitions.set(total)
        self.under_replicated.set(under)
        self.offline.set(offline)
        moved = state.transitions
        now = (moved.elections, moved.shrinks, moved.expands)
        for counter, was, is_ in zip(
            (self.elections, self.shrinks, self.expands), self._counted, now, strict=True
        ):
            if is_ > was:
                counter.inc(is_ - was)
        self._counted = now

    def _groups(self, groups: dict[str, Any]) -> None:
        members: dict[tuple[str, ...], float] = {}
        states: dict[tuple[str, ...], float] = {}
        generations = {}
        for name, group in groups.items():
            if group.state is GroupState.DEAD:
                continue
            members[(name,)] = len(group.members)
            for s in GroupState:
                states[(name, s.value)] = 1.0 if s is group.state else 0.0
            generations[name] = group.generation
        for name, count in rebalances_since(self._generations, generations).items():
            self.rebalances.labels(name).inc(count)  # 0: the series shows from the start
        self._generations = generations
        self.members.update(members)
        self.state.update(states)


def rebalances_since(before: dict[str, int] | None, now: dict[str, int]) -> dict[str, int]:
    """Rebalances per group between two samples of the groups' generations (each
    generation step is one). ``before`` None: the first sample, whose groups were loaded
    with earlier rebalances this process did not see (0 each). A group new since the last
    sample had all of its rebalances while this process watched: its first one may have
    completed before it showed in a sample."""
    if before is None:
        return dict.fromkeys(now, 0)
    return {
        name: generation - before.get(name, 0)
        for name, generation in now.items()
        if generation > before.get(name, 0) or name not in before
    }
