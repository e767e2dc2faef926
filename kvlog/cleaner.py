"""The log cleaner: applies :mod:`kvlog.compaction`'s policy to one log store.

Runs in the sweeper process (``workers/runtime.py``), one :class:`Cleaner` per log dir,
so every replica compacts its own copy, as Kafka's brokers do. A pass over a partition:

1. plan from batch headers only (:func:`kvlog.compaction.plan`);
2. note the dirty range's keys in a bounded offset map, reading in short read
   transactions of ``io_buffer_bytes``;
3. walk the log from its start to the end of what the map covers, one chunk of
   ``io_buffer_bytes`` at a time: decide (CPU work, outside any transaction), then apply
   the chunk's rewrites in one short write transaction
   (``WriteTxn.replace_batches``: each batch swapped in place at its own key, or removed,
   only if it is still byte for byte what was read);
4. record the pass (first dirty offset, pass history, last compaction) in the partition's
   cleaner row.

Crash safety: each write transaction is atomic and every rewritten batch stands alone
(same base and last offset, a subset of its records), so a SIGKILL at any moment leaves
each batch either as it was or as compacted, and never two copies of an offset; a pass
that did not record itself is simply done again. A batch that changed under the cleaner
(retention, DeleteRecords, a truncation) is left alone. The map is only valid while the
batches it was built from are there: every write transaction first checks that the
pass's last mapped batch (the *sentinel*) is still as read, and the pass stops if not.

Owned by the sweeper's loop; not thread-safe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any

from . import batch as batch_format
from . import control_batch, epochs, txn_state
from .clock import now_ms as wall_clock_ms
from .compact_records import Action, new_offset_map
from .compaction import (
    CLEANER_TABLE,
    BatchSpan,
    CleanerState,
    CleanPlan,
    CompactionConfig,
    LastCompaction,
    TxnWalk,
    current_state,
    decide,
    epoch_mark,
    fill_map,
    load_state,
    plan,
    record_pass,
    save_state,
    tombstone_due,
)
from .errors import KvlogError, OffsetOutOfRangeError
from .log import BatchReplacement, LogStore, ReadTxn, WriteTxn
from .topic_config import effective_topic_config
from .types import TopicPartition, parse_partition_key

log = logging.getLogger(__name__)

DEFAULT_DEDUPE_BUFFER_BYTES = 128 << 20
DEFAULT_IO_BUFFER_BYTES = 1 << 20
MAX_PASSES = 10_000  # a bound on one run's passes; each covers at least one record


@dataclass(frozen=True)
class TopicInfo:
    """What the cleaner needs of a topic: its id and its config overrides."""

    topic_id: str
    config: Mapping[str, Any]


TopicLookup = Callable[[str], TopicInfo | None]


@dataclass
class CleanResult:
    tp: TopicPartition
    last: LastCompaction
    complete: bool  # False: stopped early (shutdown, or the log changed under it)


@dataclass
class CompactionStatus:
    """A partition's compaction as ``kvlog topics describe`` shows it."""

    tp: TopicPartition
    plan: CleanPlan
    last: LastCompaction | None
    tombstone_due_ms: int | None


@dataclass
class _Pass:
    """One pass's map end, sentinel and oldest kept tombstone."""

    map_end: int
    sentinel: tuple[int, bytes | None] | None = None
    first_tombstone: int = -1


class _Stale(Exception):
    """The batches the map was built from changed: the pass stops."""


class Cleaner:
    """Compacts the partitions of one log store whose topics ask for it.

    ``topic_for(topic)`` gives the topic's id and config overrides (None: unknown topic,
    left alone). ``clock`` is the time source (injected by tests); ``should_stop`` is
    asked between chunks so a shutdown is not held up by a long pass.
    """

    def __init__(
        self,
        store: LogStore,
        topic_for: TopicLookup,
        *,
        dedupe_buffer_bytes: int = DEFAULT_DEDUPE_BUFFER_BYTES,
        io_buffer_bytes: int = DEFAULT_IO_BUFFER_BYTES,
        clock: Callable[[], int] = wall_clock_ms,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.topic_for = topic_for
        self.dedupe_buffer_bytes = dedupe_buffer_bytes
        self.io_buffer_bytes = io_buffer_bytes
        self.clock = clock
        self.should_stop = should_stop

    # -- the loop's entry points ------------------------------------------------------------

    def run(self, forced: Container[str] = ()) -> list[CleanResult]:
        """One look at every partition: compact those that are due (and every partition
        of a topic in ``forced``). Returns what was compacted."""
        results = []
        partitions = self.store.partitions()
        self._forget_dropped(set(partitions))
        for tp in partitions:
            if self.should_stop():
                break
            info = self.topic_for(tp.topic)
            if info is None:
                continue
            try:
                result = self.clean_partition(tp, info, forced=tp.topic in forced)
            except KvlogError as exc:  # a partition dropped meanwhile, a full disk, ...
                log.warning("compaction of %s skipped: %s", tp, exc.message)
                continue
            if result is not None:
                results.append(result)
        return results

    def status(self, tp: TopicPartition, info: TopicInfo) -> CompactionStatus:
        config = CompactionConfig.from_topic(effective_topic_config(info.config))
        with self.store.reader() as r:
            state, clean_plan = self._plan(r, tp, info, config, forced=False)
        return CompactionStatus(tp, clean_plan, state.last, state.tombstone_due_ms)

    def clean_partition(
        self, tp: TopicPartition, info: TopicInfo, *, forced: bool = False
    ) -> CleanResult | None:
        config = CompactionConfig.from_topic(effective_topic_config(info.config))
        if not config.compact:
            return None
        started = self.clock()
        with self.store.reader() as r:
            state, clean_plan = self._plan(r, tp, info, config, forced=forced)
        if clean_plan.reason is None:
            return None
        total = LastCompaction(0, 0, clean_plan.reason)
        with self.store.reader() as r:
            total.bytes_before = total.bytes_after = r.offsets(tp).size_bytes
        complete = False
        end = clean_plan.first_uncleanable
        for _ in range(MAX_PASSES):
            try:
                done = self._pass(tp, state, config, clean_plan, total)
            except (_Stale, OffsetOutOfRangeError) as exc:
                log.info("compaction of %s stopped: %s", tp, exc)
                break
            if done is None:  # asked to stop
                break
            progressed = done.first_dirty > state.first_dirty
            state = done
            total.passes += 1
            if state.first_dirty >= end:
                complete = True
                break
            if not progressed:  # the log changed under the plan: look again next time
                break
            clean_plan = CleanPlan(
                state.first_dirty, end, 0, 0, clean_plan.dirty_records, 0.0, total.reason
            )
        if not total.passes:
            return None
        total.finished_ms = self.clock()
        total.duration_ms = total.finished_ms - started
        self.store.write(lambda w: self._save_last(w, tp, total))
        log.info(
            "compacted %s (%s): %d pass(es), %d records removed (%d tombstones, %d without "
            "key), %d -> %d bytes, %d ms",
            tp,
            total.reason,
            total.passes,
            total.records_removed,
            total.tombstones_removed,
            total.keyless_removed,
            total.bytes_before,
            total.bytes_after,
            total.duration_ms,
        )
        return CleanResult(tp, total, complete)

    # -- planning ---------------------------------------------------------------------------

    def _plan(
        self,
        r: ReadTxn,
        tp: TopicPartition,
        info: TopicInfo,
        config: CompactionConfig,
        *,
        forced: bool,
    ) -> tuple[CleanerState, CleanPlan]:
        offsets = r.offsets(tp)
        state = current_state(
            load_state(r, tp),
            topic_id=info.topic_id,
            offsets=offsets,
            epoch_entries=epochs.entries(r, tp),
        )
        spans = (
            BatchSpan(
                base,
                base + h.last_offset_delta + 1,
                size,
                h.record_count,
                h.first_timestamp,
                h.max_timestamp,
            )
            for base, size, h in r.headers(tp, state.first_dirty)
        )
        txns = txn_state.TxnStateTable()
        txns.load(r, [tp])
        clean_plan = plan(
            spans,
            offsets=offsets,
            state=state,
            config=config,
            now_ms=self.clock(),
            forced=forced,
            last_stable_offset=txns.last_stable_offset(
                tp, offsets.high_watermark, offsets.log_start_offset
            ),
        )
        return state, clean_plan

    # -- one pass ---------------------------------------------------------------------------

    def _pass(
        self,
        tp: TopicPartition,
        state: CleanerState,
        config: CompactionConfig,
        clean_plan: CleanPlan,
        total: LastCompaction,
    ) -> CleanerState | None:
        """Map the dirty range (as much as fits), clean up to where the map ends, record
        the pass. Returns the new state, or None when asked to stop."""
        omap = new_offset_map(self.dedupe_buffer_bytes, clean_plan.dirty_records)
        current = _Pass(state.first_dirty)
        offset = state.first_dirty
        end = clean_plan.first_uncleanable
        while offset < end:
            if self.should_stop():
                return None
            with self.store.reader() as r:
                batches = r.read(tp, offset, self.io_buffer_bytes, max_offset=end)
                aborted = _aborted(r, tp, batches)
            if not batches:
                break
            covered, full = fill_map(
                omap, batches, first_dirty=state.first_dirty, end=end, aborted=aborted
            )
            for base, batch in batches:
                if base < covered:
                    current.sentinel = (base, batch)
            current.map_end = max(current.map_end, covered)
            if full:
                break
            offset = batch_format.next_offset(*batches[-1])
        now = self.clock()
        offset = -1
        walk = TxnWalk()
        while True:
            if self.should_stop():
                return None
            with self.store.reader() as r:
                start = r.offsets(tp).log_start_offset
                offset = max(offset, start)
                batches = r.read(tp, offset, self.io_buffer_bytes, max_offset=current.map_end)
                aborted = _aborted(r, tp, batches)
            if not batches:
                break
            decisions = decide(
                batches,
                omap,
                map_end=current.map_end,
                state=state,
                config=config,
                now_ms=now,
                aborted=aborted,
                walk=walk,
            )
            self._apply(tp, decisions, current, total)
            offset = batch_format.next_offset(*batches[-1])
            if offset >= current.map_end:
                break
        finished = self.clock()
        passes = record_pass(state.passes, current.map_end, finished, config.delete_retention_ms)

        def finish(w: WriteTxn) -> CleanerState:
            self._check_sentinel(w, tp, current)
            entries = epochs.entries(w, tp)
            new = CleanerState(
                state.topic_id,
                current.map_end,
                epoch_mark(entries, current.map_end),
                passes,
                tombstone_due(passes, current.first_tombstone, config.delete_retention_ms),
                state.last,
            )
            save_state(w, tp, new)
            return new

        return self.store.write(finish)

    def _apply(
        self, tp: TopicPartition, decisions: list[Any], current: _Pass, total: LastCompaction
    ) -> None:
        replacements = []
        for base, batch, outcome in decisions:
            if outcome.first_tombstone >= 0 and current.first_tombstone < 0:
                current.first_tombstone = outcome.first_tombstone
            if outcome.action is Action.REWRITE:
                replacements.append(BatchReplacement(base, batch, outcome.new))
            elif outcome.action is Action.REMOVE:
                replacements.append(BatchReplacement(base, batch, None))
        if not replacements:
            return

        def write(w: WriteTxn) -> list[bool]:
            self._check_sentinel(w, tp, current)
            applied = w.replace_batches(tp, replacements)
            for (base, batch, new), ok in zip(replacements, applied, strict=True):
                header = batch_format.read_header(batch)
                removed = ok and new is None and header.is_control
                if removed and control_batch.marker_type(batch) == control_batch.ABORT:
                    # Nothing of the transaction is left to drop.
                    txn_state.forget_aborted(w, tp, header.producer_id, base)
            return applied

        applied = self.store.write(write)
        outcomes = {base: outcome for base, _batch, outcome in decisions}
        for (base, batch, new), ok in zip(replacements, applied, strict=True):
            if not ok:
                continue  # changed under the cleaner: left as it is
            outcome = outcomes[base]
            total.records_removed += outcome.removed
            total.tombstones_removed += outcome.tombstones_removed
            total.keyless_removed += outcome.keyless_removed
            total.bytes_after -= len(batch) - (0 if new is None else len(new))
            if new is None:
                total.batches_removed += 1
            else:
                total.batches_rewritten += 1
            if current.sentinel is not None and current.sentinel[0] == base:
                current.sentinel = (base, None if new is None else bytes(new))

    def _check_sentinel(self, w: WriteTxn, tp: TopicPartition, current: _Pass) -> None:
        if current.sentinel is None:
            return
        base, expected = current.sentinel
        try:
            found = w.read(tp, base, 1)
        except OffsetOutOfRangeError:
            found = []
        stored = found[0][1] if found and found[0][0] == base else None
        if stored != (None if expected is None else bytes(expected)):
            raise _Stale(f"the batch at {base} changed under the cleaner")

    # -- bookkeeping ------------------------------------------------------------------------

    def _save_last(self, w: WriteTxn, tp: TopicPartition, last: LastCompaction) -> None:
        state = load_state(w, tp)
        if state is not None:
            state.last = last
            save_state(w, tp, state)

    def _forget_dropped(self, live: set[TopicPartition]) -> None:
        with self.store.reader() as r:
            stale = [k for k, _ in r.items(CLEANER_TABLE) if parse_partition_key(k) not in live]
        if stale:
            self.store.write(lambda w: [w.delete(CLEANER_TABLE, k) for k in stale])


def _aborted(
    r: ReadTxn, tp: TopicPartition, batches: list[tuple[int, Any]]
) -> list[txn_state.AbortedTxn]:
    """The aborted transactions overlapping ``batches`` (from the partition's index)."""
    if not batches:
        return []
    txns = txn_state.TxnStateTable()
    txns.load(r, [tp])
    return txns.aborted(tp, batches[0][0], batch_format.next_offset(*batches[-1]))
