"""Transactions (KIP-98): AddPartitionsToTxn (v0-2), AddOffsetsToTxn (v0-2), EndTxn (v0-2)
and TxnOffsetCommit (v0-3), events of the transaction coordinator
(:mod:`workers.txn_core`) in the coordinator process (nodes relay them there).

The versions before Kafka's flexible encoding are served, and TxnOffsetCommit v3 (the
first flexible one): it carries the consumer's group metadata (KIP-447: generation,
member id, group instance id), with which the coordinator fences a zombie consumer's
producer (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID). What is Kafka's only, and
so here: the versions that predate PRODUCER_FENCED (AddPartitionsToTxn, AddOffsetsToTxn
and EndTxn before v2, TxnOffsetCommit before v3, InitProducerId before v4) get
INVALID_PRODUCER_EPOCH for it, as Kafka's brokers answer them (clients of those versions
treat it the same way: fenced, fatal); a request-level error of AddPartitionsToTxn or
TxnOffsetCommit is every partition's error (their responses have no other place for it).
"""

from __future__ import annotations

from typing import Any

from kvlog.errors import ErrorCode, KvlogError
from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest
from kvlog.types import TopicPartition

from ..group_events import OffsetCommitAnswer
from ..txn_events import AddOffsetsToTxn, AddPartitionsToTxn, EndTxn, TxnOffsetCommit
from .base import KafkaContext, Outcome, Plan, handles
from .offsets import commit_entries

_AddPartitions = response_class(ApiKey.AddPartitionsToTxn)
_TopicResult = _AddPartitions.AddPartitionsToTxnTopicResult
_PartitionResult = _TopicResult.AddPartitionsToTxnPartitionResult
_AddOffsets = response_class(ApiKey.AddOffsetsToTxn)
_EndTxn = response_class(ApiKey.EndTxn)
_TxnCommit = response_class(ApiKey.TxnOffsetCommit)
_CommitTopic = _TxnCommit.TxnOffsetCommitResponseTopic
_CommitPartition = _CommitTopic.TxnOffsetCommitResponsePartition

# The first version of each API that knows PRODUCER_FENCED (90).
FENCED_FROM = {
    ApiKey.AddPartitionsToTxn: 2,
    ApiKey.AddOffsetsToTxn: 2,
    ApiKey.EndTxn: 2,
    ApiKey.TxnOffsetCommit: 3,
    ApiKey.InitProducerId: 4,
}


def kafka_code(error: KvlogError | None, api_key: int, version: int) -> int:
    """The error code for a request of ``api_key`` at ``version``."""
    if error is None:
        return 0
    if error.code is ErrorCode.PRODUCER_FENCED and version < FENCED_FROM[api_key]:
        return int(ErrorCode.INVALID_PRODUCER_EPOCH)
    return int(error.code)


def _by_topic(pairs: list[tuple[TopicPartition, int]]) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for tp, code in pairs:
        out.setdefault(tp.topic, []).append((tp.partition, code))
    return out


@handles(ApiKey.AddPartitionsToTxn)
def add_partitions_to_txn(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body, version = request.body, request.api_version
    partitions = [
        TopicPartition(t.name, p) for t in body.v3_and_below_topics or () for p in t.partitions
    ]
    event = AddPartitionsToTxn(
        body.v3_and_below_transactional_id or "",
        body.v3_and_below_producer_id,
        body.v3_and_below_producer_epoch,
        partitions,
    )

    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        key = ApiKey.AddPartitionsToTxn
        if outcome.error is not None:
            code = kafka_code(outcome.error, key, version)
            codes = [(tp, code) for tp in partitions]
        else:
            codes = [(tp, kafka_code(e, key, version)) for tp, e in outcome.body.results]
        return _AddPartitions(
            throttle_time_ms=0,
            results_by_topic_v3_and_below=[
                _TopicResult(
                    name=topic,
                    results_by_partition=[
                        _PartitionResult(partition_index=p, partition_error_code=c)
                        for p, c in parts
                    ],
                )
                for topic, parts in _by_topic(codes).items()
            ],
        )

    return Plan([event], respond)


@handles(ApiKey.AddOffsetsToTxn)
def add_offsets_to_txn(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body, version = request.body, request.api_version
    event = AddOffsetsToTxn(
        body.transactional_id or "", body.producer_id, body.producer_epoch, body.group_id or ""
    )

    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        code = kafka_code(outcome.error, ApiKey.AddOffsetsToTxn, version)
        return _AddOffsets(throttle_time_ms=0, error_code=code)

    return Plan([event], respond)


@handles(ApiKey.EndTxn)
def end_txn(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body, version = request.body, request.api_version
    event = EndTxn(
        body.transactional_id or "", body.producer_id, body.producer_epoch, bool(body.committed)
    )

    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        return _EndTxn(
            throttle_time_ms=0, error_code=kafka_code(outcome.error, ApiKey.EndTxn, version)
        )

    return Plan([event], respond)


@handles(ApiKey.TxnOffsetCommit)
def txn_offset_commit(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body, version = request.body, request.api_version
    entries = commit_entries(body)
    event = TxnOffsetCommit(
        body.transactional_id or "",
        body.group_id or "",
        body.producer_id,
        body.producer_epoch,
        entries,
        # v3 (KIP-447): the consumer's group metadata; the schema's defaults (-1, "",
        # null) before, which the coordinator does not check.
        generation=body.generation_id,
        member_id=body.member_id or "",
        instance_id=body.group_instance_id,
    )

    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        key = ApiKey.TxnOffsetCommit
        if outcome.error is not None:
            code = kafka_code(outcome.error, key, version)
            codes = [(e.tp, code) for e in entries]
        else:
            answer: OffsetCommitAnswer = outcome.body
            codes = [(p.tp, kafka_code(p.error, key, version)) for p in answer.partitions]
        return _TxnCommit(
            throttle_time_ms=0,
            topics=[
                _CommitTopic(
                    name=topic,
                    partitions=[
                        _CommitPartition(partition_index=p, error_code=c) for p, c in parts
                    ],
                )
                for topic, parts in _by_topic(codes).items()
            ],
        )

    return Plan([event], respond)


__all__ = [
    "FENCED_FROM",
    "add_offsets_to_txn",
    "add_partitions_to_txn",
    "end_txn",
    "kafka_code",
    "txn_offset_commit",
]
