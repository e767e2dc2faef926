"""Helpers shared by the log-layer tests (tests/log is on sys.path; see conftest.py).

Hypothesis budgets: the defaults keep the whole tests/log suite well under a minute and a
half on two cores; ``KVLOG_LONG_TESTS=1`` multiplies them (and the crash test's rounds)
for a thorough run of several minutes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from kvlog import batch as batch_format
from kvlog.batch import BatchBuilder
from kvlog.codecs import Codec
from kvlog.lmdb_store import LogDir
from kvlog.memory_store import MemoryLogDir
from kvlog.types import PartitionOffsets, TopicPartition

THOROUGH = os.environ.get("KVLOG_LONG_TESTS") == "1"
# The long tests may run past the suite's 120 s per-test timeout when thorough.
long_test = pytest.mark.timeout(1800 if THOROUGH else 120)
SMALL_MAP = 64 << 10

# Every table the tests write; stores have no "list tables" call, so snapshots name them.
TABLES = ("x", "y", "topics", "offsets", "producers")


def budget(examples: int, *, steps: int | None = None) -> settings:
    """Hypothesis settings for one test: bounded normally, 10x examples when thorough."""
    extra: dict[str, Any] = {}
    if steps is not None:
        extra["stateful_step_count"] = steps * (2 if THOROUGH else 1)
    return settings(
        max_examples=examples * (10 if THOROUGH else 1),
        deadline=None,  # fsync latency varies; the suite's own timeout bounds the run
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        **extra,
    )


class StoreKind:
    """Opens one store of a kind and reopens it as a restart would (memory: same object)."""

    def __init__(self, kind: str, path: Path, *, map_size: int = SMALL_MAP) -> None:
        self.kind = kind
        self.path = path
        self.map_size = map_size
        self.current: LogDir | MemoryLogDir | None = None

    @property
    def durable(self) -> bool:
        return self.kind == "lmdb"

    def open(self) -> LogDir | MemoryLogDir:
        if self.current is None:
            if self.kind == "lmdb":
                self.current = LogDir(self.path, map_size=self.map_size)
            else:
                self.current = MemoryLogDir()
        return self.current

    def reopen(self) -> LogDir | MemoryLogDir:
        if self.kind == "lmdb":
            self.close()
        return self.open()

    def close(self) -> None:
        if self.current is not None and self.kind == "lmdb":
            self.current.close()
            self.current = None


# -- batches --------------------------------------------------------------------------


def make_batch(
    count: int = 1,
    *,
    tag: str = "v",
    value_size: int = 0,
    codec: Codec = Codec.NONE,
    timestamp_ms: int = 1_000,
    **producer: int,
) -> bytes:
    """A batch of ``count`` records whose values say ``tag:i`` (padded to value_size)."""
    builder = BatchBuilder(codec, **producer)
    for i in range(count):
        value = f"{tag}:{i}".encode()
        value += b"." * max(0, value_size - len(value))
        builder.append(value, key=f"k{i}".encode(), timestamp_ms=timestamp_ms + i)
    return builder.build()


def corrupt(batch: bytes, position: int = -1) -> bytes:
    """The batch with one payload bit flipped (fails its CRC)."""
    buf = bytearray(batch)
    buf[position] ^= 0x01
    return bytes(buf)


def batch_end(base: int, batch: bytes | memoryview) -> int:
    return batch_format.next_offset(base, batch)


@st.composite
def batches(
    draw: st.DrawFn,
    *,
    max_records: int = 12,
    max_value: int = 600,
    codecs: Sequence[Codec] = tuple(Codec),
    now_ms: int = 1_700_000_000_000,
    max_age_ms: int = 10 * 24 * 3600 * 1000,
) -> bytes:
    """A valid batch of random size and codec; timestamps up to ``max_age_ms`` before now."""
    count = draw(st.integers(1, max_records))
    codec = draw(st.sampled_from(codecs))
    base_ts = now_ms - draw(st.integers(0, max_age_ms))
    size = draw(st.integers(0, max_value))
    seed = draw(st.integers(0, 255))
    builder = BatchBuilder(codec)
    for i in range(count):
        value = bytes((seed + i + j) & 0xFF for j in range(size))
        builder.append(value, key=None if i % 3 else b"key", timestamp_ms=base_ts + i)
    return builder.build()


# -- observing a store ----------------------------------------------------------------


def all_batches(store: Any, tp: TopicPartition) -> list[tuple[int, bytes]]:
    """Every stored batch of ``tp`` as a consumer sees it (read from the log start)."""
    with store.reader() as r:
        state = r.offsets(tp)
        if state.log_start_offset == state.log_end_offset:
            return []
        return r.read(tp, state.log_start_offset, 1 << 62)


def snapshot(store: Any, tables: Iterable[str] = TABLES) -> dict[str, Any]:
    """Everything a store holds, comparable with ==."""
    with store.reader() as r:
        parts = {}
        for tp in store.partitions():
            state = r.offsets(tp)
            stored = [(base, size, tuple(header)) for base, size, header in r.headers(tp)]
            parts[tp] = (state, stored)
        rows = {name: list(r.items(name)) for name in tables}
        data = {
            tp: r.read(tp, state.log_start_offset, 1 << 62)
            if state.log_start_offset < state.log_end_offset
            else []
            for tp, (state, _) in parts.items()
        }
    return {"partitions": parts, "data": data, "tables": rows}


def check_partition(store: Any, tp: TopicPartition) -> PartitionOffsets:
    """The structural invariants of one partition; returns its offsets."""
    with store.reader() as r:  # one snapshot: other threads may write meanwhile
        state = r.offsets(tp)
        stored = list(r.headers(tp))
        start, hw, leo, size = state
        read = r.read(tp, start, 1 << 62) if start < leo else []
    assert 0 <= start <= hw <= leo, state
    assert size == sum(s for _, s, _ in stored), (state, stored)
    previous_end = None
    for base, _size, header in stored:
        if previous_end is not None:
            assert base >= previous_end, f"{tp}: batch at {base} overlaps one ending {previous_end}"
        previous_end = base + header.last_offset_delta + 1
    if stored:
        first_base, _, first = stored[0]
        assert first_base + first.last_offset_delta + 1 > start, (state, stored[0])
        assert previous_end == leo, f"{tp}: LEO {leo} but the last batch ends at {previous_end}"
    else:
        assert start == leo, f"{tp}: no batches but log start {start} != LEO {leo}"
    assert [b for b, _ in read] == [b for b, _, _ in stored]
    for base, value in read:
        header = batch_format.validate(value)
        assert batch_end(base, value) == base + header.last_offset_delta + 1
    return state


def check_store(store: Any) -> None:
    for tp in store.partitions():
        check_partition(store, tp)
