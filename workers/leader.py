"""The partition leader's logic, without sockets: group commit, reads, offsets.

One :class:`LeaderCore` per node process, over that node's log store. The node shell
feeds it whole requests and asks it to commit once per loop turn; the core decides what
is written and what each request is answered. Per-batch work only: it checks batch
headers and CRCs and never decodes records (except one batch for a timestamp lookup).

Group commit: :meth:`stage_produce` validates a request's batches and queues them;
:meth:`commit` writes every queued batch of every queued request in ONE write
transaction (one fsync) together with the producer-state rows, then returns each
request's per-partition results.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kvlog import batch as batch_format
from kvlog.batch import BatchHeader
from kvlog.errors import (
    ErrorCode,
    KvlogError,
    MessageSizeTooLargeError,
    NotLeaderOrFollowerError,
    OffsetOutOfRangeError,
    UnknownServerError,
    UnknownTopicOrPartitionError,
)
from kvlog.log import LogStore, WriteTxn
from kvlog.producer_state import ProducerStateTable, delete_partition_state
from kvlog.topic_config import effective_topic_config
from kvlog.types import PartitionOffsets, TopicPartition

log = logging.getLogger(__name__)

LATEST_TIMESTAMP = -1
EARLIEST_TIMESTAMP = -2
TOPIC_IDS_TABLE = "topic_ids"


@dataclass
class HostedPartition:
    """What this node knows about a partition it holds (from the coordinator)."""

    tp: TopicPartition
    topic_id: str
    leader_id: int
    leader_epoch: int
    replicas: list[int]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def max_message_bytes(self) -> int:
        return int(effective_topic_config(self.config)["max.message.bytes"])


@dataclass
class ProduceItem:
    tp: TopicPartition
    batch: bytes | memoryview | None
    header: BatchHeader | None
    error: KvlogError | None = None
    base_offset: int = -1
    log_start_offset: int = -1
    duplicate: bool = False

    def result(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": int(self.error.code), "message": self.error.message}
        return {
            "error": 0,
            "base_offset": self.base_offset,
            "log_start_offset": self.log_start_offset,
        }


@dataclass
class StagedProduce:
    """One produce request waiting for the next group commit."""

    token: Any
    acks: int
    items: list[ProduceItem]

    def results(self) -> list[dict[str, Any]]:
        return [item.result() for item in self.items]


@dataclass
class FetchPartition:
    tp: TopicPartition
    offset: int
    max_bytes: int


@dataclass
class FetchedPartition:
    tp: TopicPartition
    error: KvlogError | None = None
    high_watermark: int = -1
    log_start_offset: int = -1
    log_end_offset: int = -1
    batches: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(len(b) for _, b in self.batches)

    def header(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "topic": self.tp.topic,
            "partition": self.tp.partition,
            "error": 0 if self.error is None else int(self.error.code),
            "high_watermark": self.high_watermark,
            "log_start_offset": self.log_start_offset,
            "bases": [base for base, _ in self.batches],
        }
        if self.error is not None:
            out["message"] = self.error.message
        return out


class LeaderCore:
    """Owned by one node's loop; not thread-safe."""

    def __init__(self, node_id: int, store: LogStore) -> None:
        self.node_id = node_id
        self.store = store
        self.hosted: dict[TopicPartition, HostedPartition] = {}
        self.producers = ProducerStateTable()
        self._staged: list[StagedProduce] = []
        self.touched: set[TopicPartition] = set()

    # -- assignment ------------------------------------------------------------------------

    def apply_assignment(
        self, partitions: Iterable[HostedPartition], deleted_topic_ids: Iterable[str] = ()
    ) -> None:
        """Host exactly what the coordinator assigned; drop deleted topics' partitions.

        A local partition whose stored topic id differs from the assignment's belongs to
        an older topic of the same name: its data is dropped and it starts empty.
        """
        assigned = {p.tp: p for p in partitions}
        deleted = set(deleted_topic_ids)
        local = set(self.store.partitions())

        def reconcile(w: WriteTxn) -> list[TopicPartition]:
            changed = []
            for tp in local:
                raw = w.get(TOPIC_IDS_TABLE, _tp_key(tp))
                stored_id = raw.decode() if raw else ""
                want = assigned.get(tp)
                stale = want is not None and stored_id and stored_id != want.topic_id
                if stored_id in deleted or stale:
                    w.drop_partition(tp)
                    w.delete(TOPIC_IDS_TABLE, _tp_key(tp))
                    delete_partition_state(w, tp)
                    changed.append(tp)
            for tp, hosted in assigned.items():
                if w.create_partition(tp) or tp in changed:
                    changed.append(tp)
                w.put(TOPIC_IDS_TABLE, _tp_key(tp), hosted.topic_id.encode())
            return changed

        changed = self.store.write(reconcile)
        for tp in changed:
            self.producers.forget_partition(tp)
        new = [tp for tp in assigned if tp not in self.hosted or tp in changed]
        self.hosted = assigned
        with self.store.reader() as r:
            self.producers.load(r, new)
        strays = local - set(assigned) - set(changed)
        if strays:
            log.warning(
                "node %d holds partitions the coordinator does not assign: %s (kept, not served)",
                self.node_id,
                ", ".join(sorted(map(str, strays))),
            )

    def _leader_for(self, tp: TopicPartition) -> HostedPartition:
        hosted = self.hosted.get(tp)
        if hosted is None:
            raise UnknownTopicOrPartitionError(f"node {self.node_id} does not host {tp}")
        if hosted.leader_id != self.node_id:
            raise NotLeaderOrFollowerError(
                f"node {self.node_id} is not the leader of {tp} (node {hosted.leader_id} is); "
                "refresh metadata"
            )
        return hosted

    # -- produce ---------------------------------------------------------------------------

    def stage_produce(
        self, token: Any, acks: int, entries: list[tuple[TopicPartition, bytes | memoryview]]
    ) -> StagedProduce:
        """Validate a request's batches (header, CRC, size, leadership) and queue them."""
        items = []
        for tp, batch in entries:
            try:
                hosted = self._leader_for(tp)
                if len(batch) > hosted.max_message_bytes:
                    raise MessageSizeTooLargeError(
                        f"batch of {len(batch)} bytes for {tp} exceeds max.message.bytes="
                        f"{hosted.max_message_bytes}; lower batch.size or raise the topic's "
                        "max.message.bytes"
                    )
                header = batch_format.validate(batch)
            except KvlogError as exc:
                items.append(ProduceItem(tp, None, None, exc))
                continue
            items.append(ProduceItem(tp, batch, header))
        staged = StagedProduce(token, acks, items)
        self._staged.append(staged)
        return staged

    @property
    def has_staged(self) -> bool:
        return bool(self._staged)

    def commit(self) -> list[StagedProduce]:
        """Write every staged batch in one durable transaction; returns the requests."""
        staged, self._staged = self._staged, []
        if not staged:
            return []
        epochs = {tp: h.leader_epoch for tp, h in self.hosted.items()}

        def write(w: WriteTxn) -> Any:
            stage = self.producers.stage()
            outcome: list[tuple[ProduceItem, int, bool, KvlogError | None]] = []
            for request in staged:
                for item in request.items:
                    if item.error is not None or item.header is None or item.batch is None:
                        continue
                    try:
                        duplicate_of = stage.check(item.tp, item.header)
                    except KvlogError as exc:
                        outcome.append((item, -1, False, exc))
                        continue
                    if duplicate_of is not None:
                        outcome.append((item, duplicate_of, True, None))
                        continue
                    base = w.append(item.tp, [item.batch], leader_epoch=epochs[item.tp])[0]
                    stage.record(w, item.tp, item.header, base)
                    outcome.append((item, base, False, None))
            starts = {o[0].tp: w.offsets(o[0].tp).log_start_offset for o in outcome}
            return stage, outcome, starts

        try:
            stage, outcome, starts = self.store.write(write)
        except Exception as exc:  # nothing was written: every staged item fails alike
            if not isinstance(exc, KvlogError):
                log.exception("node %d: group commit failed", self.node_id)
                exc = UnknownServerError(f"group commit failed: {type(exc).__name__}: {exc}")
            else:
                log.error("node %d: group commit failed: %s", self.node_id, exc.message)
            for request in staged:
                for item in request.items:
                    if item.error is None:
                        item.error = exc
            return staged
        stage.apply()
        for item, base, duplicate, error in outcome:
            item.error = error
            item.base_offset = base
            item.duplicate = duplicate
            item.log_start_offset = starts[item.tp]
            if error is None and not duplicate:
                self.touched.add(item.tp)
        return staged

    # -- fetch -----------------------------------------------------------------------------

    def fetch(
        self, partitions: list[FetchPartition], max_bytes: int, *, replica: bool = False
    ) -> list[FetchedPartition]:
        """Read whole batches for each partition below the high watermark (LEO for
        replicas); the first batch is returned even when larger than the limits."""
        out = []
        total = 0
        with self.store.reader() as r:
            for part in partitions:
                fetched = FetchedPartition(part.tp)
                out.append(fetched)
                try:
                    self._leader_for(part.tp)
                    state = r.offsets(part.tp)
                    fetched.high_watermark = state.high_watermark
                    fetched.log_start_offset = state.log_start_offset
                    fetched.log_end_offset = state.log_end_offset
                    budget = min(part.max_bytes, max_bytes - total)
                    if budget <= 0 and total:
                        continue
                    fetched.batches = r.read(
                        part.tp,
                        part.offset,
                        max(budget, 1),
                        max_offset=None if replica else state.high_watermark,
                    )
                    total += fetched.size
                except KvlogError as exc:
                    fetched.error = exc
        return out

    def offsets(self, tp: TopicPartition) -> PartitionOffsets:
        self._leader_for(tp)
        with self.store.reader() as r:
            return r.offsets(tp)

    def list_offset(self, tp: TopicPartition, timestamp: int) -> tuple[int, int]:
        """Kafka's ListOffsets: (offset, timestamp). -2 earliest, -1 latest (the high
        watermark), else the first record with timestamp >= the given one (-1 if none)."""
        self._leader_for(tp)
        with self.store.reader() as r:
            state = r.offsets(tp)
            if timestamp == EARLIEST_TIMESTAMP:
                return state.log_start_offset, -1
            if timestamp == LATEST_TIMESTAMP:
                return state.high_watermark, -1
            if timestamp < 0:
                raise OffsetOutOfRangeError(f"timestamp {timestamp} is not -1, -2 or >= 0")
            for base, _size, header in r.headers(tp):
                if base >= state.high_watermark:
                    break
                if header.max_timestamp < timestamp:
                    continue
                found = r.read(tp, max(base, state.log_start_offset), 1)
                for record in batch_format.decode(found[0][1], found[0][0]):
                    if record.offset >= state.log_start_offset and record.timestamp >= timestamp:
                        return record.offset, record.timestamp
        return -1, -1


def _tp_key(tp: TopicPartition) -> bytes:
    return f"{tp.topic}/{tp.partition}".encode()


__all__ = [
    "EARLIEST_TIMESTAMP",
    "LATEST_TIMESTAMP",
    "ErrorCode",
    "FetchPartition",
    "FetchedPartition",
    "HostedPartition",
    "LeaderCore",
    "StagedProduce",
]
