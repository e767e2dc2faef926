"""The mirror's policy, sans-IO: what to send to the target and when, what is durable,
what to commit, how to wait. Events and ``now_ms`` in, one :class:`MirrorResult` out; the
shell (workers/mirror_shell.py) fetches, encodes, sends, writes files and reads the clock.

Theory of operation. Each mirrored source partition is a *feed* into one target
partition, its *lane* (workers/mirror_model.py says which). The mirror is the only writer
of its lanes, with one idempotent producer id per run. Fetched source records arrive as
:class:`Chunk` s and queue on their lane; a lane has up to ``max_in_flight`` batches in
flight (5, as Kafka's idempotent producer: the target checks each batch's sequence, so
order holds): while it has fewer, its queued chunks (up to ``max_batch_bytes``) become the
next batch, with the lane's next sequence number. Answers come in order (one connection
per target broker), and a batch stored means the lane's earlier ones are (sequences are
contiguous and the mirror is the lane's only writer), so an answer acknowledges every
earlier batch still waiting. A retriable failure (the target down, a leader moving, a
timeout) resends *the same batches* (same producer id and sequences) after a backoff, so a
batch the target stored before the answer was lost is deduplicated, never doubled. A
failure that means the target forgot the producer or the sequence (OUT_OF_ORDER_SEQUENCE,
UNKNOWN_PRODUCER_ID, a duplicate without its offset) asks for a *resync*: the shell
re-reads where each feed stopped from the target's tail (each batch's last record says
its source offset) and starts again with a new producer id. A batch too large for the target is
split; one record too large is fatal (named).

Durable progress is the target itself plus two things this core schedules every
``checkpoint_interval_ms``: the offset maps (source -> target, for group translation;
saved by the shell) and the source *hold* (the mirror group's committed offsets, marked
so that retention keeps what is not forwarded; kvlog/retention.py). A source partition
whose next records were deleted anyway (a gap) is an error unless ``allow_gaps``; then
it is counted and skipped. The target unreachable is logged once, when it starts and
when it ends; meanwhile each lane retries with exponential backoff.

Owned by the shell's thread; not thread-safe.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvlog.types import TopicPartition

from .mirror_model import MirrorSpec, OffsetMap, tp_key

INT32_MAX = (1 << 31) - 1


class Failure:
    """How a send failed, as the core acts on it."""

    RETRY = "retry"  # the target or the connection: same batch again after a backoff
    TOO_LARGE = "too_large"  # the batch is over the target's limit: split it
    RESYNC = "resync"  # the target forgot our producer state: start again from its tail
    FATAL = "fatal"  # retrying cannot help (authorization, a topic gone): stop


@dataclass(slots=True, eq=False)
class Chunk:
    """A run of fetched records of one source partition at consecutive offsets (the
    shell cuts runs at compaction gaps). ``data`` is the shell's (the record columns);
    ``split`` cuts it in two (the core never looks in)."""

    src: TopicPartition
    offsets: Sequence[int]
    first_timestamp: int
    nbytes: int
    data: Any = None
    split: Callable[[Chunk], tuple[Chunk, Chunk]] | None = None


@dataclass(eq=False)
class Batch:
    """One produce of one lane: its chunks, sequence and (once the shell encoded it)
    its record set, sent again as it is on a retry."""

    id: int
    lane: TopicPartition
    chunks: list[Chunk]
    base_sequence: int
    count: int
    nbytes: int
    payload: Any = None
    attempts: int = 0
    failed: bool = False  # a retriable failure: sent again at the lane's retry_at


@dataclass
class Feed:
    """One source partition: ``acked`` is the next source offset not on the target yet."""

    src: TopicPartition
    lane: TopicPartition
    acked: int
    fetched: int
    offsets: OffsetMap
    pending: deque[Chunk] = field(default_factory=deque)  # fetched, not acknowledged
    paused: bool = False
    gaps: int = 0


@dataclass
class Lane:
    """One target partition, written by this mirror only."""

    tgt: TopicPartition
    queue: deque[Chunk] = field(default_factory=deque)
    queued_bytes: int = 0
    inflight: deque[Batch] = field(default_factory=deque)  # sequence order
    next_sequence: int = 0
    retry_at: int | None = None
    max_batch_bytes: int = 1_000_000
    max_in_flight: int = 5
    failures: int = 0


@dataclass
class MirrorResult:
    """What the shell does after one event."""

    sends: list[Batch] = field(default_factory=list)
    pause: set[TopicPartition] = field(default_factory=set)
    resume: set[TopicPartition] = field(default_factory=set)
    seek: dict[TopicPartition, int] = field(default_factory=dict)
    commit_hold: dict[TopicPartition, int] | None = None
    save_state: bool = False
    sync_groups: bool = False
    refresh_topics: bool = False
    resync: str | None = None
    fatal: str | None = None
    done: bool = False
    logs: list[tuple[int, str]] = field(default_factory=list)
    deadline_ms: int | None = None

    def wake_at(self, when: int | None) -> None:
        if when is not None and (self.deadline_ms is None or when < self.deadline_ms):
            self.deadline_ms = when


class Backoff:
    """Exponential, deterministic (the core makes no random numbers)."""

    def __init__(self, low_ms: int, high_ms: int) -> None:
        self.low_ms = low_ms
        self.high_ms = high_ms

    def delay(self, failures: int) -> int:
        return min(self.high_ms, self.low_ms * (2 ** min(failures, 30)))


class MirrorCore:
    """See the module docstring."""

    def __init__(self, spec: MirrorSpec, now_ms: int) -> None:
        self.spec = spec
        self.backoff = Backoff(spec.backoff_min_ms, spec.backoff_max_ms)
        self.feeds: dict[TopicPartition, Feed] = {}
        self.lanes: dict[TopicPartition, Lane] = {}
        self.maps: dict[TopicPartition, OffsetMap] = {}
        self.batches: dict[int, Batch] = {}
        self._ids = 0
        self.running = False
        self.failed: str | None = None
        self.unreachable_since: int | None = None
        self.catch_up_to: dict[TopicPartition, int] | None = None
        self.forwarded = 0
        self.skipped = 0  # records lost to gaps in this run (feeds' counts restart)
        self.dirty = False
        self._committed: dict[TopicPartition, int] = {}
        self._next_checkpoint = now_ms + spec.checkpoint_interval_ms
        self._next_groups = now_ms + spec.group_sync_interval_ms
        self._next_topics = now_ms + spec.topic_refresh_interval_ms

    # -- (re)start -------------------------------------------------------------------------

    def start(
        self,
        routes: dict[TopicPartition, TopicPartition],
        resume: dict[TopicPartition, int],
        now_ms: int,
        *,
        catch_up_to: dict[TopicPartition, int] | None = None,
    ) -> MirrorResult:
        """Run (again) with these feeds (source -> target partition), each from its
        resume offset, with a new producer id (sequences from 0). Offset maps are kept."""
        self.feeds = {
            src: Feed(src, tgt, resume[src], resume[src], self.maps.setdefault(src, OffsetMap()))
            for src, tgt in routes.items()
        }
        self.lanes = {
            tgt: Lane(
                tgt,
                max_batch_bytes=self.spec.max_batch_bytes,
                max_in_flight=self.spec.max_in_flight,
            )
            for tgt in set(routes.values())
        }
        self.batches = {}
        self.running = True
        if self.spec.until_caught_up and self.catch_up_to is None:
            self.catch_up_to = dict(catch_up_to or {})
        result = MirrorResult(commit_hold=dict(resume), save_state=True)
        self._committed = dict(resume)
        self._check_done(result)
        return result

    def stop(self) -> None:
        """The shell tears the run down (a resync): nothing is in flight any more."""
        self.running = False
        self.batches = {}
        for lane in self.lanes.values():
            lane.inflight.clear()
            lane.queue.clear()
            lane.queued_bytes = 0

    # -- fetched records -------------------------------------------------------------------

    def fetched(self, chunk: Chunk, now_ms: int) -> MirrorResult:
        result = MirrorResult()
        feed = self.feeds.get(chunk.src)
        if feed is None or not self.running or not chunk.offsets:
            return result
        if chunk.offsets[0] < feed.fetched:
            return result  # a fetch from before a seek; the records come again
        lane = self.lanes[feed.lane]
        lane.queue.append(chunk)
        lane.queued_bytes += chunk.nbytes
        feed.pending.append(chunk)
        feed.fetched = chunk.offsets[-1] + 1
        if lane.queued_bytes >= self._lane_buffer() and not feed.paused:
            feed.paused = True
            result.pause.add(feed.src)
        self._dispatch(now_ms, result)
        return result

    def _lane_buffer(self) -> int:
        share = self.spec.max_buffer_bytes // max(1, len(self.lanes))
        return max(share, 2 * self.spec.max_batch_bytes)

    def gap(self, src: TopicPartition, position: int, log_start: int, now_ms: int) -> MirrorResult:
        """The source deleted records [position, log_start) before they were fetched."""
        result = MirrorResult()
        feed = self.feeds.get(src)
        if feed is None:
            return result
        missing = log_start - position
        if not self.spec.allow_gaps:
            self.failed = result.fatal = (
                f"records {position}..{log_start - 1} of {src.topic}-{src.partition} were "
                "deleted on the source before the mirror forwarded them (a retention hold "
                "released by hand, or DeleteRecords); nothing was skipped. Run the mirror "
                "with --allow-gaps to skip them and go on"
            )
            return result
        feed.gaps += missing
        self.skipped += missing
        feed.fetched = log_start
        result.seek[src] = log_start
        result.logs.append(
            (
                logging.WARNING,
                f"mirror {self.spec.name}: {missing} record(s) of {src.topic}-"
                f"{src.partition} ({position}..{log_start - 1}) were deleted before they "
                f"were forwarded; skipped (--allow-gaps; {feed.gaps} skipped so far)",
            )
        )
        return result

    # -- sending ---------------------------------------------------------------------------

    def _dispatch(self, now_ms: int, result: MirrorResult) -> None:
        if not self.running:
            return
        for lane in self.lanes.values():
            if lane.retry_at is not None:
                if lane.retry_at > now_ms:
                    result.wake_at(lane.retry_at)
                    continue
                lane.retry_at = None
                for batch in lane.inflight:  # in sequence order
                    if batch.failed:
                        batch.failed = False
                        batch.attempts += 1
                        result.sends.append(batch)
            while lane.queue and len(lane.inflight) < lane.max_in_flight:
                result.sends.append(self._next_batch(lane))

    def _next_batch(self, lane: Lane) -> Batch:
        chunks: list[Chunk] = []
        size = count = 0
        while lane.queue:
            chunk = lane.queue[0]
            if chunks and (
                size + chunk.nbytes > lane.max_batch_bytes
                or chunk.src != chunks[0].src
                or chunk.offsets[0] != chunks[-1].offsets[-1] + 1
            ):
                break  # a batch is one feed's contiguous run: its last record says it all
            if (
                not chunks
                and chunk.nbytes > lane.max_batch_bytes
                and len(chunk.offsets) > 1
                and chunk.split is not None
            ):
                head, tail = chunk.split(chunk)  # same bytes in all, in two pieces
                lane.queue[0] = tail
                lane.queue.appendleft(head)
                self._replace_pending(chunk, head, tail)
                continue
            lane.queue.popleft()
            lane.queued_bytes -= chunk.nbytes
            chunks.append(chunk)
            size += chunk.nbytes
            count += len(chunk.offsets)
            if size >= lane.max_batch_bytes:
                break
        self._ids += 1
        batch = Batch(self._ids, lane.tgt, chunks, lane.next_sequence, count, size)
        lane.next_sequence = (lane.next_sequence + count) & INT32_MAX
        lane.inflight.append(batch)
        self.batches[batch.id] = batch
        return batch

    def _replace_pending(self, chunk: Chunk, head: Chunk, tail: Chunk) -> None:
        pending = self.feeds[chunk.src].pending
        for i, c in enumerate(pending):
            if c is chunk:
                pending[i] = tail
                pending.insert(i, head)
                return

    def acked(self, batch_id: int, base_offset: int, now_ms: int) -> MirrorResult:
        """The target stored the batch at ``base_offset``."""
        result = MirrorResult()
        batch = self.batches.pop(batch_id, None)
        if batch is None or not self.running:
            return result
        lane = self.lanes[batch.lane]
        if batch not in lane.inflight:
            return result
        stored = []  # this batch and the earlier ones it proves stored, in order
        while lane.inflight:
            stored.append(lane.inflight.popleft())
            if stored[-1] is batch:
                break
        lane.failures = 0
        if not any(b.failed for b in lane.inflight):
            lane.retry_at = None
        position = base_offset - sum(b.count for b in stored[:-1])
        for done in stored:
            self.batches.pop(done.id, None)
            for chunk in done.chunks:
                feed = self.feeds[chunk.src]
                feed.offsets.add(chunk.offsets, position)
                position += len(chunk.offsets)
                feed.acked = chunk.offsets[-1] + 1
                if feed.pending and feed.pending[0] is chunk:
                    feed.pending.popleft()
                if feed.paused and lane.queued_bytes < self._lane_buffer() // 2:
                    feed.paused = False
                    result.resume.add(feed.src)
            self.forwarded += done.count
        self.dirty = True
        self._reachable(now_ms, result)
        self._dispatch(now_ms, result)
        self._check_done(result)
        return result

    def failed_send(self, batch_id: int, kind: str, message: str, now_ms: int) -> MirrorResult:
        """The batch was not (known to be) stored: ``kind`` is a :class:`Failure`."""
        result = MirrorResult()
        batch = self.batches.get(batch_id)
        if batch is None or not self.running:
            return result
        lane = self.lanes[batch.lane]
        if kind == Failure.RETRY:
            batch.failed = True
            if lane.retry_at is None:  # one backoff step per round, however many failed
                lane.failures += 1
                lane.retry_at = now_ms + self.backoff.delay(lane.failures - 1)
            result.wake_at(lane.retry_at)
            if self.unreachable_since is None:
                self.unreachable_since = now_ms
                result.logs.append(
                    (
                        logging.WARNING,
                        f"mirror {self.spec.name}: cannot write to the target ({message}); "
                        "waiting for it with backoff, records stay on the source",
                    )
                )
        elif kind == Failure.TOO_LARGE and batch.count > 1 and batch in lane.inflight:
            # The target took nothing of it, nor of the lane's later batches (their
            # sequences follow it): they go back to the queue and are cut again.
            later: list[Batch] = []
            while lane.inflight and lane.inflight[-1] is not batch:
                later.append(lane.inflight.pop())
            lane.inflight.pop()
            lane.next_sequence = batch.base_sequence
            lane.max_batch_bytes = max(1, batch.nbytes // 2)
            for undone in [*later, batch]:  # the last batch first: appendleft
                self.batches.pop(undone.id, None)
                for chunk in reversed(undone.chunks):
                    lane.queue.appendleft(chunk)
                    lane.queued_bytes += chunk.nbytes
            self._dispatch(now_ms, result)
        elif kind == Failure.RESYNC:
            self.stop()
            result.resync = message
        else:
            self.stop()
            self.failed = result.fatal = message
        return result

    def _reachable(self, now_ms: int, result: MirrorResult) -> None:
        if self.unreachable_since is not None:
            waited = (now_ms - self.unreachable_since) / 1000
            self.unreachable_since = None
            result.logs.append(
                (
                    logging.WARNING,
                    f"mirror {self.spec.name}: the target answers again after {waited:.1f} s",
                )
            )

    def _check_done(self, result: MirrorResult) -> None:
        if self.catch_up_to is None:
            return
        if all(
            self.feeds[src].acked >= end
            for src, end in self.catch_up_to.items()
            if src in self.feeds
        ):
            result.done = True
            result.commit_hold = self.holds()
            result.save_state = True
            result.sync_groups = self.spec.groups is not None

    # -- time ------------------------------------------------------------------------------

    def tick(self, now_ms: int) -> MirrorResult:
        result = MirrorResult()
        if not self.running:
            return result
        self._dispatch(now_ms, result)
        if now_ms >= self._next_checkpoint:
            self._next_checkpoint = now_ms + self.spec.checkpoint_interval_ms
            holds = self.holds()
            if holds != self._committed:
                result.commit_hold = holds
                self._committed = holds
            result.save_state = self.dirty
            self.dirty = False
        if self.spec.groups is not None and now_ms >= self._next_groups:
            self._next_groups = now_ms + self.spec.group_sync_interval_ms
            result.sync_groups = True
        if not self.spec.until_caught_up and now_ms >= self._next_topics:
            self._next_topics = now_ms + self.spec.topic_refresh_interval_ms
            result.refresh_topics = True
        result.wake_at(self._next_checkpoint)
        if self.spec.groups is not None:
            result.wake_at(self._next_groups)
        if not self.spec.until_caught_up:
            result.wake_at(self._next_topics)
        return result

    # -- what the shell reads --------------------------------------------------------------

    def holds(self) -> dict[TopicPartition, int]:
        """The source offsets retention must keep: each feed's next unforwarded one."""
        return {src: feed.acked for src, feed in self.feeds.items()}

    def idle(self) -> bool:
        """Nothing in flight and nothing queued (a clean point to stop at)."""
        return all(not lane.inflight and not lane.queue for lane in self.lanes.values())

    def status(self, now_ms: int, source_ends: dict[TopicPartition, int]) -> dict[str, Any]:
        feeds = []
        for src, feed in sorted(self.feeds.items()):
            end = source_ends.get(src)
            lag = None if end is None else max(0, end - feed.acked)
            oldest = feed.pending[0].first_timestamp if feed.pending and lag else None
            feeds.append(
                {
                    "source": tp_key(src),
                    "target": tp_key(feed.lane),
                    "forwarded_to": feed.acked,
                    "source_end": end,
                    "lag_records": lag,
                    "oldest_unforwarded_ms": oldest,
                    "age_ms": None if oldest is None else max(0, now_ms - oldest),
                    "gaps": feed.gaps,
                }
            )
        return {
            "name": self.spec.name,
            "running": self.running,
            "target_reachable": self.unreachable_since is None,
            "unreachable_since_ms": self.unreachable_since,
            "forwarded": self.forwarded,
            "lag_records": sum(f["lag_records"] or 0 for f in feeds),
            "max_age_ms": max((f["age_ms"] or 0 for f in feeds), default=0),
            "gaps": sum(f["gaps"] for f in feeds),
            "gaps_total": self.skipped,
            "error": self.failed,
            "feeds": feeds,
        }
