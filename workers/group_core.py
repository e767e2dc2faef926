"""The group coordinator's logic, without sockets: Kafka's classic group protocol.

Theory of operation. A group moves through five states; each answers requests in its own
way (Kafka's ``ClassicGroupState``):

``Empty``: no members (offsets may exist).
    action: JoinGroup adds the member and starts a rebalance; OffsetCommit with
    generation -1 (standalone consumers, admin resets) is accepted; OffsetFetch works.
    transition: first JoinGroup -> PreparingRebalance; DeleteGroups -> Dead.
``PreparingRebalance``: waiting for every known member to (re)join.
    action: JoinGroup is parked until the join phase completes; Heartbeat answers
    REBALANCE_IN_PROGRESS (so members rejoin), and so does every parked Heartbeat the
    moment this state is entered; SyncGroup answers REBALANCE_IN_PROGRESS;
    OffsetCommit from the current generation is accepted (members commit before they
    revoke).
    transition: all members joined, or the rebalance timeout passed (members that did
    not rejoin are removed), or the initial delay passed -> CompletingRebalance with a
    new generation (or Empty if nobody is left; or straight to Stable when the
    coordinator assigns itself).
``CompletingRebalance``: joined; waiting for the leader's SyncGroup with the assignment.
    action: SyncGroup is parked until the leader's arrives; the leader's stores the
    assignment and answers every parked SyncGroup; Heartbeat is fine (parked, see
    below); OffsetCommit answers REBALANCE_IN_PROGRESS.
    transition: leader's SyncGroup -> Stable; a member joins, leaves or expires ->
    PreparingRebalance.
``Stable``: every member has its assignment.
    action: Heartbeat keeps sessions alive (parked, see below); SyncGroup returns the
    member's assignment; JoinGroup from a known member with unchanged metadata returns
    the current generation; OffsetCommit from the current generation is accepted.
    transition: a new member joins, one leaves or expires, the leader rejoins or metadata
    changes -> PreparingRebalance.
``Dead``: deleted; every request for it answers as for an unknown group.

Heartbeats are long polls. One with ``max_wait_ms`` that has nothing to report is parked
(one per member; at most ``max_parked_heartbeats`` over all groups, beyond which it is
answered at once) and answered with REBALANCE_IN_PROGRESS the moment its group starts a
rebalance, UNKNOWN_MEMBER_ID or FENCED_INSTANCE_ID when its member goes, else with success
when its wait ends or a newer heartbeat of the member arrives. The wait is capped at half
the member's session: the session runs from when a heartbeat *arrives* (as in Kafka, so a
member that dies while parked is removed ``session.timeout.ms`` after its last heartbeat),
and the cap leaves the other half for the answer to travel and the next one to arrive.
Members thus hear of a rebalance at once instead of at their next heartbeat. Parked
heartbeats live in memory only: never persisted, they die with the process (their
clients see the connection drop, or time out, and heartbeat again).

Members whose heartbeats stop for ``session.timeout.ms`` are removed. Static members
(``group.instance.id``) that come back within their session get their old assignment
without a rebalance. Group state is written durably whenever a group becomes Stable or
Empty, and when a new generation starts (so a restart never hands out a generation
twice), and reloaded at start (members' sessions restart then; a group caught waiting
for its leader's SyncGroup goes back to PreparingRebalance), so a coordinator crash is
invisible to members of a stable group that keep heartbeating.

Every method takes ``now_ms``. Replies that cannot be given at once (parked JoinGroup,
SyncGroup and Heartbeat) appear later in :attr:`outbox` as ``(token, fields)``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from kvlog.errors import (
    FencedInstanceIdError,
    GroupIdNotFoundError,
    GroupMaxSizeReachedError,
    IllegalGenerationError,
    InconsistentGroupProtocolError,
    InvalidGroupIdError,
    InvalidSessionTimeoutError,
    KvlogError,
    NonEmptyGroupError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from kvlog.ipc.assignors import MemberSubscription, assignor
from kvlog.ipc.consumer_protocol import decode_assignment, encode_assignment, same_subscription
from kvlog.log import LogStore, WriteTxn
from kvlog.metadata_store import (
    CommittedOffset,
    commit_offset,
    delete_group_offsets,
    group_offsets,
)
from kvlog.types import TopicPartition

from .group_model import Group, GroupConfig, GroupState, Member

log = logging.getLogger(__name__)

PartitionCounts = Callable[[str], int | None]

GROUPS_TABLE = "groups"
MAX_METADATA_BYTES = 4096


class GroupCoordinator:
    """Owned by the coordinator's loop; not thread-safe."""

    def __init__(
        self, store: LogStore, config: GroupConfig, partition_count: PartitionCounts
    ) -> None:
        self.store = store
        self.config = config
        self.partition_count = partition_count
        self.groups: dict[str, Group] = {}
        self.outbox: list[tuple[Any, dict[str, Any]]] = []
        self.parked_heartbeats = 0

    # -- persistence -----------------------------------------------------------------------

    def load(self, now_ms: int) -> int:
        with self.store.reader() as r:
            for key, raw in r.items(GROUPS_TABLE):
                group = Group.decode(key.decode(), raw, now_ms)
                self.groups[group.group_id] = group
        for group in self.groups.values():
            if group.state is GroupState.COMPLETING_REBALANCE:
                # Its members' parked SyncGroups died with the old process: they rejoin
                # (into a newer generation; this one's assignment was never handed out).
                group.transition(GroupState.PREPARING_REBALANCE)
                group.join_deadline_ms = now_ms + group.rebalance_timeout_ms()
        # Partitions may have been added while this coordinator was down.
        self.on_topics_changed(now_ms)
        log.info("loaded %d group(s)", len(self.groups))
        return len(self.groups)

    def _persist(self, group: Group) -> None:
        def write(w: WriteTxn) -> None:
            if group.state is GroupState.DEAD:
                w.delete(GROUPS_TABLE, group.group_id.encode())
            else:
                w.put(GROUPS_TABLE, group.group_id.encode(), group.encode())

        self.store.write(write)

    # -- helpers ---------------------------------------------------------------------------

    def _group(self, group_id: str, *, create: bool = False) -> Group:
        if not isinstance(group_id, str) or not group_id:
            raise InvalidGroupIdError("group.id must be a non-empty string")
        group = self.groups.get(group_id)
        if group is None or group.state is GroupState.DEAD:
            if not create:
                raise UnknownMemberIdError(f"group {group_id!r} has no members")
            group = self.groups[group_id] = Group(group_id)
        return group

    def _member(self, group: Group, member_id: str, instance_id: str | None) -> Member:
        if instance_id:
            current = group.static.get(instance_id)
            if current is not None and current != member_id:
                raise FencedInstanceIdError(
                    f"group.instance.id {instance_id!r} now belongs to another member; this "
                    "consumer was replaced (give every consumer its own group.instance.id)"
                )
        member = group.members.get(member_id)
        if member is None:
            raise UnknownMemberIdError(
                f"member {member_id!r} is not in group {group.group_id!r} (it left, was "
                "removed after session.timeout.ms, or the group rebalanced without it); rejoin"
            )
        return member

    def _reply(self, token: Any, fields: dict[str, Any]) -> None:
        if token is not None:
            self.outbox.append((token, fields))

    def _error_reply(self, token: Any, exc: KvlogError) -> None:
        self._reply(token, exc.to_wire())

    def _take_heartbeat(self, member: Member) -> Any:
        token, member.heartbeat_token = member.heartbeat_token, None
        if token is not None:
            self.parked_heartbeats -= 1
        return token

    def _release_heartbeat(self, member: Member) -> None:
        """Answer the member's parked heartbeat, if any, with success. The session is not
        renewed: it runs from the heartbeat's arrival, and the member sends its next one as
        soon as it has this answer."""
        token = self._take_heartbeat(member)
        if token is not None:
            self._reply(token, {})

    def _fail_heartbeat(self, member: Member, exc: KvlogError) -> None:
        """Answer the member's parked heartbeat, if any, with ``exc``."""
        token = self._take_heartbeat(member)
        if token is not None:
            self._error_reply(token, exc)

    # -- JoinGroup -------------------------------------------------------------------------

    def join(
        self,
        token: Any,
        now_ms: int,
        *,
        group_id: str,
        member_id: str,
        instance_id: str | None,
        client_id: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocol_type: str,
        protocols: list[tuple[str, bytes]],
        server_assignor: str | None = None,
        topics: list[str] | None = None,
        owned: list[TopicPartition] | None = None,
    ) -> None:
        """Park the join until the rebalance completes (the reply lands in the outbox)."""
        cfg = self.config
        if not cfg.min_session_timeout_ms <= session_timeout_ms <= cfg.max_session_timeout_ms:
            raise InvalidSessionTimeoutError(
                f"session.timeout.ms={session_timeout_ms} is outside the broker's "
                f"{cfg.min_session_timeout_ms}..{cfg.max_session_timeout_ms}"
            )
        if server_assignor is not None:
            assignor(server_assignor)  # raises for an unknown name
            protocols = [(server_assignor, b"")]
        if not protocols:
            raise InconsistentGroupProtocolError("JoinGroup needs at least one protocol")
        # Only a newcomer (no member id) creates a group, as in Kafka: a join with a member
        # id of a group that is gone answers UNKNOWN_MEMBER_ID and leaves nothing behind.
        group = self._group(group_id, create=not member_id)
        if group.members and group.protocol_type not in (None, protocol_type):
            raise InconsistentGroupProtocolError(
                f"group {group_id!r} runs protocol type {group.protocol_type!r}, not "
                f"{protocol_type!r}"
            )
        server_mode = server_assignor is not None
        if group.members and group.server_mode != server_mode:
            raise InconsistentGroupProtocolError(
                f"group {group_id!r} is {'coordinator' if group.server_mode else 'leader'}-"
                "assigned; every member must use the same mode"
            )
        if group.members and not (group.candidate_protocols() & {n for n, _ in protocols}):
            raise InconsistentGroupProtocolError(
                f"none of {[n for n, _ in protocols]} is supported by every member of group "
                f"{group_id!r} (they support {sorted(group.candidate_protocols())})"
            )
        known_static = bool(instance_id) and instance_id in group.static
        if member_id and member_id not in group.members and not known_static:
            raise UnknownMemberIdError(
                f"member {member_id!r} is not in group {group_id!r}; rejoin with an empty member id"
            )
        if instance_id and instance_id in group.static:
            self._join_static(
                token,
                now_ms,
                group,
                member_id,
                instance_id,
                client_id,
                session_timeout_ms,
                rebalance_timeout_ms,
                protocols,
                server_assignor,
                topics or [],
                owned or [],
            )
            return
        if not member_id:
            if len(group.members) >= cfg.max_size:
                raise GroupMaxSizeReachedError(
                    f"group {group_id!r} has reached group.max.size={cfg.max_size} members"
                )
            member_id = f"{client_id}-{uuid.uuid4().hex[:12]}"
            member = Member(
                member_id,
                instance_id,
                client_id,
                session_timeout_ms,
                rebalance_timeout_ms,
                protocols,
                server_assignor,
                topics or [],
                owned or [],
            )
            group.members[member_id] = member
            if instance_id:
                group.static[instance_id] = member_id
            if group.leader is None:
                group.leader = member_id
            group.protocol_type = protocol_type
            group.server_mode = server_mode
            member.join_token = token
            member.deadline_ms = now_ms + session_timeout_ms
            log.info("group %s: member %s joined", group_id, member_id)
            self._prepare_rebalance(group, now_ms, f"member {member_id} joined")
            self._maybe_complete_join(group, now_ms)
            return
        member = group.members[member_id]
        self._member(group, member_id, instance_id)
        changed = member.protocols != protocols or member.topics != (topics or [])
        member.protocols = protocols
        member.server_assignor = server_assignor
        member.topics = topics or []
        member.owned = owned or []
        member.session_timeout_ms = session_timeout_ms
        member.rebalance_timeout_ms = rebalance_timeout_ms
        member.deadline_ms = now_ms + session_timeout_ms
        if member.join_token is not None and member.join_token != token:
            self._error_reply(
                member.join_token,
                RebalanceInProgressError(
                    "a newer JoinGroup from the same member replaced this one"
                ),
            )
        member.join_token = token
        if group.state is GroupState.PREPARING_REBALANCE:
            self._maybe_complete_join(group, now_ms)
        elif (
            group.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE)
            and not changed
            and member_id != group.leader
        ):
            # Nothing changed: tell it the current generation again.
            member.join_token = None
            self._reply(token, self._join_fields(group, member))
        else:
            self._prepare_rebalance(group, now_ms, f"member {member_id} rejoined")
            self._maybe_complete_join(group, now_ms)

    def _join_static(
        self,
        token: Any,
        now_ms: int,
        group: Group,
        member_id: str,
        instance_id: str,
        client_id: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocols: list[tuple[str, bytes]],
        server_assignor: str | None,
        topics: list[str],
        owned: list[TopicPartition],
    ) -> None:
        """A static member coming back: same assignment, no rebalance when nothing changed."""
        old_id = group.static[instance_id]
        old = group.members[old_id]
        if member_id and member_id != old_id:
            raise FencedInstanceIdError(
                f"group.instance.id {instance_id!r} belongs to member {old_id}; this one is fenced"
            )
        if member_id:
            changed = old.protocols != protocols or old.topics != topics
        else:
            # A restart: its metadata's owned partitions and generation start afresh (and
            # always differ); only a change of assignors or topics calls for a rebalance.
            changed = not same_subscription(old.protocols, protocols) or old.topics != topics
        new_id = old_id if member_id else f"{client_id}-{uuid.uuid4().hex[:12]}"
        if new_id != old_id:
            # The restarted instance replaces the old member id (fencing the old process).
            fenced = FencedInstanceIdError(
                f"group.instance.id {instance_id!r} rejoined as a new member"
            )
            for parked in (old.join_token, old.sync_token):
                if parked is not None:
                    self._error_reply(parked, fenced)
            self._fail_heartbeat(old, fenced)
            del group.members[old_id]
            old.member_id = new_id
            old.join_token = old.sync_token = None
            group.members[new_id] = old
            group.static[instance_id] = new_id
            if group.leader == old_id:
                group.leader = new_id
            log.info(
                "group %s: static member %s came back as %s", group.group_id, instance_id, new_id
            )
        member = old
        member.client_id = client_id
        member.protocols = protocols
        member.server_assignor = server_assignor
        member.topics = topics
        member.owned = owned
        member.session_timeout_ms = session_timeout_ms
        member.rebalance_timeout_ms = rebalance_timeout_ms
        member.deadline_ms = now_ms + session_timeout_ms
        if group.state is GroupState.STABLE and not changed:
            self._persist(group)
            fields = self._join_fields(group, member)
            fields["skip_assignment"] = True
            self._reply(token, fields)
            return
        member.join_token = token
        if group.state is not GroupState.PREPARING_REBALANCE:
            self._prepare_rebalance(group, now_ms, f"static member {instance_id} rejoined")
        self._maybe_complete_join(group, now_ms)

    def _join_fields(self, group: Group, member: Member) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "generation": group.generation,
            "protocol_type": group.protocol_type,
            "protocol": group.protocol,
            "leader": group.leader,
            "member_id": member.member_id,
            "members": [],
        }
        if group.server_mode:
            fields["assignment"] = member.assignment
        elif member.member_id == group.leader:
            fields["members"] = [
                {
                    "member_id": m.member_id,
                    "instance_id": m.instance_id,
                    "metadata": m.metadata_for(group.protocol or ""),
                }
                for m in group.members.values()
            ]
        return fields

    def _prepare_rebalance(self, group: Group, now_ms: int, reason: str) -> None:
        if group.state is GroupState.PREPARING_REBALANCE:
            if group.initial_delay:
                # Each newcomer extends the initial delay, up to the rebalance timeout.
                group.join_deadline_ms = min(
                    now_ms + self.config.initial_rebalance_delay_ms,
                    group.sync_deadline_ms,
                )
            return
        if group.state is GroupState.COMPLETING_REBALANCE:
            for member in group.members.values():
                if member.sync_token is not None:
                    self._error_reply(
                        member.sync_token,
                        RebalanceInProgressError(
                            f"group {group.group_id} is rebalancing again ({reason}); rejoin"
                        ),
                    )
                    member.sync_token = None
        was_empty = group.state is GroupState.EMPTY
        group.transition(GroupState.PREPARING_REBALANCE)
        log.info("group %s: preparing rebalance (%s)", group.group_id, reason)
        # Parked heartbeats are how members hear of it without waiting for their next one.
        for member in group.members.values():
            self._fail_heartbeat(
                member,
                RebalanceInProgressError(
                    f"group {group.group_id} is rebalancing ({reason}); rejoin to get a new "
                    "assignment"
                ),
            )
        timeout = group.rebalance_timeout_ms()
        if was_empty and self.config.initial_rebalance_delay_ms > 0:
            group.initial_delay = True
            group.sync_deadline_ms = now_ms + timeout  # the cap for the delay
            group.join_deadline_ms = now_ms + min(self.config.initial_rebalance_delay_ms, timeout)
        else:
            group.initial_delay = False
            group.join_deadline_ms = now_ms + timeout

    def _maybe_complete_join(self, group: Group, now_ms: int, *, timed_out: bool = False) -> None:
        if group.state is not GroupState.PREPARING_REBALANCE:
            return
        if group.initial_delay and not timed_out:
            return
        if not timed_out and not group.all_joined():
            return
        for member in [m for m in group.members.values() if m.join_token is None]:
            log.info(
                "group %s: member %s did not rejoin within the rebalance timeout; removed",
                group.group_id,
                member.member_id,
            )
            self._remove(group, member)
        if not group.members:
            group.generation += 1
            group.protocol = None
            group.leader = None
            group.transition(GroupState.EMPTY)
            self._persist(group)
            return
        group.generation += 1
        group.protocol = group.select_protocol()
        if group.leader not in group.members:
            group.leader = next(iter(group.members))
        group.initial_delay = False
        if group.server_mode:
            self._assign_on_server(group)
            group.transition(GroupState.COMPLETING_REBALANCE)
            group.transition(GroupState.STABLE)
            self._persist(group)
        else:
            group.transition(GroupState.COMPLETING_REBALANCE)
            group.sync_deadline_ms = now_ms + group.rebalance_timeout_ms()
            self._persist(group)  # a restart must not hand this generation out again
        log.info(
            "group %s: generation %d with %d member(s), leader %s, protocol %s",
            group.group_id,
            group.generation,
            len(group.members),
            group.leader,
            group.protocol,
        )
        for member in group.members.values():
            token, member.join_token = member.join_token, None
            member.deadline_ms = now_ms + member.session_timeout_ms
            self._reply(token, self._join_fields(group, member))

    def _assign_on_server(self, group: Group) -> None:
        topics = sorted({t for m in group.members.values() for t in m.topics})
        counts = {t: n for t in topics if (n := self.partition_count(t))}
        subs = [
            MemberSubscription(
                m.member_id, m.topics, list(m.assigned), group.generation - 1, m.instance_id
            )
            for m in group.members.values()
        ]
        result = assignor(group.protocol or "range")(counts, subs)
        for member in group.members.values():
            member.assigned = result.get(member.member_id, [])
            member.assignment = encode_assignment(member.assigned)

    def _remove(self, group: Group, member: Member) -> None:
        group.members.pop(member.member_id, None)
        if member.instance_id and group.static.get(member.instance_id) == member.member_id:
            del group.static[member.instance_id]
        if group.leader == member.member_id:
            group.leader = next(iter(group.members), None)
        gone = UnknownMemberIdError(
            f"member {member.member_id} was removed from group {group.group_id}"
        )
        for token in (member.join_token, member.sync_token):
            if token is not None:
                self._error_reply(token, gone)
        member.join_token = member.sync_token = None
        self._fail_heartbeat(member, gone)

    # -- SyncGroup -------------------------------------------------------------------------

    def sync(
        self,
        token: Any,
        now_ms: int,
        *,
        group_id: str,
        generation: int,
        member_id: str,
        instance_id: str | None,
        assignments: dict[str, bytes] | None,
    ) -> None:
        group = self._group(group_id)
        member = self._member(group, member_id, instance_id)
        if generation != group.generation:
            raise IllegalGenerationError(
                f"generation {generation} is not group {group_id}'s current {group.generation}; "
                "rejoin"
            )
        member.deadline_ms = now_ms + member.session_timeout_ms
        if group.state is GroupState.PREPARING_REBALANCE:
            raise RebalanceInProgressError(f"group {group_id} is rebalancing; rejoin")
        if group.state is GroupState.STABLE:
            self._reply(token, {"assignment": member.assignment})
            return
        member.sync_token = token
        if member_id == group.leader and assignments is not None:
            for m in group.members.values():
                m.assignment = bytes(assignments.get(m.member_id, b""))
                try:
                    m.assigned = sorted(decode_assignment(m.assignment))
                except Exception:
                    m.assigned = []
            group.transition(GroupState.STABLE)
            self._persist(group)
            for m in group.members.values():
                if m.sync_token is not None:
                    token_, m.sync_token = m.sync_token, None
                    self._reply(token_, {"assignment": m.assignment})

    # -- Heartbeat / LeaveGroup ------------------------------------------------------------

    def heartbeat(
        self,
        now_ms: int,
        *,
        group_id: str,
        generation: int,
        member_id: str,
        instance_id: str | None,
        token: Any = None,
        max_wait_ms: int | None = None,
    ) -> dict[str, Any] | None:
        """Errors are raised at once. Without a ``token`` or a positive ``max_wait_ms`` (a
        client older than long polls), or with ``max_parked_heartbeats`` parked already, the
        answer is ``{}`` at once. Else the heartbeat is parked (returns None) and its answer
        lands in the outbox: REBALANCE_IN_PROGRESS when the group starts a rebalance,
        UNKNOWN_MEMBER_ID / FENCED_INSTANCE_ID when the member goes, ``{}`` when the wait
        (capped at half the session) ends or a newer heartbeat of the member arrives."""
        group = self._group(group_id)
        member = self._member(group, member_id, instance_id)
        member.deadline_ms = now_ms + member.session_timeout_ms
        if group.state is GroupState.PREPARING_REBALANCE:
            raise RebalanceInProgressError(
                f"group {group_id} is rebalancing; rejoin to get a new assignment"
            )
        if generation != group.generation:
            raise IllegalGenerationError(
                f"generation {generation} is stale (current {group.generation}); rejoin"
            )
        # One parked heartbeat per member: a newer one supersedes it (the client gave up
        # on the old one, or two threads share a member id).
        self._release_heartbeat(member)
        wait_ms = min(max_wait_ms or 0, member.session_timeout_ms // 2)
        if (
            token is None
            or wait_ms <= 0
            or self.parked_heartbeats >= self.config.max_parked_heartbeats
        ):
            return {}
        member.heartbeat_token = token
        member.heartbeat_deadline_ms = now_ms + wait_ms
        self.parked_heartbeats += 1
        return None

    def leave(
        self, now_ms: int, *, group_id: str, members: list[tuple[str, str | None]]
    ) -> dict[str, Any]:
        group = self._group(group_id)
        results = []
        for member_id, instance_id in members:
            try:
                if instance_id and not member_id:
                    member_id = group.static.get(instance_id, "")
                member = self._member(group, member_id, instance_id)
            except KvlogError as exc:
                results.append({"member_id": member_id, **exc.to_wire()})
                continue
            log.info("group %s: member %s left", group_id, member_id)
            self._remove(group, member)
            results.append({"member_id": member_id, "error": 0})
            self._on_member_gone(group, now_ms, f"member {member_id} left")
        return {"members": results}

    def _on_member_gone(self, group: Group, now_ms: int, reason: str) -> None:
        if group.state is GroupState.PREPARING_REBALANCE:
            self._maybe_complete_join(group, now_ms)
        elif group.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            if not group.members:
                group.transition(GroupState.PREPARING_REBALANCE)
                group.generation += 1
                group.leader = None
                group.protocol = None
                group.transition(GroupState.EMPTY)
                self._persist(group)
            else:
                self._prepare_rebalance(group, now_ms, reason)
                self._maybe_complete_join(group, now_ms)

    # -- timers ----------------------------------------------------------------------------

    def tick(self, now_ms: int) -> None:
        for group in list(self.groups.values()):
            if group.state is GroupState.DEAD:
                continue
            for member in group.members.values():
                if member.heartbeat_token is not None and member.heartbeat_due_ms() <= now_ms:
                    self._release_heartbeat(member)
            for member in list(group.members.values()):
                if member.join_token is not None and group.state is GroupState.PREPARING_REBALANCE:
                    continue  # a parked join counts as alive until the rebalance timeout
                if member.deadline_ms <= now_ms:
                    log.info(
                        "group %s: member %s missed its session (%d ms); removed",
                        group.group_id,
                        member.member_id,
                        member.session_timeout_ms,
                    )
                    self._remove(group, member)
                    self._on_member_gone(group, now_ms, f"member {member.member_id} expired")
            if group.state is GroupState.PREPARING_REBALANCE and group.join_deadline_ms <= now_ms:
                self._maybe_complete_join(group, now_ms, timed_out=True)
            elif (
                group.state is GroupState.COMPLETING_REBALANCE and group.sync_deadline_ms <= now_ms
            ):
                missing = [m for m in group.members.values() if m.sync_token is None]
                for member in missing:
                    self._remove(group, member)
                self._prepare_rebalance(group, now_ms, "the leader did not sync in time")
                self._maybe_complete_join(group, now_ms)

    def next_deadline_ms(self) -> int | None:
        deadlines: list[int] = []
        for group in self.groups.values():
            if group.state is GroupState.PREPARING_REBALANCE:
                deadlines.append(group.join_deadline_ms)
            if group.state is GroupState.COMPLETING_REBALANCE:
                deadlines.append(group.sync_deadline_ms)
            deadlines.extend(m.deadline_ms for m in group.members.values() if m.join_token is None)
            deadlines.extend(
                m.heartbeat_due_ms()
                for m in group.members.values()
                if m.heartbeat_token is not None
            )
        return min(deadlines, default=None)

    def on_topics_changed(self, now_ms: int) -> None:
        """Coordinator-assigned groups rebalance when a subscribed topic's partitions change."""
        for group in self.groups.values():
            if not group.server_mode or group.state is not GroupState.STABLE:
                continue
            topics = {t for m in group.members.values() for t in m.topics}
            have = {tp for m in group.members.values() for tp in m.assigned}
            want = {
                TopicPartition(t, p) for t in topics for p in range(self.partition_count(t) or 0)
            }
            if have != want:
                self._prepare_rebalance(group, now_ms, "subscribed topics changed")

    # -- offsets ---------------------------------------------------------------------------

    def commit(
        self,
        now_ms: int,
        *,
        group_id: str,
        generation: int,
        member_id: str,
        instance_id: str | None,
        offsets: list[tuple[TopicPartition, int, str]],
    ) -> dict[str, Any]:
        if not isinstance(group_id, str) or not group_id:
            raise InvalidGroupIdError("group.id must be a non-empty string")
        group = self.groups.get(group_id)
        standalone = generation < 0 and not member_id
        if standalone:
            if group is not None and group.members:
                raise UnknownMemberIdError(
                    f"group {group_id!r} has active members; a commit without a member id "
                    "and generation is only allowed while the group is empty"
                )
        else:
            if group is None or group.state is GroupState.DEAD:
                raise UnknownMemberIdError(f"group {group_id!r} has no members; rejoin")
            member = self._member(group, member_id, instance_id)
            # Kafka's order: a stale generation is ILLEGAL_GENERATION (the partitions may
            # have moved: CommitFailedError), even while the next generation syncs.
            if generation != group.generation:
                raise IllegalGenerationError(
                    f"commit from generation {generation}, but group {group_id} is at "
                    f"generation {group.generation}: a rebalance happened since this member "
                    "joined"
                )
            if group.state is GroupState.COMPLETING_REBALANCE:
                raise RebalanceInProgressError(
                    f"group {group_id} is completing a rebalance; commit after it finishes"
                )
            member.deadline_ms = now_ms + member.session_timeout_ms
        results = []
        good: list[tuple[TopicPartition, int, str]] = []
        for tp, offset, metadata in offsets:
            if len(metadata.encode()) > MAX_METADATA_BYTES:
                results.append(
                    {
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "error": 12,
                        "message": "offset metadata longer than 4096 bytes",
                    }
                )
                continue
            good.append((tp, offset, metadata))
            results.append({"topic": tp.topic, "partition": tp.partition, "error": 0})

        def write(w: WriteTxn) -> None:
            for tp, offset, metadata in good:
                commit_offset(w, group_id, tp, CommittedOffset(offset, metadata, now_ms))

        if good:
            self.store.write(write)
        return {"partitions": results}

    def fetch_offsets(
        self, group_id: str, partitions: list[TopicPartition] | None
    ) -> dict[str, Any]:
        with self.store.reader() as r:
            found = group_offsets(r, group_id)
        if partitions is None:
            partitions = sorted(found)
        out = []
        for tp in partitions:
            entry = found.get(tp)
            out.append(
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "offset": -1 if entry is None else entry.offset,
                    "metadata": "" if entry is None else entry.metadata,
                    "commit_timestamp": -1 if entry is None else entry.commit_timestamp,
                    "error": 0,
                }
            )
        return {"partitions": out}

    # -- admin -----------------------------------------------------------------------------

    def list_groups(self) -> list[dict[str, Any]]:
        with self.store.reader() as r:
            with_offsets = {
                key[2 : 2 + int.from_bytes(key[:2], "big")].decode()
                for key, _ in r.items("offsets")
            }
        names = {g for g, grp in self.groups.items() if grp.state is not GroupState.DEAD}
        return [
            {
                "group_id": name,
                "state": self.groups[name].state.value if name in self.groups else "Empty",
                "protocol_type": (
                    self.groups[name].protocol_type if name in self.groups else "consumer"
                )
                or "consumer",
            }
            for name in sorted(names | with_offsets)
        ]

    def describe_group(self, group_id: str) -> dict[str, Any]:
        group = self.groups.get(group_id)
        if group is None or group.state is GroupState.DEAD:
            with self.store.reader() as r:
                if not group_offsets(r, group_id):
                    raise GroupIdNotFoundError(f"group {group_id!r} does not exist")
            return {
                "group_id": group_id,
                "state": "Empty",
                "generation": 0,
                "protocol": None,
                "protocol_type": "consumer",
                "leader": None,
                "members": [],
            }
        return {
            "group_id": group_id,
            "state": group.state.value,
            "generation": group.generation,
            "protocol": group.protocol,
            "protocol_type": group.protocol_type,
            "leader": group.leader,
            "members": [
                {
                    "member_id": m.member_id,
                    "instance_id": m.instance_id,
                    "client_id": m.client_id,
                    "assignment": [
                        [tp.topic, tp.partition]
                        for tp in (m.assigned or sorted(decode_assignment(m.assignment)))
                    ],
                }
                for m in group.members.values()
            ],
        }

    def delete_group(self, group_id: str) -> None:
        group = self.groups.get(group_id)
        if group is not None and group.members:
            raise NonEmptyGroupError(
                f"group {group_id!r} still has {len(group.members)} member(s); stop them first"
            )
        with self.store.reader() as r:
            has_offsets = bool(group_offsets(r, group_id))
        if (group is None or group.state is GroupState.DEAD) and not has_offsets:
            raise GroupIdNotFoundError(f"group {group_id!r} does not exist")

        def write(w: WriteTxn) -> None:
            delete_group_offsets(w, group_id)
            w.delete(GROUPS_TABLE, group_id.encode())

        self.store.write(write)
        if group is not None:
            group.transition(GroupState.DEAD)
            del self.groups[group_id]
