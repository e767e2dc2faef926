"""LeaderReplica: the high watermark, the ISR rules and acks=all waits, with time passed in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kvlog.errors import ErrorCode, NotEnoughReplicasError
from kvlog.types import TopicPartition
from kvlog.workers.replication_core import LeaderReplica, elect_leader

TP = TopicPartition("t", 0)
LAG_MS = 1000


def replica(isr: list[int] | None = None, *, leo: int = 10, hw: int = 10) -> LeaderReplica:
    return LeaderReplica.start(
        TP, 0, [0, 1, 2], [0, 1, 2] if isr is None else isr, 1, leo, hw, 0,
        min_insync_replicas=2, lag_time_max_ms=LAG_MS,
    )  # fmt: skip


def test_the_high_watermark_is_the_lowest_end_in_the_isr() -> None:
    r = replica()
    r.on_local_append(20)
    assert not r.on_follower_fetch(1, 15, 100)  # follower 2 has not fetched: nothing moves
    assert r.high_watermark == 10
    assert r.on_follower_fetch(2, 12, 100)
    assert r.high_watermark == 12
    assert r.on_follower_fetch(2, 20, 110)
    assert r.high_watermark == 15  # follower 1 is the lowest now


def test_a_member_being_added_holds_the_high_watermark_back() -> None:
    """Kafka's maximal ISR: a pending member counts before the controller agreed, so the
    high watermark never passes what it lacks (it may be elected once it is in)."""
    r = replica([0, 1])
    r.on_local_append(20)
    r.on_follower_fetch(1, 20, 100)
    assert r.high_watermark == 20
    r.on_local_append(30)
    r.on_follower_fetch(2, 20, 100)
    r.pending_isr = [0, 1, 2]
    r.on_follower_fetch(1, 30, 110)
    assert r.high_watermark == 20, "passed what the member being added lacks"
    assert r.isr_applied([0, 1])  # refused: without it, the high watermark moves on
    assert r.high_watermark == 30


def test_an_isr_change_reports_a_moved_high_watermark() -> None:
    r = replica()
    r.on_local_append(20)
    r.on_follower_fetch(1, 20, 100)
    r.on_follower_fetch(2, 10, 100)
    assert r.isr_applied([0, 1]) is True
    assert r.high_watermark == 20


def test_a_lagging_member_is_proposed_out_and_a_caught_up_one_back_in() -> None:
    r = replica()
    r.on_follower_fetch(1, 10, 500)
    r.on_follower_fetch(2, 10, 500)
    assert r.proposed_isr(500 + LAG_MS) is None
    r.on_follower_fetch(1, 10, 1400)  # follower 2 stops fetching
    assert r.proposed_isr(500 + LAG_MS + 1) == [0, 1]
    r.pending_isr = [0, 1]
    assert r.proposed_isr(3000) is None, "one change at a time"
    r.isr_applied([0, 1])
    r.on_follower_fetch(1, 10, 3000)
    r.on_follower_fetch(2, 10, 3000)  # back, at the leader's end
    assert r.proposed_isr(3000) == [0, 1, 2]


def test_a_follower_behind_the_high_watermark_is_not_proposed_in() -> None:
    r = replica([0, 1])
    r.on_follower_fetch(1, 10, 100)
    r.on_follower_fetch(2, 5, 100)
    assert r.proposed_isr(100) is None
    # Under steady writes it is caught up once it reaches where the end was at its last fetch.
    r.on_local_append(20)
    r.on_follower_fetch(2, 10, 200)
    r.on_follower_fetch(1, 20, 200)
    assert r.high_watermark == 20
    r.on_local_append(25)
    r.on_follower_fetch(2, 20, 300)
    assert r.proposed_isr(300) == [0, 1, 2]


def test_acks_all_waits_until_the_high_watermark_passes_or_time_runs_out() -> None:
    r = replica()
    r.on_local_append(12)
    r.wait_for("a", 12, 1000)
    r.wait_for("b", 11, 500)
    assert r.ready_waiters(100) == []
    assert r.next_deadline_ms() == 500
    [(waiter, error)] = r.ready_waiters(500)
    assert waiter.token == "b" and error is not None
    assert error.code is ErrorCode.REQUEST_TIMED_OUT
    r.on_follower_fetch(1, 12, 600)
    r.on_follower_fetch(2, 12, 600)
    [(waiter, error)] = r.ready_waiters(600)
    assert waiter.token == "a" and error is None
    assert r.next_deadline_ms() is None


def test_acks_all_written_while_the_isr_shrank_below_min_insync() -> None:
    r = replica([0, 1])
    r.on_local_append(12)
    r.wait_for("a", 12, 1000)
    r.isr_applied([0])
    [(_, error)] = r.ready_waiters(10)
    assert error is not None and error.code is ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND
    try:
        r.check_enough_replicas()
    except NotEnoughReplicasError:
        pass
    else:
        raise AssertionError("one in-sync replica, min.insync.replicas=2, and no refusal")


def test_abandoned_waits_fail_as_not_leader() -> None:
    r = replica()
    r.wait_for("a", 50, 1000)
    [(waiter, error)] = r.abandon("moved")
    assert waiter.token == "a" and error.code is ErrorCode.NOT_LEADER_OR_FOLLOWER
    assert r.waiters == []


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["append", "fetch1", "fetch2", "shrink", "grow", "pend"]),
            st.integers(0, 30),
        ),
        max_size=60,
    )
)
def test_the_high_watermark_never_goes_back_nor_past_a_member(
    steps: list[tuple[str, int]],
) -> None:
    """Whatever fetches, appends and ISR changes come, the high watermark only grows and
    never passes the log end of a member of the ISR or of a pending change."""
    r = replica([0, 1, 2], leo=0, hw=0)
    acked = {1: -1, 2: -1}
    now = 0
    for kind, n in steps:
        now += 10
        before = r.high_watermark
        if kind == "append":
            r.on_local_append(r.log_end_offset + n)
        elif kind.startswith("fetch"):
            follower = int(kind[-1])
            offset = min(acked[follower] + n, r.log_end_offset) if acked[follower] >= 0 else n
            offset = min(offset, r.log_end_offset)
            r.on_follower_fetch(follower, offset, now)
            acked[follower] = offset
        elif kind == "shrink":
            r.isr_applied([m for m in r.isr if m != 1 + n % 2] or [0])
        elif kind == "grow":
            r.isr_applied(sorted(set(r.isr) | {1 + n % 2}))
        else:
            r.pending_isr = sorted(set(r.isr) | {1 + n % 2})
            r.recompute_high_watermark()
        assert r.high_watermark >= before
        for member in (set(r.isr) | set(r.pending_isr or [])) - {0}:
            if r.high_watermark > before:  # it moved: every member had it
                assert acked[member] >= r.high_watermark


def test_election_prefers_the_first_live_in_sync_replica() -> None:
    assert elect_leader([0, 1, 2], [1, 2], {0, 1, 2}, unclean=False) == (1, [1, 2])
    assert elect_leader([0, 1, 2], [1], {0, 2}, unclean=False) == (-1, [1])
    assert elect_leader([0, 1, 2], [1], {0, 2}, unclean=True) == (0, [0])
