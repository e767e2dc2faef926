"""DeleteRecords on the leader, without sockets: moving partitions' log start offsets.

Kafka's DeleteRecords (and nothing on kvlog's ZeroMQ wire yet): each partition's log start
moves to the offset asked for (-1: the high watermark), and the whole batches below it go,
in one durable write (:meth:`LeaderCore.write`, which stores the moved high watermarks
first, since the store never moves a log start past its stored one). An offset past the
high watermark is OFFSET_OUT_OF_RANGE, as in Kafka; one below the log start changes
nothing. The answer is the new log start (the low watermark). Followers move their own
log start when their next fetch shows the leader's (``follower_core``); the answer does
not wait for them.
"""

from __future__ import annotations

import logging

from kvlog.errors import KvlogError, OffsetOutOfRangeError
from kvlog.log import WriteTxn

from .core_result import Result
from .leader_core import LeaderCore
from .node_model import DeletedRecords, DeleteRecords, DeleteRecordsResponse

log = logging.getLogger(__name__)


def delete_records(leader: LeaderCore, request: DeleteRecords) -> Result:
    """Answer ``request`` after its one write (a failed one takes the log dir offline)."""
    out: list[DeletedRecords] = []
    targets: list[tuple[DeletedRecords, int]] = []
    for tp, offset in request.partitions:
        done = DeletedRecords(tp)
        out.append(done)
        try:
            hw = leader.leader_for(tp).high_watermark
            target = hw if offset == -1 else offset
            if not 0 <= target <= hw:
                raise OffsetOutOfRangeError(
                    f"cannot delete the records of {tp} before offset {offset}: it must "
                    f"be -1 (the high watermark) or 0..{hw} (the high watermark)"
                )
        except KvlogError as exc:
            done.error = exc
            continue
        targets.append((done, target))
    if targets:

        def write(w: WriteTxn) -> list[int]:
            return [w.delete_before(d.tp, target).log_start_offset for d, target in targets]

        try:
            starts = leader.write(write)
        except Exception as exc:  # nothing was written
            error = leader.write_failed("deleting records", exc)
            for done, _ in targets:
                done.error = error
        else:
            for (done, _), start in zip(targets, starts, strict=True):
                done.low_watermark = start
                log.info("node %d: %s now starts at %d", leader.node_id, done.tp, start)
    return Result().reply(request.token, DeleteRecordsResponse(out))


__all__ = ["delete_records"]
