"""Fetch (v4-11): whole batches from the leader, each as a Kafka RecordBatch v2.

A node's handler (:mod:`workers.kafka_node_shell`). The request becomes one
:class:`~workers.node_model.Fetch` for the node core, which decides everything about it:
the long poll (``max_wait_ms``, ``min_bytes``: parked until data arrives or the wait ends),
the limits (per partition ``partition_max_bytes``, the request's ``max_bytes``; the first
batch always comes back whole, KIP-74), the batch that contains the fetch offset first,
reads below the high watermark, KIP-320's leader epoch fencing (v9+). What is Kafka's
only is here:

- fetch sessions (KIP-227, v7+) are declined: a request for a new one (session id 0,
  epoch 0) is answered as a full fetch with session id 0, which tells the client no
  session exists; one naming a session gets FETCH_SESSION_ID_NOT_FOUND, a positive epoch
  without one INVALID_FETCH_SESSION_EPOCH;
- ``isolation_level`` (v4+) is the core's: ``read_committed`` reads below the last
  stable offset and gets the aborted transactions overlapping what it read (the core's
  ``aborted``, Kafka's ``aborted_transactions``); every partition carries the LSO;
- the bytes, per batch (never per record in Python): a stored Kafka batch is its 12
  bytes (base offset, length) put back in front of the stored buffer, which the listener
  hands to ``sendmsg`` as it is; a native kvlog batch is converted to a RecordBatch v2 in
  C (:func:`kvlog.kafka_batch.to_record_set`). A stored zstd batch for a client below v10
  is UNSUPPORTED_COMPRESSION_TYPE for its partition, as in Kafka (KIP-110).
"""

from __future__ import annotations

from typing import Any

from kvlog.batch import KAFKA_MAGIC
from kvlog.codecs import Codec
from kvlog.errors import (
    FetchSessionIdNotFoundError,
    InvalidFetchSessionEpochError,
    KvlogError,
    UnsupportedCompressionTypeError,
)
from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest
from kvlog.kafka_batch import to_record_set
from kvlog.types import TopicPartition

from ..node_model import READ_COMMITTED, Fetch, FetchedPartition, FetchPartition, FetchResponse
from .base import KafkaContext, Outcome, Plan, error_code

_Response = response_class(ApiKey.Fetch)
_Topic = _Response.FetchableTopicResponse
_Partition = _Topic.PartitionData
_Aborted = _Partition.AbortedTransaction
INT32_MAX = 2**31 - 1
ZSTD_FROM_VERSION = 10  # KIP-110
SESSIONS_FROM_VERSION = 7  # KIP-227
LEADER_EPOCH_FROM_VERSION = 9  # KIP-320: current_leader_epoch
_CODEC_AT = 10  # in the stored form: attributes (int16) at 9; the codec is bits 0-2


def fetch(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body, version = request.body, request.api_version
    session_error = _session_error(body, version)
    if session_error is not None:
        return Plan([], lambda outcomes: _refused(session_error))
    parts = [
        FetchPartition(
            TopicPartition(topic.topic or "", p.partition),
            p.fetch_offset,
            max(1, p.partition_max_bytes),
            -1,
            p.current_leader_epoch if version >= LEADER_EPOCH_FROM_VERSION else -1,
        )
        for topic in body.topics or ()
        for p in topic.partitions or ()
    ]
    event = Fetch(
        None,
        parts,
        max_bytes=max(1, body.max_bytes if body.max_bytes is not None else INT32_MAX),
        min_bytes=max(0, body.min_bytes),
        max_wait_ms=max(0, body.max_wait_ms),
        replica_id=-1,  # kvlog's followers fetch on its own wire; a Kafka client consumes
        isolation_level=READ_COMMITTED if body.isolation_level == READ_COMMITTED else 0,
    )

    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        if outcome.error is not None:  # the request refused as a whole
            failed = [FetchedPartition(p.tp, outcome.error) for p in parts]
            return _response(failed, version)
        answer: FetchResponse = outcome.body
        return _response(answer.partitions, version)

    return Plan([event], respond)


def _session_error(body: Any, version: int) -> KvlogError | None:
    if version < SESSIONS_FROM_VERSION:
        return None
    if body.session_id:
        return FetchSessionIdNotFoundError(
            f"fetch session {body.session_id}: kvlog keeps no fetch sessions; send full "
            "fetch requests (session id 0)"
        )
    if body.session_epoch > 0:
        return InvalidFetchSessionEpochError(
            f"fetch session epoch {body.session_epoch} without a session: use -1 or 0"
        )
    return None


def _refused(error: KvlogError) -> Any:
    return _Response(throttle_time_ms=0, error_code=int(error.code), session_id=0, responses=[])


def _response(partitions: list[FetchedPartition], version: int) -> Any:
    topics: dict[str, list[Any]] = {}
    for p in partitions:
        topics.setdefault(p.tp.topic, []).append(_partition(p, version))
    return _Response(
        throttle_time_ms=0,
        error_code=0,
        session_id=0,
        responses=[_Topic(topic=name, partitions=parts) for name, parts in topics.items()],
    )


def _partition(p: FetchedPartition, version: int) -> Any:
    records: list[Any] = []
    code = error_code(p.error)
    if not code:
        try:
            for base, stored in p.batches:
                if version < ZSTD_FROM_VERSION and _is_kafka_zstd(stored):
                    raise UnsupportedCompressionTypeError(
                        f"{p.tp}@{base} is zstd-compressed: fetch with v{ZSTD_FROM_VERSION}+"
                    )
                records += to_record_set(base, stored)
        except KvlogError as exc:
            code, records = int(exc.code), []
    failed = code != 0
    return _Partition(
        partition_index=p.tp.partition,
        error_code=code,
        high_watermark=p.high_watermark,
        last_stable_offset=p.last_stable_offset,
        log_start_offset=p.log_start_offset,
        aborted_transactions=None
        if p.aborted is None or failed
        else [_Aborted(producer_id=pid, first_offset=first) for pid, first in p.aborted],
        preferred_read_replica=-1,
        records=b"" if failed or not records else records,
    )


def _is_kafka_zstd(stored: bytes) -> bool:
    return stored[4] == KAFKA_MAGIC and stored[_CODEC_AT] & 7 == Codec.ZSTD


__all__ = ["fetch"]
