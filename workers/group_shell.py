"""The coordinator's group ops on kvlog's ZeroMQ wire: request fields in, group events out.

Shell side, mixed into :class:`workers.coordinator_shell.CoordinatorServer`. Each
``op_<name>`` decodes PROTOCOL.md's fields (3.13-3.21) into one event of
:mod:`workers.group_events`, once, refusing malformed fields with INVALID_REQUEST, and
hands it to the core (:meth:`workers.zmq_core_shell.CoreShell.call`), which decides the
answer: at once, or later for a parked JoinGroup, SyncGroup or long-poll Heartbeat.
"""

from __future__ import annotations

from typing import Any

from kvlog.errors import InvalidRequestError
from kvlog.ipc.wire import INT32_MAX, Request, check_int, check_list, check_map, check_str
from kvlog.types import TopicPartition, check_partition

from .group_events import (
    CommitEntry,
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
from .zmq_replies import Fields


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


def commit_entries(req: Request) -> list[CommitEntry]:
    """The ``offsets`` field of ``offset_commit`` (and ``txn_offset_commit``)."""
    offsets = []
    for i, entry in enumerate(req.list("offsets", max_len=100_000)):
        entry = check_map(entry, f"offsets[{i}]")
        tp = TopicPartition(
            check_str(entry.get("topic"), f"offsets[{i}].topic", max_len=249),
            check_partition(entry.get("partition")),
        )
        offsets.append(
            CommitEntry(
                tp,
                check_int(entry.get("offset"), f"offsets[{i}].offset", low=0),
                check_str(entry.get("metadata", ""), f"offsets[{i}].metadata"),
            )
        )
    return offsets


def _group_ids(req: Request) -> list[str]:
    return [
        check_str(gid, "group_ids[]", max_len=1024) for gid in req.list("group_ids", max_len=10_000)
    ]


class GroupOps:
    """Mixin for the coordinator server, which provides ``call`` (a CoreShell)."""

    call: Any

    def op_join_group(self, req: Request, peer: bytes) -> Fields | None:
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
        event = JoinGroup(
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
            require_known_member_id=req.bool("require_member_id", False),
        )
        return self.call(peer, req.id, event)

    def op_sync_group(self, req: Request, peer: bytes) -> Fields | None:
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
        event = SyncGroup(
            group_id=req.str("group_id", max_len=1024),
            generation=req.int("generation", low=-1, high=INT32_MAX),
            member_id=req.str("member_id", max_len=1024),
            instance_id=req.opt_str("group_instance_id", max_len=1024),
            assignments=assignments,
        )
        return self.call(peer, req.id, event)

    def op_heartbeat(self, req: Request, peer: bytes) -> Fields | None:
        # A long poll when the client sends max_wait_ms (null = absent = answer at once,
        # as for clients written before it existed).
        max_wait_ms = req.get("max_wait_ms")
        if max_wait_ms is not None:
            max_wait_ms = req.int("max_wait_ms", low=0, high=INT32_MAX)
        event = Heartbeat(
            group_id=req.str("group_id", max_len=1024),
            generation=req.int("generation", low=-1, high=INT32_MAX),
            member_id=req.str("member_id", max_len=1024),
            instance_id=req.opt_str("group_instance_id", max_len=1024),
            max_wait_ms=max_wait_ms,
        )
        return self.call(peer, req.id, event)

    def op_leave_group(self, req: Request, peer: bytes) -> Fields | None:
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
        event = LeaveGroup(req.str("group_id", max_len=1024), members)
        return self.call(peer, req.id, event)

    def op_offset_commit(self, req: Request, peer: bytes) -> Fields | None:
        event = OffsetCommit(
            group_id=req.str("group_id", max_len=1024),
            offsets=commit_entries(req),
            generation=req.int("generation", -1, low=-1, high=INT32_MAX),
            member_id=req.str("member_id", "", max_len=1024),
            instance_id=req.opt_str("group_instance_id", max_len=1024),
        )
        return self.call(peer, req.id, event)

    def op_offset_fetch(self, req: Request, peer: bytes) -> Fields | None:
        raw = req.get("partitions")
        partitions = None if raw is None else _tps(raw, "partitions")
        event = OffsetFetch(req.str("group_id", max_len=1024), partitions)
        return self.call(peer, req.id, event)

    def op_list_groups(self, req: Request, peer: bytes) -> Fields | None:
        return self.call(peer, req.id, ListGroups())

    def op_describe_groups(self, req: Request, peer: bytes) -> Fields | None:
        return self.call(peer, req.id, DescribeGroups(_group_ids(req)))

    def op_delete_groups(self, req: Request, peer: bytes) -> Fields | None:
        return self.call(peer, req.id, DeleteGroups(_group_ids(req)))
