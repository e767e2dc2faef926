"""GroupCoordinator under random joins, syncs, heartbeats, leaves, crashes, clock moves,
commits, topic growth and coordinator restarts (hypothesis ``RuleBasedStateMachine``).

Two groups share one store: ``classic`` (the leader assigns, with ipc.assignors, from the
member metadata the join reply gives it) and ``server`` (the coordinator assigns). Each
member is a small client model that reacts to replies as kvlog's client does: rejoin on
REBALANCE_IN_PROGRESS / ILLEGAL_GENERATION, forget its member id on UNKNOWN_MEMBER_ID, stop
on FENCED_INSTANCE_ID. Time moves only when a rule moves it.

Safety, after every step: within a generation no partition has two owners (from the
assignments members received); a Stable group's stored assignment is what its leader (or
the server assignor) computed and covers every subscribed partition exactly once;
generations only grow; a commit from a stale generation is refused and an accepted one is
what fetch_offsets returns; committed offsets change only by accepted commits; a leader's
join reply lists every member; states move only along Kafka's transitions (the core
asserts it). Long-poll heartbeats (``max_wait_ms``): the coordinator's count of parked
heartbeats is the number of members holding one, within ``max_parked_heartbeats``; none is
held in a group that prepares a rebalance, none is overdue (answered when its wait ends,
capped at half the session, so no member's session lapses while it waits); a success
answer comes no earlier than that wait's end unless a newer heartbeat superseded it;
REBALANCE_IN_PROGRESS only once a rebalance began, UNKNOWN_MEMBER_ID / FENCED_INSTANCE_ID
only for a member that is gone; every parked token is answered exactly once (or lost with
a coordinator restart). Liveness, at the end: with the clock moving and live members
heartbeating and rejoining, every group settles to Stable with exactly its live members,
each holding its stored assignment, and crashed members gone; then every parked
heartbeat gets its answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from coord_harness import Harness
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from kvlog.errors import ErrorCode, KvlogError
from kvlog.ipc.assignors import assignor
from kvlog.ipc.consumer_protocol import (
    decode_assignment,
    decode_subscription,
    encode_assignment,
    encode_subscription,
)
from kvlog.types import TopicPartition as TP
from kvlog.workers.core_result import Reply, Result
from kvlog.workers.group_events import (
    CommitEntry,
    Heartbeat,
    JoinGroup,
    LeaveGroup,
    OffsetCommit,
    SyncGroup,
)
from kvlog.workers.group_model import GroupState
from kvlog.workers.zmq_replies import encode

CLASSIC, SERVER = "classic", "server"
GROUPS = (CLASSIC, SERVER)
SERVER_ASSIGNOR = "sticky"
PROTOCOLS = ["range", "roundrobin", "sticky"]
TOPICS = ["a", "b", "c"]
INSTANCES = ["s1", "s2", "s3"]
MAX_CLIENTS = 14
LIVE = {"new", "joining", "joined", "syncing", "stable"}
REFUSED_COMMIT = {
    ErrorCode.ILLEGAL_GENERATION,
    ErrorCode.UNKNOWN_MEMBER_ID,
    ErrorCode.REBALANCE_IN_PROGRESS,
    ErrorCode.FENCED_INSTANCE_ID,
}


@dataclass
class Client:
    key: str
    group: str
    instance_id: str | None
    topics: list[str]
    session_ms: int
    rebalance_ms: int
    protocols: list[str]
    member_id: str = ""
    generation: int = -1
    epoch: int = 0  # the group's incarnation (deletes start a new one) it joined
    phase: str = "new"  # new joining joined syncing stable | crashed left fenced
    leader: str = ""
    protocol: str | None = None
    members: list[dict[str, Any]] = field(default_factory=list)
    skip_assignment: bool = False
    assignment: set[TP] = field(default_factory=set)

    @property
    def owner(self) -> str:
        """Who owns partitions: a static member's instance, else its member id."""
        return self.instance_id or self.member_id


@dataclass
class Parked:
    """A heartbeat the coordinator parked: whose, and when its wait ends."""

    key: str
    group: str
    member_id: str
    generation: int
    due_ms: int
    superseded: bool = False


class GroupMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h: Harness | None = None
        self.clients: dict[str, Client] = {}
        self.pending: dict[int, tuple[str, str, int]] = {}  # token -> client, kind, generation
        self.epoch = dict.fromkeys(GROUPS, 0)  # bumped when a group is deleted
        self.max_generation = dict.fromkeys(GROUPS, 0)  # the coordinator's, never lower
        self.seen_generation = dict.fromkeys(GROUPS, -1)  # newest in any join reply
        # (group, epoch, generation) -> {partition: owner}, from the replies members got
        self.owners: dict[tuple[str, int, int], dict[TP, str]] = {}
        # (group, epoch, generation) -> {owner: partitions}, as the leader computed it
        self.plans: dict[tuple[str, int, int], dict[str, set[TP]]] = {}
        self.offsets: dict[str, dict[TP, int]] = {g: {} for g in GROUPS}
        self.serial = 0
        self.long_polls = False  # whether progress rounds heartbeat with max_wait_ms
        self.parked: dict[int, Parked] = {}  # parked heartbeats not answered yet
        self.answered: set[int] = set()  # parked heartbeats answered
        self.lost: set[int] = set()  # parked heartbeats lost with a coordinator restart

    @initialize(
        delay=st.sampled_from([0, 0, 100, 400]),
        counts=st.fixed_dictionaries({t: st.integers(1, 4) for t in TOPICS}),
        long_polls=st.booleans(),
        max_parked=st.sampled_from([1, 3, 10_000]),
    )
    def setup(self, delay: int, counts: dict[str, int], long_polls: bool, max_parked: int) -> None:
        self.h = Harness(
            counts, initial_rebalance_delay_ms=delay, max_size=8, max_parked_heartbeats=max_parked
        )
        self.long_polls = long_polls

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def coord(self) -> Any:
        return self.h.coord

    def live(self, group: str | None = None) -> list[Client]:
        return [
            c
            for c in self.clients.values()
            if c.phase in LIVE and (group is None or c.group == group)
        ]

    def call(self, token: int, result: Result) -> Reply | None:
        """Carry out a request's Result (its replies wait in the harness for
        :meth:`deliver`); returns the request's own reply if it was answered at once."""
        self.h.run(result)
        return next((r for r in result.replies if r.token == token), None)

    def commit_error(self, event: OffsetCommit) -> KvlogError | None:
        token = next(self.h.tokens)
        own = self.call(token, self.h.offsets.commit(token, event, self.h.now))
        self.deliver()
        assert own is not None, "a commit is answered at once"
        return own.error

    def deliver(self) -> None:
        for token, fields in self.h.drain():
            self.on_reply(token, fields)

    def on_reply(self, token: int, fields: dict[str, Any]) -> None:
        parked = self.parked.pop(token, None)
        if parked is not None:
            self.answered.add(token)
            self.on_parked_reply(parked, fields)
            return
        entry = self.pending.pop(token, None)
        if entry is None:
            return  # the client gave up on it (coordinator restart)
        key, kind, generation = entry
        c = self.clients[key]
        code = fields.get("error", 0)
        if code:
            self.on_error(c, ErrorCode(code), kind)
        elif kind == "join":
            self.on_join_reply(c, fields)
        else:
            self.on_sync_reply(c, fields, generation)

    def on_error(self, c: Client, code: ErrorCode, what: str) -> None:
        allowed = {
            ErrorCode.UNKNOWN_MEMBER_ID,
            ErrorCode.ILLEGAL_GENERATION,
            ErrorCode.REBALANCE_IN_PROGRESS,
            ErrorCode.FENCED_INSTANCE_ID,
        }
        if what == "join":
            allowed.add(ErrorCode.GROUP_MAX_SIZE_REACHED)
        assert code in allowed, f"{what} of {c.key} failed with {code.name}"
        event(f"{what}: {code.name}")
        if code is ErrorCode.FENCED_INSTANCE_ID:
            c.phase = "fenced"
            return
        if code is ErrorCode.GROUP_MAX_SIZE_REACHED:
            c.phase = "left"
            return
        if code is ErrorCode.UNKNOWN_MEMBER_ID:
            c.member_id = ""
            c.generation = -1
            c.assignment = set()
        c.phase = "new"

    def on_parked_reply(self, p: Parked, fields: dict[str, Any]) -> None:
        """A parked heartbeat's answer: checked against the coordinator's state, then acted
        on by its client if the client still is the membership it was sent for."""
        code = ErrorCode(fields.get("error", 0))
        event(f"parked heartbeat: {code.name}")
        grp = self.coord.groups.get(p.group)
        if code is ErrorCode.NONE:
            assert p.superseded or self.h.now >= p.due_ms, (
                f"a parked heartbeat answered at {self.h.now}, before its wait ended at "
                f"{p.due_ms}, and no newer heartbeat replaced it"
            )
            return
        if code is ErrorCode.REBALANCE_IN_PROGRESS:
            assert grp is not None and (
                grp.state is GroupState.PREPARING_REBALANCE or grp.generation > p.generation
            ), "REBALANCE_IN_PROGRESS to a parked heartbeat, but no rebalance began"
        else:
            assert code in (ErrorCode.UNKNOWN_MEMBER_ID, ErrorCode.FENCED_INSTANCE_ID), code
            assert grp is None or p.member_id not in grp.members, (
                f"{code.name} to a parked heartbeat of a member that is still there"
            )
        c = self.clients[p.key]
        if c.phase not in ("joined", "syncing", "stable") or (c.member_id, c.generation) != (
            p.member_id,
            p.generation,
        ):
            return  # a rejoin (or leave, crash) since: the client no longer waits on it
        if c.phase in ("joined", "syncing") and code is ErrorCode.REBALANCE_IN_PROGRESS:
            return  # its parked join/sync answers it
        self.on_error(c, code, "parked heartbeat")
        if c.phase == "new":
            for token, (key, _, _) in list(self.pending.items()):
                if key == c.key:
                    del self.pending[token]  # a rejoin supersedes a parked sync

    def on_join_reply(self, c: Client, fields: dict[str, Any]) -> None:
        generation = fields["generation"]
        assert generation >= c.generation, "a member was sent back to an older generation"
        c.member_id = fields["member_id"]
        c.generation = generation
        c.epoch = self.epoch[c.group]
        c.leader = fields["leader"]
        c.protocol = fields["protocol"]
        self.seen_generation[c.group] = max(self.seen_generation[c.group], generation)
        if c.group == SERVER:
            assert "assignment" in fields, "a coordinator-assigned member got no assignment"
            c.assignment = decode_assignment(fields["assignment"])
            c.phase = "stable"
            self.record_owners(c, generation)
            return
        c.members = fields["members"]
        c.skip_assignment = bool(fields.get("skip_assignment"))
        if c.skip_assignment:
            event("static member rejoined without a rebalance")
        c.phase = "joined"
        group = self.coord.groups.get(c.group)
        if c.member_id == c.leader and not c.skip_assignment:
            if (
                group is not None
                and group.generation == generation
                and group.state is GroupState.COMPLETING_REBALANCE
            ):
                listed = {m["member_id"]: m["metadata"] for m in c.members}
                assert set(listed) == set(group.members), "the leader must see every member"
                for member_id, meta in listed.items():
                    assert meta == group.members[member_id].metadata_for(c.protocol)
        elif c.member_id != c.leader:
            assert c.members == [], "only the leader gets the member list"

    def on_sync_reply(self, c: Client, fields: dict[str, Any], generation: int) -> None:
        c.assignment = decode_assignment(fields["assignment"])
        c.phase = "stable"
        self.record_owners(c, generation)

    def record_owners(self, c: Client, generation: int) -> None:
        owners = self.owners.setdefault((c.group, c.epoch, generation), {})
        for tp in c.assignment:
            other = owners.setdefault(tp, c.owner)
            assert other == c.owner, f"{tp} has two owners in generation {generation}"

    def send_join(self, c: Client) -> None:
        token = next(self.h.tokens)
        self.pending[token] = (c.key, "join", c.generation)
        c.phase = "joining"
        meta = encode_subscription(c.topics, c.assignment, c.generation)
        server = c.group == SERVER
        request = JoinGroup(
            group_id=c.group,
            member_id=c.member_id,
            instance_id=c.instance_id,
            client_id=c.key,
            session_timeout_ms=c.session_ms,
            rebalance_timeout_ms=c.rebalance_ms,
            protocol_type="consumer",
            protocols=[(name, meta) for name in c.protocols],
            server_assignor=SERVER_ASSIGNOR if server else None,
            topics=list(c.topics) if server else [],
            owned=sorted(c.assignment) if server else [],
        )
        self.call(token, self.coord.join(token, request, self.h.now))
        self.deliver()

    def send_sync(self, c: Client) -> None:
        assignments = None
        plan = None
        if c.member_id == c.leader and not c.skip_assignment:
            subs = [
                decode_subscription(m["member_id"], m["instance_id"], m["metadata"])
                for m in c.members
            ]
            counts = {t: self.h.counts[t] for s in subs for t in s.topics}
            result = assignor(c.protocol)(counts, subs)
            assignments = {mid: encode_assignment(tps) for mid, tps in result.items()}
            instance = {s.member_id: s.instance_id for s in subs}
            plan = {instance[mid] or mid: set(tps) for mid, tps in result.items()}
        token = next(self.h.tokens)
        self.pending[token] = (c.key, "sync", c.generation)
        c.phase = "syncing"
        request = SyncGroup(c.group, c.generation, c.member_id, c.instance_id, assignments)
        own = self.call(token, self.coord.sync(token, request, self.h.now))
        if (own is None or own.error is None) and plan is not None:
            self.plans[(c.group, c.epoch, c.generation)] = plan
        self.deliver()

    def send_heartbeat(
        self, c: Client, max_wait_ms: int | None = None, *, long: bool = False
    ) -> None:
        """An ordinary heartbeat, or with ``long`` one with a token and ``max_wait_ms``
        (the coordinator may park it)."""
        group = self.coord.groups.get(c.group)
        expect_ok = (
            group is not None
            and group.state is GroupState.STABLE
            and c.member_id in group.members
            and group.generation == c.generation
        )
        mine = [t for t, p in self.parked.items() if p.key == c.key]
        token = next(self.h.tokens)
        request = Heartbeat(
            c.group, c.generation, c.member_id, c.instance_id, max_wait_ms if long else None
        )
        own = self.call(token, self.coord.heartbeat(token, request, self.h.now))
        if own is not None and own.error is not None:
            exc = own.error
            assert not expect_ok, f"heartbeat of a current member refused: {exc.message}"
            self.deliver()
            if c.phase in ("joined", "syncing") and exc.code is ErrorCode.REBALANCE_IN_PROGRESS:
                return  # its parked join/sync answers it
            self.on_error(c, exc.code, "heartbeat")
            if c.phase == "new":
                for pending, (key, _, _) in list(self.pending.items()):
                    if key == c.key:
                        del self.pending[pending]  # a rejoin supersedes a parked sync
            return
        for old in mine:
            self.parked[old].superseded = True  # the coordinator answers it now
        if own is None:
            assert long and max_wait_ms, "parked without a token or a wait"
            wait = min(max_wait_ms, c.session_ms // 2)
            self.parked[token] = Parked(
                c.key, c.group, c.member_id, c.generation, self.h.now + wait
            )
            event("heartbeat parked")
        else:
            assert encode(own.body) == {}
        self.deliver()

    # -- rules ----------------------------------------------------------------------------------

    @precondition(lambda self: len(self.live()) < MAX_CLIENTS)
    @rule(
        group=st.sampled_from(GROUPS),
        instance=st.none() | st.sampled_from(INSTANCES),
        topics=st.lists(st.sampled_from(TOPICS), min_size=1, max_size=3, unique=True),
        session_ms=st.sampled_from([200, 500, 1000]),
        rebalance_ms=st.sampled_from([300, 1000, 3000]),
        protocols=st.permutations(PROTOCOLS),
    )
    def new_member(self, group, instance, topics, session_ms, rebalance_ms, protocols) -> None:
        """A new consumer (a static one may be a restart of a live or crashed instance)."""
        self.serial += 1
        c = Client(
            f"c{self.serial}",
            group,
            instance,
            sorted(topics),
            session_ms,
            rebalance_ms,
            list(protocols),
        )
        self.clients[c.key] = c
        self.send_join(c)

    @rule(data=st.data())
    def restart_static(self, data: st.DataObject) -> None:
        """A static member's process restarts: same instance id and subscription, no
        member id; the old process (if still running) is a zombie to be fenced."""
        candidates = [
            c for c in self.clients.values() if c.instance_id and c.phase in LIVE | {"crashed"}
        ]
        if not candidates or len(self.live()) >= MAX_CLIENTS:
            return
        old = data.draw(st.sampled_from(candidates))
        self.serial += 1
        c = Client(
            f"c{self.serial}",
            old.group,
            old.instance_id,
            old.topics,
            old.session_ms,
            old.rebalance_ms,
            old.protocols,
        )
        if old.phase == "crashed" or data.draw(st.booleans()):
            old.phase = "crashed"  # the usual case: the old process is gone
        self.clients[c.key] = c
        grp = self.coord.groups.get(c.group)
        event(f"static restart in {grp.state.value if grp else None}")
        self.send_join(c)

    @rule(data=st.data())
    def rejoin(self, data: st.DataObject) -> None:
        """A member that must rejoin does; a stable one may rejoin on its own (new topics)."""
        candidates = [c for c in self.live() if c.phase in ("new", "stable", "joined")]
        if not candidates:
            return
        c = data.draw(st.sampled_from(candidates))
        if c.phase != "new" and data.draw(st.booleans()):
            c.topics = sorted(
                data.draw(st.lists(st.sampled_from(TOPICS), min_size=1, max_size=3, unique=True))
            )
        for token, (key, _, _) in list(self.pending.items()):
            if key == c.key:
                del self.pending[token]
        self.send_join(c)

    @rule(ms=st.sampled_from([0, 20, 60]))
    def progress(self, ms: int) -> None:
        """Every live member takes its next step (join, sync or heartbeat); time moves a
        little. Well-behaved rounds, so groups get to Stable between the faults."""
        self.round()
        if ms:
            self.clock(ms)

    def round(self) -> None:
        for c in self.live():
            if c.phase == "new":
                self.send_join(c)
            elif c.phase == "joined":
                self.send_sync(c)
            elif c.phase == "stable" or (c.phase == "syncing" and c.member_id):
                if self.long_polls:
                    self.send_heartbeat(c, 300, long=True)
                else:
                    self.send_heartbeat(c)

    @rule(data=st.data())
    def sync(self, data: st.DataObject) -> None:
        candidates = [c for c in self.live() if c.phase == "joined"]
        if candidates:
            self.send_sync(data.draw(st.sampled_from(candidates)))

    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        candidates = [c for c in self.live() if c.member_id and c.phase != "new"]
        if candidates:
            self.send_heartbeat(data.draw(st.sampled_from(candidates)))

    @rule(data=st.data(), max_wait_ms=st.sampled_from([None, 0, 40, 100, 300, 5000]))
    def long_poll(self, data: st.DataObject, max_wait_ms: int | None) -> None:
        """A heartbeat with ``max_wait_ms`` (None: as from a client older than long polls)."""
        candidates = [c for c in self.live() if c.member_id and c.phase != "new"]
        if candidates:
            self.send_heartbeat(data.draw(st.sampled_from(candidates)), max_wait_ms, long=True)

    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        candidates = [c for c in self.live() if c.member_id]
        if not candidates:
            return
        c = data.draw(st.sampled_from(candidates))
        token = next(self.h.tokens)
        request = LeaveGroup(c.group, [(c.member_id, c.instance_id)])
        self.call(token, self.coord.leave(token, request, self.h.now))
        c.phase = "left"
        self.deliver()

    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """The member's process dies: no more requests; its session runs out."""
        candidates = self.live()
        if candidates:
            data.draw(st.sampled_from(candidates)).phase = "crashed"

    @rule(ms=st.sampled_from([10, 50, 50, 150, 150, 400, 1100, 3100]))
    def clock(self, ms: int) -> None:
        self.h.now += ms
        self.h.tick()
        self.deliver()

    @rule(
        data=st.data(),
        back=st.sampled_from([0, 0, 1, 2]),
        topic=st.sampled_from(TOPICS),
        partition=st.integers(0, 5),
        offset=st.integers(0, 10_000),
    )
    def commit(self, data, back: int, topic: str, partition: int, offset: int) -> None:
        """A member commits with its generation, or an older one (a zombie)."""
        candidates = [c for c in self.clients.values() if c.member_id and c.phase != "crashed"]
        stable = [c for c in candidates if c.phase == "stable"]
        if stable and data.draw(st.booleans()):
            candidates = stable
        if not candidates:
            return
        c = data.draw(st.sampled_from(candidates))
        generation = c.generation - back
        group = self.coord.groups.get(c.group)
        expect_ok = (
            group is not None
            and group.state is GroupState.STABLE
            and c.member_id in group.members
            and generation == group.generation
        )
        tp = TP(topic, partition)
        exc = self.commit_error(
            OffsetCommit(c.group, [CommitEntry(tp, offset)], generation, c.member_id, c.instance_id)
        )
        if exc is not None:
            assert exc.code in REFUSED_COMMIT, exc
            assert not expect_ok, f"a current member's commit was refused: {exc.message}"
            event(f"commit refused: {exc.code.name}")
            return
        event("commit accepted")
        assert generation >= self.seen_generation[c.group], (
            f"commit from generation {generation} accepted after generation "
            f"{self.seen_generation[c.group]} was handed out"
        )
        assert group is not None and c.member_id in group.members
        self.offsets[c.group][tp] = offset

    @rule(group=st.sampled_from(GROUPS), offset=st.integers(0, 10_000))
    def admin_commit(self, group: str, offset: int) -> None:
        """A commit without member id and generation (offset reset): only while empty."""
        state = self.coord.groups.get(group)
        empty = state is None or not state.members
        exc = self.commit_error(OffsetCommit(group, [CommitEntry(TP("a", 0), offset)]))
        if exc is not None:
            assert not empty, exc
            assert exc.code is ErrorCode.UNKNOWN_MEMBER_ID
            return
        assert empty, "a commit without a member was accepted while the group has members"
        self.offsets[group][TP("a", 0)] = offset

    @rule(group=st.sampled_from(GROUPS))
    def delete_group(self, group: str) -> None:
        state = self.coord.groups.get(group)
        exc = self.h.delete_group(group)
        if exc is not None:
            if state is not None and state.members:
                assert exc.code is ErrorCode.NON_EMPTY_GROUP
            else:
                assert exc.code is ErrorCode.GROUP_ID_NOT_FOUND
                assert not self.offsets[group]
            return
        assert state is None or not state.members, "a group with members was deleted"
        self.offsets[group] = {}
        self.epoch[group] += 1
        self.max_generation[group] = 0
        self.seen_generation[group] = -1

    @rule(topic=st.sampled_from(TOPICS))
    def grow_topic(self, topic: str) -> None:
        if self.h.counts[topic] < 6:
            self.h.counts[topic] += 1
            self.h.run(self.coord.on_topics_changed(self.h.now))
            self.deliver()

    @rule()
    def restart_coordinator(self) -> None:
        """The coordinator process dies and comes back: parked requests are lost, so their
        clients (after a timeout) rejoin."""
        before = {
            g: (grp.state, grp.generation, {m: list(x.assigned) for m, x in grp.members.items()})
            for g, grp in self.coord.groups.items()
            if grp.state in (GroupState.STABLE, GroupState.EMPTY)
        }
        self.h.restart()
        event(f"restart with groups in {sorted(s.value for s, _, _ in before.values())}")
        self.lost |= set(self.parked)  # they died with the process (clients time out)
        self.parked.clear()
        for token in list(self.pending):
            key, _, _ = self.pending.pop(token)
            self.clients[key].phase = "new"
        for g, (state, generation, members) in before.items():
            grp = self.coord.groups[g]
            assert (grp.state, grp.generation) == (state, generation), g
            assert {m: list(x.assigned) for m, x in grp.members.items()} == members

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def generations_only_grow(self) -> None:
        if self.h is None:
            return
        for g in GROUPS:
            grp = self.coord.groups.get(g)
            if grp is None:
                continue
            assert grp.generation >= self.max_generation[g], (
                f"group {g} went from generation {self.max_generation[g]} to {grp.generation}"
            )
            assert grp.generation >= self.seen_generation[g]
            self.max_generation[g] = grp.generation

    @invariant()
    def committed_offsets_are_the_accepted_commits(self) -> None:
        if self.h is None:
            return
        for g in GROUPS:
            assert self.h.committed(g) == self.offsets[g], g

    @invariant()
    def states_match_membership(self) -> None:
        if self.h is None:
            return
        for g, grp in self.coord.groups.items():
            assert (grp.state is GroupState.EMPTY) == (not grp.members), (g, grp.state)
            if grp.members:
                assert grp.leader in grp.members, (g, grp.leader)
            for instance, member_id in grp.static.items():
                assert grp.members[member_id].instance_id == instance

    @invariant()
    def a_stable_group_covers_every_subscribed_partition_once(self) -> None:
        if self.h is None:
            return
        for g, grp in self.coord.groups.items():
            if grp.state is not GroupState.STABLE:
                continue
            stored = {m.instance_id or mid: set(m.assigned) for mid, m in grp.members.items()}
            held = [tp for tps in stored.values() for tp in tps]
            assert len(held) == len(set(held)), f"{g}: a partition is stored twice: {stored}"
            if g == CLASSIC:
                plan = self.plans.get((g, self.epoch[g], grp.generation))
                assert plan is not None, f"{g} is Stable in generation {grp.generation} unsynced"
                assert stored == plan, f"{g}: stored {stored} is not the leader's {plan}"
                continue
            topics = {t for m in grp.members.values() for t in m.topics}
            want = {TP(t, p) for t in topics for p in range(self.h.counts[t])}
            assert set(held) == want, f"{g}: stored {stored}, subscribed {sorted(want)}"
            for m in grp.members.values():
                assert all(tp.topic in m.topics for tp in m.assigned)

    @invariant()
    def parked_heartbeats_are_counted_and_never_overdue(self) -> None:
        if self.h is None:
            return
        holders = [
            (grp, m)
            for grp in self.coord.groups.values()
            for m in grp.members.values()
            if m.heartbeat_token is not None
        ]
        assert self.coord.parked_heartbeats == len(holders), "parked_heartbeats is off"
        assert len(holders) <= self.coord.config.max_parked_heartbeats
        tokens = [m.heartbeat_token for _, m in holders]
        assert len(tokens) == len(set(tokens)), "a token held twice"
        assert set(tokens) == set(self.parked), "a parked heartbeat lost, or answered unseen"
        now = self.h.now
        for grp, m in holders:
            p = self.parked[m.heartbeat_token]
            assert (grp.group_id, m.member_id) == (p.group, p.member_id)
            assert grp.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE), grp.state
            assert m.heartbeat_due_ms() > now, "a parked heartbeat is overdue"
            assert m.heartbeat_due_ms() <= p.due_ms, "parked past its wait (or half a session)"
            assert m.deadline_ms > m.heartbeat_due_ms(), "its session lapses while it waits"

    # -- liveness -------------------------------------------------------------------------------

    def teardown(self) -> None:
        if self.h is None:
            return
        for _ in range(600):
            if self.settled():
                self.answer_every_parked_heartbeat()
                return
            self.round()
            self.clock(50)
        raise AssertionError(
            "the groups did not settle: "
            + repr({g: (grp.state, sorted(grp.members)) for g, grp in self.coord.groups.items()})
            + repr({c.key: (c.group, c.phase, c.member_id) for c in self.live()})
        )

    def answer_every_parked_heartbeat(self) -> None:
        """Ordinary heartbeats supersede the live members' parked ones; the clock answers
        the rest (crashed members': at their wait's end). Each exactly once: the harness
        refuses a second answer to a token."""
        self.long_polls = False
        for _ in range(30):
            if not self.parked:
                break
            self.round()
            self.clock(50)
        assert not self.parked, f"parked heartbeats never answered: {sorted(self.parked)}"
        assert self.coord.parked_heartbeats == 0
        assert not (self.answered & self.lost)
        assert set(self.h.replies) >= self.answered

    def settled(self) -> bool:
        for g in GROUPS:
            live = self.live(g)
            grp = self.coord.groups.get(g)
            if not live:
                if grp is not None and grp.members:
                    return False
                continue
            if grp is None or grp.state is not GroupState.STABLE:
                return False
            if {c.member_id for c in live} != set(grp.members):
                return False
            for c in live:
                if c.phase != "stable" or c.generation != grp.generation:
                    return False
                assert c.assignment == set(grp.members[c.member_id].assigned), c.key
        return True


GroupMachine.TestCase.settings = settings(
    max_examples=int(__import__("os").environ.get("KVLOG_GROUP_EXAMPLES", "120")),
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_group_coordinator = GroupMachine.TestCase
