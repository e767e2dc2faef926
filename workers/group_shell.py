"""The coordinator's group ops: wire fields in, GroupCoordinator calls, replies out.

Mixed into the coordinator server; ``self.groups`` is its
:class:`workers.group_core.GroupCoordinator`. JoinGroup, SyncGroup and long-poll
Heartbeats are parked by the core; their replies come out of ``groups.outbox`` and are
sent by ``flush_group_outbox`` after every loop turn.
"""

from __future__ import annotations

from typing import Any

from kvlog import clock
from kvlog.errors import InvalidRequestError, KvlogError
from kvlog.ipc.wire import INT32_MAX, Request, check_int, check_list, check_map, check_str
from kvlog.types import TopicPartition, check_partition

from .group_core import GroupCoordinator


def _tps(value: Any, name: str) -> list[TopicPartition]:
    out = []
    for i, entry in enumerate(check_list(value, name)):
        entry = check_list(entry, f"{name}[{i}]", max_len=2)
        if len(entry) != 2:
            raise InvalidRequestError(f"{name}[{i}] must be [topic, partition]")
        out.append(
            TopicPartition(
                check_str(entry[0], f"{name}[{i}].topic", max_len=249), check_partition(entry[1])
            )
        )
    return out


class GroupOps:
    """Mixin for the coordinator server, which provides ``reply``."""

    groups: GroupCoordinator
    reply: Any

    def flush_group_outbox(self) -> None:
        outbox, self.groups.outbox = self.groups.outbox, []
        for (peer, request_id), fields in outbox:
            self.reply(peer, request_id, fields)

    def op_join_group(self, req: Request, peer: bytes) -> None:
        protocols = []
        for i, entry in enumerate(req.list("protocols", max_len=64, default=[])):
            entry = check_list(entry, f"protocols[{i}]", max_len=2)
            if len(entry) != 2 or not isinstance(entry[1], bytes):
                raise InvalidRequestError(f"protocols[{i}] must be [name, metadata bytes]")
            protocols.append((check_str(entry[0], f"protocols[{i}].name", max_len=255), entry[1]))
        server_assignor = req.opt_str("server_assignor", max_len=255)
        topics = [
            check_str(t, "topics[]", max_len=249)
            for t in req.list("topics", default=[], max_len=100_000)
        ]
        owned = _tps(req.get("owned", []), "owned")
        self.groups.join(
            (peer, req.id),
            clock.now_ms(),
            group_id=req.str("group_id", max_len=1024),
            member_id=req.str("member_id", "", max_len=1024),
            instance_id=req.opt_str("group_instance_id", max_len=1024),
            client_id=req.str("client_id", "kvlog", max_len=1024),
            session_timeout_ms=req.int("session_timeout_ms", 45_000, low=0, high=INT32_MAX),
            rebalance_timeout_ms=req.int("rebalance_timeout_ms", 300_000, low=0, high=INT32_MAX),
            protocol_type=req.str("protocol_type", "consumer", max_len=255),
            protocols=protocols,
            server_assignor=server_assignor,
            topics=topics,
            owned=owned,
        )
        return None

    def op_sync_group(self, req: Request, peer: bytes) -> None:
        raw = req.get("assignments")
        assignments = None
        if raw is not None:
            assignments = {}
            for i, entry in enumerate(check_list(raw, "assignments")):
                entry = check_map(entry, f"assignments[{i}]")
                data = entry.get("assignment", b"")
                if not isinstance(data, bytes):
                    raise InvalidRequestError(f"assignments[{i}].assignment must be bytes")
                assignments[check_str(entry.get("member_id"), f"assignments[{i}].member_id")] = data
        self.groups.sync(
            (peer, req.id),
            clock.now_ms(),
            group_id=req.str("group_id", max_len=1024),
            generation=req.int("generation", low=-1, high=INT32_MAX),
            member_id=req.str("member_id", max_len=1024),
            instance_id=req.opt_str("group_instance_id", max_len=1024),
            assignments=assignments,
        )
        return None

    def op_heartbeat(self, req: Request, peer: bytes) -> dict[str, Any] | None:
        # A long poll when the client sends max_wait_ms (null = absent = answer at once,
        # as for clients written before it existed).
        max_wait_ms = req.get("max_wait_ms")
        if max_wait_ms is not None:
            max_wait_ms = req.int("max_wait_ms", low=0, high=INT32_MAX)
        return self.groups.heartbeat(
            clock.now_ms(),
            group_id=req.str("group_id", max_len=1024),
            generation=req.int("generation", low=-1, high=INT32_MAX),
            member_id=req.str("member_id", max_len=1024),
            instance_id=req.opt_str("group_instance_id", max_len=1024),
            token=(peer, req.id),
            max_wait_ms=max_wait_ms,
        )

    def op_leave_group(self, req: Request, peer: bytes) -> dict[str, Any]:
        members = []
        for i, entry in enumerate(req.list("members", max_len=10_000)):
            entry = check_map(entry, f"members[{i}]")
            member_id = entry.get("member_id", "")
            instance_id = entry.get("group_instance_id")
            members.append(
                (
                    check_str(member_id, f"members[{i}].member_id"),
                    None if instance_id is None else check_str(instance_id, "group_instance_id"),
                )
            )
        return self.groups.leave(
            clock.now_ms(), group_id=req.str("group_id", max_len=1024), members=members
        )

    def op_offset_commit(self, req: Request, peer: bytes) -> dict[str, Any]:
        offsets = []
        for i, entry in enumerate(req.list("offsets", max_len=100_000)):
            entry = check_map(entry, f"offsets[{i}]")
            tp = TopicPartition(
                check_str(entry.get("topic"), f"offsets[{i}].topic", max_len=249),
                check_partition(entry.get("partition")),
            )
            offsets.append(
                (
                    tp,
                    check_int(entry.get("offset"), f"offsets[{i}].offset", low=0),
                    check_str(entry.get("metadata", ""), f"offsets[{i}].metadata"),
                )
            )
        return self.groups.commit(
            clock.now_ms(),
            group_id=req.str("group_id", max_len=1024),
            generation=req.int("generation", -1, low=-1, high=INT32_MAX),
            member_id=req.str("member_id", "", max_len=1024),
            instance_id=req.opt_str("group_instance_id", max_len=1024),
            offsets=offsets,
        )

    def op_offset_fetch(self, req: Request, peer: bytes) -> dict[str, Any]:
        raw = req.get("partitions")
        partitions = None if raw is None else _tps(raw, "partitions")
        return self.groups.fetch_offsets(req.str("group_id", max_len=1024), partitions)

    def op_list_groups(self, req: Request, peer: bytes) -> dict[str, Any]:
        return {"groups": self.groups.list_groups()}

    def op_describe_groups(self, req: Request, peer: bytes) -> dict[str, Any]:
        out = []
        for gid in req.list("group_ids", max_len=10_000):
            gid = check_str(gid, "group_ids[]", max_len=1024)
            try:
                out.append({"error": 0, **self.groups.describe_group(gid)})
            except KvlogError as exc:
                out.append({"group_id": gid, **exc.to_wire()})
        return {"groups": out}

    def op_delete_groups(self, req: Request, peer: bytes) -> dict[str, Any]:
        out = []
        for gid in req.list("group_ids", max_len=10_000):
            gid = check_str(gid, "group_ids[]", max_len=1024)
            try:
                self.groups.delete_group(gid)
                out.append({"group_id": gid, "error": 0})
            except KvlogError as exc:
                out.append({"group_id": gid, **exc.to_wire()})
        return {"results": out}
