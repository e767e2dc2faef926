"""Small value types shared by every layer."""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from .errors import InvalidPartitionsError, InvalidTopicError


class TopicPartition(NamedTuple):
    """A (topic, partition) pair, as in kafka-python."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}-{self.partition}"


@functools.lru_cache(maxsize=1 << 16)
def partition_key(tp: TopicPartition) -> bytes:
    """The one byte encoding of a partition in stored keys: ``b"topic/partition"``.

    Topic names cannot hold ``/``, so :func:`parse_partition_key` splits at the last one.
    Keys of per-partition rows in shared tables append ``b"\\x00"`` and their own suffix.
    Kept per partition: a group commit builds it several times per batch (1,000
    partitions: a few thousand times a second).
    """
    return f"{tp.topic}/{tp.partition}".encode()


def parse_partition_key(key: bytes) -> TopicPartition:
    topic, _, partition = key.decode().rpartition("/")
    return TopicPartition(topic, int(partition))


class PartitionOffsets(NamedTuple):
    """The three offsets of a partition and the bytes it stores.

    ``log_start_offset`` <= ``high_watermark`` <= ``log_end_offset``. Consumers read
    below the high watermark; the log end offset is where the next append lands.
    """

    log_start_offset: int
    high_watermark: int
    log_end_offset: int
    size_bytes: int


_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
MAX_PARTITION = 1 << 20


def check_topic_name(name: object) -> str:
    """Kafka's topic name rules; returns the name or raises InvalidTopicError."""
    if not isinstance(name, str) or not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidTopicError(
            f"invalid topic name {name!r}: use 1-249 characters of a-z, A-Z, 0-9, "
            "'.', '_' and '-' (not '.' or '..')"
        )
    return name


def check_partition(partition: object) -> int:
    if isinstance(partition, bool) or not isinstance(partition, int):
        raise InvalidPartitionsError(f"partition must be an integer, got {partition!r}")
    if not 0 <= partition < MAX_PARTITION:
        raise InvalidPartitionsError(f"partition {partition} is out of range")
    return partition
