"""Produce (advertised v0-8, served v3-8): Kafka record batches into the leader's group commit.

A node's handler (:mod:`workers.kafka_node_shell`). Each partition's record set must be
exactly one RecordBatch v2 (:func:`kvlog.kafka_batch.from_record_set`: the 12 bytes kvlog
does not store are checked and dropped, nothing is copied); the batches go to the node
core as one :class:`~workers.node_model.Produce`, where the leader checks each batch's
header and CRC, runs its idempotence checks (the same for Kafka's batches as for kvlog's),
appends in the turn's group commit, fsyncs and answers: at once for acks=1, once every
in-sync replica has it for acks=-1. Decided here, before the core, because they are
about Kafka's wire only: v0-2 (advertised for librdkafka's sake, KAFKA-18659) get
UNSUPPORTED_VERSION per partition; a record set that is not one v2 batch gets Kafka's
error for it; zstd before v7 gets UNSUPPORTED_COMPRESSION_TYPE (KIP-110); ``acks`` other
than 0, 1, -1 gets INVALID_REQUIRED_ACKS.

acks=0 has no response (kafka.protocol knows: ``expects_response``). The core decides it
as acks=1, whose answer comes after the same group commit, so the shell learns whether a
partition failed: Kafka then closes the connection, so that the client notices and
refreshes its metadata (:func:`first_error` tells the shell).
"""

from __future__ import annotations

from typing import Any

from kvlog.batch import HEADER_SIZE
from kvlog.codecs import Codec
from kvlog.errors import (
    InvalidRequiredAcksError,
    KvlogError,
    UnsupportedCompressionTypeError,
    UnsupportedVersionError,
)
from kvlog.ipc.acks import ACKS_ALL, ACKS_LEADER, ACKS_NONE
from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest
from kvlog.ipc.kafka.versions import SERVED
from kvlog.kafka_batch import from_record_set
from kvlog.types import TopicPartition

from ..node_model import Produce, ProducedPartition, ProduceResponse
from .base import KafkaContext, Outcome, Plan, error_code

_Response = response_class(ApiKey.Produce)
_Topic = _Response.TopicProduceResponse
_Partition = _Topic.PartitionProduceResponse
_SERVED_FROM = SERVED.get(ApiKey.Produce).served_min  # type: ignore[union-attr]
ZSTD_FROM_VERSION = 7  # KIP-110
_CODEC_AT = 10  # in the stored form: attributes (int16) at 9; the codec is bits 0-2


def produce(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body, version = request.body, request.api_version
    # Per partition, in request order: its place in the core's entries, or its error.
    slots: list[tuple[TopicPartition, int | KvlogError]] = []
    entries: list[tuple[TopicPartition, Any]] = []
    refusal = _refusal(version, body.acks)
    for topic in body.topic_data or ():
        for part in topic.partition_data or ():
            tp = TopicPartition(topic.name or "", part.index)
            if refusal is not None:
                slots.append((tp, refusal))
                continue
            try:
                batch = from_record_set(part.records or b"")
                if version < ZSTD_FROM_VERSION and _codec(batch) == Codec.ZSTD:
                    raise UnsupportedCompressionTypeError(
                        f"zstd needs Produce v{ZSTD_FROM_VERSION}+ (this request is v{version})"
                    )
            except KvlogError as exc:
                slots.append((tp, exc))
                continue
            slots.append((tp, len(entries)))
            entries.append((tp, batch))
    # acks=0: the core answers as for acks=1, so a failure can close the connection.
    acks = ACKS_LEADER if body.acks == ACKS_NONE else body.acks
    steps: list[Any] = []
    if entries:
        steps.append(
            Produce(None, acks, entries, max(0, body.timeout_ms), body.transactional_id or None)
        )

    def respond(outcomes: list[Outcome]) -> Any:
        outcome = outcomes[0] if outcomes else Outcome()
        return _response(slots, outcome, version)

    return Plan(steps, respond)


def _codec(stored: memoryview) -> int:
    # The attributes' low byte (a batch too short to have one is the leader's to refuse).
    return stored[_CODEC_AT] & 7 if len(stored) >= HEADER_SIZE else Codec.NONE


def _refusal(version: int, acks: int) -> KvlogError | None:
    if version < _SERVED_FROM:
        return UnsupportedVersionError(
            f"Produce v{version} carries message format v0/v1, which kvlog does not store; "
            f"use Produce v{_SERVED_FROM}+ (RecordBatch v2, every client since Kafka 0.11)"
        )
    if acks not in (ACKS_NONE, ACKS_LEADER, ACKS_ALL):
        return InvalidRequiredAcksError(f"acks={acks}: use 0, 1 or -1 (all)")
    return None


def _response(
    slots: list[tuple[TopicPartition, int | KvlogError]], outcome: Outcome, version: int
) -> Any:
    produced: list[ProducedPartition] = []
    if outcome.error is None and isinstance(outcome.body, ProduceResponse):
        produced = outcome.body.partitions
    topics: dict[str, list[Any]] = {}
    for tp, slot in slots:
        if isinstance(slot, KvlogError):
            result = ProducedPartition(tp, slot)
        elif outcome.error is not None:  # the request refused as a whole
            result = ProducedPartition(tp, outcome.error)
        else:
            result = produced[slot]
        topics.setdefault(tp.topic, []).append(_partition(result, version))
    return _Response(
        responses=[_Topic(name=name, partition_responses=parts) for name, parts in topics.items()],
        throttle_time_ms=0,
    )


def _partition(p: ProducedPartition, version: int) -> Any:
    return _Partition(
        index=p.tp.partition,
        error_code=error_code(p.error),
        base_offset=p.base_offset if p.error is None else -1,
        log_append_time_ms=-1,
        log_start_offset=p.log_start_offset if p.error is None else -1,
        record_errors=[],
        error_message=None if p.error is None or version < 8 else p.error.message,
    )


def first_error(response: Any) -> str | None:
    """What failed in a Produce response (for acks=0, whose response is not sent)."""
    for topic in response.responses:
        for part in topic.partition_responses:
            if part.error_code:
                return f"{topic.name}-{part.index}: error {part.error_code}"
    return None
