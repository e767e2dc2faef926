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

Interface. Each request is one event (:mod:`workers.group_events`) with the shell's opaque
``token`` and ``now_ms``; the answer is one :class:`workers.core_result.Result`. A reply
that cannot be given at once (a parked JoinGroup, SyncGroup or Heartbeat) comes in the
Result of a later event or of :meth:`GroupCoordinator.tick`, addressed by its token.
Errors are raised inside as :class:`kvlog.errors.KvlogError` and turned into the
request's error reply at the one place each request enters. A Result's ``deadline_ms``
is the earliest deadline the event set (so a shell that keeps the earliest deadline it
was given, and replaces it with each tick's, never ticks late); a tick's is the core's
next deadline. Member ids come from the id source given at construction, so the core
makes no random numbers. Committed offsets and the admin views are separate cores
(:mod:`workers.offsets_core`, :mod:`workers.group_admin_core`) over this one.
"""

from __future__ import annotations

import logging
from typing import Any

from kvlog.errors import (
    FencedInstanceIdError,
    GroupMaxSizeReachedError,
    IllegalGenerationError,
    InconsistentGroupProtocolError,
    InvalidGroupIdError,
    InvalidSessionTimeoutError,
    KvlogError,
    MemberIdRequiredError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from kvlog.ipc.assignors import assignor
from kvlog.ipc.consumer_protocol import same_subscription
from kvlog.log import LogStore

from .core_ids import IdSource, seeded_ids
from .core_result import Result
from .group_events import (
    Heartbeat,
    HeartbeatAnswer,
    JoinGroup,
    LeaveGroup,
    LeaveGroupAnswer,
    MemberLeft,
    OffsetCommit,
    SyncGroup,
    SyncGroupAnswer,
)
from .group_model import Group, GroupConfig, GroupState, Member
from .group_transitions import (
    GROUPS_TABLE,
    GroupTransitions,
    PartitionCounts,
    assigned_partitions,
)

log = logging.getLogger(__name__)


def seeded_member_ids(seed: bytes) -> IdSource:
    """Member id suffixes: 12 hex digits (PROTOCOL.md: ``<client_id>-<12 hex digits>``)."""
    return seeded_ids(seed, 12)


class GroupCoordinator(GroupTransitions):
    """The group membership core: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, and the
    fencing of OffsetCommit. Owned by the coordinator's loop; not thread-safe."""

    def __init__(
        self,
        store: LogStore,
        config: GroupConfig,
        partition_count: PartitionCounts,
        member_ids: IdSource,
    ) -> None:
        super().__init__(store, config, partition_count)
        self.member_ids = member_ids
        # Kafka's pending members (KIP-394): group id -> member id -> expiry (ms). A
        # newcomer that asked for it is handed a member id and must rejoin with it within
        # its session; until then it is no member (no rebalance, no ghost to expire), but it
        # counts toward group.max.size. Memory only, like Kafka's.
        self.pending: dict[str, dict[str, int]] = {}

    def load(self, now_ms: int) -> Result:
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
        log.info("loaded %d group(s)", len(self.groups))
        # Partitions may have been added while this coordinator was down.
        out = self.on_topics_changed(now_ms)
        return out.wake_at(self.next_deadline_ms())

    # -- lookups ---------------------------------------------------------------------------

    @staticmethod
    def _check_group_id(group_id: str) -> None:
        if not isinstance(group_id, str) or not group_id:
            raise InvalidGroupIdError("group.id must be a non-empty string")

    def _group(self, group_id: str, *, create: bool = False) -> Group:
        self._check_group_id(group_id)
        group = self.live_group(group_id)
        if group is None:
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

    def _new_member_id(self, group: Group | None, client_id: str) -> str:
        taken = self.pending.get(group.group_id if group else "", {})
        while True:
            member_id = f"{client_id}-{self.member_ids()}"
            if (group is None or member_id not in group.members) and member_id not in taken:
                return member_id

    def _pending_of(self, group_id: str, now_ms: int) -> dict[str, int]:
        """The group's pending member ids, those past their session dropped."""
        pending = self.pending.get(group_id)
        if pending is None:
            return {}
        for member_id in [m for m, expiry in pending.items() if expiry <= now_ms]:
            del pending[member_id]
        if not pending:
            del self.pending[group_id]
        return pending

    def _forget_pending(self, group_id: str, member_id: str) -> None:
        pending = self.pending.get(group_id, {})
        pending.pop(member_id, None)
        if not pending:
            self.pending.pop(group_id, None)

    def tick(self, now_ms: int) -> Result:
        for group_id in list(self.pending):  # no wake-up of their own: cleaned up in passing
            self._pending_of(group_id, now_ms)
        return super().tick(now_ms)

    def _check_joinable(
        self, group: Group, ev: JoinGroup, protocols: list[tuple[str, bytes]]
    ) -> None:
        """A join must fit the members already there: same protocol type, same mode, one
        protocol every member supports."""
        if not group.members:
            return
        group_id = group.group_id
        if group.protocol_type not in (None, ev.protocol_type):
            raise InconsistentGroupProtocolError(
                f"group {group_id!r} runs protocol type {group.protocol_type!r}, not "
                f"{ev.protocol_type!r}"
            )
        if group.server_mode != (ev.server_assignor is not None):
            raise InconsistentGroupProtocolError(
                f"group {group_id!r} is {'coordinator' if group.server_mode else 'leader'}-"
                "assigned; every member must use the same mode"
            )
        if not (group.candidate_protocols() & {n for n, _ in protocols}):
            raise InconsistentGroupProtocolError(
                f"none of {[n for n, _ in protocols]} is supported by every member of group "
                f"{group_id!r} (they support {sorted(group.candidate_protocols())})"
            )

    # -- JoinGroup -------------------------------------------------------------------------

    def join(self, token: Any, event: JoinGroup, now_ms: int) -> Result:
        """Parks the join until the rebalance completes (unless it can be answered now)."""
        out = Result()
        try:
            self._join(out, token, event, now_ms)
        except KvlogError as exc:
            out.fail(token, exc)
        return out

    def _join(self, out: Result, token: Any, ev: JoinGroup, now_ms: int) -> None:
        cfg = self.config
        if not cfg.min_session_timeout_ms <= ev.session_timeout_ms <= cfg.max_session_timeout_ms:
            raise InvalidSessionTimeoutError(
                f"session.timeout.ms={ev.session_timeout_ms} is outside the broker's "
                f"{cfg.min_session_timeout_ms}..{cfg.max_session_timeout_ms}"
            )
        protocols = ev.protocols
        if ev.server_assignor is not None:
            assignor(ev.server_assignor)  # raises for an unknown name
            protocols = [(ev.server_assignor, b"")]
        if not protocols:
            raise InconsistentGroupProtocolError("JoinGroup needs at least one protocol")
        group_id, member_id, instance_id = ev.group_id, ev.member_id, ev.instance_id
        server_mode = ev.server_assignor is not None
        self._check_group_id(group_id)
        pending = self._pending_of(group_id, now_ms)
        was_pending = bool(member_id) and member_id in pending
        existing = self.live_group(group_id)
        if existing is None and member_id and not was_pending:
            raise UnknownMemberIdError(f"group {group_id!r} has no members")
        if existing is not None:
            self._check_joinable(existing, ev, protocols)
        if not member_id and ev.require_known_member_id and not instance_id:
            # KIP-394: hand out the member id first, so a client that gives up before its
            # first join completes can still leave, and never becomes a ghost member.
            if (len(existing.members) if existing else 0) + len(pending) >= cfg.max_size:
                raise GroupMaxSizeReachedError(
                    f"group {group_id!r} has reached group.max.size={cfg.max_size} members"
                )
            new_id = self._new_member_id(existing, ev.client_id)
            self.pending.setdefault(group_id, {})[new_id] = now_ms + ev.session_timeout_ms
            raise MemberIdRequiredError(
                f"group {group_id!r}: rejoin with member id {new_id!r}", member_id=new_id
            )
        # Only a newcomer (no member id, or a pending one) creates a group, as in Kafka: a
        # join with another member id of a group that is gone answers UNKNOWN_MEMBER_ID and
        # leaves nothing behind.
        group = existing or self._group(group_id, create=not member_id or was_pending)
        known_static = bool(instance_id) and instance_id in group.static
        if member_id and member_id not in group.members and not known_static and not was_pending:
            raise UnknownMemberIdError(
                f"member {member_id!r} is not in group {group_id!r}; rejoin with an empty member id"
            )
        if instance_id and instance_id in group.static:
            self._join_static(out, token, ev, protocols, group, now_ms)
            return
        if not member_id or was_pending:
            if was_pending:
                self._forget_pending(group_id, member_id)
            if len(group.members) + len(self.pending.get(group_id, ())) >= cfg.max_size:
                raise GroupMaxSizeReachedError(
                    f"group {group_id!r} has reached group.max.size={cfg.max_size} members"
                )
            member_id = member_id or self._new_member_id(group, ev.client_id)
            member = Member(
                member_id,
                instance_id,
                ev.client_id,
                ev.session_timeout_ms,
                ev.rebalance_timeout_ms,
                protocols,
                ev.server_assignor,
                list(ev.topics),
                list(ev.owned),
                client_host=ev.client_host,
            )
            group.members[member_id] = member
            if instance_id:
                group.static[instance_id] = member_id
            if group.leader is None:
                group.leader = member_id
            group.protocol_type = ev.protocol_type
            group.server_mode = server_mode
            member.join_token = token
            self._renew(out, member, now_ms)
            log.info("group %s: member %s joined", group_id, member_id)
            self._prepare_rebalance(out, group, now_ms, f"member {member_id} joined")
            self._maybe_complete_join(out, group, now_ms)
            return
        member = group.members[member_id]
        self._member(group, member_id, instance_id)
        changed = member.protocols != protocols or member.topics != ev.topics
        member.protocols = protocols
        member.server_assignor = ev.server_assignor
        member.topics = list(ev.topics)
        member.owned = list(ev.owned)
        member.session_timeout_ms = ev.session_timeout_ms
        member.rebalance_timeout_ms = ev.rebalance_timeout_ms
        self._renew(out, member, now_ms)
        if member.join_token is not None and member.join_token != token:
            out.fail(
                member.join_token,
                RebalanceInProgressError(
                    "a newer JoinGroup from the same member replaced this one"
                ),
            )
        member.join_token = token
        if group.state is GroupState.PREPARING_REBALANCE:
            self._maybe_complete_join(out, group, now_ms)
        elif (
            group.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE)
            and not changed
            and member_id != group.leader
        ):
            # Nothing changed: tell it the current generation again.
            member.join_token = None
            out.reply(token, self._join_answer(group, member))
        else:
            self._prepare_rebalance(out, group, now_ms, f"member {member_id} rejoined")
            self._maybe_complete_join(out, group, now_ms)

    def _join_static(
        self,
        out: Result,
        token: Any,
        ev: JoinGroup,
        protocols: list[tuple[str, bytes]],
        group: Group,
        now_ms: int,
    ) -> None:
        """A static member coming back: same assignment, no rebalance when nothing changed."""
        instance_id = ev.instance_id
        assert instance_id is not None
        old_id = group.static[instance_id]
        old = group.members[old_id]
        if ev.member_id and ev.member_id != old_id:
            raise FencedInstanceIdError(
                f"group.instance.id {instance_id!r} belongs to member {old_id}; this one is fenced"
            )
        if ev.member_id:
            changed = old.protocols != protocols or old.topics != ev.topics
        else:
            # A restart: its metadata's owned partitions and generation start afresh (and
            # always differ); only a change of assignors or topics calls for a rebalance.
            changed = not same_subscription(old.protocols, protocols) or old.topics != ev.topics
        new_id = old_id if ev.member_id else self._new_member_id(group, ev.client_id)
        if new_id != old_id:
            # The restarted instance replaces the old member id (fencing the old process).
            fenced = FencedInstanceIdError(
                f"group.instance.id {instance_id!r} rejoined as a new member"
            )
            for parked in (old.join_token, old.sync_token):
                if parked is not None:
                    out.fail(parked, fenced)
            self._fail_heartbeat(out, old, fenced)
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
        member.client_id = ev.client_id
        member.client_host = ev.client_host
        member.protocols = protocols
        member.server_assignor = ev.server_assignor
        member.topics = list(ev.topics)
        member.owned = list(ev.owned)
        member.session_timeout_ms = ev.session_timeout_ms
        member.rebalance_timeout_ms = ev.rebalance_timeout_ms
        self._renew(out, member, now_ms)
        if group.state is GroupState.STABLE and not changed:
            self._persist(group)
            answer = self._join_answer(group, member)
            answer.skip_assignment = True
            out.reply(token, answer)
            return
        member.join_token = token
        if group.state is not GroupState.PREPARING_REBALANCE:
            self._prepare_rebalance(out, group, now_ms, f"static member {instance_id} rejoined")
        self._maybe_complete_join(out, group, now_ms)

    # -- SyncGroup -------------------------------------------------------------------------

    def sync(self, token: Any, event: SyncGroup, now_ms: int) -> Result:
        out = Result()
        try:
            self._sync(out, token, event, now_ms)
        except KvlogError as exc:
            out.fail(token, exc)
        return out

    def _sync(self, out: Result, token: Any, ev: SyncGroup, now_ms: int) -> None:
        group = self._group(ev.group_id)
        member = self._member(group, ev.member_id, ev.instance_id)
        if ev.generation != group.generation:
            raise IllegalGenerationError(
                f"generation {ev.generation} is not group {ev.group_id}'s current "
                f"{group.generation}; rejoin"
            )
        self._renew(out, member, now_ms)
        if group.state is GroupState.PREPARING_REBALANCE:
            raise RebalanceInProgressError(f"group {ev.group_id} is rebalancing; rejoin")
        if group.state is GroupState.STABLE:
            out.reply(token, SyncGroupAnswer(member.assignment, group.protocol_type))
            return
        member.sync_token = token
        if ev.member_id == group.leader and ev.assignments is not None:
            for m in group.members.values():
                m.assignment = bytes(ev.assignments.get(m.member_id, b""))
                m.assigned = assigned_partitions(group, m)
            group.transition(GroupState.STABLE)
            self._persist(group)
            for m in group.members.values():
                if m.sync_token is not None:
                    parked, m.sync_token = m.sync_token, None
                    out.reply(parked, SyncGroupAnswer(m.assignment, group.protocol_type))

    # -- Heartbeat / LeaveGroup ------------------------------------------------------------

    def heartbeat(self, token: Any, event: Heartbeat, now_ms: int) -> Result:
        """Errors are answered at once. Without a positive ``max_wait_ms`` (a client older
        than long polls), or with ``max_parked_heartbeats`` parked already, success is too.
        Else the heartbeat is parked and answered later: REBALANCE_IN_PROGRESS when the
        group starts a rebalance, UNKNOWN_MEMBER_ID / FENCED_INSTANCE_ID when the member
        goes, success when the wait (capped at half the session) ends or a newer heartbeat
        of the member arrives."""
        out = Result()
        try:
            self._heartbeat(out, token, event, now_ms)
        except KvlogError as exc:
            out.fail(token, exc)
        return out

    def _heartbeat(self, out: Result, token: Any, ev: Heartbeat, now_ms: int) -> None:
        group = self._group(ev.group_id)
        member = self._member(group, ev.member_id, ev.instance_id)
        self._renew(out, member, now_ms)
        if group.state is GroupState.PREPARING_REBALANCE:
            raise RebalanceInProgressError(
                f"group {ev.group_id} is rebalancing; rejoin to get a new assignment"
            )
        if ev.generation != group.generation:
            raise IllegalGenerationError(
                f"generation {ev.generation} is stale (current {group.generation}); rejoin"
            )
        # One parked heartbeat per member: a newer one supersedes it (the client gave up
        # on the old one, or two threads share a member id).
        self._release_heartbeat(out, member)
        wait_ms = min(ev.max_wait_ms or 0, member.session_timeout_ms // 2)
        if wait_ms <= 0 or self.parked_heartbeats >= self.config.max_parked_heartbeats:
            out.reply(token, HeartbeatAnswer())
            return
        member.heartbeat_token = token
        member.heartbeat_deadline_ms = now_ms + wait_ms
        self.parked_heartbeats += 1
        out.wake_at(member.heartbeat_due_ms())

    def leave(self, token: Any, event: LeaveGroup, now_ms: int) -> Result:
        out = Result()
        try:
            group = self._group(event.group_id)
        except KvlogError as exc:
            return out.fail(token, exc)
        results = []
        pending = self._pending_of(event.group_id, now_ms)
        for member_id, instance_id in event.members:
            if member_id in pending:  # it never joined: nothing to rebalance
                self._forget_pending(event.group_id, member_id)
                results.append(MemberLeft(member_id))
                continue
            try:
                if instance_id and not member_id:
                    member_id = group.static.get(instance_id, "")
                member = self._member(group, member_id, instance_id)
            except KvlogError as exc:
                results.append(MemberLeft(member_id, exc))
                continue
            log.info("group %s: member %s left", event.group_id, member_id)
            self._remove(out, group, member)
            results.append(MemberLeft(member_id))
            self._on_member_gone(out, group, now_ms, f"member {member_id} left")
        return out.reply(token, LeaveGroupAnswer(results))

    # -- OffsetCommit's fencing (for the offsets core) -------------------------------------

    def admit_commit(self, out: Result, ev: OffsetCommit, now_ms: int) -> None:
        """Raise unless ``ev`` may commit now: a standalone commit (no member id, negative
        generation) only while the group has no members; a member's only from the current
        generation of a group that is not completing a rebalance (Kafka's order: a stale
        generation is ILLEGAL_GENERATION even while the next one syncs). A member's commit
        renews its session."""
        if not isinstance(ev.group_id, str) or not ev.group_id:
            raise InvalidGroupIdError("group.id must be a non-empty string")
        group = self.groups.get(ev.group_id)
        if ev.generation < 0 and not ev.member_id:
            if group is not None and group.members:
                raise UnknownMemberIdError(
                    f"group {ev.group_id!r} has active members; a commit without a member id "
                    "and generation is only allowed while the group is empty"
                )
            return
        group = self.live_group(ev.group_id)
        if group is None:
            raise UnknownMemberIdError(f"group {ev.group_id!r} has no members; rejoin")
        member = self._member(group, ev.member_id, ev.instance_id)
        if ev.generation != group.generation:
            raise IllegalGenerationError(
                f"commit from generation {ev.generation}, but group {ev.group_id} is at "
                f"generation {group.generation}: a rebalance happened since this member "
                "joined"
            )
        if group.state is GroupState.COMPLETING_REBALANCE:
            raise RebalanceInProgressError(
                f"group {ev.group_id} is completing a rebalance; commit after it finishes"
            )
        self._renew(out, member, now_ms)
