"""The Consumer: kafka-python's API over kvlog's wire.

Manual assignment (``assign``) or, without a group, ``subscribe`` to whole topics; with a
``group_id``, ``subscribe`` joins a consumer group (see ``ipc/group_member.py``). ``poll()``
returns ``{TopicPartition: [ConsumerRecord, ...]}`` from prefetched batches (the
:class:`~ipc.fetcher.Fetcher` long-polls leaders on the I/O thread) and advances each
partition's position past what it returned. Where a partition starts when there is no
position, and what happens when a position leaves the log: ipc/positions.py.

``poll(timeout_ms)`` returns within its timeout also while the broker is down (lookups
fail fast on a refused connection); a record whose key or value does not deserialize
raises RecordDeserializationError with the record's raw bytes, and the position stays on
it until the application seeks past it.

Not thread-safe, like Kafka's consumer: use it from one thread (``wakeup``-style calls
aside, nothing else is needed).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kvlog.errors import (
    IllegalStateError,
    KvlogError,
    NoBrokersAvailable,
    RecordDeserializationError,
)
from kvlog.types import TopicPartition

from . import kafka_client
from .client_args import (
    RecordIteration,
    record_deserializers,
    split_consumer_args,
    subscription_args,
)
from .client_metrics import ConsumerMetrics
from .config import CONSUMER_SETTINGS, resolve
from .consumer_types import ConsumerRebalanceListener, OffsetAndMetadata, OffsetAndTimestamp
from .fetch_visibility import step_over_hidden
from .fetcher import Fetcher, PartitionFetchState
from .group_member import GroupMember
from .lookups import Lookups
from .metadata import ClusterMetadata
from .positions import EARLIEST, LATEST, Positions
from .records import ConsumerRecord, DecodedBatch, RecordColumns, UndecodableRecord, decode_batch
from .rpc import IOThread
from .security import client_header_fields, client_socket_options
from .transactions import ConsumerGroupMetadata
from .wire import split_bootstrap

log = logging.getLogger(__name__)


class Consumer(RecordIteration):
    """Reads records from kvlog topics. See the module docstring."""

    def __new__(cls, *topics: Any, **kwargs: Any) -> Any:
        # Kafka mode (a kafka:// bootstrap server or protocol="kafka"): ipc/kafka_client/.
        if cls is Consumer and kafka_client.consumer_wanted(topics, kwargs):
            return kafka_client.make_consumer(topics, kwargs)
        return super().__new__(cls)

    def __init__(self, *topics: Any, **kwargs: Any) -> None:
        config, topics = split_consumer_args(topics)
        cfg = resolve(CONSUMER_SETTINGS, config, kwargs)
        self.config = cfg
        self._bootstrap = split_bootstrap(cfg["bootstrap_servers"])
        # None when the application takes the bytes as they are (no call per record).
        self._keys_in, self._values_in = record_deserializers(cfg)
        self._request_timeout_ms = cfg["request_timeout_ms"]
        self._check_crcs = cfg["check_crcs"]
        self.metadata = ClusterMetadata()
        self._metrics = ConsumerMetrics()
        self._fetcher = Fetcher(
            self.metadata,
            bootstrap=self._bootstrap,
            fetch_max_wait_ms=cfg["fetch_max_wait_ms"],
            fetch_min_bytes=cfg["fetch_min_bytes"],
            fetch_max_bytes=cfg["fetch_max_bytes"],
            max_partition_fetch_bytes=cfg["max_partition_fetch_bytes"],
            backoff_s=cfg["retry_backoff_ms"] / 1000,
            metadata_max_age_s=cfg["metadata_max_age_ms"] / 1000,
            on_out_of_range=lambda tp, exc: self._positions.on_out_of_range(tp, exc),
            metrics=self._metrics,
            read_committed=cfg["isolation_level"] == "read_committed",
        )
        self._io = IOThread(
            f"consumer-{cfg['client_id']}",
            request_timeout_ms=self._request_timeout_ms,
            driver=self._fetcher,
            socket_options=client_socket_options(cfg),
            header_fields=client_header_fields(cfg),
        )
        self._lookups = Lookups(
            self._io,
            self.metadata,
            self._bootstrap,
            self._request_timeout_ms,
            self._interest,
            read_committed=cfg["isolation_level"] == "read_committed",
        )
        self._lock = self._fetcher.lock
        self._decoded: dict[TopicPartition, DecodedBatch] = {}
        self._subscription: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._manual = False
        self._closed = False
        self._iterator: Iterator[ConsumerRecord] | None = None
        self._rr = 0
        # A poll() took records from a partition whose buffer was full: its fetches were
        # held back (ipc/fetcher.py), so the I/O thread is woken to send one.
        self._room_freed = False
        self._group: GroupMember | None = None
        self._thread_guard = threading.Lock()
        self._positions = Positions(
            self._fetcher,
            self._lookups,
            self._io,
            reset=cfg["auto_offset_reset"],
            group_id=cfg["group_id"],
            group=lambda: self._group,
            buffered_elsewhere=lambda tp: bool(self._decoded.get(tp)),
        )
        if topics:
            self.subscribe([str(t) for t in topics])

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<kvlog.Consumer group={self.config['group_id']!r} assigned={len(self.assignment())}>"
        )

    # -- assignment ------------------------------------------------------------------------

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read exactly these partitions (no group management)."""
        if self._subscription or self._pattern is not None:
            raise IllegalStateError(
                "assign() after subscribe(): call unsubscribe() first; a consumer either "
                "subscribes or assigns"
            )
        tps = [TopicPartition(*tp) for tp in partitions]
        self._manual = bool(tps)
        self._set_assignment(set(tps))

    def _set_assignment(self, tps: set[TopicPartition]) -> None:
        with self._lock:
            for tp in list(self._fetcher.states):
                if tp not in tps:
                    del self._fetcher.states[tp]
                    self._decoded.pop(tp, None)
            for tp in tps:
                if tp not in self._fetcher.states:
                    self._fetcher.states[tp] = PartitionFetchState()
            self._fetcher.topics_wanted = {tp.topic for tp in tps} | self._subscription
        self._io.wake()

    def assignment(self) -> set[TopicPartition]:
        with self._lock:
            return set(self._fetcher.states)

    def subscribe(
        self,
        topics: Iterable[str] = (),
        pattern: str | None = None,
        listener: ConsumerRebalanceListener | None = None,
    ) -> None:
        """Subscribe to topics (or a regex ``pattern``). With a ``group_id`` the group
        shares their partitions; without one this consumer reads all of them."""
        topic_list, self._pattern = subscription_args(topics, pattern, self._manual)
        self._subscription = set(topic_list)
        if self.config["group_id"] is not None:
            if self._group is None:
                self._group = GroupMember(self.config, _GroupLink(self))
            self._group.subscribe(self._subscription, self._pattern, listener)
            return
        self._assign_subscribed()

    def subscription(self) -> set[str]:
        return set(self._subscription)

    def unsubscribe(self) -> None:
        if self._group is not None:
            self._group.unsubscribe()
        self._subscription = set()
        self._pattern = None
        self._manual = False
        self._set_assignment(set())

    def _matching_topics(self) -> set[str]:
        if self._pattern is None:
            return set(self._subscription)
        self._lookups.ensure_metadata(None)
        return {
            t
            for t in self.metadata.topics
            if self._pattern.fullmatch(t)
            and not (self.config["exclude_internal_topics"] and t.startswith("__"))
        }

    def _assign_subscribed(self) -> None:
        topics = self._matching_topics()
        self._lookups.ensure_metadata(sorted(topics))
        tps = {
            TopicPartition(t, p)
            for t in topics
            for p in sorted(self.metadata.partitions_for(t) or ())
        }
        self._set_assignment(tps)

    # -- metadata and offsets --------------------------------------------------------------

    def _interest(self) -> list[str]:
        """The topics whose metadata a retried offset lookup refreshes."""
        return sorted({tp.topic for tp in self.assignment()} | self._subscription)

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        found = self._lookups.list_offsets({TopicPartition(*tp): EARLIEST for tp in partitions})
        return {tp: offset for tp, (offset, _) in found.items()}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The high watermark of each partition (the offset the next record will get)."""
        found = self._lookups.list_offsets({TopicPartition(*tp): LATEST for tp in partitions})
        return {tp: offset for tp, (offset, _) in found.items()}

    def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """The earliest offset whose timestamp is >= the given one (None if there is none)."""
        for tp, ts in timestamps.items():
            if ts < 0:
                raise ValueError(f"timestamp for {tp} must be >= 0, got {ts}")
        found = self._lookups.list_offsets(
            {TopicPartition(*tp): ts for tp, ts in timestamps.items()}
        )
        return {
            tp: (OffsetAndTimestamp(offset, ts) if offset >= 0 else None)
            for tp, (offset, ts) in found.items()
        }

    def partitions_for_topic(self, topic: str) -> set[int]:
        self._lookups.ensure_metadata([topic])
        return self.metadata.partitions_for(topic) or set()

    def topics(self) -> set[str]:
        self._lookups.ensure_metadata(None)
        return set(self.metadata.topics)

    # -- positions -------------------------------------------------------------------------

    def _state(self, tp: TopicPartition) -> PartitionFetchState:
        state = self._fetcher.states.get(tp)
        if state is None:
            raise IllegalStateError(f"{tp} is not assigned to this consumer")
        return state

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Read ``partition`` from ``offset`` on the next poll()."""
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        tp = TopicPartition(*partition)
        with self._lock:
            self._fetcher.reset_state(self._state(tp), offset)
            self._decoded.pop(tp, None)
        self._io.wake()

    def _seek_to(self, which: int, partitions: tuple[TopicPartition, ...]) -> None:
        tps = [TopicPartition(*tp) for tp in partitions] or sorted(self.assignment())
        for tp in tps:
            self._state(tp)
        for tp, (offset, _) in self._lookups.list_offsets(dict.fromkeys(tps, which)).items():
            self.seek(tp, offset)

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self._seek_to(EARLIEST, partitions)

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        self._seek_to(LATEST, partitions)

    def position(self, partition: TopicPartition) -> int:
        """The offset of the next record poll() returns for ``partition``."""
        tp = TopicPartition(*partition)
        with self._lock:
            position = self._state(tp).position
        if position is None:
            self._positions.resolve([tp])
            with self._lock:
                position = self._state(tp).position
        assert position is not None
        return position

    def pause(self, *partitions: TopicPartition) -> None:
        with self._lock:
            for tp in partitions:
                self._state(TopicPartition(*tp)).paused = True

    def resume(self, *partitions: TopicPartition) -> None:
        with self._lock:
            for tp in partitions:
                self._state(TopicPartition(*tp)).paused = False
        self._io.wake()

    def paused(self) -> set[TopicPartition]:
        with self._lock:
            return {tp for tp, s in self._fetcher.states.items() if s.paused}

    def highwater(self, partition: TopicPartition) -> int | None:
        """The partition's high watermark as the last fetch reported it (the offset the
        next record will get; None before the first fetch), as kafka-python's."""
        with self._lock:
            hw = self._state(TopicPartition(*partition)).high_watermark
        return hw if hw >= 0 else None

    def metrics(self, raw: bool = False) -> dict[str, dict[str, Any]]:
        """Kafka's consumer metrics (``records-lag-max``, ``records-consumed-rate``,
        ``fetch-latency-avg``, ...) as kafka-python returns them: ``{group: {name:
        value}}``. ``raw`` is accepted for kafka-python's signature and changes nothing."""
        with self._lock:
            lags = {
                tp: max(0, s.high_watermark - s.position)
                for tp, s in self._fetcher.states.items()
                if s.position is not None and s.high_watermark >= 0
            }
            assigned = len(self._fetcher.states)
        return self._metrics.snapshot(lags, assigned)

    # -- polling ---------------------------------------------------------------------------

    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Records from the assigned partitions, at most ``max.poll.records``; waits up to
        ``timeout_ms`` for some to arrive."""
        return self._poll(timeout_ms, max_records, update_offsets, columns=False)

    def poll_batch(
        self, timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True
    ) -> dict[TopicPartition, RecordColumns]:
        """Like ``poll()``, but each partition's records come as one :class:`RecordColumns`
        (lists of offsets, timestamps, keys, values, headers) instead of a ConsumerRecord
        each: the consume-side counterpart of ``Producer.send_batch``, for applications
        that work on whole columns."""
        return self._poll(timeout_ms, max_records, update_offsets, columns=True)

    def _poll(
        self, timeout_ms: int, max_records: int | None, update_offsets: bool, *, columns: bool
    ) -> Any:
        if self._closed:
            raise IllegalStateError("poll() on a closed consumer")
        limit = max_records or self.config["max_poll_records"]
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            if self._group is not None:
                self._group.poll_tick(deadline)
            try:
                self._positions.settle(deadline)
            except KvlogError as exc:
                # The broker is down or the partition moves: the next turn (or poll) tries
                # again; the wait below keeps this within timeout_ms.
                if not exc.retriable or isinstance(exc, NoBrokersAvailable):
                    raise
                log.debug("positions not known yet: %s", exc.message)
            with self._lock:
                taken = self._collect(limit, update_offsets, columns)
                if taken:
                    if self._room_freed:
                        # Otherwise the next fetch is in flight already (sent with the
                        # last reply): a wake-up would only cost the I/O thread a turn and
                        # this thread the GIL.
                        self._room_freed = False
                        self._io.wake()
                    self._metrics.consumed(
                        sum(len(records) for records in taken.values()), time.monotonic()
                    )
                    return taken
                left = deadline - time.monotonic()
                if left <= 0:
                    return {}
                self._lock.wait(min(left, 0.1))

    def _collect(self, limit: int, update: bool, columns: bool) -> dict[TopicPartition, Any]:
        """Take up to ``limit`` records from the buffers (lock held)."""
        out: dict[TopicPartition, Any] = {}
        states = list(self._fetcher.states.items())
        if not states:
            return out
        self._rr = (self._rr + 1) % len(states)
        remaining = limit
        for tp, state in states[self._rr :] + states[: self._rr]:
            if state.error is not None:
                error, state.error = state.error, None
                if out:
                    state.error = error  # report it on the next poll, after these records
                    return out
                raise error
            if state.paused or state.position is None:
                continue
            try:
                taken, next_offset = self._take(tp, state, remaining, columns)
            except KvlogError as error:  # a record or a whole batch that does not decode
                if out:
                    state.error = error  # raised on the next poll, after these records
                    return out
                raise
            if taken:
                out[tp] = taken
                if update:
                    state.position = next_offset
                remaining -= len(taken)
            if update:
                step_over_hidden(state, not state.buffered and not self._decoded.get(tp))
            if remaining <= 0:
                break
        return out

    def _take(
        self, tp: TopicPartition, state: PartitionFetchState, limit: int, columns: bool
    ) -> tuple[Any, int]:
        """Up to ``limit`` records of ``tp`` from its decoded and buffered batches, as a
        list of ConsumerRecords or as one RecordColumns; and the offset after them."""
        taken: Any = None
        count = 0
        next_offset = 0
        position = state.position or 0
        full = state.buffered_bytes >= self._fetcher.buffer_limit
        while count < limit:
            decoded = self._decoded.get(tp)
            if decoded is None or not decoded:
                if not state.buffered:
                    break
                base, raw = state.buffered[0]
                try:
                    decoded = decode_batch(raw, base, verify=self._check_crcs)
                except KvlogError:
                    # A batch that does not decode stays where it is: poll() raises until
                    # the application seeks past it (as Kafka does), after what came before.
                    if count:
                        break
                    raise
                state.buffered.popleft()
                state.buffered_bytes -= len(raw)
                self._decoded[tp] = decoded
            decoded.skip_to(position)
            if not decoded:
                continue
            try:
                run = self._take_run(tp, decoded, limit - count, columns, taken)
            except UndecodableRecord as bad:
                if count:
                    break  # return what came before; the next poll() raises
                raise self._deserialization_error(tp, bad) from bad.cause
            if run is None:
                break
            if columns:
                if taken is None:
                    taken = run
                else:
                    taken.extend(run)
                next_offset = run.next_offset
            else:
                records = run
                if taken is None:
                    taken = records
                else:
                    taken += records
                next_offset = records[-1].offset + 1
            count = len(taken)
            position = next_offset
        if full and state.buffered_bytes < self._fetcher.buffer_limit:
            self._room_freed = True
        return taken, next_offset

    def _take_run(
        self, tp: TopicPartition, decoded: DecodedBatch, limit: int, columns: bool, taken: Any
    ) -> Any:
        """The next run of up to ``limit`` records of one decoded batch (None: it cannot
        join ``taken``)."""
        if columns:
            if taken is not None and decoded.ts_type != taken.timestamp_type:
                return None  # one RecordColumns holds one timestamp type
            return decoded.take_columns(
                tp.topic, tp.partition, limit, self._keys_in, self._values_in
            )
        return decoded.take_records(tp.topic, tp.partition, limit, self._keys_in, self._values_in)

    def _deserialization_error(
        self, tp: TopicPartition, bad: UndecodableRecord
    ) -> RecordDeserializationError:
        group = self.config["group_id"]
        skip = f"consumer.seek({tp!r}, {bad.offset + 1})"
        if group is not None:
            skip += (
                f", or with the group's consumers stopped: kvlog groups reset-offsets --group "
                f"{group} --topic {tp.topic}:{tp.partition} --to-offset {bad.offset + 1} "
                "--execute"
            )
        return RecordDeserializationError(
            f"cannot deserialize the {bad.field} of the record at offset {bad.offset} of {tp} "
            f"({type(bad.cause).__name__}: {bad.cause}). The consumer's position stays on "
            f"this record; to skip it: {skip}",
            topic_partition=tp,
            offset=bad.offset,
            key=bad.key,
            value=bad.value,
            headers=bad.headers,
            timestamp=bad.timestamp,
        )

    # -- commits (groups) ------------------------------------------------------------------

    def _require_group(self, what: str) -> GroupMember:
        if self._group is None:
            if self.config["group_id"] is None:
                raise IllegalStateError(f"{what} needs a group_id")
            self._group = GroupMember(self.config, _GroupLink(self))
        return self._group

    def commit(
        self, offsets: Mapping[TopicPartition, OffsetAndMetadata | int] | None = None
    ) -> None:
        """Commit positions (default: what poll() returned so far) synchronously."""
        self._require_group("commit()").offsets.commit_sync(offsets)

    def commit_async(
        self,
        offsets: Mapping[TopicPartition, OffsetAndMetadata | int] | None = None,
        callback: Any = None,
    ) -> None:
        self._require_group("commit_async()").offsets.commit_async(offsets, callback)

    def committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset for ``partition`` (the next offset to read)."""
        group = self._require_group("committed()")
        found = group.offsets.fetch_committed([TopicPartition(*partition)])
        entry = found.get(TopicPartition(*partition))
        return None if entry is None else entry.offset

    def group_metadata(self) -> ConsumerGroupMetadata:
        """The group's identity for a transactional producer's
        ``send_offsets_to_transaction`` (Kafka's ``groupMetadata()``)."""
        group = self._require_group("group_metadata()")
        identity = group.commit_identity()
        return ConsumerGroupMetadata(
            group.group_id,
            identity["generation"],
            identity["member_id"] or "",
            identity["group_instance_id"],
        )

    # -- close -----------------------------------------------------------------------------

    def close(self, autocommit: bool = True) -> None:
        if self._closed:
            return
        try:
            if self._group is not None:
                self._group.close(autocommit=autocommit)
        finally:
            self._closed = True
            self._io.close()


class _GroupLink:
    """The consumer as its GroupMember sees it (group_member.ConsumerLink), so that the
    membership logic reaches nothing else of the consumer. Owned by one Consumer."""

    __slots__ = ("_consumer",)

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer

    @property
    def io(self) -> IOThread:
        return self._consumer._io

    @property
    def metadata(self) -> ClusterMetadata:
        return self._consumer.metadata

    def ensure_metadata(self, topics: list[str] | None, deadline: float | None = None) -> None:
        self._consumer._lookups.ensure_metadata(topics, deadline)

    def subscribed_topics(self) -> set[str]:
        return self._consumer._matching_topics()

    def follows_pattern(self) -> bool:
        return self._consumer._pattern is not None

    def set_assignment(self, tps: set[TopicPartition]) -> None:
        self._consumer._set_assignment(tps)

    def positions(self, only: set[TopicPartition] | None) -> dict[TopicPartition, int]:
        consumer = self._consumer
        with consumer._lock:
            return {
                tp: state.position
                for tp, state in consumer._fetcher.states.items()
                if state.position is not None and (only is None or tp in only)
            }


__all__ = ["Consumer", "ConsumerRebalanceListener", "OffsetAndMetadata", "OffsetAndTimestamp"]
