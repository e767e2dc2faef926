"""Where a consumer reads each assigned partition from, and from where again when that
position leaves the log.

- A partition without a position starts at the group's committed offset, else at
  ``auto.offset.reset`` (earliest or latest; ``none``: NoOffsetForPartitionError). A group
  member that starts at ``latest`` on a partition that already holds records says once
  how many it skips and which setting reads them: a work queue started after its jobs
  would otherwise do nothing, in silence.
- A position the log no longer holds (OFFSET_OUT_OF_RANGE: retention, DeleteRecords, a
  truncation, or a topic deleted and created again under a committed offset) is reset
  once with ``auto.offset.reset`` (logged, naming the partition and both offsets), never
  to the committed offset, which would only lead back out of range. With ``none`` every
  poll() raises OffsetOutOfRangeError until the application seeks.

Lookups stop at the poll's deadline (KafkaTimeoutError), so poll(timeout) returns in time
while the broker is down; the next poll tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kvlog.errors import KvlogError, NoOffsetForPartitionError, OffsetOutOfRangeError
from kvlog.types import TopicPartition

from .fetcher import Fetcher, out_of_range_message
from .lookups import Lookups
from .rpc import IOThread

log = logging.getLogger(__name__)

EARLIEST = -2
LATEST = -1


class Positions:
    """Owned by one Consumer and used on its thread, except :meth:`on_out_of_range` (the
    I/O thread). Partition state is the fetcher's, under its lock. ``group()`` is the
    consumer's group membership, if it has one (it may come after this object)."""

    def __init__(
        self,
        fetcher: Fetcher,
        lookups: Lookups,
        io: IOThread,
        *,
        reset: str,
        group_id: str | None,
        group: Callable[[], Any],
        buffered_elsewhere: Callable[[TopicPartition], bool],
    ) -> None:
        self.fetcher = fetcher
        self.lookups = lookups
        self.io = io
        self.reset = reset
        self.group_id = group_id
        self.group = group
        # Records of a partition decoded but not handed out yet (the consumer's): a reset
        # waits until the application has them.
        self.buffered_elsewhere = buffered_elsewhere
        self.lock = fetcher.lock
        self.skip_warned: set[TopicPartition] = set()

    def settle(self, deadline: float) -> None:
        """Resolve new partitions' positions and reset those that left the log."""
        with self.lock:
            states = self.fetcher.states
            unresolved = [tp for tp, s in states.items() if s.position is None]
            left_log = [
                tp
                for tp, s in states.items()
                if s.reset_pending and not s.buffered and not self.buffered_elsewhere(tp)
            ]
        if unresolved:
            self.resolve(unresolved, deadline)
        if left_log:
            self.reset_out_of_range(left_log, deadline)

    def resolve(self, tps: list[TopicPartition], deadline: float | None = None) -> None:
        """Committed offset (groups), else auto.offset.reset."""
        committed: dict[TopicPartition, int] = {}
        group = self.group()
        if group is not None:
            committed = group.offsets.committed_positions(tps, fail_fast=True)
        need = [tp for tp in tps if tp not in committed]
        if need and self.reset == "none":
            raise NoOffsetForPartitionError(
                f"no committed offset for {', '.join(map(str, need))} and "
                "auto.offset.reset is 'none'; seek() first or set auto.offset.reset"
            )
        which = EARLIEST if self.reset == "earliest" else LATEST
        found = self.lookups.list_offsets(dict.fromkeys(need, which), deadline) if need else {}
        if which == LATEST and group is not None:
            self._warn_skipped([tp for tp in need if tp not in self.skip_warned], found, deadline)
        with self.lock:
            for tp in tps:
                state = self.fetcher.states.get(tp)
                if state is None or state.position is not None:
                    continue
                offset = committed[tp] if tp in committed else found[tp][0]
                self.fetcher.reset_state(state, offset)
        self.io.wake()

    def _warn_skipped(
        self,
        tps: list[TopicPartition],
        latest: dict[TopicPartition, tuple[int, int]],
        deadline: float | None,
    ) -> None:
        if not tps:
            return
        earliest = self.lookups.list_offsets(dict.fromkeys(tps, EARLIEST), deadline)
        for tp in tps:
            self.skip_warned.add(tp)
            skipped = latest[tp][0] - earliest[tp][0]
            if skipped > 0:
                log.warning(
                    "group %s has no committed offset for %s: auto.offset.reset=latest starts "
                    "at offset %d and skips the %d record(s) already there; set "
                    "auto.offset.reset='earliest' to read them",
                    self.group_id,
                    tp,
                    latest[tp][0],
                    skipped,
                )

    def on_out_of_range(self, tp: TopicPartition, exc: KvlogError) -> None:
        """The I/O thread's news that a fetch position left the log: fetching stops and
        the next poll() resets the position or raises."""
        with self.lock:
            state = self.fetcher.states.get(tp)
            if state is None:
                return
            state.reset_pending = True
            self.lock.notify_all()

    def reset_out_of_range(self, tps: list[TopicPartition], deadline: float | None) -> None:
        begins = self.lookups.list_offsets(dict.fromkeys(tps, EARLIEST), deadline)
        ends = self.lookups.list_offsets(dict.fromkeys(tps, LATEST), deadline)
        refused: list[str] = []
        with self.lock:
            for tp in tps:
                state = self.fetcher.states.get(tp)
                if state is None or not state.reset_pending:
                    continue  # sought meanwhile
                start, end = begins[tp][0], ends[tp][0]
                where = out_of_range_message(tp, state.fetch_offset, start, end)
                if self.reset == "none":
                    refused.append(where)
                    continue
                target = start if self.reset == "earliest" else end
                log.warning(
                    "%s; auto.offset.reset=%s: reading on from offset %d", where, self.reset, target
                )
                self.fetcher.reset_state(state, target)
        self.io.wake()
        if refused:
            raise OffsetOutOfRangeError(
                f"{'; '.join(refused)}. auto.offset.reset is 'none': seek() to an offset in "
                "that range (or seek_to_beginning() / seek_to_end()), or set "
                "auto.offset.reset to earliest or latest"
            )
