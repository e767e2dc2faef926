"""FollowerCore: which leaders a node fetches from and when, and what it does with their
answers (append, truncate on divergence, realign to the leader's log), on a MemoryLogDir."""

from __future__ import annotations

from typing import Any

import pytest
from node_harness import Cluster, batches, offsets

from kvlog import batch as batch_format
from kvlog import epochs
from kvlog.errors import OffsetOutOfRangeError, RequestTimedOutError, StorageError
from kvlog.memory_store import MemoryLogDir
from kvlog.types import TopicPartition
from kvlog.workers.follower_core import RETRY_BACKOFF_MS, FollowerCore, ReplicaFetch
from kvlog.workers.leader_core import LeaderCore
from kvlog.workers.node_model import (
    Answer,
    FetchedPartition,
    FetchResponse,
    HostedPartition,
    NodePeer,
)
from kvlog.workers.node_wire import fetch_reply

A, B, C = TopicPartition("a", 0), TopicPartition("b", 0), TopicPartition("c", 0)
ME = 1
ENDPOINTS = {0: "tcp://n0", 2: "tcp://n2"}


def hosted(tp: TopicPartition, leader: int, epoch: int = 3) -> HostedPartition:
    return HostedPartition(tp, "id-" + tp.topic, leader, epoch, [0, 1, 2], {}, [0, 1, 2])


def follower(
    leaders: dict[TopicPartition, int] | None = None, store: Any = None
) -> tuple[FollowerCore, LeaderCore]:
    core = LeaderCore(ME, store or MemoryLogDir())
    leaders = {A: 0, B: 0, C: 2} if leaders is None else leaders
    core.apply_assignment([hosted(tp, lid) for tp, lid in leaders.items()], now_ms=0)
    return FollowerCore(core, fetch_wait_max_ms=500), core


def stamped(value: bytes, epoch: int) -> bytes:
    return batch_format.stamp_leader_epoch(batch_format.build_batch([(None, value)]), epoch)


def answer(token: Any, parts: list[FetchedPartition]) -> Answer:
    fields, frames = fetch_reply(FetchResponse(parts, ME))
    return Answer(token, fields, frames)


def data(tp: TopicPartition, start: int, values: list[bytes], epoch: int, hw: int) -> Any:
    out = []
    for i, value in enumerate(values):
        out.append((start + i, stamped(value, epoch)))
    return FetchedPartition(tp, None, hw, 0, start + len(values), out)


def end(core: LeaderCore, tp: TopicPartition) -> int:
    return offsets(core.store, tp).log_end_offset


# -- scheduling ------------------------------------------------------------------------------


def test_one_fetch_in_flight_per_leader_covering_its_partitions() -> None:
    f, _ = follower()
    sends = f.sends(0, ENDPOINTS)
    assert [(s.to, [p["topic"] for p in s.fields["partitions"]]) for s in sends] == [
        (NodePeer(0, "tcp://n0"), ["a", "b"]),
        (NodePeer(2, "tcp://n2"), ["c"]),
    ]
    first = sends[0].fields
    assert first["replica_id"] == ME and first["max_wait_ms"] == 500
    assert first["partitions"][0] == {
        "topic": "a",
        "partition": 0,
        "offset": 0,
        "max_bytes": 8 << 20,
        "last_fetched_epoch": -1,
        "leader_epoch": 3,
    }
    assert sends[0].timeout_ms > 500
    assert f.sends(10, ENDPOINTS) == [], "a second fetch while one is in flight"


def test_the_next_fetch_acknowledges_what_the_answer_brought() -> None:
    f, core = follower()
    to_zero = f.sends(0, ENDPOINTS)[0]
    changed = f.on_answer(
        answer(to_zero.token, [data(A, 0, [b"x", b"y"], 3, 1), FetchedPartition(B, None, 0, 0, 0)]),
        5,
    )
    assert changed == {A}
    assert end(core, A) == 2 and offsets(core.store, A).high_watermark == 1
    [again] = f.sends(5, ENDPOINTS)
    assert again.to.node_id == 0
    assert again.fields["partitions"][0]["offset"] == 2
    assert again.fields["partitions"][0]["last_fetched_epoch"] == 3


def test_a_failed_fetch_is_retried_after_the_backoff() -> None:
    f, _ = follower()
    to_zero = f.sends(0, ENDPOINTS)[0]
    f.on_answer(Answer(to_zero.token, None, [], RequestTimedOutError("no reply")), 100)
    assert f.next_deadline_ms() == 100 + RETRY_BACKOFF_MS
    assert f.sends(100 + RETRY_BACKOFF_MS - 1, ENDPOINTS) == []
    [retry] = f.sends(100 + RETRY_BACKOFF_MS, ENDPOINTS)
    assert retry.to.node_id == 0
    assert f.next_deadline_ms() is None


def test_no_fetch_to_a_leader_whose_endpoint_is_unknown() -> None:
    f, _ = follower()
    assert [s.to.node_id for s in f.sends(0, {2: "tcp://n2"})] == [2]
    assert f.next_deadline_ms() is None


def test_leadership_moving_drops_the_fetch_in_flight_and_ignores_its_answer() -> None:
    f, core = follower()
    old = f.sends(0, ENDPOINTS)
    before = f.followed()
    core.apply_assignment([hosted(A, 2, 4), hosted(B, 0), hosted(C, 2)], now_ms=10)
    f.leadership_moved(before)
    new = f.sends(10, ENDPOINTS)
    assert sorted(s.to.node_id for s in new) == [0, 2], "both leaders concerned fetch anew"
    late = answer(old[0].token, [data(A, 0, [b"x"], 3, 1), FetchedPartition(B, None, 0, 0, 0)])
    assert f.on_answer(late, 20) == set()
    assert end(core, A) == 0


def test_a_stale_token_is_not_mistaken_for_the_current_fetch() -> None:
    f, _ = follower({A: 0})
    [send] = f.sends(0, ENDPOINTS)
    stale = ReplicaFetch(0, send.token.serial - 1)
    assert f.on_answer(answer(stale, [data(A, 0, [b"x"], 3, 1)]), 5) == set()
    assert f.sends(5, ENDPOINTS) == [], "the real fetch is still in flight"


# -- applying answers ------------------------------------------------------------------------


def test_divergence_truncates_to_where_the_histories_part() -> None:
    f, core = follower({A: 0})
    [send] = f.sends(0, ENDPOINTS)
    f.on_answer(answer(send.token, [data(A, 0, [b"1", b"2"], 3, 0)]), 1)
    [send] = f.sends(1, ENDPOINTS)
    f.on_answer(answer(send.token, [data(A, 2, [b"3", b"4"], 5, 0)]), 2)
    assert end(core, A) == 4
    [send] = f.sends(2, ENDPOINTS)
    assert send.fields["partitions"][0]["last_fetched_epoch"] == 5
    # The leader has epoch 3 only up to offset 1 (and no epoch 5): cut back to 1.
    diverged = FetchedPartition(A, None, 0, 0, 1, [], diverging=(3, 1))
    assert f.on_answer(answer(send.token, [diverged]), 3) == {A}
    assert end(core, A) == 1
    with core.store.reader() as r:
        assert epochs.entries(r, A) == [(3, 0)]


def test_divergence_without_the_leaders_epoch_here_cuts_to_our_own_epochs() -> None:
    """The leader's epoch 0 is not in this replica's history (it wrote epoch 1 from
    offset 0 as a leader that lost its leadership): it cuts to where its epochs before 0
    end (none: everything goes), instead of keeping its own batch and looping."""
    f, core = follower({A: 0})
    core.store.write(lambda w: w.append_at(A, 0, stamped(b"mine", 1)))
    core.store.write(lambda w: epochs.record(w, A, 1, 0))
    [send] = f.sends(0, ENDPOINTS)
    assert send.fields["partitions"][0]["last_fetched_epoch"] == 1
    diverged = FetchedPartition(A, None, 0, 0, 1, [], diverging=(0, 1))
    assert f.on_answer(answer(send.token, [diverged]), 1) == {A}
    assert end(core, A) == 0
    [send] = f.sends(1, ENDPOINTS)
    assert send.fields["partitions"][0]["last_fetched_epoch"] == -1


def test_an_offset_past_the_leaders_end_cuts_back_and_one_before_its_start_starts_over() -> None:
    f, core = follower({A: 0, B: 0})
    [send] = f.sends(0, ENDPOINTS)
    f.on_answer(answer(send.token, [data(A, 0, [b"1", b"2", b"3"], 3, 0), data(B, 0, [], 3, 0)]), 1)
    [send] = f.sends(1, ENDPOINTS)
    past_end = FetchedPartition(A, OffsetOutOfRangeError("past"), -1, 0, 2)
    before_start = FetchedPartition(B, OffsetOutOfRangeError("before"), -1, 7, 9)
    assert f.on_answer(answer(send.token, [past_end, before_start]), 2) == {A, B}
    assert end(core, A) == 2
    state = offsets(core.store, B)
    assert (state.log_start_offset, state.log_end_offset) == (7, 7)


class FailingStore(MemoryLogDir):
    fail = False

    def write(self, fn: Any) -> Any:
        if self.fail:
            raise StorageError("disk full")
        return super().write(fn)


def test_a_failing_write_marks_the_log_dir_failed() -> None:
    store = FailingStore()
    f, core = follower({A: 0}, store)
    [send] = f.sends(0, ENDPOINTS)
    store.fail = True
    assert f.on_answer(answer(send.token, [data(A, 0, [b"x"], 3, 0)]), 1) == set()
    assert core.health.failed


# -- with leaders ----------------------------------------------------------------------------


@pytest.mark.parametrize("network_round", [False, True])
def test_a_former_leader_reads_its_epochs_again_when_it_follows(network_round: bool) -> None:
    """Found by test_leader_stateful: a node that followed a partition, then led it and
    wrote a batch nobody copied, then followed again sent the latest epoch it had noted
    before leading (none). The divergence check was skipped and it kept its batch under
    the new leader's high watermark."""
    tp = TopicPartition("t", 0)
    c = Cluster({tp: [0, 1, 2]}, min_insync_replicas=1, fetch_wait_ms=0)
    for n in (0, 1, 2):
        c.sync(n)
    if network_round:
        for request in c.pending(delivered=False):
            c.deliver(request)
        while c.answers:
            c.deliver_answer(0)
    c.kill(0)
    c.controller.mark_dead(0)
    c.sync(1)  # node 1 leads, epoch 1
    c.produce(1, 1, tp, 0, b"only on node 1")
    c.controller.mark_dead(1)  # suspected: node 2 leads, epoch 2
    c.sync(2)
    c.produce(2, 2, tp, 0, b"on node 2")
    c.sync(1)  # node 1 follows node 2 now
    for _ in range(20):
        for request in c.pending(delivered=False):
            c.deliver(request)
        while c.answers:
            c.deliver_answer(0)
        c.advance(100)
    assert batches(c.nodes[1].store, tp) == batches(c.nodes[2].store, tp)
    assert offsets(c.nodes[1].store, tp).high_watermark == 1
