"""The mirror's vocabulary and pure decisions (no IO): what it is asked to do
(:class:`MirrorSpec`), where each source partition goes (renames, partition mapping), the
header that makes the target self-describing, and the source -> target offset map that
group offsets are translated with (MirrorMaker 2's checkpoints, exact here).

Each batch the mirror writes is one source partition's run of consecutive offsets, and
its last record carries one more header, ``kvlog.mirror``: its source partition (int32)
and offset (int64), big-endian. That places every record of the batch, so the target's
tail says where a mirror stopped, whatever happened to the mirror's own files. (One
header per batch, not per record: a per-record header cost the mirror a third of its
throughput and the target ~25 bytes a record.) A record that already has such a header
(a chain of mirrors) gets another, and the last one counts.
"""

from __future__ import annotations

import bisect
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvlog.errors import InvalidConfigError
from kvlog.types import TopicPartition

HEADER = "kvlog.mirror"
_HEADER_VALUE = struct.Struct(">iq")
# The group through which a mirror holds retention on its source (kvlog.retention).
GROUP_PREFIX = "kvlog-mirror."
MAX_SEGMENTS = 100_000  # per source partition; older ones go (translation then skips)


def header_value(partition: int, offset: int) -> bytes:
    return _HEADER_VALUE.pack(partition, offset)


def read_header(headers: Sequence[Any] | None) -> tuple[int, int] | None:
    """(source partition, source offset) from a record's headers (the last
    ``kvlog.mirror`` one), or None."""
    found = None
    for name, value in headers or ():
        if name == HEADER and value is not None and len(value) == _HEADER_VALUE.size:
            found = value
    return None if found is None else _HEADER_VALUE.unpack(found)


@dataclass(frozen=True)
class Rename:
    """``PATTERN=REPLACEMENT``: a source topic that fully matches PATTERN is written to
    ``match.expand(REPLACEMENT)`` (``\\1``, ``\\g<name>``)."""

    pattern: re.Pattern[str]
    replacement: str

    @classmethod
    def parse(cls, spec: str) -> Rename:
        pattern, sep, replacement = spec.partition("=")
        if not sep or not pattern or not replacement:
            raise InvalidConfigError(
                f"rename {spec!r} must be PATTERN=REPLACEMENT, e.g. "
                "'sensors.(.*)=site42.sensors.\\1'"
            )
        try:
            return cls(re.compile(pattern), replacement)
        except re.error as exc:
            raise InvalidConfigError(f"rename {spec!r}: bad pattern: {exc}") from None


@dataclass
class MirrorSpec:
    """One mirror: from the local kvlog (``source``) to a Kafka cluster (``target``)."""

    name: str
    target: str  # kafka://host:port,...
    topics: str  # a regex every mirrored source topic fully matches
    source: str = "127.0.0.1:7092"
    groups: str | None = None  # a regex of the groups whose offsets are translated
    renames: list[Rename] = field(default_factory=list)
    allow_gaps: bool = False
    until_caught_up: bool = False
    state_dir: str = ""
    source_settings: dict[str, Any] = field(default_factory=dict)
    target_settings: dict[str, Any] = field(default_factory=dict)
    checkpoint_interval_ms: int = 1_000
    group_sync_interval_ms: int = 5_000
    topic_refresh_interval_ms: int = 10_000
    settle_ms: int = 1_000
    request_timeout_ms: int = 30_000
    max_batch_bytes: int = 1_000_000
    max_in_flight: int = 5  # batches per target partition (Kafka's idempotent limit)
    max_buffer_bytes: int = 16_000_000
    backoff_min_ms: int = 100
    backoff_max_ms: int = 10_000

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.name or ""):
            raise InvalidConfigError(
                f"mirror name {self.name!r}: use letters, digits, '.', '_' and '-'"
            )
        for what, pattern in (("topics", self.topics), ("groups", self.groups)):
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise InvalidConfigError(f"mirror {what} pattern {pattern!r}: {exc}") from None

    @property
    def group_id(self) -> str:
        """The source group whose committed offsets are this mirror's progress."""
        return GROUP_PREFIX + self.name

    def mirrors(self, topic: str) -> bool:
        return not topic.startswith("__") and re.fullmatch(self.topics, topic) is not None

    def target_topic(self, topic: str) -> str:
        for rule in self.renames:
            match = rule.pattern.fullmatch(topic)
            if match is not None:
                return match.expand(rule.replacement)
        return topic

    def translates(self, group: str) -> bool:
        return (
            self.groups is not None
            and not group.startswith(GROUP_PREFIX)
            and re.fullmatch(self.groups, group) is not None
        )


def plan_targets(spec: MirrorSpec, topics: Iterable[str]) -> dict[str, str]:
    """Source topic -> target topic for every mirrored topic; two source topics renamed
    onto one target topic are refused (their records would interleave, and the target's
    tail could no longer say where each stopped)."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for topic in sorted(t for t in topics if spec.mirrors(t)):
        target = spec.target_topic(topic)
        if target in seen:
            raise InvalidConfigError(
                f"mirror {spec.name}: {seen[target]!r} and {topic!r} would both go to "
                f"{target!r}; make the renames tell them apart"
            )
        seen[target] = topic
        out[topic] = target
    return out


def target_partition(partition: int, target_count: int) -> int:
    """Where a source partition's records go: the same partition when the counts match
    (the mirror creates target topics with the source's count), else partition mod the
    target's count (a key's records stay in one partition, in order)."""
    return partition % target_count


@dataclass(frozen=True, slots=True)
class Segment:
    """Source offsets [src, src + count) were written at target offsets [tgt, tgt + count)."""

    src: int
    tgt: int
    count: int

    @property
    def src_end(self) -> int:
        return self.src + self.count

    @property
    def tgt_end(self) -> int:
        return self.tgt + self.count


class OffsetMap:
    """Source offset -> target offset for one source partition, as runs (merged when
    contiguous on both sides, so an uncompacted partition mirrored in one go is one
    segment). Owned by the mirror core; not thread-safe."""

    __slots__ = ("segments",)

    def __init__(self, segments: Iterable[Segment] = ()) -> None:
        self.segments: list[Segment] = sorted(segments, key=lambda s: s.src)

    def add(self, src_offsets: Sequence[int], tgt_base: int) -> None:
        """Record that the records at ``src_offsets`` (ascending) were written at
        ``tgt_base``, ``tgt_base + 1``, ..."""
        n = len(src_offsets)
        if not n:
            return
        if isinstance(src_offsets, range) or src_offsets[-1] - src_offsets[0] == n - 1:
            self._append(Segment(src_offsets[0], tgt_base, n))
            return
        start = 0
        for i in range(1, n + 1):
            if i == n or src_offsets[i] != src_offsets[i - 1] + 1:
                self._append(Segment(src_offsets[start], tgt_base + start, i - start))
                start = i

    def _append(self, seg: Segment) -> None:
        last = self.segments[-1] if self.segments else None
        if last is not None and seg.src < last.src_end:
            return  # already known (a replayed batch after a restart)
        if last is not None and last.src_end == seg.src and last.tgt_end == seg.tgt:
            self.segments[-1] = Segment(last.src, last.tgt, last.count + seg.count)
        else:
            self.segments.append(seg)
            if len(self.segments) > MAX_SEGMENTS:
                del self.segments[: len(self.segments) - MAX_SEGMENTS]

    @property
    def next_source(self) -> int | None:
        """The source offset after the last one mapped (None: nothing mapped)."""
        return self.segments[-1].src_end if self.segments else None

    @property
    def next_target(self) -> int | None:
        return self.segments[-1].tgt_end if self.segments else None

    def translate(self, offset: int) -> int | None:
        """The target offset a group committed at source ``offset`` (the next record to
        read) resumes from: the target offset of the first mirrored record at or after
        it. None when the map cannot say exactly: before what it knows, or past what was
        mirrored (the mirror has not caught up to the group)."""
        segs = self.segments
        if not segs or offset < segs[0].src or offset > segs[-1].src_end:
            return None
        i = bisect.bisect_right([s.src for s in segs], offset) - 1
        seg = segs[i]
        if offset < seg.src_end:
            return seg.tgt + (offset - seg.src)
        if i + 1 < len(segs):  # in a gap of the source (compaction): the next record
            return segs[i + 1].tgt
        return seg.tgt_end  # caught up: the next record the mirror writes

    def to_list(self) -> list[list[int]]:
        return [[s.src, s.tgt, s.count] for s in self.segments]

    @classmethod
    def from_list(cls, rows: Iterable[Sequence[int]]) -> OffsetMap:
        return cls(Segment(int(a), int(b), int(c)) for a, b, c in rows)


def tp_key(tp: TopicPartition) -> str:
    return f"{tp.topic}/{tp.partition}"


def tp_from_key(key: str) -> TopicPartition:
    topic, _, partition = key.rpartition("/")
    return TopicPartition(topic, int(partition))


def translate_group(
    committed: Mapping[TopicPartition, int],
    maps: Mapping[TopicPartition, OffsetMap],
    routes: Mapping[TopicPartition, TopicPartition],
) -> dict[TopicPartition, int]:
    """A source group's committed offsets as target offsets, where exact. Two source
    partitions that feed one target partition translate to the lower of the two (the
    group may read some records again; it never skips one)."""
    out: dict[TopicPartition, int] = {}
    for tp, offset in committed.items():
        target = routes.get(tp)
        offset_map = maps.get(tp)
        if target is None or offset_map is None:
            continue
        translated = offset_map.translate(offset)
        if translated is None:
            continue
        out[target] = min(out.get(target, translated), translated)
    return out


def group_updates(
    translated: Mapping[TopicPartition, int], on_target: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """The translated offsets to commit on the target: those ahead of what the target
    group has (a group that moved on there is never moved back), as MirrorMaker 2 syncs
    group offsets."""
    return {tp: off for tp, off in translated.items() if on_target.get(tp, -1) < off}


# Keys of one ``[[mirror]]`` table in ``kvlog serve --mirror-config`` (and what
# :func:`spec_from_config` takes), with the spec field each sets.
CONFIG_KEYS = {
    "name": "name",
    "to": "target",
    "topics": "topics",
    "groups": "groups",
    "rename": "renames",
    "allow_gaps": "allow_gaps",
    "state_dir": "state_dir",
    "target": "target_settings",
    "checkpoint_interval_ms": "checkpoint_interval_ms",
    "group_sync_interval_ms": "group_sync_interval_ms",
    "topic_refresh_interval_ms": "topic_refresh_interval_ms",
    "settle_ms": "settle_ms",
    "max_batch_bytes": "max_batch_bytes",
    "max_in_flight": "max_in_flight",
}


def spec_from_config(entry: Mapping[str, Any], **fixed: Any) -> MirrorSpec:
    """A MirrorSpec from one config table (TOML's ``[[mirror]]``); ``fixed`` fields (the
    source, the state dir) come from the process that runs it. Unknown keys are an error
    naming the closest."""
    import difflib

    values: dict[str, Any] = {}
    for key, value in entry.items():
        name = key.replace("-", "_")
        field_name = CONFIG_KEYS.get(name)
        if field_name is None:
            close = difflib.get_close_matches(name, list(CONFIG_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidConfigError(f"mirror config: unknown key {key!r}{hint}")
        values[field_name] = value
    for required in ("name", "to", "topics"):
        if CONFIG_KEYS[required] not in values:
            raise InvalidConfigError(f"mirror config: {required!r} is required")
    renames = values.get("renames", [])
    values["renames"] = [
        Rename.parse(r) for r in ([renames] if isinstance(renames, str) else renames)
    ]
    values["target_settings"] = dict(values.get("target_settings") or {})
    values.update({k: v for k, v in fixed.items() if v is not None and k not in values})
    return MirrorSpec(**values)
