"""The group core's transitions: what moves a group from one state to the next.

Part of the group coordinator core (sans-IO; see :mod:`workers.group_core` for the theory
of operation and the requests each state answers). :class:`GroupTransitions` holds the
groups and changes them: a rebalance starting (``_prepare_rebalance``), the join phase
ending with a new generation (``_maybe_complete_join``), members removed, parked
heartbeats answered, and the timers (:meth:`GroupTransitions.tick`) that end sessions,
join phases and sync phases. Each step adds the replies it gives and the deadlines it sets
to the :class:`workers.core_result.Result` it is handed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import cbor2

from kvlog.errors import KvlogError, RebalanceInProgressError, UnknownMemberIdError
from kvlog.ipc.assignors import MemberSubscription, assignor
from kvlog.ipc.consumer_protocol import decode_assignment, encode_assignment
from kvlog.log import LogStore, WriteTxn
from kvlog.types import TopicPartition

from .core_result import Result
from .group_events import HeartbeatAnswer, JoinedMember, JoinGroupAnswer
from .group_model import Group, GroupConfig, GroupState, Member

log = logging.getLogger(__name__)

PartitionCounts = Callable[[str], int | None]

GROUPS_TABLE = "groups"


def assigned_partitions(group: Group, member: Member) -> list[TopicPartition]:
    """The partitions in a member's assignment bytes. An assignment the consumer protocol
    cannot read (another protocol type's, or a leader's bug) is kept as opaque bytes and
    lists no partitions."""
    try:
        return sorted(decode_assignment(member.assignment))
    except (cbor2.CBORDecodeError, ValueError, TypeError, AttributeError) as exc:
        if group.protocol_type == "consumer":
            log.warning(
                "group %s: member %s's assignment is not a consumer-protocol assignment "
                "(%s: %s); stored as opaque bytes",
                group.group_id,
                member.member_id,
                type(exc).__name__,
                exc,
            )
        return []


def delete_group_record(w: WriteTxn, group_id: str) -> None:
    """Remove a group's stored state (DeleteGroups writes it with the offsets)."""
    w.delete(GROUPS_TABLE, group_id.encode())


class GroupTransitions:
    """The groups and their transitions; the base of
    :class:`workers.group_core.GroupCoordinator`. Owned by the coordinator's loop; not
    thread-safe."""

    def __init__(
        self, store: LogStore, config: GroupConfig, partition_count: PartitionCounts
    ) -> None:
        self.store = store
        self.config = config
        self.partition_count = partition_count
        self.groups: dict[str, Group] = {}
        self.parked_heartbeats = 0

    def live_group(self, group_id: str) -> Group | None:
        """The group, unless it does not exist or is Dead."""
        group = self.groups.get(group_id)
        return None if group is None or group.state is GroupState.DEAD else group

    def drop(self, group_id: str) -> None:
        """Forget a deleted group (its stored state is already gone)."""
        group = self.groups.pop(group_id, None)
        if group is not None:
            group.transition(GroupState.DEAD)

    def _persist(self, group: Group) -> None:
        def write(w: WriteTxn) -> None:
            if group.state is GroupState.DEAD:
                delete_group_record(w, group.group_id)
            else:
                w.put(GROUPS_TABLE, group.group_id.encode(), group.encode())

        self.store.write(write)

    # -- sessions and parked heartbeats ----------------------------------------------------

    def _renew(self, out: Result, member: Member, now_ms: int) -> None:
        """The member's session runs from now."""
        member.deadline_ms = now_ms + member.session_timeout_ms
        out.wake_at(member.deadline_ms)
        if member.heartbeat_token is not None:
            out.wake_at(member.heartbeat_due_ms())  # a shorter session moves it earlier

    def _take_heartbeat(self, member: Member) -> Any:
        token, member.heartbeat_token = member.heartbeat_token, None
        if token is not None:
            self.parked_heartbeats -= 1
        return token

    def _release_heartbeat(self, out: Result, member: Member) -> None:
        """Answer the member's parked heartbeat, if any, with success. The session is not
        renewed: it runs from the heartbeat's arrival, and the member sends its next one as
        soon as it has this answer."""
        token = self._take_heartbeat(member)
        if token is not None:
            out.reply(token, HeartbeatAnswer())

    def _fail_heartbeat(self, out: Result, member: Member, exc: KvlogError) -> None:
        """Answer the member's parked heartbeat, if any, with ``exc``."""
        token = self._take_heartbeat(member)
        if token is not None:
            out.fail(token, exc)

    # -- transitions -----------------------------------------------------------------------

    def _join_answer(self, group: Group, member: Member) -> JoinGroupAnswer:
        answer = JoinGroupAnswer(
            group.generation, group.protocol_type, group.protocol, group.leader, member.member_id
        )
        if group.server_mode:
            answer.assignment = member.assignment
        elif member.member_id == group.leader:
            answer.members = [
                JoinedMember(m.member_id, m.instance_id, m.metadata_for(group.protocol or ""))
                for m in group.members.values()
            ]
        return answer

    def _prepare_rebalance(self, out: Result, group: Group, now_ms: int, reason: str) -> None:
        if group.state is GroupState.PREPARING_REBALANCE:
            if group.initial_delay:
                # Each newcomer extends the initial delay, up to the rebalance timeout.
                group.join_deadline_ms = min(
                    now_ms + self.config.initial_rebalance_delay_ms,
                    group.sync_deadline_ms,
                )
                out.wake_at(group.join_deadline_ms)
            return
        if group.state is GroupState.COMPLETING_REBALANCE:
            for member in group.members.values():
                if member.sync_token is not None:
                    out.fail(
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
                out,
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
        out.wake_at(group.join_deadline_ms)

    def _maybe_complete_join(
        self, out: Result, group: Group, now_ms: int, *, timed_out: bool = False
    ) -> None:
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
            self._remove(out, group, member)
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
            out.wake_at(group.sync_deadline_ms)
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
            self._renew(out, member, now_ms)
            out.reply(token, self._join_answer(group, member))

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

    def _remove(self, out: Result, group: Group, member: Member) -> None:
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
                out.fail(token, gone)
        member.join_token = member.sync_token = None
        self._fail_heartbeat(out, member, gone)

    def _on_member_gone(self, out: Result, group: Group, now_ms: int, reason: str) -> None:
        if group.state is GroupState.PREPARING_REBALANCE:
            self._maybe_complete_join(out, group, now_ms)
        elif group.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            if not group.members:
                group.transition(GroupState.PREPARING_REBALANCE)
                group.generation += 1
                group.leader = None
                group.protocol = None
                group.transition(GroupState.EMPTY)
                self._persist(group)
            else:
                self._prepare_rebalance(out, group, now_ms, reason)
                self._maybe_complete_join(out, group, now_ms)

    # -- timers ----------------------------------------------------------------------------

    def tick(self, now_ms: int) -> Result:
        """Answer parked heartbeats whose wait ended, expire sessions, end join and sync
        phases that timed out. The Result's deadline is the core's next one."""
        out = Result()
        for group in list(self.groups.values()):
            if group.state is GroupState.DEAD:
                continue
            for member in group.members.values():
                if member.heartbeat_token is not None and member.heartbeat_due_ms() <= now_ms:
                    self._release_heartbeat(out, member)
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
                    self._remove(out, group, member)
                    self._on_member_gone(out, group, now_ms, f"member {member.member_id} expired")
            if group.state is GroupState.PREPARING_REBALANCE and group.join_deadline_ms <= now_ms:
                self._maybe_complete_join(out, group, now_ms, timed_out=True)
            elif (
                group.state is GroupState.COMPLETING_REBALANCE and group.sync_deadline_ms <= now_ms
            ):
                missing = [m for m in group.members.values() if m.sync_token is None]
                for member in missing:
                    self._remove(out, group, member)
                self._prepare_rebalance(out, group, now_ms, "the leader did not sync in time")
                self._maybe_complete_join(out, group, now_ms)
        out.deadline_ms = self.next_deadline_ms()
        return out

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

    def on_topics_changed(self, now_ms: int) -> Result:
        """Coordinator-assigned groups rebalance when a subscribed topic's partitions change."""
        out = Result()
        for group in self.groups.values():
            if not group.server_mode or group.state is not GroupState.STABLE:
                continue
            topics = {t for m in group.members.values() for t in m.topics}
            have = {tp for m in group.members.values() for tp in m.assigned}
            want = {
                TopicPartition(t, p) for t in topics for p in range(self.partition_count(t) or 0)
            }
            if have != want:
                self._prepare_rebalance(out, group, now_ms, "subscribed topics changed")
        return out
