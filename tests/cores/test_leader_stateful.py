"""The leader, its followers and the ISR under random produces, fetches, message loss,
node deaths and returns, suspected (but running) leaders, retention, DeleteRecords and
time (hypothesis ``RuleBasedStateMachine``).

Three node cores on in-memory stores (``node_harness.Cluster``): two partitions with
three replicas each, led by different nodes at first; a stand-in controller answers
heartbeats with the assignment, decides ``alter_isr`` and elects a new leader from the
ISR when a leader dies or is suspected. Messages between nodes wait in a network until a
rule delivers or times them out; the clock moves only when a rule moves it.

Safety, after every step:
- a leader's high watermark never goes back while it leads, and no replica's stored high
  watermark ever goes back (a replica never truncates what was committed);
- nothing below a high watermark differs between replicas: every batch below a
  replica's stored high watermark is the batch every leader had there when it was
  committed, and so is every batch a consumer got;
- acks=all is answered (successfully) only once every member of the leader's ISR, and of
  the controller's, has the batch; after that every ISR member keeps it, so no
  acknowledged acks=all batch is lost whatever leader is elected;
- acks=0 is never answered; no request is answered twice; a consumer never reads at or
  past the high watermark;
- DeleteRecords moves the leader's log start to what it asked for (-1: the high
  watermark), never past the high watermark; followers follow it.

Liveness, at the end: with every node back and the network delivering, the replicas
converge (the same batches at the same offsets, every replica in the ISR) and every
produce request that reached a live leader is answered.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from node_harness import NODES, ClientRequest, Cluster, batches, offsets, produced

from kvlog import batch as batch_format
from kvlog.errors import ErrorCode
from kvlog.types import TopicPartition
from kvlog.workers.core_result import Reply
from kvlog.workers.node_model import UNANSWERED, DeleteRecordsResponse, FetchResponse

TPS = [TopicPartition("t", 0), TopicPartition("t", 1)]
REPLICAS = {TPS[0]: [0, 1, 2], TPS[1]: [1, 2, 0]}
PRODUCE_ERRORS = {
    ErrorCode.NOT_LEADER_OR_FOLLOWER,
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
    ErrorCode.NOT_ENOUGH_REPLICAS,
    ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    ErrorCode.REQUEST_TIMED_OUT,
}
DELETE_ERRORS = {
    ErrorCode.NOT_LEADER_OR_FOLLOWER,
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
    ErrorCode.OFFSET_OUT_OF_RANGE,
}
FETCH_ERRORS = {
    ErrorCode.NOT_LEADER_OR_FOLLOWER,
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
    ErrorCode.OFFSET_OUT_OF_RANGE,
}


def _end(base: int, batch: bytes) -> int:
    return batch_format.next_offset(base, batch)


class LeaderMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.c: Cluster | None = None
        self.tokens = itertools.count(1)
        self.committed: dict[TopicPartition, dict[int, bytes]] = {tp: {} for tp in TPS}
        self.acked_all: dict[TopicPartition, dict[int, bytes]] = {tp: {} for tp in TPS}
        self.consumed: dict[TopicPartition, dict[int, bytes]] = {tp: {} for tp in TPS}
        self.leader_hw: dict[tuple[int, int, TopicPartition, int], int] = {}
        self.stored_hw: dict[tuple[int, TopicPartition], int] = {}

    @initialize(min_isr=st.sampled_from([1, 2]), fetch_wait_ms=st.sampled_from([0, 500]))
    def setup(self, min_isr: int, fetch_wait_ms: int) -> None:
        self.c = Cluster(REPLICAS, min_insync_replicas=min_isr, fetch_wait_ms=fetch_wait_ms)
        self.c.on_client_reply = self.on_client_reply
        self.c.observe = self.observe
        for n in NODES:
            self.c.sync(n)

    @property
    def cluster(self) -> Cluster:
        assert self.c is not None
        return self.c

    # -- replies -------------------------------------------------------------------------------

    def on_client_reply(self, n: int, token: int, req: ClientRequest, reply: Reply) -> None:
        if req.kind == "produce":
            self.on_produced(n, req, reply)
        elif req.kind == "delete_records":
            self.on_deleted(n, req, reply)
        else:
            self.on_fetched(n, req, reply)

    def has_batch(self, node: int, tp: TopicPartition, base: int, batch: bytes) -> bool:
        store = self.cluster.nodes[node].store
        state = offsets(store, tp)
        if state is None or state.log_end_offset < _end(base, batch):
            return False
        return state.log_start_offset > base or batches(store, tp).get(base) == batch

    def on_produced(self, n: int, req: ClientRequest, reply: Reply) -> None:
        if req.acks == 0:
            assert reply.error is None and reply.body is UNANSWERED, reply
            event("produce acks=0: finished without a reply")
            return
        assert reply.body is not UNANSWERED, f"acks={req.acks} produce left unanswered"
        base, error = produced(reply)
        if error is not None:
            assert error.code in PRODUCE_ERRORS, error
            event(f"produce acks={req.acks}: {error.code.name}")
            return
        event(f"produce acks={req.acks}: ok")
        stored = batches(self.cluster.nodes[n].store, req.tp).get(base)
        assert stored is not None and stored[4:] == req.batch[4:], "acknowledged, not stored"
        if req.acks != -1:
            return
        replica = self.cluster.core(n).leader.leaders[req.tp]
        end = _end(base, stored)
        assert replica.high_watermark >= end, "acks=all answered below the high watermark"
        members = set(replica.isr) | set(self.cluster.controller.state[req.tp].isr)
        for member in members:
            assert self.has_batch(member, req.tp, base, stored), (
                f"acks=all answered while ISR member {member} lacks {req.tp}@{base}"
            )
        self.acked_all[req.tp][base] = stored

    def on_fetched(self, n: int, req: ClientRequest, reply: Reply) -> None:
        assert reply.error is None and isinstance(reply.body, FetchResponse), reply
        [fetched] = reply.body.partitions
        if fetched.error is not None:
            assert fetched.error.code in FETCH_ERRORS, fetched.error
            event(f"consume: {fetched.error.code.name}")
            return
        event(f"consume: {len(fetched.batches)} batch(es)")
        stored = batches(self.cluster.nodes[n].store, req.tp)
        for base, batch in fetched.batches:
            assert _end(base, batch) <= fetched.high_watermark, "read past the high watermark"
            assert stored.get(base) == batch
            self.consumed[req.tp][base] = batch

    def on_deleted(self, n: int, req: ClientRequest, reply: Reply) -> None:
        assert reply.error is None and isinstance(reply.body, DeleteRecordsResponse), reply
        [deleted] = reply.body.partitions
        if deleted.error is not None:
            assert deleted.error.code in DELETE_ERRORS, deleted.error
            event(f"delete_records: {deleted.error.code.name}")
            return
        event("delete_records: ok")
        state = offsets(self.cluster.nodes[n].store, req.tp)
        assert deleted.low_watermark == state.log_start_offset <= state.high_watermark
        assert deleted.low_watermark >= req.offset, "the log start is not where it was asked"

    # -- clients ---------------------------------------------------------------------------

    @rule(
        tp=st.sampled_from(TPS),
        acks=st.sampled_from([0, 1, -1, -1]),
        count=st.integers(1, 3),
        anywhere=st.integers(0, 9),
    )
    def produce(self, tp: TopicPartition, acks: int, count: int, anywhere: int) -> None:
        """Produce to the leader (sometimes to another node), ``count`` requests in one turn."""
        c = self.cluster
        leader = c.controller.state[tp].leader
        node = leader if anywhere else (leader + 1) % len(NODES)
        if node < 0 or not c.alive(node):
            return
        for i in range(count):  # one turn: one group commit
            token = next(self.tokens)
            c.produce(token, node, tp, acks, b"v%d" % token, flush=i == count - 1)

    @rule(
        tp=st.sampled_from(TPS),
        where=st.sampled_from(["start", "hw", "zero"]),
        wait_ms=st.sampled_from([0, 300]),
        min_bytes=st.sampled_from([0, 1, 1 << 20]),
    )
    def consume(self, tp: TopicPartition, where: str, wait_ms: int, min_bytes: int) -> None:
        c = self.cluster
        leader = c.controller.state[tp].leader
        if leader < 0 or not c.alive(leader):
            return
        state = offsets(c.nodes[leader].store, tp)
        if state is None:
            return
        offset = {"start": state.log_start_offset, "hw": state.high_watermark, "zero": 0}[where]
        c.consume(next(self.tokens), leader, tp, offset, wait_ms, min_bytes)

    @rule(
        tp=st.sampled_from(TPS),
        where=st.sampled_from(["hw", "mid", "past", "-1"]),
        any_node=st.booleans(),
    )
    def delete_records(self, tp: TopicPartition, where: str, any_node: bool) -> None:
        """Kafka's DeleteRecords at the leader (or another node)."""
        c = self.cluster
        leader = c.controller.state[tp].leader
        node = (leader + 1) % len(NODES) if any_node else leader
        if node < 0 or not c.alive(node):
            return
        state = offsets(c.nodes[node].store, tp)
        if state is None:
            return
        hw = state.high_watermark
        offset = {
            "hw": hw,
            "mid": (state.log_start_offset + hw) // 2,
            "past": state.log_end_offset + 1,
            "-1": -1,
        }[where]
        c.delete_records(next(self.tokens), node, tp, offset)

    # -- the network -----------------------------------------------------------------------

    @precondition(lambda self: self.c is not None and self.c.pending(delivered=False))
    @rule(data=st.data())
    def deliver(self, data: Any) -> None:
        requests = self.cluster.pending(delivered=False)
        self.cluster.deliver(data.draw(st.sampled_from(requests)))

    @precondition(lambda self: self.c is not None and self.c.answers)
    @rule(data=st.data())
    def deliver_answer(self, data: Any) -> None:
        self.cluster.deliver_answer(data.draw(st.integers(0, len(self.cluster.answers) - 1)))

    @precondition(lambda self: self.c is not None and self.c.pending())
    @rule(data=st.data())
    def time_out(self, data: Any) -> None:
        """A message lost (or parked too long): the sender's link times it out."""
        self.cluster.time_out(data.draw(st.sampled_from(self.cluster.pending())))

    @rule(node=st.sampled_from(NODES))
    def sync(self, node: int) -> None:
        self.cluster.sync(node)

    @rule(heartbeats=st.booleans())
    def network_round(self, heartbeats: bool) -> None:
        """Everything in flight arrives, in order (replication makes progress)."""
        c = self.cluster
        for request in c.pending(delivered=False):
            c.deliver(request)
        while c.answers:
            c.deliver_answer(0)
        if heartbeats:
            for n in NODES:
                c.sync(n)

    @rule(ms=st.sampled_from([1, 100, 300, 1000, 3000]))
    def advance(self, ms: int) -> None:
        self.cluster.advance(ms)

    # -- faults ----------------------------------------------------------------------------

    @precondition(lambda self: self.c is not None and sum(map(self.c.alive, NODES)) > 1)
    @rule(node=st.sampled_from(NODES))
    def kill(self, node: int) -> None:
        c = self.cluster
        if c.alive(node):
            c.kill(node)
            c.controller.mark_dead(node)  # the supervisor's node_down

    @rule(node=st.sampled_from(NODES))
    def restart(self, node: int) -> None:
        if not self.cluster.alive(node):
            self.cluster.start(node)

    @rule(node=st.sampled_from(NODES))
    def suspect(self, node: int) -> None:
        """The coordinator stops hearing from a node that still runs (it moves its
        leaderships away; the node keeps serving until its next heartbeat answer)."""
        self.cluster.controller.mark_dead(node)

    @rule(node=st.sampled_from(NODES), tp=st.sampled_from(TPS), share=st.floats(0, 1))
    def retention(self, node: int, tp: TopicPartition, share: float) -> None:
        """The sweeper deletes the head of a replica's log (never at or past its high
        watermark)."""
        store = self.cluster.nodes[node].store
        state = offsets(store, tp)
        if state is None or state.high_watermark <= state.log_start_offset:
            return
        span = state.high_watermark - state.log_start_offset
        cut = state.log_start_offset + round(span * share)
        store.write(lambda w: w.delete_before(tp, cut))

    # -- invariants ------------------------------------------------------------------------

    def observe(self, n: int) -> None:
        """After every event of node ``n``: its leader high watermarks never go back (and
        what is below them is committed, for good), nor do its stored ones."""
        c = self.cluster
        node = c.nodes[n]
        if node.core is not None:
            for tp, replica in node.core.leader.leaders.items():
                key = (n, node.incarnation, tp, replica.leader_epoch)
                hw = replica.high_watermark
                assert hw >= self.leader_hw.get(key, hw), f"leader HW of {key} went back"
                self.leader_hw[key] = hw
                committed = self.committed[tp]
                for base, batch in batches(node.store, tp).items():
                    if _end(base, batch) <= hw:
                        assert committed.setdefault(base, batch) == batch, (
                            f"{tp}@{base}: committed batch changed"
                        )
        for tp in TPS:
            state = offsets(node.store, tp)
            if state is None:
                continue
            last = self.stored_hw.get((n, tp), -1)
            assert state.high_watermark >= last, f"node {n} {tp}: stored HW went back"
            self.stored_hw[(n, tp)] = state.high_watermark

    @invariant()
    def high_watermarks_hold(self) -> None:
        if self.c is not None:
            for n in NODES:
                self.observe(n)

    @invariant()
    def replicas_agree_below_the_high_watermark(self) -> None:
        if self.c is None:
            return
        for n, node in self.c.nodes.items():
            for tp in TPS:
                state = offsets(node.store, tp)
                if state is None:
                    continue
                for base, batch in batches(node.store, tp).items():
                    if _end(base, batch) <= state.high_watermark:
                        assert self.committed[tp].get(base) == batch, (
                            f"node {n} {tp}@{base} below its HW differs from the committed batch"
                        )
        for tp in TPS:
            for base, batch in self.consumed[tp].items():
                assert self.committed[tp].get(base) == batch, f"{tp}@{base}: consumer read it"

    @invariant()
    def acks_all_batches_stay_in_the_isr(self) -> None:
        if self.c is None:
            return
        for tp in TPS:
            for member in self.c.controller.state[tp].isr:
                for base, batch in self.acked_all[tp].items():
                    assert self.has_batch(member, tp, base, batch), (
                        f"ISR member {member} lost acks=all {tp}@{base}"
                    )

    # -- liveness --------------------------------------------------------------------------

    def converged(self) -> bool:
        c = self.cluster
        for tp in TPS:
            state = c.controller.state[tp]
            if state.leader < 0 or sorted(state.isr) != sorted(REPLICAS[tp]):
                return False
            ends = {offsets(node.store, tp).log_end_offset for node in c.nodes.values()}
            if len(ends) != 1:
                return False
        return not [t for t, r in c.clients.items() if r.kind == "produce" and r.acks != 0]

    def teardown(self) -> None:
        if self.c is None:
            return
        c = self.c
        for n in NODES:
            if not c.alive(n):
                c.start(n)
        for _ in range(120):
            for n in NODES:
                c.sync(n)
            for request in list(c.requests.values()):
                if request.send.op == "node_heartbeat":
                    continue
                if not request.delivered:
                    c.deliver(request)
                elif c.lost(request):
                    c.time_out(request)
            while c.answers:
                c.deliver_answer(0)
            self.high_watermarks_hold()
            self.replicas_agree_below_the_high_watermark()
            self.acks_all_batches_stay_in_the_isr()
            if self.converged():
                break
            c.advance(100)
        assert self.converged(), (
            f"no convergence: {c.controller.state}, "
            f"ends {[[offsets(node.store, tp) for tp in TPS] for node in c.nodes.values()]}, "
            f"unanswered {c.clients}"
        )
        for tp in TPS:  # the same batches, where retention left them on every replica
            start = max(offsets(node.store, tp).log_start_offset for node in c.nodes.values())
            logs = [
                {b: v for b, v in batches(node.store, tp).items() if _end(b, v) > start}
                for node in c.nodes.values()
            ]
            assert logs[0] == logs[1] == logs[2], f"{tp}: replicas differ"


LeaderMachine.TestCase.settings = settings(
    max_examples=600 if __import__("os").environ.get("KVLOG_LONG_TESTS") == "1" else 150,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLeaderMachine = LeaderMachine.TestCase
