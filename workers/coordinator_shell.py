"""The coordinator process: topic metadata, nodes, producer ids (and groups).

A shell around :class:`workers.controller_core.ControllerCore` over ``<data>/meta``. Nodes and
the broker long-poll it: a node's ``node_heartbeat`` and the broker's ``watch_metadata``
are answered at once when the metadata version moved past theirs, else parked until it
does or their ``wait_ms`` runs out. An admin change (create a topic, ...) is answered
once every live node that hosts the change has applied it (bounded by
``admin_apply_timeout_ms``), so a client can produce right after create_topic returns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import zmq

from kvlog import clock
from kvlog.errors import InvalidRequestError
from kvlog.ipc.wire import INT32_MAX, Request, check_int, check_str
from kvlog.lmdb_store import LogDir
from kvlog.types import TopicPartition, check_partition

from .acl import AclEntry, add_acl, load_acls, remove_acls
from .controller_core import ControllerCore
from .group_core import GroupConfig, GroupCoordinator
from .group_shell import GroupOps
from .security import ServerSecurity
from .settings import CoordinatorSettings
from .zmq_server import Server

log = logging.getLogger(__name__)


@dataclass
class Parked:
    peer: bytes
    request_id: int
    deadline: float
    node_id: int = -1
    version: int = 0
    fields: dict[str, Any] | None = None
    node_ids: list[int] | None = None


class CoordinatorServer(GroupOps, Server):
    name = "coordinator"

    def __init__(
        self,
        ctx: zmq.Context[Any],
        router: zmq.Socket[Any],
        settings: CoordinatorSettings,
        store: LogDir,
        security: ServerSecurity | None = None,
    ) -> None:
        super().__init__(ctx, router, security)
        self.settings = settings
        self.core = ControllerCore(
            store, settings.node_ids, node_timeout_ms=settings.node_timeout_ms
        )
        self.groups = GroupCoordinator(
            store,
            GroupConfig(
                min_session_timeout_ms=settings.group_min_session_timeout_ms,
                max_session_timeout_ms=settings.group_max_session_timeout_ms,
                initial_rebalance_delay_ms=settings.group_initial_rebalance_delay_ms,
                max_size=settings.group_max_size,
            ),
            self._partition_count,
        )
        self.groups.load(clock.now_ms())
        self.node_waiters: dict[int, Parked] = {}
        self.watchers: list[Parked] = []
        self.admin_waiters: list[Parked] = []
        self._announced = self.core.version
        self._next_preferred_check = (
            time.monotonic() + settings.leader_imbalance_check_interval_ms / 1000
        )

    # -- nodes -----------------------------------------------------------------------------

    def op_node_heartbeat(self, req: Request, peer: bytes) -> dict[str, Any] | None:
        node_id = req.int("node_id", low=0, high=INT32_MAX)
        if node_id not in self.core.node_ids:
            raise InvalidRequestError(
                f"node {node_id} is not one of this broker's nodes {self.core.node_ids}"
            )
        applied = req.int("applied_version", -1)
        wait_ms = req.int("wait_ms", 1000, low=0, high=60_000)
        self.core.node_heartbeat(
            node_id,
            req.str("endpoint"),
            req.str("log_dir"),
            applied,
            req.int("pid", 0),
            clock.now_ms(),
            offline=req.bool("offline", False),
        )
        self._check_admin_waiters()
        old = self.node_waiters.pop(node_id, None)
        if old is not None:  # a newer heartbeat supersedes the parked one
            self.reply(old.peer, old.request_id, {"version": self.core.version})
        if applied < self.core.version:
            return self._assignment_reply(node_id)
        self.node_waiters[node_id] = Parked(
            peer, req.id, time.monotonic() + wait_ms / 1000, node_id=node_id, version=applied
        )
        return None

    def _assignment_reply(self, node_id: int) -> dict[str, Any]:
        return {
            "version": self.core.version,
            "partitions": self.core.assignment_for(node_id),
            "deleted_topic_ids": self.core.deleted_topic_ids(),
            "nodes": [[n, ep] for n, ep in sorted(self.core.node_endpoints().items())],
        }

    def op_node_down(self, req: Request, peer: bytes) -> dict[str, Any]:
        """From the supervisor: a node process died (fail over without waiting)."""
        moved = self.core.node_down(
            req.int("node_id", low=0, high=INT32_MAX), req.int("pid", 0, low=0)
        )
        return {"moved": moved}

    def op_alter_isr(self, req: Request, peer: bytes) -> dict[str, Any]:
        """From a partition leader: shrink or expand the ISR."""
        tp = TopicPartition(req.str("topic", max_len=249), check_partition(req.get("partition")))
        isr = [check_int(n, "isr[]", low=0, high=INT32_MAX) for n in req.list("isr", max_len=64)]
        state = self.core.alter_isr(
            tp,
            req.int("leader", low=0, high=INT32_MAX),
            req.int("leader_epoch", low=0, high=INT32_MAX),
            isr,
        )
        return {
            "leader": state.leader,
            "leader_epoch": state.leader_epoch,
            "isr": state.isr,
            "version": self.core.version,
        }

    def op_elect_leaders(self, req: Request, peer: bytes) -> None:
        """Admin: move leadership back to preferred replicas (all topics or the given)."""
        topics = req.get("topics")
        names = None if topics is None else [check_str(t, "topics[]") for t in req.list("topics")]
        moved = self.core.elect_preferred(names)
        nodes = sorted(
            {n for view in self.core.topics(names) for r in view.meta.replicas for n in r}
        )
        self._after_change(
            peer, req, {"elected": [[tp.topic, tp.partition] for tp in moved]}, nodes
        )

    # -- metadata --------------------------------------------------------------------------

    def op_metadata(self, req: Request, peer: bytes) -> dict[str, Any]:
        names = req.get("topics")
        if names is not None:
            names = [check_str(t, "topics[]", max_len=4096) for t in req.list("topics")]
        return self._metadata(names)

    def _metadata(self, names: list[str] | None = None) -> dict[str, Any]:
        body = self.core.metadata(names)
        body["coordinator"] = None  # filled in by the broker, which knows the address
        return body

    def op_watch_metadata(self, req: Request, peer: bytes) -> dict[str, Any] | None:
        version = req.int("version", -1)
        wait_ms = req.int("wait_ms", 1000, low=0, high=60_000)
        if version < self.core.version:
            return self._metadata()
        self.watchers.append(
            Parked(peer, req.id, time.monotonic() + wait_ms / 1000, version=version)
        )
        return None

    # -- admin -----------------------------------------------------------------------------

    def _after_change(
        self, peer: bytes, req: Request, fields: dict[str, Any], node_ids: list[int]
    ) -> None:
        """Answer once every live node in ``node_ids`` applied the new version."""
        fields = {**fields, "version": self.core.version}
        deadline = time.monotonic() + self.settings.admin_apply_timeout_ms / 1000
        self.admin_waiters.append(
            Parked(
                peer,
                req.id,
                deadline,
                version=self.core.version,
                fields=fields,
                node_ids=sorted(set(node_ids)),
            )
        )
        self._announce()

    def op_create_topic(self, req: Request, peer: bytes) -> None:
        config = req.get("config") or {}
        if not isinstance(config, dict):
            raise InvalidRequestError("field 'config' must be a map of topic config names")
        meta = self.core.create_topic(
            req.str("name", max_len=4096),
            req.int("partitions", 1, low=-(1 << 31), high=INT32_MAX),
            req.int("replication_factor", 1, low=-(1 << 31), high=INT32_MAX),
            config,
            clock.now_ms(),
        )
        nodes = [n for replicas in meta.replicas for n in replicas]
        self._after_change(peer, req, {"topic_id": meta.topic_id}, nodes)

    def op_delete_topic(self, req: Request, peer: bytes) -> None:
        meta = self.core.delete_topic(req.str("name", max_len=4096), clock.now_ms())
        nodes = [n for replicas in meta.replicas for n in replicas]
        self._after_change(peer, req, {"topic_id": meta.topic_id}, nodes)

    def op_create_partitions(self, req: Request, peer: bytes) -> None:
        meta, old = self.core.create_partitions(
            req.str("name", max_len=4096), req.int("count", low=-(1 << 31), high=INT32_MAX)
        )
        nodes = [n for replicas in meta.replicas for n in replicas]
        self._after_change(peer, req, {"old_count": old, "count": meta.partitions}, nodes)

    def op_alter_topic_config(self, req: Request, peer: bytes) -> None:
        meta = self.core.alter_topic_config(req.str("name", max_len=4096), req.map("config"))
        nodes = [n for replicas in meta.replicas for n in replicas]
        self._after_change(peer, req, {"config": meta.config}, nodes)

    # -- ACLs ----------------------------------------------------------------------------------

    def refresh_acls(self) -> None:
        if self.security is not None:
            self.security.refresh_acls(self.core.store)

    def _acl_entry(self, req: Request) -> AclEntry:
        return AclEntry(
            req.str("principal", max_len=1024),
            req.str("resource_type", max_len=32),
            req.str("name", "kvlog", max_len=1024),
            req.str("operation", max_len=32),
        )

    def op_acl_add(self, req: Request, peer: bytes) -> dict[str, Any]:
        entry = self._acl_entry(req)
        added = self.core.store.write(lambda w: add_acl(w, entry))
        log.info("ACL %s: %s", "added" if added else "exists", entry)
        self.refresh_acls()
        return {"added": added}

    def op_acl_remove(self, req: Request, peer: bytes) -> dict[str, Any]:
        want = {
            k: req.opt_str(k, max_len=1024)
            for k in ("principal", "resource_type", "name", "operation")
        }

        def match(entry: AclEntry) -> bool:
            return all(v is None or getattr(entry, k) == v for k, v in want.items())

        gone = self.core.store.write(lambda w: remove_acls(w, match))
        self.refresh_acls()
        return {"removed": [e.as_dict() for e in gone]}

    def op_acl_list(self, req: Request, peer: bytes) -> dict[str, Any]:
        with self.core.store.reader() as r:
            return {"acls": [e.as_dict() for e in sorted(load_acls(r))]}

    def op_init_producer_id(self, req: Request, peer: bytes) -> dict[str, Any]:
        producer_id, epoch = self.core.init_producer_id()
        return {"producer_id": producer_id, "producer_epoch": epoch}

    def op_ping(self, req: Request, peer: bytes) -> dict[str, Any]:
        return {"version": self.core.version, "nodes": self.core.node_entries()}

    # -- parked replies --------------------------------------------------------------------

    def _announce(self) -> None:
        """Wake every parked heartbeat and watcher when the version moved."""
        if self.core.version == self._announced:
            return
        self._announced = self.core.version
        for node_id, parked in list(self.node_waiters.items()):
            del self.node_waiters[node_id]
            self.reply(parked.peer, parked.request_id, self._assignment_reply(node_id))
        watchers, self.watchers = self.watchers, []
        if watchers:
            body = self._metadata()
            for parked in watchers:
                self.reply(parked.peer, parked.request_id, body)

    def _check_admin_waiters(self, now: float | None = None) -> None:
        still = []
        for parked in self.admin_waiters:
            behind = self.core.nodes_behind(parked.node_ids or [], parked.version)
            timed_out = now is not None and parked.deadline <= now
            if behind and not timed_out:
                still.append(parked)
                continue
            if behind:
                log.warning(
                    "nodes %s did not apply metadata version %d in time; answering anyway",
                    behind,
                    parked.version,
                )
            self.reply(parked.peer, parked.request_id, parked.fields or {})
        self.admin_waiters = still

    def _partition_count(self, topic: str) -> int | None:
        views = self.core.topics([topic])
        return views[0].meta.partitions if views else None

    def after_drain(self) -> None:
        if self._announced != self.core.version:
            self.groups.on_topics_changed(clock.now_ms())
        self._announce()
        self.flush_group_outbox()

    def next_timeout_ms(self, now: float) -> float:
        deadlines = [p.deadline for p in self.node_waiters.values()]
        deadlines += [p.deadline for p in self.watchers]
        deadlines += [p.deadline for p in self.admin_waiters]
        group_deadline = self.groups.next_deadline_ms()
        if group_deadline is not None:
            deadlines.append(now + (group_deadline - clock.now_ms()) / 1000)
        if not deadlines:
            return 100.0
        return max(0.0, min(100.0, (min(deadlines) - now) * 1000))

    def on_timers(self, now: float) -> None:
        self.core.expire_nodes(clock.now_ms())
        if now >= self._next_preferred_check:
            self._next_preferred_check = (
                now + self.settings.leader_imbalance_check_interval_ms / 1000
            )
            self.core.elect_preferred()
        self._announce()
        self.groups.tick(clock.now_ms())
        self.flush_group_outbox()
        for node_id, parked in list(self.node_waiters.items()):
            if parked.deadline <= now:
                del self.node_waiters[node_id]
                self.reply(parked.peer, parked.request_id, {"version": self.core.version})
        if self.watchers:
            due = [p for p in self.watchers if p.deadline <= now]
            if due:
                self.watchers = [p for p in self.watchers if p.deadline > now]
                for parked in due:
                    self.reply(
                        parked.peer,
                        parked.request_id,
                        {"version": self.core.version, "unchanged": True},
                    )
        self._check_admin_waiters(now)
