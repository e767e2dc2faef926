"""The node's requests and reply bodies on kvlog's ZeroMQ wire (PROTOCOL.md 3.3-3.6).

Decoding turns a request's fields and frames into the node cores' typed requests
(``workers/node_model.py``), checking every field (a bad one raises INVALID_REQUEST or
INVALID_PARTITIONS naming it); encoding turns the cores' typed bodies into the reply
fields and frames. Field order is the wire's: keep it (replies are compared byte for
byte with PROTOCOL.md's examples).
"""

from __future__ import annotations

from typing import Any

from kvlog.errors import InvalidRequestError, KvlogError
from kvlog.ipc.wire import INT32_MAX, Request, check_int, check_map, check_str
from kvlog.types import TopicPartition, check_partition

from .node_model import (
    Fetch,
    FetchedPartition,
    FetchPartition,
    FetchResponse,
    ListOffsets,
    ListOffsetsResponse,
    NodeStatus,
    Produce,
    ProduceResponse,
    TxnMarker,
    WriteTxnMarkers,
)

MAX_ENTRIES = 100_000


def _tp(entry: object, where: str) -> TopicPartition:
    if isinstance(entry, dict):
        topic, partition = entry.get("topic"), entry.get("partition")
    elif isinstance(entry, list) and len(entry) == 2:
        topic, partition = entry
    else:
        raise InvalidRequestError(f"{where}: each entry must be [topic, partition] or a map")
    return TopicPartition(
        check_str(topic, f"{where}.topic", max_len=249), check_partition(partition)
    )


# -- requests --------------------------------------------------------------------------------


def decode_produce(req: Request, token: Any) -> Produce:
    acks = req.int("acks", -1, low=-1, high=1)
    timeout_ms = req.int("timeout_ms", 30_000, low=0, high=INT32_MAX)
    entries = req.list("partitions", max_len=MAX_ENTRIES)
    if len(entries) != len(req.frames):
        raise InvalidRequestError(
            f"produce lists {len(entries)} partitions but carries {len(req.frames)} "
            "batch frames; each partition entry needs exactly one frame"
        )
    pairs = [(_tp(e, "partitions"), frame) for e, frame in zip(entries, req.frames, strict=True)]
    transactional_id = req.opt_str("transactional_id", max_len=32_767)
    return Produce(token, acks, pairs, timeout_ms, transactional_id)


def decode_fetch(req: Request, token: Any) -> Fetch:
    max_wait_ms = req.int("max_wait_ms", 500, low=0, high=INT32_MAX)
    min_bytes = req.int("min_bytes", 1, low=0, high=INT32_MAX)
    max_bytes = req.int("max_bytes", 50 << 20, low=1, high=INT32_MAX)
    replica_id = req.int("replica_id", -1, low=-1, high=INT32_MAX)
    isolation_level = req.int("isolation_level", 0, low=0, high=1)
    parts = []
    for i, entry in enumerate(req.list("partitions", max_len=MAX_ENTRIES)):
        where = f"partitions[{i}]"
        entry = check_map(entry, where)
        parts.append(
            FetchPartition(
                _tp(entry, where),
                check_int(entry.get("offset"), f"{where}.offset", low=0),
                check_int(
                    entry.get("max_bytes", 1 << 20), f"{where}.max_bytes", low=1, high=INT32_MAX
                ),
                check_int(
                    entry.get("last_fetched_epoch", -1),
                    f"{where}.last_fetched_epoch",
                    low=-1,
                    high=INT32_MAX,
                ),
                check_int(
                    entry.get("leader_epoch", -1),
                    f"{where}.leader_epoch",
                    low=-1,
                    high=INT32_MAX,
                ),
            )
        )
    return Fetch(token, parts, max_bytes, min_bytes, max_wait_ms, replica_id, isolation_level)


def decode_list_offsets(req: Request, token: Any) -> ListOffsets:
    isolation_level = req.int("isolation_level", 0, low=0, high=1)
    out = []
    for i, entry in enumerate(req.list("partitions", max_len=MAX_ENTRIES)):
        where = f"partitions[{i}]"
        entry = check_map(entry, where)
        tp = _tp(entry, where)
        out.append((tp, check_int(entry.get("timestamp", -1), f"{where}.timestamp")))
    return ListOffsets(token, out, isolation_level=isolation_level)


def decode_write_txn_markers(req: Request, token: Any) -> WriteTxnMarkers:
    """The coordinator's internal ``write_txn_markers`` (PROTOCOL.md 3.x)."""
    markers = []
    for i, entry in enumerate(req.list("markers", max_len=MAX_ENTRIES)):
        where = f"markers[{i}]"
        entry = check_map(entry, where)
        committed = entry.get("committed")
        if not isinstance(committed, bool):
            raise InvalidRequestError(f"{where}.committed must be a bool")
        markers.append(
            TxnMarker(
                _tp(entry, where),
                check_int(entry.get("producer_id"), f"{where}.producer_id", low=0),
                check_int(entry.get("producer_epoch"), f"{where}.producer_epoch", low=0),
                committed,
                check_int(
                    entry.get("leader_epoch", -1), f"{where}.leader_epoch", low=-1, high=INT32_MAX
                ),
                check_int(
                    entry.get("coordinator_epoch", 0),
                    f"{where}.coordinator_epoch",
                    low=0,
                    high=INT32_MAX,
                ),
            )
        )
    timeout_ms = req.int("timeout_ms", 5000, low=0, high=INT32_MAX)
    return WriteTxnMarkers(token, markers, timeout_ms)


# -- reply bodies ----------------------------------------------------------------------------


def _error_fields(error: KvlogError) -> dict[str, Any]:
    return {"error": int(error.code), "message": error.message}


def produce_fields(body: ProduceResponse) -> dict[str, Any]:
    results = []
    for p in body.partitions:
        if p.error is not None:
            results.append(_error_fields(p.error))
        else:
            results.append(
                {"error": 0, "base_offset": p.base_offset, "log_start_offset": p.log_start_offset}
            )
    return {"results": results}


def fetched_header(p: FetchedPartition) -> dict[str, Any]:
    out: dict[str, Any] = {
        "topic": p.tp.topic,
        "partition": p.tp.partition,
        "error": 0 if p.error is None else int(p.error.code),
        "high_watermark": p.high_watermark,
        "log_start_offset": p.log_start_offset,
        "bases": [base for base, _ in p.batches],
    }
    if p.error is not None:
        out["message"] = p.error.message
    if p.log_end_offset >= 0:
        out["log_end_offset"] = p.log_end_offset
    if p.diverging is not None:
        out["diverging_epoch"] = {"epoch": p.diverging[0], "end_offset": p.diverging[1]}
    if p.aborted is not None:  # a read_committed fetch
        out["last_stable_offset"] = p.last_stable_offset
        out["aborted_transactions"] = [[pid, first] for pid, first in p.aborted]
    if p.open_transactions is not None:  # a follower fetch below the log start
        out["open_transactions"] = [[pid, first] for pid, first in p.open_transactions]
    return out


def fetch_reply(body: FetchResponse) -> tuple[dict[str, Any], list[bytes]]:
    """The reply fields and its batch frames (entry k owns the next len(bases) frames)."""
    fields = {"partitions": [fetched_header(p) for p in body.partitions]}
    return fields, [batch for p in body.partitions for _, batch in p.batches]


def list_offsets_fields(body: ListOffsetsResponse) -> dict[str, Any]:
    out = []
    for p in body.partitions:
        item: dict[str, Any] = {"topic": p.tp.topic, "partition": p.tp.partition}
        if p.error is None:
            item.update(error=0, offset=p.offset, timestamp=p.timestamp)
        else:
            item.update(error=int(p.error.code), message=p.error.message, offset=-1, timestamp=-1)
        out.append(item)
    return {"partitions": out}


def status_fields(body: NodeStatus) -> dict[str, Any]:
    return {"node_id": body.node_id, "metadata_version": body.metadata_version}


__all__ = [
    "decode_fetch",
    "decode_list_offsets",
    "decode_produce",
    "decode_write_txn_markers",
    "fetch_reply",
    "fetched_header",
    "list_offsets_fields",
    "produce_fields",
    "status_fields",
]
