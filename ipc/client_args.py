"""How kvlog's clients take their arguments, in kvlog mode and in Kafka mode alike.

kvlog's Producer, Consumer and Admin (ipc/producer.py, ipc/consumer.py, ipc/admin.py)
and their Kafka-mode twins (ipc/kafka_client/) promise the same calls with the same
meaning; what they check and convert the same way lives here once:

- records sent: key and value serializers (``None``: bytes pass through untouched, with no
  call per record), header values (bytes only) and timestamps (ms since the epoch, within
  int64);
- records read: key and value deserializers (``None``: no call per record), a settings
  dict given first to ``Consumer(...)``, ``subscribe``'s topics-or-pattern, and the
  kafka-python iteration (``for record in consumer``, ending after
  ``consumer_timeout_ms`` without records);
- topics created: kafka-python's three spellings of ``create_topics``' topics, its
  per-topic results, and the warning that keyed records move when partitions are added.

Stateless functions and data; safe from any thread.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvlog.errors import (
    IllegalStateError,
    InvalidConfigError,
    InvalidTimestampError,
    KvlogError,
    SerializationError,
)

from .serializers import Deserializer, deserializer, serializer

if TYPE_CHECKING:
    from .records import ConsumerRecord

_INT64_MAX = (1 << 63) - 1

# -- records sent -------------------------------------------------------------------------


def record_serializers(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A producer's ``key_serializer``/``value_serializer`` settings as the record
    accumulator's keyword arguments: the serializers, and ``raw_keys``/``raw_values``
    (no serializer set: bytes and None pass through untouched, with no call per record;
    with one, every key/value goes through it, as in kafka-python)."""
    return {
        "key_serializer": serializer(cfg["key_serializer"], "key_serializer"),
        "value_serializer": serializer(cfg["value_serializer"], "value_serializer"),
        "raw_keys": cfg["key_serializer"] is None,
        "raw_values": cfg["value_serializer"] is None,
    }


def check_timestamp(timestamp_ms: Any) -> int:
    """A record timestamp: ms since the epoch, non-negative and within int64 (as Kafka
    requires). Refused here: the batch header could not hold it, and its encoding would
    fail on the I/O thread, leaving the record unsent and flush() waiting forever."""
    if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int):
        raise InvalidTimestampError(
            f"timestamp_ms must be an integer (ms since the epoch), got {timestamp_ms!r}"
        )
    if not 0 <= timestamp_ms <= _INT64_MAX:
        raise InvalidTimestampError(
            f"timestamp_ms={timestamp_ms} is invalid: a timestamp is ms since the epoch, "
            "non-negative (or None for now)"
        )
    return timestamp_ms


def header_value(value: Any) -> bytes:
    """Header values are bytes, as in Kafka. (``bytes(5)`` would silently give five zero
    bytes, and ``bytes("text")`` a bare TypeError.)"""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise SerializationError(
        f"header values must be bytes, got {type(value).__name__} {value!r:.40}; encode it "
        "first (e.g. str.encode())"
    )


# -- records read -------------------------------------------------------------------------


def split_consumer_args(
    topics: tuple[Any, ...],
) -> tuple[Mapping[str, Any] | None, tuple[Any, ...]]:
    """``Consumer(settings_dict, *topics)`` or ``Consumer(*topics)``: (settings, topics)."""
    if topics and isinstance(topics[0], Mapping):
        return topics[0], topics[1:]
    return None, topics


def record_deserializers(cfg: Mapping[str, Any]) -> tuple[Deserializer | None, Deserializer | None]:
    """A consumer's (key, value) deserializers; None where the application takes the
    bytes as they are (no call per record)."""
    return (
        None
        if cfg["key_deserializer"] is None
        else deserializer(cfg["key_deserializer"], "key_deserializer"),
        None
        if cfg["value_deserializer"] is None
        else deserializer(cfg["value_deserializer"], "value_deserializer"),
    )


def subscription_args(
    topics: Any, pattern: str | None, assigned: bool
) -> tuple[list[str], re.Pattern[str] | None]:
    """``subscribe``'s topics (a name or names) or regex ``pattern``, exactly one of them;
    refused on a consumer given its partitions by ``assign`` (``assigned``)."""
    if assigned:
        raise IllegalStateError("subscribe() after assign(): call unsubscribe() first")
    topic_list = [topics] if isinstance(topics, str) else list(topics)
    if bool(topic_list) == (pattern is not None):
        raise IllegalStateError("subscribe() takes topics or a pattern, not both or neither")
    return topic_list, re.compile(pattern) if pattern is not None else None


class RecordIteration:
    """kafka-python's iteration, mixed into both modes' Consumer: ``next()`` polls until
    a record comes, or ``consumer_timeout_ms`` passes without one (StopIteration; None:
    never). Used from the consumer's one thread, as the consumer is."""

    config: dict[str, Any]
    _iterator: Iterator[ConsumerRecord] | None
    poll: Callable[..., dict[Any, list[ConsumerRecord]]]

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> ConsumerRecord:
        timeout = self.config["consumer_timeout_ms"]
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        while True:
            if self._iterator is not None:
                record = next(self._iterator, None)
                if record is not None:
                    return record
                self._iterator = None
            wait = 1000 if deadline is None else int(max(0.0, deadline - time.monotonic()) * 1000)
            batch = self.poll(timeout_ms=wait)
            if batch:
                self._iterator = iter([r for records in batch.values() for r in records])
            elif deadline is not None and time.monotonic() >= deadline:
                raise StopIteration


# -- topics created -----------------------------------------------------------------------


class PartitionMappingWarning(UserWarning):
    """Adding partitions moves keys to other partitions (murmur2 % partition count)."""


def warn_partition_mapping(name: str, old: int, count: int) -> None:
    """Warn the caller of ``create_partitions`` that keyed records now map elsewhere."""
    warnings.warn(
        f"topic {name!r} grew from {old} to {count} partitions: keyed records are placed "
        f"by murmur2(key) % {count} from now on, so most keys map to a different "
        "partition than before and per-key order across the change is not guaranteed",
        PartitionMappingWarning,
        stacklevel=3,  # the caller of create_partitions
    )


@dataclass
class NewTopic:
    """A topic for :meth:`Admin.create_topics` (kafka-python's ``NewTopic``). -1 partitions
    or replication factor means the default, 1. ``replica_assignments`` is refused: kvlog
    places replicas itself (round robin over the log dirs)."""

    name: str
    num_partitions: int = -1
    replication_factor: int = -1
    replica_assignments: dict[int, list[int]] | None = None
    topic_configs: dict[str, Any] | None = None


def new_topics(spec: Any) -> list[NewTopic]:
    """kafka-python's three spellings of the topics to create, as NewTopics."""
    if isinstance(spec, Mapping):
        return [
            NewTopic(
                name,
                options.get("num_partitions", -1),
                options.get("replication_factor", -1),
                options.get("assignments") or None,
                options.get("configs") or None,
            )
            for name, options in spec.items()
        ]
    topics = [NewTopic(item) if isinstance(item, str) else item for item in spec]
    if not topics or not all(isinstance(t, NewTopic) for t in topics):
        raise InvalidConfigError(
            f"create_topics takes NewTopics, topic names or a dict of them, got {spec!r}"
        )
    return topics


def create_each(
    topics: list[NewTopic],
    check: Callable[[NewTopic], None],
    create: Callable[[NewTopic], str],
    raise_errors: bool,
) -> dict[str, Any]:
    """kafka-python's ``create_topics`` result: every topic is tried (``check`` raises
    for one that cannot be asked for at all; ``create`` returns its topic id); then, with
    ``raise_errors``, the first failure is raised. A retriable error is the cluster's,
    not the topic's (the rest would fail alike): raised at once."""
    results = []
    first: KvlogError | None = None
    for topic in topics:
        check(topic)
        try:
            topic_id = create(topic)
            results.append(
                {"name": topic.name, "topic_id": topic_id, "error_code": 0, "error_message": None}
            )
        except KvlogError as exc:
            if exc.retriable:
                raise
            first = first or exc
            results.append(
                {
                    "name": topic.name,
                    "topic_id": "",
                    "error_code": int(exc.code),
                    "error_message": exc.message,
                }
            )
    if first is not None and raise_errors:
        raise first
    return {"topics": results}


__all__ = [
    "NewTopic",
    "PartitionMappingWarning",
    "RecordIteration",
    "check_timestamp",
    "create_each",
    "header_value",
    "new_topics",
    "record_deserializers",
    "record_serializers",
    "split_consumer_args",
    "subscription_args",
    "warn_partition_mapping",
]
