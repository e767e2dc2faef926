"""Log compaction's policy, sans-IO: when a partition is compacted, over which range, and
what becomes of each record.

Kafka's rules (``LogCleaner``, ``LogCleanerManager``), per partition whose topic has
``compact`` in ``cleanup.policy``:

- The cleaner keeps, per partition, the *first dirty offset*: everything below it has been
  compacted at least once. Dirty = [first dirty, first uncleanable); clean = [log start,
  first dirty). The *dirty ratio* is dirty bytes / (clean + dirty bytes).
- kvlog has no segments, so its equivalent of Kafka's never-compacted active segment is
  the *first uncleanable offset*: the smallest of the high watermark (replicas compact
  only what every in-sync replica has), the base of the log's last batch (it marks the log
  end, so it is never rewritten nor removed, and a fetch from any offset below the log end
  always finds a batch) and the base of the first batch newer than
  ``min.compaction.lag.ms`` (by its max timestamp). No ``segment.ms`` / ``segment.bytes``.
- A partition is due when its dirty ratio exceeds ``min.cleanable.dirty.ratio``, when its
  oldest dirty record is older than ``max.compaction.lag.ms``, when a tombstone's
  ``delete.retention.ms`` has run out, or when an operator forces it.
- A pass notes every key of the dirty range in a bounded map (key -> latest offset; when
  the map is full the pass ends at that offset and the next pass goes on from there), then
  walks the log from its start to the end of what the map covers. A record there goes when
  the map holds a later offset for its key, when it has no key (Kafka's cleaner drops them
  too), or when it is a tombstone whose grace period ran out; every other record stays, at
  its offset. Records past the map's end always stay.
- Tombstones (null values): a tombstone stays for ``delete.retention.ms`` after the pass
  that first covered it finished (Kafka's delete horizon, KIP-534), so a consumer that read
  an older value of the key before that pass removed it has that long to read the
  tombstone. The state keeps the end offset and finish time of recent passes to know it.

- Transactions (Kafka's cleaner does the same): nothing at or past the partition's last
  stable offset is cleaned (an undecided transaction's records stay as written); a
  control batch (a commit or abort marker) is never mapped; a batch of an aborted
  transaction (covered by the partition's aborted index) is never mapped, so it cannot
  supersede committed values, and is removed. A marker stays while any batch of its
  transaction does (the walk from the log start met one since the producer's previous
  marker: readers need it to end the transaction), and goes like a tombstone once no
  data of its transaction is left and ``delete.retention.ms`` has passed since the pass
  that first covered it; an abort marker takes its aborted-index entry with it (the
  cleaner deletes both in one write: with nothing left to drop, the entry would only
  make a reader drop the producer's later records).

Everything here takes ``now_ms`` and data in and returns decisions; the cleaner
(:mod:`kvlog.cleaner`) reads and writes the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import cbor2

from . import batch as batch_format
from .compact_records import Action, Outcome, filter_batch, map_batch
from .log import ReadTxn, WriteTxn
from .topic_config import cleanup_policies
from .types import PartitionOffsets, TopicPartition, partition_key


class AbortedRange(Protocol):
    """An aborted transaction's offsets in a partition (:class:`kvlog.txn_state.AbortedTxn`)."""

    @property
    def producer_id(self) -> int: ...

    @property
    def first_offset(self) -> int: ...

    @property
    def last_offset(self) -> int: ...


CLEANER_TABLE = "cleaner"
# Recent passes kept for the tombstone horizon; dropping one only keeps tombstones longer.
MAX_PASS_HISTORY = 64


@dataclass(frozen=True)
class CompactionConfig:
    """A topic's compaction settings (from its effective config)."""

    compact: bool
    delete: bool
    min_cleanable_dirty_ratio: float
    min_compaction_lag_ms: int
    max_compaction_lag_ms: int
    delete_retention_ms: int

    @classmethod
    def from_topic(cls, config: Mapping[str, Any]) -> CompactionConfig:
        policies = cleanup_policies(config)
        return cls(
            compact="compact" in policies,
            delete="delete" in policies,
            min_cleanable_dirty_ratio=float(config["min.cleanable.dirty.ratio"]),
            min_compaction_lag_ms=int(config["min.compaction.lag.ms"]),
            max_compaction_lag_ms=int(config["max.compaction.lag.ms"]),
            delete_retention_ms=int(config["delete.retention.ms"]),
        )


@dataclass
class LastCompaction:
    """What the latest compaction of a partition did (``kvlog topics describe``)."""

    finished_ms: int
    duration_ms: int
    reason: str
    passes: int = 0
    records_removed: int = 0
    tombstones_removed: int = 0
    keyless_removed: int = 0
    batches_rewritten: int = 0
    batches_removed: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


@dataclass
class CleanerState:
    """The cleaner's row for one partition, in the log dir's ``cleaner`` table.

    ``topic_id`` and ``epoch_mark`` (the leader epoch entry covering ``first_dirty - 1``)
    tell a row of this partition's current history from a stale one (a re-created topic,
    a truncation below ``first_dirty``): a stale row is started over, which only costs
    work and keeps tombstones longer."""

    topic_id: str
    first_dirty: int
    epoch_mark: list[int] | None = None
    passes: list[list[int]] = field(default_factory=list)  # [end offset, finished ms]
    tombstone_due_ms: int | None = None
    last: LastCompaction | None = None

    def encode(self) -> bytes:
        return cbor2.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> CleanerState:
        fields = cbor2.loads(raw)
        last = fields.pop("last", None)
        return cls(**fields, last=LastCompaction(**last) if last else None)


def load_state(r: ReadTxn, tp: TopicPartition) -> CleanerState | None:
    raw = r.get(CLEANER_TABLE, partition_key(tp))
    return None if raw is None else CleanerState.decode(raw)


def save_state(w: WriteTxn, tp: TopicPartition, state: CleanerState) -> None:
    w.put(CLEANER_TABLE, partition_key(tp), state.encode())


def epoch_mark(epoch_entries: list[tuple[int, int]], offset: int) -> list[int] | None:
    """The ``[epoch, start]`` leader epoch entry that covers ``offset - 1``."""
    found = None
    for epoch, start in epoch_entries:
        if start < offset:
            found = [epoch, start]
    return found


def current_state(
    stored: CleanerState | None,
    *,
    topic_id: str,
    offsets: PartitionOffsets,
    epoch_entries: list[tuple[int, int]],
) -> CleanerState:
    """The stored row if it still describes this partition's history, else a fresh one
    (nothing compacted yet); its first dirty offset is kept within the log."""
    start, _hw, leo, _size = offsets
    if (
        stored is None
        or stored.topic_id != topic_id
        or stored.first_dirty > leo
        or stored.epoch_mark != epoch_mark(epoch_entries, stored.first_dirty)
    ):
        last = stored.last if stored is not None and stored.topic_id == topic_id else None
        return CleanerState(topic_id, start, epoch_mark(epoch_entries, start), last=last)
    if stored.first_dirty < start:
        stored.first_dirty = start
        stored.epoch_mark = epoch_mark(epoch_entries, start)
    return stored


# -- tombstones ---------------------------------------------------------------------------


def tombstone_horizon(passes: list[list[int]], now_ms: int, delete_retention_ms: int) -> int:
    """Tombstones below this offset may go: the passes that first covered them finished
    at least ``delete.retention.ms`` ago."""
    cutoff = now_ms - delete_retention_ms
    return max((end for end, finished in passes if finished <= cutoff), default=0)


def first_covered_ms(passes: list[list[int]], offset: int) -> int | None:
    """When the pass that first covered ``offset`` finished (None: none did yet)."""
    return next((finished for end, finished in passes if end > offset), None)


def record_pass(
    passes: list[list[int]], end: int, finished_ms: int, delete_retention_ms: int
) -> list[list[int]]:
    """The pass history with a pass that covered up to ``end``; what no horizon needs any
    more is dropped (every pass older than the newest one past the retention)."""
    out = [list(p) for p in passes]
    if not out or end > out[-1][0]:
        out.append([end, finished_ms])
    cutoff = finished_ms - delete_retention_ms
    old = [i for i, (_end, finished) in enumerate(out) if finished <= cutoff]
    if old:
        out = out[old[-1] :]
    while len(out) > MAX_PASS_HISTORY:
        del out[1]  # a later pass's time for those offsets: their tombstones stay longer
    return out


# -- planning -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSpan:
    """One stored batch as planning sees it (from its header)."""

    base_offset: int
    next_offset: int
    size_bytes: int
    record_count: int
    first_timestamp: int
    max_timestamp: int


@dataclass(frozen=True)
class CleanPlan:
    first_dirty: int
    first_uncleanable: int
    clean_bytes: int
    dirty_bytes: int
    dirty_records: int
    dirty_ratio: float
    reason: str | None  # why a compaction is due now; None: it is not


def plan(
    spans: Iterable[BatchSpan],
    *,
    offsets: PartitionOffsets,
    state: CleanerState,
    config: CompactionConfig,
    now_ms: int,
    forced: bool = False,
    last_stable_offset: int | None = None,
) -> CleanPlan:
    """Where the dirty range is and whether a compaction is due. ``spans``: the batches
    from the one holding ``state.first_dirty`` to the log end, oldest first."""
    first_dirty = state.first_dirty
    spans = [s for s in spans if s.next_offset > first_dirty]
    from_dirty_bytes = sum(s.size_bytes for s in spans)
    uncleanable = offsets.high_watermark
    if last_stable_offset is not None:
        uncleanable = min(uncleanable, last_stable_offset)
    if spans:
        uncleanable = min(uncleanable, spans[-1].base_offset)
    lag_cutoff = now_ms - config.min_compaction_lag_ms
    dirty = []
    for span in spans:
        if span.next_offset > uncleanable or (
            config.min_compaction_lag_ms and span.max_timestamp > lag_cutoff
        ):
            uncleanable = min(uncleanable, span.base_offset)
            break
        dirty.append(span)
    uncleanable = max(uncleanable, first_dirty)
    dirty_bytes = sum(s.size_bytes for s in dirty)
    clean_bytes = max(0, offsets.size_bytes - from_dirty_bytes)
    total = clean_bytes + dirty_bytes
    ratio = dirty_bytes / total if total else 0.0
    reason = None
    if not config.compact:
        reason = None
    elif forced:
        reason = "forced"
    elif dirty and ratio > config.min_cleanable_dirty_ratio:
        reason = "dirty ratio"
    elif dirty and dirty[0].first_timestamp < now_ms - config.max_compaction_lag_ms:
        reason = "max.compaction.lag.ms"
    elif state.tombstone_due_ms is not None and now_ms >= state.tombstone_due_ms:
        reason = "delete.retention.ms"
    return CleanPlan(
        first_dirty,
        uncleanable,
        clean_bytes,
        dirty_bytes,
        sum(s.record_count for s in dirty),
        ratio,
        reason,
    )


# -- a pass: the map, then the decisions ----------------------------------------------------


def _transactional_role(
    base: int, batch: bytes | memoryview, aborted: Sequence[AbortedRange]
) -> str | None:
    """ "marker" for a control batch, "aborted" for a batch of an aborted transaction,
    else None."""
    header = batch_format.read_header(batch)
    if header.is_control:
        return "marker"
    if header.is_transactional and any(
        a.producer_id == header.producer_id and a.first_offset <= base <= a.last_offset
        for a in aborted
    ):
        return "aborted"
    return None


@dataclass
class TxnWalk:
    """What a pass's walk from the log start has met of transactions so far, per
    producer since its last marker: a data batch that stays (the transaction's marker
    must stay), or only batches this pass removes (the marker may go in a later pass,
    once they are gone for sure). Carried from one chunk's :func:`decide` to the next."""

    kept: set[int] = field(default_factory=set)
    removed: set[int] = field(default_factory=set)

    def data(self, producer_id: int, action: Action) -> None:
        (self.removed if action is Action.REMOVE else self.kept).add(producer_id)

    def at_marker(self, producer_id: int) -> str:
        """ "kept": data of the marker's transaction stays; "removed": this pass removes
        the last of it; "none": none is left. The producer's next transaction starts
        afresh."""
        if producer_id in self.kept:
            found = "kept"
        elif producer_id in self.removed:
            found = "removed"
        else:
            found = "none"
        self.kept.discard(producer_id)
        self.removed.discard(producer_id)
        return found


def fill_map(
    omap: Any,
    batches: Iterable[tuple[int, bytes | memoryview]],
    *,
    first_dirty: int,
    end: int,
    aborted: Sequence[AbortedRange] = (),
) -> tuple[int, bool]:
    """Note the keys of ``batches`` (consecutive dirty batches) in ``omap``, up to
    ``end``. Returns how far the map covers now and whether it is full (the pass ends
    there). Batches past ``end`` are not noted, nor markers and aborted batches."""
    covered = first_dirty
    for base, batch in batches:
        nxt = base + _last_delta(batch) + 1
        if nxt > end:
            return covered, True
        if _transactional_role(base, batch, aborted) is not None:
            covered = max(covered, nxt)
            continue
        full_at = map_batch(omap, base, batch, first_dirty)
        if full_at >= 0:
            return max(covered, full_at), True
        covered = max(covered, nxt)
    return covered, False


def _last_delta(batch: bytes | memoryview) -> int:
    return int.from_bytes(bytes(memoryview(batch)[11:15]), "big", signed=True)


def decide(
    batches: Iterable[tuple[int, bytes | memoryview]],
    omap: Any,
    *,
    map_end: int,
    state: CleanerState,
    config: CompactionConfig,
    now_ms: int,
    aborted: Sequence[AbortedRange] = (),
    walk: TxnWalk | None = None,
) -> list[tuple[int, bytes | memoryview, Outcome]]:
    """What becomes of each batch below ``map_end`` (see the module docstring).
    ``walk``: the transactions met by the walk so far (it must start at the log start for
    markers to go), updated."""
    horizon = tombstone_horizon(state.passes, now_ms, config.delete_retention_ms)
    walk = TxnWalk() if walk is None else walk
    decided = []
    for base, batch in batches:
        if base >= map_end:
            continue
        header = batch_format.read_header(batch)
        role = _transactional_role(base, batch, aborted)
        count = header.record_count
        if role == "marker":
            left = walk.at_marker(header.producer_id)
            if left == "kept":
                outcome = Outcome(Action.KEEP, None, count, 0, 0, 0, -1)
            elif left == "none" and base < horizon:
                outcome = Outcome(Action.REMOVE, None, 0, count, 0, 0, -1)
            else:  # kept until a later pass, like a tombstone (it schedules that pass)
                outcome = Outcome(Action.KEEP, None, count, 0, 0, 0, base)
        else:
            if role is None:
                outcome = filter_batch(omap, base, batch, map_end, horizon)
            else:
                outcome = Outcome(Action.REMOVE, None, 0, count, 0, 0, -1)
            if header.is_transactional:
                walk.data(header.producer_id, outcome.action)
        decided.append((base, batch, outcome))
    return decided


def tombstone_due(
    passes: list[list[int]], first_tombstone: int, delete_retention_ms: int
) -> int | None:
    """When the oldest kept tombstone may go (None: there is none, or no pass covered it)."""
    if first_tombstone < 0:
        return None
    covered = first_covered_ms(passes, first_tombstone)
    return None if covered is None else covered + delete_retention_ms
