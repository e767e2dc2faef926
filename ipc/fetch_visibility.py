"""What a consumer sees of a fetched partition: transactions' filtering.

A fetch returns raw batches; the consumer never returns control batches (transaction
markers), and with ``isolation.level=read_committed`` not the records of aborted
transactions either: the fetch names each aborted transaction as ``[producer id, first
offset]``, and a producer's transactional batches from that offset up to its abort marker
are dropped (Kafka's consumer rule). What a fetch drops at its end leaves a gap between
the last offset the consumer returns and the next one fetched; the position steps over
it once it reaches it (:func:`hidden_tail`, :func:`step_over_hidden`).

Stateless functions; the fetch state they take is the caller's, lock held
(ipc/fetcher.py, ipc/consumer.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvlog.batch import next_offset, read_header
from kvlog.control_batch import ABORT, marker_type

if TYPE_CHECKING:
    from .fetcher import PartitionFetchState


def visible_batches(
    bases: list[int], batches: list[bytes], aborted: list[list[int]] | None
) -> list[tuple[int, bytes]]:
    """The batches a consumer reads: never control batches (transaction markers); with
    ``aborted`` (a read_committed fetch's ``[producer id, first offset]`` list), not the
    transactional batches of a producer from its aborted transaction's first offset up to
    its abort marker either (Kafka's consumer rule)."""
    pending = sorted((first, pid) for pid, first in aborted or [])
    active: set[int] = set()
    out = []
    for base, raw in zip(bases, batches, strict=True):
        header = read_header(raw)
        while pending and pending[0][0] <= next_offset(base, raw) - 1:
            active.add(pending.pop(0)[1])
        if header.is_control:
            if header.producer_id in active and marker_type(raw) == ABORT:
                active.discard(header.producer_id)
            continue
        if header.is_transactional and header.producer_id in active:
            continue
        out.append((base, raw))
    return out


def hidden_tail(
    fetched_from: int, kept: list[tuple[int, bytes]], fetch_offset: int
) -> tuple[int, int] | None:
    """(from, to): the markers or aborted records a fetch from ``fetched_from`` dropped
    at its end, before the next ``fetch_offset``; None when it dropped none there."""
    last_kept = next_offset(*kept[-1]) if kept else fetched_from
    return (last_kept, fetch_offset) if last_kept < fetch_offset else None


def step_over_hidden(state: PartitionFetchState, drained: bool) -> None:
    """Move a position that reached a hidden tail, with nothing left before it
    (``drained``), over it (poll() with offsets updated)."""
    skip = state.skip
    if skip is not None and state.position == skip[0] and drained:
        state.position = skip[1]  # over markers and aborted records
        state.skip = None


__all__ = ["hidden_tail", "step_over_hidden", "visible_batches"]
