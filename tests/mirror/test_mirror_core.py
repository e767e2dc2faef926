"""MirrorCore (workers/mirror_core.py) against a simulated idempotent Kafka target.

A hypothesis state machine fetches source records in chunks, delivers the core's batches
to a fake target that stores, loses answers, refuses, or forgets producer state, restarts
the mirror (a crash: the core is rebuilt and resumes from where the target's tail says
each feed stopped, as the shell does), and advances time. The core keeps several batches
in flight per target partition; a lane delivered in order with its first answer lost
checks that a later answer acknowledges the earlier batches. After every step: each target
partition holds every feed's records in source order, none twice, none skipped (a prefix
of the source); the offset maps agree with the target; the retention hold never passes
what is on the target. At the end everything fetched is drained onto the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvlog.types import TopicPartition
from kvlog.workers.mirror_core import Batch, Chunk, Failure, MirrorCore
from kvlog.workers.mirror_model import MirrorSpec, OffsetMap

SOURCES = [TopicPartition("s", p) for p in range(3)]
# Partitions 0 and 2 share target partition 0 (2 % 2): two feeds in one lane.
ROUTES = {src: TopicPartition("t", src.partition % 2) for src in SOURCES}


@dataclass
class FakeTarget:
    """An idempotent Kafka partition leader per lane: (source partition, source offset)
    per stored record, and the last batch per producer id (duplicates answered with
    their first offset, a sequence gap refused)."""

    logs: dict[TopicPartition, list[tuple[int, int]]] = field(default_factory=dict)
    last: dict[tuple[TopicPartition, int], tuple[int, int, int]] = field(default_factory=dict)

    def produce(self, batch: Batch, pid: int) -> tuple[str | None, int]:
        log = self.logs.setdefault(batch.lane, [])
        seen = self.last.get((batch.lane, pid))
        if seen is not None and seen[0] == batch.base_sequence:
            return None, seen[2]  # a duplicate: stored before, answered with its offset
        expected = 0 if seen is None else seen[1]
        if batch.base_sequence != expected:
            return Failure.RESYNC, -1
        base = len(log)
        for chunk in batch.chunks:
            log += [(chunk.src.partition, o) for o in chunk.offsets]
        self.last[(batch.lane, pid)] = (
            batch.base_sequence,
            batch.base_sequence + batch.count,
            base,
        )
        return None, base

    def of_feed(self, src: TopicPartition) -> list[int]:
        return [o for p, o in self.logs.get(ROUTES[src], []) if p == src.partition]


class MirrorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1_000
        self.spec = MirrorSpec(
            name="m",
            target="kafka://t:9092",
            topics="s",
            max_batch_bytes=50,
            max_buffer_bytes=400,
            checkpoint_interval_ms=100,
        )
        self.target = FakeTarget()
        self.pid = 0
        self.maps: dict[TopicPartition, OffsetMap] = {}
        self.holds: dict[TopicPartition, int] = {}
        self._boot()

    # -- the shell's part --------------------------------------------------------------------

    def _boot(self) -> None:
        """Start (or restart after a crash) as the shell does: resume each feed after
        its last record on the target; a new producer id."""
        self.core = MirrorCore(self.spec, self.now)
        self.core.maps = {src: OffsetMap(m.segments) for src, m in self.maps.items()}
        self.pid += 1
        self.sends: list[Batch] = []
        self.fetch_at: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        resume = {}
        for src in SOURCES:
            on_target = self.target.of_feed(src)
            resume[src] = on_target[-1] + 1 if on_target else 0
            self.fetch_at[src] = resume[src]
        self._apply(self.core.start(dict(ROUTES), resume, self.now))

    def _apply(self, result: Any) -> None:
        self.sends += result.sends
        self.paused |= result.pause
        self.paused -= result.resume
        for src, offset in result.seek.items():
            self.fetch_at[src] = offset
        if result.commit_hold is not None:
            self.holds.update(result.commit_hold)
        if result.save_state:
            self.maps = {src: OffsetMap(m.segments) for src, m in self.core.maps.items()}
        assert result.fatal is None, result.fatal
        if result.resync is not None:
            self._boot()

    # -- rules -------------------------------------------------------------------------------

    @rule(src=st.sampled_from(SOURCES), count=st.integers(1, 6))
    def fetch(self, src: TopicPartition, count: int) -> None:
        if src in self.paused:
            return
        start = self.fetch_at[src]
        chunk = Chunk(src, range(start, start + count), self.now, 10 * count)
        self.fetch_at[src] = start + count
        self._apply(self.core.fetched(chunk, self.now))

    @precondition(lambda self: self.sends)
    @rule(
        which=st.integers(0, 10),
        outcome=st.sampled_from(["stored", "stored", "stored", "answer_lost", "refused"]),
    )
    def deliver(self, which: int, outcome: str) -> None:
        batch = self.sends.pop(which % len(self.sends))
        if outcome == "refused":
            self._apply(self.core.failed_send(batch.id, Failure.RETRY, "down", self.now))
            return
        kind, base = self.target.produce(batch, self.pid)
        if outcome == "answer_lost":
            self._apply(self.core.failed_send(batch.id, Failure.RETRY, "lost", self.now))
        elif kind is None:
            self._apply(self.core.acked(batch.id, base, self.now))
        else:
            self._apply(self.core.failed_send(batch.id, kind, "sequence", self.now))

    @precondition(lambda self: self.sends)
    @rule(lose_first=st.booleans())
    def deliver_a_lane_in_order(self, lose_first: bool) -> None:
        """The target takes a lane's batches in the order they were sent (one connection),
        the first answer maybe lost: a later answer acknowledges the earlier batches."""
        lane = self.sends[0].lane
        batches = [b for b in self.sends if b.lane == lane]
        self.sends = [b for b in self.sends if b.lane != lane]
        answers = [(b, *self.target.produce(b, self.pid)) for b in batches]
        for i, (batch, kind, base) in enumerate(answers):
            if lose_first and i == 0 and kind is None and len(answers) > 1:
                continue  # its answer is lost; the next one tells
            if kind is None:
                self._apply(self.core.acked(batch.id, base, self.now))
            else:
                self._apply(self.core.failed_send(batch.id, kind, "sequence", self.now))

    @rule(ms=st.integers(1, 20_000))
    def time_passes(self, ms: int) -> None:
        self.now += ms
        self._apply(self.core.tick(self.now))

    @rule()
    def crash(self) -> None:
        self._boot()

    @rule()
    def target_forgets_old_producers(self) -> None:
        # Producer state of earlier runs expires on the target (the current run's stays
        # while it writes: Kafka keeps it producer.id.expiration.ms, kvlog durably).
        self.target.last = {k: v for k, v in self.target.last.items() if k[1] == self.pid}

    @precondition(lambda self: self.sends)
    @rule()
    def target_does_not_know_the_producer(self) -> None:
        batch = self.sends.pop(0)  # UNKNOWN_PRODUCER_ID: nothing stored, start again
        self._apply(self.core.failed_send(batch.id, Failure.RESYNC, "unknown pid", self.now))

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def target_is_each_source_in_order_once(self) -> None:
        for src in SOURCES:
            on_target = self.target.of_feed(src)
            assert on_target == list(range(len(on_target))), (src, on_target)

    @invariant()
    def holds_never_pass_the_target(self) -> None:
        for src, hold in self.holds.items():
            assert hold <= len(self.target.of_feed(src)), (src, hold)

    @invariant()
    def offset_maps_agree_with_the_target(self) -> None:
        for src, offset_map in self.core.maps.items():
            log = self.target.logs.get(ROUTES[src], [])
            for seg in offset_map.segments:
                for i in range(seg.count):
                    assert log[seg.tgt + i] == (src.partition, seg.src + i)

    def teardown(self) -> None:
        # Liveness: with a healthy target everything fetched gets there.
        for _ in range(500):
            self.now += 20_000
            self._apply(self.core.tick(self.now))
            while self.sends:
                batch = self.sends.pop(0)
                kind, base = self.target.produce(batch, self.pid)
                if kind is None:
                    self._apply(self.core.acked(batch.id, base, self.now))
                else:
                    self._apply(self.core.failed_send(batch.id, kind, "sequence", self.now))
            if self.core.idle() and all(
                self.core.feeds[src].acked == self.fetch_at[src] for src in SOURCES
            ):
                break
        for src in SOURCES:
            assert self.target.of_feed(src) == list(range(self.fetch_at[src]))


MirrorMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMirrorMachine = MirrorMachine.TestCase
