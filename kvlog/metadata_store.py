"""Typed tables over a log store: topic metadata and committed group offsets.

Each lives in its own named table of a log store (``t/topics``, ``t/offsets`` in LMDB),
so it commits atomically with whatever else the same transaction writes and survives
restarts with the log. Functions take a transaction; the caller decides the grouping.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import cbor2

from .log import ReadTxn, WriteTxn
from .types import TopicPartition

TOPICS_TABLE = "topics"
OFFSETS_TABLE = "offsets"


@dataclass
class TopicMetadata:
    """What the coordinator stores about a topic. ``replicas[p]`` lists the node ids that
    hold partition ``p``, preferred leader first."""

    name: str
    topic_id: str
    partitions: int
    replication_factor: int
    replicas: list[list[int]]
    config: dict[str, Any] = field(default_factory=dict)
    created_ms: int = 0

    def encode(self) -> bytes:
        return cbor2.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> TopicMetadata:
        return cls(**cbor2.loads(raw))


def put_topic(w: WriteTxn, meta: TopicMetadata) -> None:
    w.put(TOPICS_TABLE, meta.name.encode(), meta.encode())


def get_topic(r: ReadTxn, name: str) -> TopicMetadata | None:
    raw = r.get(TOPICS_TABLE, name.encode())
    return None if raw is None else TopicMetadata.decode(raw)


def delete_topic(w: WriteTxn, name: str) -> bool:
    return w.delete(TOPICS_TABLE, name.encode())


def list_topics(r: ReadTxn) -> list[TopicMetadata]:
    return [TopicMetadata.decode(raw) for _, raw in r.items(TOPICS_TABLE)]


@dataclass(frozen=True)
class CommittedOffset:
    """A group's committed position: the next offset to read (Kafka's convention)."""

    offset: int
    metadata: str = ""
    commit_timestamp: int = 0
    leader_epoch: int = -1


_LEN = struct.Struct(">H")
_PARTITION = struct.Struct(">I")


def _group_prefix(group: str) -> bytes:
    raw = group.encode()
    return _LEN.pack(len(raw)) + raw


def _offset_key(group: str, tp: TopicPartition) -> bytes:
    topic = tp.topic.encode()
    return _group_prefix(group) + _LEN.pack(len(topic)) + topic + _PARTITION.pack(tp.partition)


def _parse_offset_key(key: bytes) -> tuple[str, TopicPartition]:
    (glen,) = _LEN.unpack_from(key)
    group = key[2 : 2 + glen].decode()
    (tlen,) = _LEN.unpack_from(key, 2 + glen)
    start = 4 + glen
    topic = key[start : start + tlen].decode()
    (partition,) = _PARTITION.unpack_from(key, start + tlen)
    return group, TopicPartition(topic, partition)


def commit_offset(w: WriteTxn, group: str, tp: TopicPartition, committed: CommittedOffset) -> None:
    value = cbor2.dumps(
        [committed.offset, committed.metadata, committed.commit_timestamp, committed.leader_epoch]
    )
    w.put(OFFSETS_TABLE, _offset_key(group, tp), value)


def _decode_offset(raw: bytes) -> CommittedOffset:
    offset, metadata, ts, epoch = cbor2.loads(raw)
    return CommittedOffset(offset, metadata, ts, epoch)


def fetch_offset(r: ReadTxn, group: str, tp: TopicPartition) -> CommittedOffset | None:
    raw = r.get(OFFSETS_TABLE, _offset_key(group, tp))
    return None if raw is None else _decode_offset(raw)


def group_offsets(r: ReadTxn, group: str) -> dict[TopicPartition, CommittedOffset]:
    return {
        _parse_offset_key(key)[1]: _decode_offset(raw)
        for key, raw in r.items(OFFSETS_TABLE, _group_prefix(group))
    }


def all_offsets(r: ReadTxn) -> Iterator[tuple[str, TopicPartition, CommittedOffset]]:
    for key, raw in r.items(OFFSETS_TABLE):
        group, tp = _parse_offset_key(key)
        yield group, tp, _decode_offset(raw)


def delete_group_offsets(w: WriteTxn, group: str, topic: str | None = None) -> int:
    """Remove a group's offsets (for one topic, or all); returns how many."""
    doomed = [
        key
        for key, _ in w.items(OFFSETS_TABLE, _group_prefix(group))
        if topic is None or _parse_offset_key(key)[1].topic == topic
    ]
    for key in doomed:
        w.delete(OFFSETS_TABLE, key)
    return len(doomed)
