"""The coordinator process's core: every request the coordinator serves, one entry point.

The coordinator process runs five cores over its one store (``<data>/meta``):
:class:`workers.controller_core.ControllerCore` (topics, nodes, leaders, producer ids,
ACLs), :class:`workers.group_core.GroupCoordinator` (group membership),
:class:`workers.offsets_core.OffsetsCore` (committed offsets),
:class:`workers.group_admin_core.GroupAdminCore` (list, describe, delete groups) and
:class:`workers.txn_core.TransactionCoordinator` (transactions: transactional producer
ids, their transactions and markers).
:class:`CoordinatorCore` holds them and is what its shells call (the ZeroMQ shell, and the
Kafka listener beside it): :meth:`CoordinatorCore.handle` routes each event to the one
core method that decides its answer (the table in ``__init__``; InitProducerId goes to
the transaction coordinator when it names a transactional id, else to the controller),
and carries the policy between the cores: when the controller's metadata moves (a topic
created, deleted or grown, a leader moved, a node registered), coordinator-assigned
groups whose topics changed rebalance and transaction markers waiting for a leader go.
The transaction coordinator's sends (``write_txn_markers`` to leader nodes) come back as
:class:`workers.txn_events.MarkersAnswer` events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvlog.log import LogStore

from .controller_core import ControllerConfig, ControllerCore
from .controller_events import InitProducerId
from .controller_state import next_producer_id
from .core_ids import IdSource
from .core_result import Result
from .group_admin_core import GroupAdminCore
from .group_core import GroupCoordinator
from .group_events import (
    DeleteGroups,
    DescribeGroups,
    Heartbeat,
    JoinGroup,
    LeaveGroup,
    ListGroups,
    OffsetCommit,
    OffsetFetch,
    SyncGroup,
)
from .group_model import GroupConfig
from .offsets_core import OffsetsCore
from .txn_core import TransactionCoordinator, TxnConfig

Route = Callable[[Any, Any, int], Result]


class CoordinatorCore:
    """Owned by the coordinator's loop; not thread-safe."""

    def __init__(
        self,
        store: LogStore,
        controller: ControllerConfig,
        groups: GroupConfig,
        *,
        member_ids: IdSource,
        topic_ids: IdSource,
        txns: TxnConfig | None = None,
    ) -> None:
        self.controller = ControllerCore(store, controller, topic_ids)
        self.groups = GroupCoordinator(store, groups, self.controller.partition_count, member_ids)
        self.offsets = OffsetsCore(store, self.groups)
        self.group_admin = GroupAdminCore(store, self.groups)
        self.txns = TransactionCoordinator(
            store,
            txns or TxnConfig(),
            leaders=self.controller.marker_leader,
            partition_count=self.controller.partition_count,
            allocate_producer_id=next_producer_id,
            offsets=self.offsets,
        )
        # The one core method that decides each request's answer.
        self.routes: dict[type, Route] = {
            JoinGroup: self.groups.join,
            SyncGroup: self.groups.sync,
            Heartbeat: self.groups.heartbeat,
            LeaveGroup: self.groups.leave,
            OffsetCommit: self.offsets.commit,
            OffsetFetch: self.offsets.fetch,
            ListGroups: self.group_admin.list_groups,
            DescribeGroups: self.group_admin.describe_groups,
            DeleteGroups: self.group_admin.delete_groups,
            **dict.fromkeys(self.controller.handles(), self.controller.handle),
            **dict.fromkeys(self.txns.handles(), self.txns.handle),
            InitProducerId: self._init_producer_id,
        }

    @property
    def store(self) -> LogStore:
        return self.controller.store

    def start(self, now_ms: int) -> Result:
        """A new process: the controller starts, the groups load from the store."""
        result = self.controller.start(now_ms).extend(self.groups.load(now_ms))
        return result.extend(self.txns.load(now_ms))

    def handle(self, token: Any, event: Any, now_ms: int) -> Result:
        version = self.controller.version
        result = self.routes[type(event)](token, event, now_ms)
        return self._after(result, version, now_ms)

    def tick(self, now_ms: int) -> Result:
        """Every core's timers; the Result's deadline is the next of any core."""
        version = self.controller.version
        result = self.controller.tick(now_ms).extend(self.groups.tick(now_ms))
        result.extend(self.txns.tick(now_ms))
        return self._after(result, version, now_ms)

    def _init_producer_id(self, token: Any, event: InitProducerId, now_ms: int) -> Result:
        if event.transactional_id is None:
            return self.controller.handle(token, event, now_ms)
        return self.txns.handle(token, event, now_ms)

    def _after(self, result: Result, version: int, now_ms: int) -> Result:
        if self.controller.version != version:
            result.extend(self.groups.on_topics_changed(now_ms))
            result.extend(self.txns.metadata_moved(now_ms))
        return result
