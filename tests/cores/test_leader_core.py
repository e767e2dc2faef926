"""The leader side of a node, event by event, on a MemoryLogDir with a hand-driven clock:
LeaderCore (group commit, acks, ISR and high watermark pacing, producer expiry), the
fetch core (long polls), LogDirHealth (offline and probes) and the NodeCore that puts
them together (heartbeats, the deadline contract)."""

from __future__ import annotations

from typing import Any

from kvlog import batch as batch_format
from kvlog.errors import ErrorCode, RequestTimedOutError, StorageError
from kvlog.memory_store import MemoryLogDir
from kvlog.producer_state import PRODUCERS_TABLE
from kvlog.types import TopicPartition
from kvlog.workers.core_result import Result, Send
from kvlog.workers.fetch_core import FetchCore
from kvlog.workers.leader_core import (
    HW_FLUSH_INTERVAL_MS,
    ISR_CHECK_INTERVAL_MS,
    PRODUCER_EXPIRY_CHECK_MS,
    LeaderCore,
)
from kvlog.workers.log_dir_core import PROBE_HEADROOM, LogDirHealth
from kvlog.workers.node_core import Heartbeat, NodeCore
from kvlog.workers.node_model import (
    COORDINATOR,
    UNANSWERED,
    Answer,
    Assignment,
    Fetch,
    FetchPartition,
    FetchResponse,
    HostedPartition,
    ListOffsets,
    NodeStatus,
    Produce,
    ProduceResponse,
)
from kvlog.workers.node_wire import list_offsets_fields, produce_fields
from kvlog.workers.settings import NodeSettings

T0, T1 = TopicPartition("t", 0), TopicPartition("t", 1)
NOW = 1_700_000_000_000
ROOM = 1 << 40


class Store(MemoryLogDir):
    """Counts write transactions; fails them on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.fail = False

    def write(self, fn: Any) -> Any:
        if self.fail:
            raise StorageError("no space left on device")
        self.writes += 1
        return super().write(fn)


def part(tp: TopicPartition, replicas: list[int], isr: list[int] | None = None, **config: Any):
    return HostedPartition(tp, "id", 0, 1, replicas, dict(config), replicas if isr is None else isr)


def batch(value: bytes = b"v", **producer: int) -> bytes:
    return batch_format.build_batch([(None, value)], **producer)


def node(store: MemoryLogDir | None = None, **settings: Any) -> NodeCore:
    core = NodeCore(
        NodeSettings(node_id=0, log_dir="/mem", coordinator="c", **settings),
        store if store is not None else Store(),
        endpoint="tcp://node0",
        pid=42,
    )
    [send] = core.start(NOW).sends
    assert send.op == "node_heartbeat"
    return core


def assign(core: NodeCore, *parts: HostedPartition, now: int = NOW) -> Result:
    return core.apply_assignment(Assignment(list(parts), nodes={1: "tcp://node1"}), now)


def reply_for(result: Result, token: Any) -> Any:
    found = [r for r in result.replies if r.token == token]
    assert len(found) <= 1
    return found[0] if found else None


def fetch(token: Any, tp: TopicPartition, offset: int, **kw: Any) -> Fetch:
    return Fetch(token, [FetchPartition(tp, offset, 1 << 20)], **kw)


# -- group commit and produce replies --------------------------------------------------------


def test_every_request_of_a_turn_commits_in_one_transaction_and_is_answered_in_order() -> None:
    store = Store()
    core = LeaderCore(0, store)
    core.apply_assignment([part(T0, [0]), part(T1, [0])])
    before = store.writes
    for token, acks, tp in [("a", 1, T0), ("b", 0, T0), ("c", -1, T1), ("d", 1, T0)]:
        assert not core.produce(Produce(token, acks, [(tp, batch())]))
    result = core.commit(NOW)
    assert store.writes == before + 1, "one group commit"
    assert [r.token for r in result.replies] == ["a", "b", "c", "d"]
    a, b, c, d = (r.body for r in result.replies)
    assert b is UNANSWERED, "acks=0 is finished without a reply"
    assert isinstance(a, ProduceResponse) and isinstance(c, ProduceResponse)
    assert [p.base_offset for p in (*a.partitions, *c.partitions, *d.partitions)] == [0, 0, 2]
    assert produce_fields(a) == {"results": [{"error": 0, "base_offset": 0, "log_start_offset": 0}]}
    assert core.commit(NOW) == Result(), "nothing staged, nothing written"


def test_a_request_over_message_max_bytes_is_refused_whole_at_once() -> None:
    core = LeaderCore(0, Store(), message_max_bytes=100)
    core.apply_assignment([part(T0, [0])])
    result = core.produce(Produce("big", 0, [(T0, batch(b"x" * 200))]))
    [reply] = result.replies
    assert reply.error is not None and reply.error.code is ErrorCode.MESSAGE_TOO_LARGE
    assert not core.has_staged


def test_a_compacted_topic_refuses_a_batch_with_a_keyless_record_as_kafka_does() -> None:
    core = LeaderCore(0, Store())
    core.apply_assignment([part(T0, [0], **{"cleanup.policy": "compact"}), part(T1, [0])])
    keyless = batch_format.build_batch([(b"k", b"v"), (None, b"v")])
    keyed = batch_format.build_batch([(b"k", b"v"), (b"", b"tombstone-to-be")])
    entries = [(T0, keyless), (T0, keyed), (T1, keyless)]
    assert not core.produce(Produce("p", 1, entries))
    [reply] = core.commit(NOW).replies
    refused, stored, elsewhere = reply.body.partitions
    assert refused.error is not None and refused.error.code is ErrorCode.INVALID_RECORD
    assert "offset delta 1" in refused.error.message and "cleanup.policy" in refused.error.message
    assert stored.error is None and stored.base_offset == 0, "an empty key is a key"
    assert elsewhere.error is None, "a topic that is not compacted takes records without keys"


def test_partition_errors_fail_only_their_batch() -> None:
    core = LeaderCore(0, Store())
    core.apply_assignment(
        [
            part(T0, [0], **{"max.message.bytes": 64}),
            part(T1, [0, 1], **{"min.insync.replicas": 2}, isr=[0]),
            HostedPartition(TopicPartition("u", 0), "id", 1, 1, [1, 0], {}, [1, 0]),
        ]
    )
    entries = [
        (TopicPartition("nope", 0), batch()),
        (TopicPartition("u", 0), batch()),
        (T0, batch(b"x" * 100)),
        (T1, batch()),
        (T0, b"\x00" * 60),
    ]
    core.produce(Produce("r", -1, entries))
    [reply] = core.commit(NOW).replies
    codes = [r["error"] for r in produce_fields(reply.body)["results"]]
    assert codes == [
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode.NOT_LEADER_OR_FOLLOWER,
        ErrorCode.MESSAGE_TOO_LARGE,
        ErrorCode.NOT_ENOUGH_REPLICAS,
        ErrorCode.CORRUPT_MESSAGE,
    ]


def test_a_failed_commit_fails_every_batch_and_takes_the_log_dir_offline() -> None:
    store = Store()
    core = node(store)
    assign(core, part(T0, [0]))
    core.produce(Produce("a", 1, [(T0, batch())]), NOW)
    core.produce(Produce("b", 1, [(T0, batch())]), NOW)
    store.fail = True
    result = core.flush(NOW)
    for token in "ab":
        [p] = reply_for(result, token).body.partitions
        assert p.error.code is ErrorCode.STORAGE_ERROR
    [heartbeat] = result.sends
    assert heartbeat.op == "node_heartbeat" and heartbeat.fields["offline"] is True
    assert core.health.offline


# -- acks=all --------------------------------------------------------------------------------


def test_acks_all_is_answered_once_the_follower_has_the_batch() -> None:
    core = node()
    assign(core, part(T0, [0, 1]))
    assert not core.produce(Produce("p", -1, [(T0, batch())], timeout_ms=5000), NOW)
    result = core.flush(NOW)
    assert reply_for(result, "p") is None
    assert result.deadline_ms is not None and result.deadline_ms <= NOW + 5000
    got = core.fetch(fetch("f1", T0, 0, replica_id=1), NOW + 1)
    assert [b for b, _ in reply_for(got, "f1").body.partitions[0].batches] == [0]
    assert reply_for(core.flush(NOW + 1), "p") is None, "the follower has not acknowledged it"
    core.fetch(fetch("f2", T0, 1, replica_id=1, max_wait_ms=500), NOW + 2)
    [p] = reply_for(core.flush(NOW + 2), "p").body.partitions
    assert p.error is None and p.base_offset == 0


def test_acks_all_times_out_at_its_deadline() -> None:
    core = node()
    assign(core, part(T0, [0, 1]))
    core.tick(NOW, ROOM)
    core.produce(Produce("p", -1, [(T0, batch())], timeout_ms=300), NOW)
    deadline = core.flush(NOW).deadline_ms
    assert deadline is not None and deadline <= NOW + 300
    assert reply_for(core.tick(NOW + 299, ROOM), "p") is None
    [p] = reply_for(core.tick(NOW + 300, ROOM), "p").body.partitions
    assert p.error.code is ErrorCode.REQUEST_TIMED_OUT


def test_acks_all_fails_when_leadership_moves() -> None:
    core = node()
    assign(core, part(T0, [0, 1]))
    core.produce(Produce("p", -1, [(T0, batch())]), NOW)
    core.flush(NOW)
    moved = HostedPartition(T0, "id", 1, 2, [0, 1], {}, [1, 0])
    [p] = reply_for(assign(core, moved), "p").body.partitions
    assert p.error.code is ErrorCode.NOT_LEADER_OR_FOLLOWER


# -- fetch long polls ------------------------------------------------------------------------


def test_a_parked_fetch_is_answered_when_data_arrives() -> None:
    core = node()
    assign(core, part(T0, [0]))
    result = core.fetch(fetch("f", T0, 0, max_wait_ms=500), NOW)
    assert not result.replies and result.deadline_ms == NOW + 500
    core.produce(Produce("p", 1, [(T0, batch())]), NOW + 10)
    woken = core.flush(NOW + 10)
    body = reply_for(woken, "f").body
    assert isinstance(body, FetchResponse) and body.quota_bytes == body.size > 0
    assert [b for b, _ in body.partitions[0].batches] == [0]


def test_a_parked_fetch_gets_what_there_is_when_its_wait_ends() -> None:
    core = node()
    assign(core, part(T0, [0]))
    core.fetch(fetch("f", T0, 0, max_wait_ms=500, min_bytes=1 << 20), NOW)
    core.produce(Produce("p", 1, [(T0, batch())]), NOW + 10)
    assert reply_for(core.flush(NOW + 10), "f") is None, "below min_bytes: still parked"
    assert reply_for(core.tick(NOW + 499, ROOM), "f") is None
    body = reply_for(core.tick(NOW + 500, ROOM), "f").body
    assert len(body.partitions[0].batches) == 1


def test_fetches_answered_at_once() -> None:
    core = node(fetch_max_wait_ms=200)
    assign(core, part(T0, [0]))
    assert reply_for(core.fetch(fetch("zero", T0, 0, max_wait_ms=0), NOW), "zero")
    errors = core.fetch(fetch("err", T0, 5, max_wait_ms=500), NOW)
    [fp] = reply_for(errors, "err").body.partitions
    assert fp.error.code is ErrorCode.OFFSET_OUT_OF_RANGE
    capped = core.fetch(fetch("long", T0, 0, max_wait_ms=30_000), NOW)
    assert capped.deadline_ms == NOW + 200, "waits are shortened to fetch_max_wait_ms"


def test_beyond_the_parked_limit_fetches_are_answered_at_once() -> None:
    leader = LeaderCore(0, Store())
    leader.apply_assignment([part(T0, [0])])
    reads = FetchCore(leader, max_parked=2)
    for token in ("a", "b"):
        assert not reads.fetch(fetch(token, T0, 0, max_wait_ms=500), NOW).replies
    assert reply_for(reads.fetch(fetch("c", T0, 0, max_wait_ms=500), NOW), "c")
    assert reads.next_deadline_ms() == NOW + 500


def test_list_offsets_and_ping() -> None:
    core = node()
    assign(core, part(T0, [0]), HostedPartition(T1, "id", 1, 1, [1, 0], {}, [1, 0]))
    for ts in (1000, 2000, 3000):
        core.produce(
            Produce(ts, 1, [(T0, batch_format.build_batch([(None, b"v", None, ts)]))]), NOW
        )
    core.flush(NOW)
    request = ListOffsets("l", [(T0, -2), (T0, -1), (T0, 1500), (T0, 9999), (T1, -1)])
    [reply] = core.list_offsets(request).replies
    assert list_offsets_fields(reply.body)["partitions"] == [
        {"topic": "t", "partition": 0, "error": 0, "offset": 0, "timestamp": -1},
        {"topic": "t", "partition": 0, "error": 0, "offset": 3, "timestamp": -1},
        {"topic": "t", "partition": 0, "error": 0, "offset": 1, "timestamp": 2000},
        {"topic": "t", "partition": 0, "error": 0, "offset": -1, "timestamp": -1},
        {
            "topic": "t",
            "partition": 1,
            "error": ErrorCode.NOT_LEADER_OR_FOLLOWER,
            "message": reply.body.partitions[4].error.message,
            "offset": -1,
            "timestamp": -1,
        },
    ]
    [status] = core.ping("p").replies
    assert status.body == NodeStatus(0, -1)


# -- heartbeats and the assignment -----------------------------------------------------------


def heartbeat_answer(send: Send, fields: dict[str, Any] | None, error: Any = None) -> Answer:
    return Answer(send.token, fields, [], error)


def test_the_heartbeat_long_poll_carries_the_version_applied() -> None:
    core = NodeCore(
        NodeSettings(node_id=0, log_dir="/mem", coordinator="c", heartbeat_wait_ms=700),
        Store(),
        endpoint="tcp://node0",
        pid=42,
    )
    [first] = core.start(NOW).sends
    assert first.to == COORDINATOR and first.timeout_ms == 2700
    assert first.fields == {
        "node_id": 0,
        "endpoint": "tcp://node0",
        "log_dir": "/mem",
        "applied_version": -1,
        "pid": 42,
        "wait_ms": 700,
        "offline": False,
    }
    assignment = {
        "version": 5,
        "partitions": [
            {
                "topic": "t",
                "partition": 0,
                "topic_id": "id",
                "leader": 0,
                "leader_epoch": 1,
                "replicas": [0],
                "isr": [0],
                "config": {},
            },
        ],
        "nodes": [[0, "tcp://node0"]],
    }
    [second] = core.answer(heartbeat_answer(first, assignment), NOW).sends
    assert second.fields["applied_version"] == 5 and T0 in core.leader.leaders
    [third] = core.answer(heartbeat_answer(second, None, RequestTimedOutError("x")), NOW).sends
    assert third.op == "node_heartbeat", "after a timeout the next heartbeat goes at once"
    [status] = core.ping("p").replies
    assert status.body.metadata_version == 5


def test_a_superseded_heartbeat_answer_is_ignored() -> None:
    store = Store()
    core = NodeCore(NodeSettings(0, "/mem", "c"), store, endpoint="e", pid=1)
    [first] = core.start(NOW).sends
    assign(core, part(T0, [0]))
    core.produce(Produce("p", 1, [(T0, batch())]), NOW)
    store.fail = True
    [offline] = core.flush(NOW).sends  # supersedes the first
    assert offline.fields["offline"] is True
    assert core.answer(heartbeat_answer(first, {"version": 9}), NOW) == Result()
    assert core.answer(heartbeat_answer(offline, {"version": 9}), NOW).sends


# -- ISR, high watermark, producer ids -------------------------------------------------------


def isr_sends(result: Result) -> list[Send]:
    return [s for s in result.sends if s.op == "alter_isr"]


def test_a_lagging_follower_is_proposed_out_once_at_a_time() -> None:
    core = node(replica_lag_time_max_ms=1000)
    result = assign(core, part(T0, [0, 1]))
    assert result.deadline_ms is not None and result.deadline_ms <= NOW  # ISR checks start
    assert not isr_sends(core.tick(NOW + 500, ROOM))
    [send] = isr_sends(core.tick(NOW + 1001, ROOM))
    assert send.to == COORDINATOR
    assert send.fields == {"topic": "t", "partition": 0, "leader": 0, "leader_epoch": 1,
                           "isr": [0]}  # fmt: skip
    assert not isr_sends(core.tick(NOW + 1001 + ISR_CHECK_INTERVAL_MS, ROOM)), "one in flight"
    core.answer(Answer(send.token, {"isr": [0]}), NOW + 1300)
    assert core.leader.leaders[T0].isr == [0]


def test_a_refused_isr_change_is_asked_again() -> None:
    core = node(replica_lag_time_max_ms=1000)
    assign(core, part(T0, [0, 1]))
    [send] = isr_sends(core.tick(NOW + 1001, ROOM))
    core.answer(Answer(send.token, None, [], RequestTimedOutError("x")), NOW + 1100)
    assert core.leader.leaders[T0].pending_isr is None
    assert isr_sends(core.tick(NOW + 1001 + ISR_CHECK_INTERVAL_MS, ROOM))


def test_an_isr_change_of_an_ended_leadership_does_not_hold_the_next_one() -> None:
    """Found by test_leader_stateful: a proposal made while the previous leadership's
    change was still in flight stayed pending for good (nothing was sent for it), and a
    pending change holds every later one back."""
    core = node(replica_lag_time_max_ms=1000)
    assign(core, part(T0, [0, 1]))
    [old] = isr_sends(core.tick(NOW + 1001, ROOM))
    assign(core, HostedPartition(T0, "id", 1, 2, [0, 1], {}, [1, 0]), now=NOW + 1100)
    assign(core, HostedPartition(T0, "id", 0, 3, [0, 1], {}, [0, 1]), now=NOW + 1200)
    assert not isr_sends(core.tick(NOW + 2300, ROOM)), "the old change is still in flight"
    assert core.leader.leaders[T0].pending_isr is None
    core.answer(Answer(old.token, None, [], RequestTimedOutError("x")), NOW + 2400)
    [new] = isr_sends(core.tick(NOW + 2600, ROOM))
    assert new.fields["leader_epoch"] == 3 and new.fields["isr"] == [0]


def test_moved_high_watermarks_are_persisted_at_a_pace() -> None:
    store = Store()
    core = node(store)
    assign(core, part(T0, [0, 1]))
    core.tick(NOW, ROOM)

    def stored_hw() -> int:
        with store.reader() as r:
            return r.offsets(T0).high_watermark

    def replicate(offset: int, now: int) -> Result:
        core.produce(Produce(offset, 1, [(T0, batch())]), now)
        core.flush(now)
        core.fetch(fetch("f", T0, offset + 1, replica_id=1, max_wait_ms=0), now)
        return core.flush(now)

    first = replicate(0, NOW + 10)  # the follower has offset 0: the high watermark moves
    assert core.leader.leaders[T0].high_watermark == 1 and stored_hw() == 0
    assert first.deadline_ms is not None and first.deadline_ms <= NOW + 10
    core.tick(NOW + 10, ROOM)
    assert stored_hw() == 1
    second = replicate(1, NOW + 20)
    assert second.deadline_ms is not None and second.deadline_ms <= NOW + 10 + HW_FLUSH_INTERVAL_MS
    core.tick(NOW + 10 + HW_FLUSH_INTERVAL_MS - 1, ROOM)
    assert stored_hw() == 1, "persisted again before its pace allows"
    core.tick(NOW + 10 + HW_FLUSH_INTERVAL_MS, ROOM)
    assert stored_hw() == 2


def test_a_partition_without_followers_persists_its_high_watermark_in_the_commit() -> None:
    """RF 1: the group commit moves the stored high watermark itself, so nothing is left
    to flush: no write transaction at the flush pace and no wake-up for it (with 1,000
    such partitions, every commit re-read the states a flush would write)."""
    store = Store()
    core = node(store)
    assign(core, part(T0, [0]), part(T1, [0]))
    core.tick(NOW, ROOM)
    for i, tp in enumerate([T0, T1, T0]):
        core.produce(Produce(i, -1, [(tp, batch())]), NOW + 1)
    result = core.flush(NOW + 1)
    assert [r.token for r in result.replies] == [0, 1, 2], "acks=all answered at the commit"
    with store.reader() as r:
        assert r.offsets(T0).high_watermark == 2 and r.offsets(T1).high_watermark == 1
    assert core.leader.leaders[T0].high_watermark == 2
    writes = store.writes
    for now in (NOW + 1 + HW_FLUSH_INTERVAL_MS, NOW + 1 + 3 * HW_FLUSH_INTERVAL_MS):
        core.tick(now, ROOM)
    assert store.writes == writes, "no flush transaction: nothing was left to persist"
    assert not core.leader.tick(NOW + 2 + ISR_CHECK_INTERVAL_MS).sends, "no ISR to propose"


def test_idle_producer_ids_are_forgotten() -> None:
    store = Store()
    core = node(store, producer_id_expiration_ms=1000)
    assign(core, part(T0, [0]))
    old = batch_format.build_batch(
        [(None, b"v", None, NOW - 5000)], producer_id=7, producer_epoch=0, base_sequence=0
    )
    core.produce(Produce("p", 1, [(T0, old)]), NOW)
    core.flush(NOW)
    with store.reader() as r:
        assert list(r.items(PRODUCERS_TABLE))
    core.tick(NOW + PRODUCER_EXPIRY_CHECK_MS - 1, ROOM)
    with store.reader() as r:
        assert list(r.items(PRODUCERS_TABLE)), "expired before its check"
    core.tick(NOW + PRODUCER_EXPIRY_CHECK_MS, ROOM)
    with store.reader() as r:
        assert not list(r.items(PRODUCERS_TABLE))


# -- a failing log dir -----------------------------------------------------------------------


def test_probes_back_off_while_the_log_dir_flaps() -> None:
    store = Store()
    health = LogDirHealth("node 0", "/mem")
    health.write_failed()
    assert health.on_failure(0) and health.offline and health.next_deadline_ms() == 1000
    assert not health.on_failure(10), "already offline"
    assert not health.probe(999, ROOM, store)
    assert not health.probe(1000, PROBE_HEADROOM - 1, store), "still full"
    store.fail = True
    assert not health.probe(2000, ROOM, store), "writes still fail"
    store.fail = False
    assert health.probe(3000, ROOM, store) and not health.offline and health.writable
    health.write_failed()
    assert health.on_failure(10_000)
    assert health.next_deadline_ms() == 12_000, "failed again soon after: probes back off"
    assert health.probe(12_000, ROOM, store)
    health.write_failed()
    health.on_failure(60_000)
    assert health.next_deadline_ms() == 61_000, "a quiet spell resets the back-off"


def test_an_offline_node_stops_following_and_comes_back_when_writes_work() -> None:
    store = Store()
    core = node(store)
    follow = HostedPartition(T1, "id", 1, 1, [1, 0], {}, [1, 0])
    result = assign(core, part(T0, [0]), follow)
    assert [s.to.node_id for s in result.sends if s.op == "fetch"] == [1]
    core.produce(Produce("p", 1, [(T0, batch())]), NOW)
    store.fail = True
    [offline] = core.flush(NOW).sends
    assert offline.fields["offline"] is True
    assert not [s for s in core.tick(NOW + 1000, 0).sends if s.op == "fetch"]
    store.fail = False
    back = core.tick(NOW + 2000, ROOM)
    [heartbeat] = [s for s in back.sends if s.op == "node_heartbeat"]
    assert heartbeat.fields["offline"] is False
    assert isinstance(heartbeat.token, Heartbeat)
