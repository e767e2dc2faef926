"""The admin views of consumer groups, without sockets: ListGroups, DescribeGroups,
DeleteGroups.

A group is known to these views if the group core holds it (any state but Dead) or if it
only has committed offsets (then it shows as Empty, generation 0, no members), so that
offsets an admin reset or a standalone consumer committed can be listed and deleted.
DeleteGroups refuses a group with members (NON_EMPTY_GROUP) and removes the group's stored
state and its committed offsets in one transaction.

Each request is an event (:mod:`workers.group_events`) with the shell's ``token``; the
answer is one :class:`workers.core_result.Result` whose reply has one entry per group
asked about, in request order.
"""

from __future__ import annotations

from typing import Any

from kvlog.errors import GroupIdNotFoundError, KvlogError, NonEmptyGroupError
from kvlog.log import LogStore, WriteTxn
from kvlog.metadata_store import OFFSETS_TABLE, delete_group_offsets, group_offsets

from .core_result import Result
from .group_core import GroupCoordinator
from .group_events import (
    DeleteGroups,
    DeleteGroupsAnswer,
    DescribedMember,
    DescribeGroups,
    DescribeGroupsAnswer,
    GroupDescription,
    GroupError,
    GroupListing,
    ListGroups,
    ListGroupsAnswer,
)
from .group_transitions import assigned_partitions, delete_group_record


class GroupAdminCore:
    """Owned by the coordinator's loop, beside the group core it reads; not thread-safe."""

    def __init__(self, store: LogStore, groups: GroupCoordinator) -> None:
        self.store = store
        self.groups = groups

    def _has_offsets(self, group_id: str) -> bool:
        with self.store.reader() as r:
            return bool(group_offsets(r, group_id))

    def list_groups(self, token: Any, event: ListGroups, now_ms: int) -> Result:
        """Every live group, and every group id with committed offsets, sorted by id."""
        with self.store.reader() as r:
            with_offsets = {
                key[2 : 2 + int.from_bytes(key[:2], "big")].decode()
                for key, _ in r.items(OFFSETS_TABLE)
            }
        live = {g for g in self.groups.groups if self.groups.live_group(g) is not None}
        listing = []
        for name in sorted(live | with_offsets):
            group = self.groups.groups.get(name)
            state = group.state.value if group is not None else "Empty"
            protocol_type = (group.protocol_type if group is not None else None) or "consumer"
            listing.append(GroupListing(name, state, protocol_type))
        return Result().reply(token, ListGroupsAnswer(listing))

    def describe_groups(self, token: Any, event: DescribeGroups, now_ms: int) -> Result:
        answers: list[GroupDescription | GroupError] = []
        for group_id in event.group_ids:
            try:
                answers.append(self._describe(group_id))
            except KvlogError as exc:
                answers.append(GroupError(group_id, exc))
        return Result().reply(token, DescribeGroupsAnswer(answers))

    def _describe(self, group_id: str) -> GroupDescription:
        group = self.groups.live_group(group_id)
        if group is None:
            if not self._has_offsets(group_id):
                raise GroupIdNotFoundError(f"group {group_id!r} does not exist")
            return GroupDescription(group_id, "Empty", 0, None, "consumer", None, [])
        return GroupDescription(
            group_id,
            group.state.value,
            group.generation,
            group.protocol,
            group.protocol_type,
            group.leader,
            [
                DescribedMember(
                    m.member_id,
                    m.instance_id,
                    m.client_id,
                    m.assigned or assigned_partitions(group, m),
                    m.client_host,
                    m.metadata_for(group.protocol) if group.protocol else b"",
                    m.assignment,
                )
                for m in group.members.values()
            ],
        )

    def delete_groups(self, token: Any, event: DeleteGroups, now_ms: int) -> Result:
        results = []
        for group_id in event.group_ids:
            try:
                self._delete(group_id)
            except KvlogError as exc:
                results.append(GroupError(group_id, exc))
            else:
                results.append(GroupError(group_id))
        return Result().reply(token, DeleteGroupsAnswer(results))

    def _delete(self, group_id: str) -> None:
        group = self.groups.groups.get(group_id)
        if group is not None and group.members:
            raise NonEmptyGroupError(
                f"group {group_id!r} still has {len(group.members)} member(s); stop them first"
            )
        if self.groups.live_group(group_id) is None and not self._has_offsets(group_id):
            raise GroupIdNotFoundError(f"group {group_id!r} does not exist")

        def write(w: WriteTxn) -> None:
            delete_group_offsets(w, group_id)
            delete_group_record(w, group_id)

        self.store.write(write)
        self.groups.drop(group_id)
