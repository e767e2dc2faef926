"""Kafka mode's Consumer: kvlog's Consumer API over confluent-kafka's.

The same calls and the same meaning as in kvlog mode: ``assign`` or ``subscribe``
(topics or a Python regex ``pattern``, matched here against the cluster's topic names, so
the pattern means what it means in kvlog mode), a :class:`ConsumerRebalanceListener`,
``poll``/``poll_batch`` returning ``{TopicPartition: [ConsumerRecord]}`` /
``{TopicPartition: RecordColumns}`` through the consumer's deserializers, positions
(the next offset ``poll()`` hands out, resolved from the committed offset or
``auto.offset.reset`` when asked for), ``seek*``, offset queries, commits of those
positions, iteration with ``consumer_timeout_ms``, and kvlog's exceptions.

The positions are kvlog's, kept here: librdkafka's offset store is fed only with what
``poll()`` handed out (``enable.auto.offset.store`` off), so auto commit and ``commit()``
commit exactly what kvlog mode would. A record whose key or value does not deserialize
raises RecordDeserializationError and the partition is sought back to it, as in kvlog
mode. :mod:`.consumer_group` has the group side (subscribe, listener, commits).

Not thread-safe, like Kafka's consumer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kvlog.errors import (
    IllegalStateError,
    KvlogError,
    NoOffsetForPartitionError,
    RecordDeserializationError,
    UnknownTopicOrPartitionError,
)
from kvlog.types import TopicPartition

from ..client_args import RecordIteration, record_deserializers, split_consumer_args
from ..client_metrics import ConsumerMetrics
from ..consumer_types import OffsetAndTimestamp
from ..records import ConsumerRecord, RecordColumns
from .consumer_group import GroupSide
from .errors import kafka_errors, to_kvlog
from .settings import kafka_settings

log = logging.getLogger(__name__)

_OFFSET_INVALID = -1001
_PARTITION_EOF = -191
_STATE = -172
# confluent_kafka's timestamp types: 1 create time, 2 log append time; kvlog's 0 and 1.
_TS_TYPE = {0: 0, 1: 0, 2: 1}


def _rd_tp(tp: TopicPartition, offset: int = _OFFSET_INVALID) -> Any:
    from confluent_kafka import TopicPartition as RdTopicPartition

    return RdTopicPartition(tp.topic, tp.partition, offset)


class KafkaModeConsumer(GroupSide, RecordIteration):
    """Reads records from a Kafka cluster with kvlog's Consumer API (module docstring)."""

    def __init__(self, *topics: Any, **kwargs: Any) -> None:
        from confluent_kafka import Consumer as _RdConsumer

        config, topics = split_consumer_args(topics)
        settings = kafka_settings("consumer", config, kwargs)
        cfg = self.config = settings.kvlog
        self._bootstrap = settings.bootstrap
        self._keys_in, self._values_in = record_deserializers(cfg)
        self._timeout_s = cfg["request_timeout_ms"] / 1000
        self._metrics = ConsumerMetrics()
        self._positions: dict[TopicPartition, int] = {}
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._deferred: KvlogError | None = None  # raised by the next poll()
        self._iterator: Iterator[ConsumerRecord] | None = None
        self._closed = False
        rd = {
            **settings.librdkafka,
            "allow.auto.create.topics": False,
            "error_cb": self._on_error,
        }
        # The settings without callbacks, for the short-lived helper reads.
        self._rd_config = {k: v for k, v in rd.items() if not callable(v)}
        with kafka_errors("cannot create the Kafka consumer: "):
            self._rd = _RdConsumer(rd)
        GroupSide.__init__(self)
        if topics:
            self.subscribe([str(t) for t in topics])

    def __enter__(self) -> KafkaModeConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<kvlog.Consumer kafka group={self.config['group_id']!r}>"

    def _on_error(self, error: Any) -> None:
        if error.fatal():
            self._deferred = to_kvlog(error, "the Kafka consumer failed: ")
        log.debug("Kafka consumer: %s", error.str())

    # -- assignment ------------------------------------------------------------------------

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read exactly these partitions (no group management)."""
        if self._subscription or self._pattern is not None:
            raise IllegalStateError(
                "assign() after subscribe(): call unsubscribe() first; a consumer either "
                "subscribes or assigns"
            )
        tps = {TopicPartition(*tp) for tp in partitions}
        self._manual = bool(tps)
        self._set_assignment(tps)

    def _set_assignment(self, tps: set[TopicPartition]) -> None:
        """The manual (or group-less subscribe) assignment, keeping known positions."""
        self._positions = {tp: pos for tp, pos in self._positions.items() if tp in tps}
        self._paused &= tps
        self._assigned = set(tps)
        with kafka_errors("assign: "):
            if tps:
                self._rd.assign(
                    [_rd_tp(tp, self._positions.get(tp, _OFFSET_INVALID)) for tp in tps]
                )
            else:
                self._rd.unassign()

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def _require_assigned(self, tp: TopicPartition) -> None:
        if tp not in self._assigned:
            raise IllegalStateError(f"{tp} is not assigned to this consumer")

    # -- metadata and offsets --------------------------------------------------------------

    def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        with kafka_errors(f"offsets of {tp}: "):
            return self._rd.get_watermark_offsets(_rd_tp(tp), timeout=self._timeout_s)

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._watermarks(tp)[0] for tp in (TopicPartition(*p) for p in partitions)}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The high watermark of each partition (the offset the next record will get)."""
        return {tp: self._watermarks(tp)[1] for tp in (TopicPartition(*p) for p in partitions)}

    def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """The earliest offset whose timestamp is >= the given one (None if there is none),
        with that record's timestamp."""
        for tp, ts in timestamps.items():
            if ts < 0:
                raise ValueError(f"timestamp for {tp} must be >= 0, got {ts}")
        asked = [_rd_tp(TopicPartition(*tp), ts) for tp, ts in timestamps.items()]
        with kafka_errors("offsets_for_times: "):
            found = self._rd.offsets_for_times(asked, timeout=self._timeout_s)
        offsets = {TopicPartition(f.topic, f.partition): f.offset for f in found}
        # librdkafka keeps ListOffsets' timestamp to itself: read it from the record.
        stamps = self._timestamps_at({tp: o for tp, o in offsets.items() if o >= 0})
        return {
            tp: OffsetAndTimestamp(o, stamps[tp]) if o >= 0 and tp in stamps else None
            for tp, o in offsets.items()
        }

    def _timestamps_at(self, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The timestamp of the record at each offset, read by a short-lived consumer
        (this one's positions and fetches are left alone)."""
        if not offsets:
            return {}
        import uuid

        from confluent_kafka import Consumer as _RdConsumer

        rd = {k: v for k, v in self._rd_config.items() if k != "group.instance.id"}
        rd.update({"group.id": f"kvlog-ts-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False})
        reader = _RdConsumer(rd)
        out: dict[TopicPartition, int] = {}
        try:
            reader.assign([_rd_tp(tp, o) for tp, o in offsets.items()])
            deadline = time.monotonic() + self._timeout_s
            while len(out) < len(offsets) and time.monotonic() < deadline:
                msg = reader.poll(0.2)
                if msg is None or msg.error() is not None:
                    continue
                tp = TopicPartition(msg.topic(), msg.partition())
                if tp not in out and msg.offset() >= offsets.get(tp, 0):
                    out[tp] = msg.timestamp()[1]
        finally:
            reader.close()
        return out

    def partitions_for_topic(self, topic: str) -> set[int]:
        with kafka_errors(f"metadata of {topic!r}: "):
            found = self._rd.list_topics(topic, timeout=self._timeout_s)
        entry = found.topics.get(topic)
        if entry is None or (entry.error is not None and entry.error.code() in (3, -188)):
            # kvlog mode's metadata lookup refuses a missing topic the same way
            raise UnknownTopicOrPartitionError(f"topic(s) {topic} do not exist; create them first")
        if entry.error is not None:
            return set()
        return set(entry.partitions)

    def topics(self) -> set[str]:
        with kafka_errors("metadata: "):
            return set(self._rd.list_topics(timeout=self._timeout_s).topics)

    # -- positions -------------------------------------------------------------------------

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Read ``partition`` from ``offset`` on the next poll()."""
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        tp = TopicPartition(*partition)
        self._require_assigned(tp)
        self._positions[tp] = offset
        self._rd_seek(tp, offset)

    def _rd_seek(self, tp: TopicPartition, offset: int) -> None:
        from confluent_kafka import KafkaException

        try:
            self._rd.seek(_rd_tp(tp, offset))
        except KafkaException as exc:
            if exc.args[0].code() != _STATE:
                raise to_kvlog(exc, f"seek {tp}: ") from None
            # Not fetching yet (just assigned): assign again, at the positions known.
            self._reassign()

    def _seek_to(self, which: int, partitions: tuple[TopicPartition, ...]) -> None:
        tps = [TopicPartition(*tp) for tp in partitions] or sorted(self._assigned)
        for tp in tps:
            self._require_assigned(tp)
            self.seek(tp, self._watermarks(tp)[which])

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self._seek_to(0, partitions)

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        self._seek_to(1, partitions)

    def position(self, partition: TopicPartition) -> int:
        """The offset of the next record poll() returns for ``partition``."""
        tp = TopicPartition(*partition)
        self._require_assigned(tp)
        known = self._positions.get(tp)
        if known is not None:
            return known
        found = self._committed_offset(tp) if self.config["group_id"] is not None else None
        if found is None:
            reset = self.config["auto_offset_reset"]
            if reset == "none":
                raise NoOffsetForPartitionError(
                    f"{tp} has no committed offset and auto.offset.reset is 'none'; seek() "
                    "first or set auto.offset.reset to earliest or latest"
                )
            found = self._watermarks(tp)[0 if reset == "earliest" else 1]
        self.seek(tp, found)
        return found

    def pause(self, *partitions: TopicPartition) -> None:
        tps = [TopicPartition(*tp) for tp in partitions]
        for tp in tps:
            self._require_assigned(tp)
        with kafka_errors("pause: "):
            self._rd.pause([_rd_tp(tp) for tp in tps])
        self._paused.update(tps)

    def resume(self, *partitions: TopicPartition) -> None:
        tps = [TopicPartition(*tp) for tp in partitions]
        for tp in tps:
            self._require_assigned(tp)
        with kafka_errors("resume: "):
            self._rd.resume([_rd_tp(tp) for tp in tps])
        self._paused.difference_update(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def highwater(self, partition: TopicPartition) -> int | None:
        """The partition's high watermark as the last fetch reported it (None before)."""
        tp = TopicPartition(*partition)
        self._require_assigned(tp)
        with kafka_errors(f"highwater of {tp}: "):
            _, high = self._rd.get_watermark_offsets(_rd_tp(tp), cached=True)
        return high if high >= 0 else None

    def metrics(self, raw: bool = False) -> dict[str, dict[str, Any]]:
        lags = {}
        for tp, pos in self._positions.items():
            high = self.highwater(tp) if tp in self._assigned else None
            if high is not None:
                lags[tp] = max(0, high - pos)
        return self._metrics.snapshot(lags, len(self._assigned))

    # -- polling ---------------------------------------------------------------------------

    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Records from the assigned partitions, at most ``max.poll.records``; waits up to
        ``timeout_ms`` for some to arrive."""
        messages = self._fetch(timeout_ms, max_records, update_offsets)
        out: dict[TopicPartition, list[ConsumerRecord]] = {}
        for tp, rows in messages.items():
            out[tp] = [
                ConsumerRecord(tp.topic, tp.partition, o, t, k, v, h, tt, ks, vs)
                for o, t, k, v, h, tt, ks, vs in rows
            ]
        return out

    def poll_batch(
        self, timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True
    ) -> dict[TopicPartition, RecordColumns]:
        """Like ``poll()``, each partition's records as one :class:`RecordColumns`."""
        messages = self._fetch(timeout_ms, max_records, update_offsets)
        out: dict[TopicPartition, RecordColumns] = {}
        for tp, rows in messages.items():
            offsets = [r[0] for r in rows]
            contiguous = offsets[-1] - offsets[0] == len(offsets) - 1
            headers = [r[4] for r in rows]
            out[tp] = RecordColumns(
                tp.topic,
                tp.partition,
                range(offsets[0], offsets[-1] + 1) if contiguous else offsets,
                [r[1] for r in rows],
                [r[2] for r in rows],
                [r[3] for r in rows],
                headers if any(headers) else None,
                rows[0][5],
            )
        return out

    def _fetch(
        self, timeout_ms: int, max_records: int | None, update: bool
    ) -> dict[TopicPartition, list[tuple[Any, ...]]]:
        """Up to ``max_records`` records per kvlog's rules, as tuples per partition."""
        if self._closed:
            raise IllegalStateError("poll() on a closed consumer")
        if self._deferred is not None:
            error, self._deferred = self._deferred, None
            raise error
        self._group_tick()
        limit = max_records or self.config["max_poll_records"]
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            batch = self._next_messages(limit, deadline)
            out = self._take(batch, update)
            if out or time.monotonic() >= deadline:
                if out:
                    count = sum(len(rows) for rows in out.values())
                    self._metrics.consumed(count, time.monotonic())
                return out
            self._group_tick()

    def _next_messages(self, limit: int, deadline: float) -> list[Any]:
        """librdkafka's consume() waits for its whole count; poll() returns on the first
        message: wait with poll(), then take what else is there at once."""
        with kafka_errors("poll: "):
            first = self._rd.poll(max(0.0, min(deadline - time.monotonic(), 0.5)))
            if first is None:
                return []
            return [first, *self._rd.consume(limit - 1, 0)] if limit > 1 else [first]

    def _take(
        self, messages: list[Any], update: bool
    ) -> dict[TopicPartition, list[tuple[Any, ...]]]:
        out: dict[TopicPartition, list[tuple[Any, ...]]] = {}
        stopped: set[TopicPartition] = set()
        failure: KvlogError | None = None
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() == _PARTITION_EOF:
                    continue
                failure = failure or _message_error(msg, error)
                continue
            tp = TopicPartition(msg.topic(), msg.partition())
            if tp in stopped or tp not in self._assigned:
                continue
            expected = self._positions.get(tp)
            if expected is not None and msg.offset() < expected:
                continue  # fetched before a seek past it
            try:
                row = self._row(msg)
            except RecordDeserializationError as exc:
                stopped.add(tp)
                self._rd_seek(tp, msg.offset())  # the position stays on the record
                failure = failure or exc
                continue
            out.setdefault(tp, []).append(row)
        for tp, rows in out.items():
            if update:
                self._positions[tp] = rows[-1][0] + 1
            else:
                self._rd_seek(tp, rows[0][0])  # not handed out: read them again
        if update and out:
            self._store(out)
        if failure is not None:
            if not out:
                raise failure
            self._deferred = failure  # after the records that came before it
        return out

    def _row(self, msg: Any) -> tuple[Any, ...]:
        key, value = msg.key(), msg.value()
        ts_type, ts = msg.timestamp()
        headers = msg.headers() or []
        try:
            k = key if self._keys_in is None or key is None else self._keys_in(key)
        except Exception as exc:
            raise _undecodable(msg, "key", exc, self.config["group_id"]) from exc
        try:
            v = value if self._values_in is None or value is None else self._values_in(value)
        except Exception as exc:
            raise _undecodable(msg, "value", exc, self.config["group_id"]) from exc
        return (
            msg.offset(),
            ts,
            k,
            v,
            headers,
            _TS_TYPE.get(ts_type, 0),
            -1 if key is None else len(key),
            -1 if value is None else len(value),
        )

    # -- close -----------------------------------------------------------------------------

    def close(self, autocommit: bool = True) -> None:
        if self._closed:
            return
        try:
            if (
                autocommit
                and self.config["group_id"] is not None
                and self.config["enable_auto_commit"]
            ):
                try:
                    self.commit()
                except KvlogError as exc:
                    log.warning("commit on close failed: %s", exc.message)
        finally:
            self._closed = True
            self._stop_group()
            self._rd.close()


def _undecodable(
    msg: Any, field: str, cause: BaseException, group: str | None
) -> RecordDeserializationError:
    """kvlog mode's message (ipc/consumer.py), the group's way to skip it too."""
    tp = TopicPartition(msg.topic(), msg.partition())
    skip = f"consumer.seek({tp!r}, {msg.offset() + 1})"
    if group is not None:
        skip += (
            f", or with the group's consumers stopped: kvlog groups reset-offsets --group "
            f"{group} --topic {tp.topic}:{tp.partition} --to-offset {msg.offset() + 1} "
            "--execute"
        )
    return RecordDeserializationError(
        f"cannot deserialize the {field} of the record at offset {msg.offset()} of {tp} "
        f"({type(cause).__name__}: {cause}). The consumer's position stays on this record; "
        f"to skip it: {skip}",
        topic_partition=tp,
        offset=msg.offset(),
        key=msg.key(),
        value=msg.value(),
        headers=msg.headers() or [],
        timestamp=msg.timestamp()[1],
    )


def _message_error(msg: Any, error: Any) -> KvlogError:
    where = f"{msg.topic()}-{msg.partition()}: " if msg.topic() else ""
    exc = to_kvlog(error, where)
    if isinstance(exc, NoOffsetForPartitionError):
        return NoOffsetForPartitionError(
            f"{where}no committed offset and auto.offset.reset is 'none'; seek() first or "
            "set auto.offset.reset to earliest or latest"
        )
    return exc
