"""The transaction coordinator core under random producers (zombies included), lost and
refused marker sends, leader moves, topic deletion, clock moves (transaction timeouts,
parked requests, id expiry) and coordinator crashes at any point (hypothesis
``RuleBasedStateMachine``, over :mod:`txn_harness`).

Two transactional ids; each ``init`` starts a new producer instance of one of them (the
older instances become zombies, still sending with their epochs). Every write the
coordinator makes to its ``transactions`` table is observed in order, so the checks see
every state it stored, even those one event passes through.

A KIP-360 rule has an instance (a zombie too) bump its own epoch with InitProducerId and
its producer id and epoch.

Safety, after every step:
- a transaction is completed at most once: every CompleteCommit / CompleteAbort closes the
  one decision (PrepareCommit / PrepareAbort) stored before it, or is a decision without
  partitions stored straight from Ongoing;
- markers before Complete: when a decision with partitions is completed, every partition
  it touched that still exists has its marker (producer id, epoch, outcome) written by
  that partition's leader, before the Complete write;
- fenced epochs never write: a request succeeds only when its producer id and epoch are
  the transactional id's current ones (a zombie's requests all fail, its KIP-360 epoch
  bumps too), every decision's markers carry an epoch at least every epoch handed out
  for that producer id before it, and a transaction aborted because it timed out or a
  new instance arrived has its epoch bumped (its writers are fenced at every partition
  by the marker);
- group offsets: committed exactly when a transaction that committed offsets for them is
  decided to commit (the pending ones, at the decision's write), never on abort;
- no Ongoing transaction outlives its timeout once the clock passed it, and stored states
  move only along Kafka's transitions (the core asserts that).

Liveness, at the end: with every partition led and every send delivered, every decided
transaction completes and every request still owed an answer (by the current process) is
answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from txn_harness import TOPICS, TxnHarness

from kvlog.errors import ErrorCode
from kvlog.metadata_store import group_offsets
from kvlog.types import TopicPartition
from kvlog.workers.controller_events import InitProducerId, ProducerIdAnswer
from kvlog.workers.group_events import CommitEntry, JoinGroup, LeaveGroup, OffsetCommitAnswer
from kvlog.workers.txn_core import TxnConfig
from kvlog.workers.txn_events import (
    AddOffsetsToTxn,
    AddPartitionsToTxn,
    EndTxn,
    TxnOffsetCommit,
    TxnPartitionsAdded,
)
from kvlog.workers.txn_model import TxnMetadata, TxnState

TIDS = ("a", "b")
GROUPS = ("g1", "g2")
ALL_TPS = [TopicPartition(t, p) for t, n in TOPICS.items() for p in range(n)]
CONFIG = TxnConfig(
    max_timeout_ms=60_000, id_expiration_ms=600_000, park_max_ms=5000, retry_backoff_ms=100
)


@dataclass
class Instance:
    tid: str
    pid: int = -1
    epoch: int = -1


@dataclass
class Sent:
    """A request, until answered: who sent it, and whether its epoch was fenced already
    when it was sent (a zombie's)."""

    instance: Instance
    event: Any
    incarnation: int
    fenced: bool = False


@dataclass
class Decision:
    pid: int
    epoch: int
    commit: bool
    partitions: frozenset[TopicPartition]
    seq: int


class TxnMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = TxnHarness(config=CONFIG)
        self.instances: list[Instance] = []
        self.sent: dict[int, Sent] = {}
        self.seen = 0  # history entries checked
        self.rows: dict[str, TxnMetadata] = {}  # the last stored row of each id
        self.open: dict[str, Decision] = {}
        self.handed: dict[tuple[str, int], int] = {}  # (tid, pid) -> largest epoch handed out
        self.pending: dict[tuple[str, int], dict[TopicPartition, int]] = {}  # (group, pid)
        self.committed: dict[str, dict[TopicPartition, int]] = {g: {} for g in GROUPS}
        self.completed = 0

    # -- sending and answers ---------------------------------------------------------------

    def send(self, instance: Instance, event: Any) -> None:
        row = self.h.core.txns.get(instance.tid)
        fenced = instance.pid >= 0 and (
            row is None or (row.producer_id, row.producer_epoch) != (instance.pid, instance.epoch)
        )
        token = self.h.request(event)
        self.sent[token] = Sent(instance, event, self.h.incarnation, fenced)
        self.collect()

    def collect(self) -> None:
        """Check the replies that arrived (and the writes made) since the last call."""
        self.check_history()
        for token in [t for t in self.sent if t in self.h.replies]:
            sent = self.sent.pop(token)
            self.check_reply(sent, self.h.replies[token])

    def check_reply(self, sent: Sent, reply: Any) -> None:
        event, instance = sent.event, sent.instance
        if isinstance(event, InitProducerId):
            if sent.fenced and event.producer_id >= 0:
                # KIP-360: a zombie cannot bump the epoch (it would fence its successor).
                assert reply.error is not None and reply.error.code in (
                    ErrorCode.PRODUCER_FENCED,
                    ErrorCode.INVALID_PRODUCER_ID_MAPPING,
                ), reply
            if reply.error is None:
                answer: ProducerIdAnswer = reply.body
                instance.pid, instance.epoch = answer.producer_id, answer.producer_epoch
                key = (instance.tid, instance.pid)
                assert answer.producer_epoch > self.handed.get(key, -1), "an epoch handed twice"
                self.handed[key] = answer.producer_epoch
                stored = [
                    (m.producer_id, m.producer_epoch)
                    for _, _, rows in self.h.history
                    if (m := rows.get(instance.tid)) is not None
                ]
                assert (instance.pid, instance.epoch) in stored, "handed out before stored"
            return
        success = reply.error is None
        if isinstance(reply.body, TxnPartitionsAdded):
            success = all(e is None for _, e in reply.body.results)
        if isinstance(reply.body, OffsetCommitAnswer):
            success = all(p.error is None for p in reply.body.partitions)
        if sent.fenced:
            # A zombie (its epoch was not the current one when it sent) never succeeds.
            assert not success, f"a fenced producer's {event} succeeded"
            assert reply.error is not None and reply.error.code in (
                ErrorCode.PRODUCER_FENCED,
                ErrorCode.INVALID_PRODUCER_ID_MAPPING,
            ), reply
        if success and isinstance(event, TxnOffsetCommit):
            pending = self.pending.setdefault((event.group_id, event.producer_id), {})
            pending.update({e.tp: e.offset for e in event.offsets})

    def check_history(self) -> None:
        for seq, at, changes in self.h.history[self.seen :]:
            for tid, meta in changes.items():
                self.on_write(seq, at, tid, meta)
        self.seen = len(self.h.history)

    def on_write(self, seq: int, at: int, tid: str, meta: TxnMetadata | None) -> None:
        before = self.rows.get(tid)
        if meta is None:  # expired
            assert before is not None and before.state.idle, before
            del self.rows[tid]
            return
        self.rows[tid] = meta
        state = meta.state
        if state.preparing:
            assert tid not in self.open, "a second decision before the first completed"
            assert before is not None and before.state is TxnState.ONGOING
            decision = Decision(
                meta.producer_id,
                meta.producer_epoch,
                state is TxnState.PREPARE_COMMIT,
                meta.partitions,
                seq,
            )
            self.decided(tid, before, decision, at)
            self.open[tid] = decision
        elif state in (TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT):
            decision = self.open.pop(tid, None)
            if decision is None:
                # Decided and completed in one write: only a transaction without partitions.
                assert before is not None and before.state is TxnState.ONGOING, before
                assert not before.partitions, before
                commit = state is TxnState.COMPLETE_COMMIT
                decision = Decision(meta.producer_id, meta.producer_epoch, commit, frozenset(), seq)
                self.decided(tid, before, decision, at)
            assert decision.commit == (state is TxnState.COMPLETE_COMMIT)
            for tp in decision.partitions:
                if tp not in self.h.leaders:
                    continue  # deleted: no marker needed
                written = [
                    m
                    for m in self.h.markers.get(tp, [])
                    if (m.producer_id, m.producer_epoch, m.committed)
                    == (decision.pid, decision.epoch, decision.commit)
                    and decision.seq < m.seq < seq
                ]
                assert written, f"{tid}: completed before the marker of {tp} was written"
            self.completed += 1

    def decided(self, tid: str, before: TxnMetadata, decision: Decision, at: int) -> None:
        handed = self.handed.get((tid, decision.pid), -1)
        assert decision.epoch >= handed, "a marker epoch below one handed out: a zombie writes"
        if decision.epoch > before.producer_epoch:  # fenced: timeout or a new instance
            assert not decision.commit
        if before.start_ms + before.timeout_ms <= at:
            # Timed out: aborted, its producer fenced by the markers' bumped epoch.
            assert not decision.commit and decision.epoch == before.producer_epoch + 1
            event("timed out")
        event("committed" if decision.commit else "aborted")
        for group in before.groups:
            pending = self.pending.pop((group, decision.pid), {})
            if decision.commit:
                self.committed[group].update(pending)

    # -- rules -----------------------------------------------------------------------------

    def live(self) -> list[Instance]:
        return [i for i in self.instances if i.pid >= 0]

    @rule(tid=st.sampled_from(TIDS), timeout=st.sampled_from([1000, 10_000, 60_000, 90_000]))
    def init(self, tid: str, timeout: int) -> None:
        instance = Instance(tid)
        self.instances.append(instance)
        self.send(instance, InitProducerId(tid, timeout))

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def bump(self, data: Any) -> None:
        """KIP-360: an instance (a zombie too) bumps its own epoch."""
        i = data.draw(st.sampled_from(self.live()))
        self.send(i, InitProducerId(i.tid, 60_000, i.pid, i.epoch))

    @precondition(lambda self: self.live())
    @rule(data=st.data(), parts=st.lists(st.sampled_from(ALL_TPS), min_size=1, max_size=3))
    def add_partitions(self, data: Any, parts: list[TopicPartition]) -> None:
        i = data.draw(st.sampled_from(self.live()))
        self.send(i, AddPartitionsToTxn(i.tid, i.pid, i.epoch, parts))

    @precondition(lambda self: self.live())
    @rule(data=st.data(), group=st.sampled_from(GROUPS))
    def add_offsets(self, data: Any, group: str) -> None:
        i = data.draw(st.sampled_from(self.live()))
        self.send(i, AddOffsetsToTxn(i.tid, i.pid, i.epoch, group))

    @precondition(lambda self: self.live())
    @rule(data=st.data(), group=st.sampled_from(GROUPS), offset=st.integers(0, 1000))
    def offset_commit(self, data: Any, group: str, offset: int) -> None:
        i = data.draw(st.sampled_from(self.live()))
        entry = CommitEntry(TopicPartition("in", offset % 2), offset)
        self.send(i, TxnOffsetCommit(i.tid, group, i.pid, i.epoch, [entry]))

    @precondition(lambda self: self.live())
    @rule(data=st.data(), commit=st.booleans())
    def end(self, data: Any, commit: bool) -> None:
        i = data.draw(st.sampled_from(self.live()))
        self.send(i, EndTxn(i.tid, i.pid, i.epoch, commit))

    @precondition(lambda self: self.h.network)
    @rule(data=st.data(), how=st.sampled_from(["ok", "ok", "ok", "lose_answer", "fail", "lost"]))
    def deliver(self, data: Any, how: str) -> None:
        key = data.draw(st.sampled_from(sorted(self.h.network)))
        if how == "lost":
            self.h.lose(key)
        else:
            self.h.deliver(key, lose_answer=how == "lose_answer", fail=how == "fail")
        self.collect()

    @rule(ms=st.sampled_from([1, 50, 100, 1000, 6000, 61_000, 700_000]))
    def advance(self, ms: int) -> None:
        self.h.advance(ms)
        self.collect()

    @rule()
    def restart(self) -> None:
        self.h.start()
        self.sent = {t: s for t, s in self.sent.items() if s.incarnation == self.h.incarnation}
        self.collect()

    @rule(tp=st.sampled_from(ALL_TPS), leaderless=st.booleans())
    def move_leader(self, tp: TopicPartition, leaderless: bool) -> None:
        if tp not in self.h.leaders:
            return
        node, epoch = self.h.leaders[tp]
        self.h.leaders[tp] = (-1 if leaderless else (max(node, 0) + 1) % 2, epoch + 1)
        self.h.moved()
        self.collect()

    @rule()
    def delete_topic_u(self) -> None:
        for tp in [tp for tp in self.h.leaders if tp.topic == "u"]:
            del self.h.leaders[tp]
        self.h.moved()
        self.collect()

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def timeouts_are_enforced(self) -> None:
        for meta in self.h.core.txns.values():
            due = meta.times_out_at()
            assert due is None or due > self.h.now, f"{meta} outlived its timeout"

    @invariant()
    def group_offsets_commit_only_with_their_transaction(self) -> None:
        with self.h.store.reader() as r:
            for group in GROUPS:
                stored = {tp: c.offset for tp, c in group_offsets(r, group).items()}
                assert stored == self.committed[group], group

    @invariant()
    def memory_is_what_is_stored(self) -> None:
        assert self.h.core.txns == self.rows

    def teardown(self) -> None:
        # Liveness: every partition led again, every send delivered, time moving on.
        for tp in self.h.leaders:
            node, epoch = self.h.leaders[tp]
            if node < 0:
                self.h.leaders[tp] = (0, epoch + 1)
        self.h.moved()
        for _ in range(100):
            self.h.deliver_all()
            self.h.advance(CONFIG.retry_backoff_ms)
            self.collect()
            if not self.h.network and not self.h.core.channel.pending and not self.open:
                break
        assert not self.open, f"decided but never completed: {self.open}"
        self.h.advance(CONFIG.park_max_ms + 1)
        self.collect()
        assert not self.sent, f"never answered: {self.sent}"


TxnMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_txn_coordinator = TxnMachine.TestCase


# -- KIP-447: a zombie consumer's producer is fenced by the group's generation --------------


def test_txn_offset_commit_fences_a_consumer_the_group_moved_on_from() -> None:
    h = TxnHarness(config=CONFIG)
    groups = h.core.offsets.groups
    token = h.request(InitProducerId("a", 60_000))
    ids: ProducerIdAnswer = h.replies[token].body
    pid, epoch = ids.producer_id, ids.producer_epoch
    assert h.replies[h.request(AddOffsetsToTxn("a", pid, epoch, "g"))].error is None

    def join(member_id: str = "", instance_id: str | None = None) -> tuple[str, int]:
        event = JoinGroup(
            "g",
            member_id=member_id,
            instance_id=instance_id,
            server_assignor="range",
            topics=["t"],
        )
        replies = groups.join("j", event, h.now).replies
        while not replies:  # the group's first join waits group.initial.rebalance.delay.ms
            h.now += 1000
            replies = groups.tick(h.now).replies
        [reply] = replies
        return reply.body.member_id, reply.body.generation

    def commit(generation: int, member_id: str, instance_id: str | None = None) -> Any:
        entry = CommitEntry(TopicPartition("t", 0), 7)
        event = TxnOffsetCommit("a", "g", pid, epoch, [entry], generation, member_id, instance_id)
        reply = h.replies[h.request(event)]
        return None if reply.error is None else reply.error.code

    # A group that does not exist has no generation 3; without metadata (before KIP-447)
    # nothing is checked.
    assert commit(3, "nobody") is ErrorCode.ILLEGAL_GENERATION
    assert commit(-1, "") is None

    first, generation = join(instance_id="static-1")
    assert commit(generation, first, "static-1") is None
    assert commit(generation + 1, first, "static-1") is ErrorCode.ILLEGAL_GENERATION
    assert commit(generation, "someone-else") is ErrorCode.UNKNOWN_MEMBER_ID

    # Another process takes over the static member's instance id: the first is a zombie.
    second, generation = join(instance_id="static-1")
    assert second != first
    assert commit(generation, first, "static-1") is ErrorCode.FENCED_INSTANCE_ID
    assert commit(generation, second, "static-1") is None

    # The member leaves and a new one joins: the old member and generation are refused.
    groups.leave("l", LeaveGroup("g", [(second, "static-1")]), h.now)
    third, newer = join()
    assert newer > generation
    assert commit(generation, second, "static-1") is ErrorCode.FENCED_INSTANCE_ID
    assert commit(generation, second) is ErrorCode.UNKNOWN_MEMBER_ID
    assert commit(generation, third) is ErrorCode.ILLEGAL_GENERATION
    assert commit(newer, third) is None
    # Only the accepted ones are pending, each replacing the one before.
    assert h.core.offsets.pending_txn("g", pid) == {TopicPartition("t", 0): 7}


# -- KIP-360: a producer bumps its own epoch, a zombie cannot --------------------------------


def test_init_producer_id_with_the_current_epoch_bumps_it_and_a_stale_one_is_fenced() -> None:
    h = TxnHarness(config=CONFIG)

    def init(pid: int = -1, epoch: int = -1) -> Any:
        reply = h.replies[h.request(InitProducerId("a", 60_000, pid, epoch))]
        return reply.error.code if reply.error is not None else reply.body

    first: ProducerIdAnswer = init()
    pid, epoch = first.producer_id, first.producer_epoch
    # The producer aborts a transaction it wrote to (the epoch bump waits for its markers).
    tp = TopicPartition("t", 0)
    assert h.replies[h.request(AddPartitionsToTxn("a", pid, epoch, [tp]))].error is None
    assert h.replies[h.request(EndTxn("a", pid, epoch, False))].error is None
    token = h.request(InitProducerId("a", 60_000, pid, epoch))
    assert token not in h.replies, "parked until the abort's markers are written"
    h.deliver_all()
    bumped: ProducerIdAnswer = h.replies[token].body
    assert (bumped.producer_id, bumped.producer_epoch) == (pid, epoch + 1)
    # The old epoch (a zombie's) can no longer bump it; a producer id not the id's is refused.
    assert init(pid, epoch) is ErrorCode.PRODUCER_FENCED
    assert init(pid + 1, epoch + 1) is ErrorCode.INVALID_PRODUCER_ID_MAPPING
    assert h.core.txns["a"].producer_epoch == epoch + 1
    # With its current epoch while a transaction is open: aborted (epoch + 2), then bumped.
    assert h.replies[h.request(AddPartitionsToTxn("a", pid, epoch + 1, [tp]))].error is None
    token = h.request(InitProducerId("a", 60_000, pid, epoch + 1))
    h.deliver_all()
    again: ProducerIdAnswer = h.replies[token].body
    assert (again.producer_id, again.producer_epoch) == (pid, epoch + 3)
