"""The coordinator process's metrics (docs/METRICS.md, "Cluster and groups").

Once a second the coordinator's loop reads its own state: each partition's leader,
epoch and ISR (under-replicated and offline partitions; elections and ISR changes since
the last look, counted from how epochs and ISRs moved), the groups in memory (state,
members, generation: each generation step is a rebalance) and every committed offset.
Changes that come and go within one second are counted as their net move.

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
        # (topic id, partition) -> (leader epoch, ISR) at the last look
        self._seen: dict[tuple[str, int], tuple[int, frozenset[int]]] = {}
        self._generations: dict[str, int] = {}

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
        elections = shrinks = expands = 0
        seen: dict[tuple[str, int], tuple[int, frozenset[int]]] = {}
        for view in state.topics():
            meta = view.meta
            for p, part in enumerate(view.states):
                total += 1
                isr = frozenset(part.isr)
                if len(isr) < len(meta.replicas[p]):
                    under += 1
                if part.leader < 0 or not state._alive(part.leader):
                    offline += 1
                key = (meta.topic_id, p)
                seen[key] = (part.leader_epoch, isr)
                before = self._seen.get(key)
                if before is None:
                    continue  # new to this process: nothing moved yet
                if part.leader_epoch > before[0]:
                    elections += 1
                shrinks += len(before[1] - isr)
                expands += len(isr - before[1])
        self._seen = seen
        self.partitions.set(total)
        self.under_replicated.set(under)
        self.offline.set(offline)
        if elections:
            self.elections.inc(elections)
        if shrinks:
            self.shrinks.inc(shrinks)
        if expands:
            self.expands.inc(expands)

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
            before = self._generations.get(name)
            if before is not None and group.generation > before:
                self.rebalances.labels(name).inc(group.generation - before)
            elif before is None:
                self.rebalances.labels(name).inc(0)  # the series shows from the start
        self._generations = generations
        self.members.update(members)
        self.state.update(states)
