"""Source record columns -> the mirror's chunks and Kafka batches (pure functions).

A fetched run is cut into chunks of consecutive offsets (a compacted source has gaps): a
target batch is one feed's consecutive run, so its last record's ``kvlog.mirror`` header
places every record (workers/mirror_model.py). The batch keeps each record's key, value,
original timestamp and headers; it is built in C (:func:`kvlog.kafka_batch.encode`) with
per-record work in Python limited to the timestamp deltas.
"""

from __future__ import annotations

from typing import Any

from kvlog import kafka_batch
from kvlog.ipc.records import RecordColumns
from kvlog.types import TopicPartition

from .mirror_core import Chunk
from .mirror_model import HEADER, header_value

_RECORD_OVERHEAD = 12  # bytes per record besides key and value (varints, attributes)


def chunks(src: TopicPartition, run: RecordColumns) -> list[Chunk]:
    """A fetched run as chunks of consecutive offsets (cut at compaction gaps)."""
    offsets = run.offsets
    if isinstance(offsets, range) or offsets[-1] - offsets[0] == len(offsets) - 1:
        return [chunk(src, run)]
    out = []
    start = 0
    for i in range(1, len(offsets) + 1):
        if i == len(offsets) or offsets[i] != offsets[i - 1] + 1:
            out.append(chunk(src, slice_columns(run, start, i)))
            start = i
    return out


def encode(parts: list[Chunk], producer_id: int, epoch: int, base_sequence: int) -> bytes:
    """The chunks' records (one feed's consecutive run) as one Kafka RecordBatch in
    kvlog's stored form: keys, values, original timestamps and headers, and the
    ``kvlog.mirror`` header on the last record."""
    keys: list[Any] = []
    values: list[Any] = []
    stamps: list[int] = []
    own: list[Any] | None = None
    for part in parts:
        run: RecordColumns = part.data
        if run.headers is not None or own is not None:
            own = (own if own is not None else [None] * len(values)) + (
                run.headers if run.headers is not None else [None] * len(run)
            )
        keys += run.keys
        values += run.values
        stamps += run.timestamps
    last = parts[-1]
    marker = (HEADER, header_value(last.src.partition, last.offsets[-1]))
    headers = own if own is not None else [None] * len(values)
    headers[-1] = [*(headers[-1] or ()), marker]
    first = stamps[0]
    return kafka_batch.encode(
        None,
        [t - first for t in stamps],
        keys,
        values,
        headers,
        first_timestamp=first,
        max_timestamp=max(stamps),
        producer_id=producer_id,
        producer_epoch=epoch,
        base_sequence=base_sequence,
    )


def slice_columns(run: RecordColumns, lo: int, hi: int | None) -> RecordColumns:
    return RecordColumns(
        run.topic,
        run.partition,
        run.offsets[lo:hi],
        run.timestamps[lo:hi],
        run.keys[lo:hi],
        run.values[lo:hi],
        None if run.headers is None else run.headers[lo:hi],
        run.timestamp_type,
    )


def chunk(src: TopicPartition, run: RecordColumns) -> Chunk:
    values = sum(map(len, filter(None, run.values)))
    keys = sum(map(len, filter(None, run.keys)))
    nbytes = values + keys + _RECORD_OVERHEAD * len(run)
    return Chunk(src, run.offsets, run.timestamps[0], nbytes, run, split)


def split(whole: Chunk) -> tuple[Chunk, Chunk]:
    """A chunk in two halves (a batch the target found too large)."""
    run: RecordColumns = whole.data
    half = len(run) // 2
    head, tail = slice_columns(run, 0, half), slice_columns(run, half, None)
    head_bytes = whole.nbytes * half // len(run)
    return (
        Chunk(whole.src, head.offsets, head.timestamps[0], head_bytes, head, split),
        Chunk(whole.src, tail.offsets, tail.timestamps[0], whole.nbytes - head_bytes, tail, split),
    )
