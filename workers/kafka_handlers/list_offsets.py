"""ListOffsets (v1-5): earliest, latest or by timestamp, from the leader.

A node's handler (:mod:`workers.kafka_node_shell`): one
:class:`~workers.node_model.ListOffsets` for the node core, which answers each partition
(-2: the log start, -1: the high watermark, else the first record at or after the
timestamp) with the leader epoch of the offset (v4+) and fences a stale
``current_leader_epoch`` (v4+, KIP-320). With ``isolation_level`` read_committed (v2+)
latest is the last stable offset.
"""

from __future__ import annotations

from typing import Any

from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest
from kvlog.types import TopicPartition

from ..node_model import READ_COMMITTED, ListedOffset, ListOffsets, ListOffsetsResponse
from .base import KafkaContext, Outcome, Plan, error_code

_Response = response_class(ApiKey.ListOffsets)
_Topic = _Response.ListOffsetsTopicResponse
_Partition = _Topic.ListOffsetsPartitionResponse
LEADER_EPOCH_FROM_VERSION = 4
ISOLATION_FROM_VERSION = 2


def list_offsets(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body, version = request.body, request.api_version
    asked: list[tuple[TopicPartition, int]] = []
    epochs: dict[TopicPartition, int] = {}
    for topic in body.topics or ():
        for p in topic.partitions or ():
            tp = TopicPartition(topic.name or "", p.partition_index)
            asked.append((tp, p.timestamp))
            if version >= LEADER_EPOCH_FROM_VERSION and p.current_leader_epoch >= 0:
                epochs[tp] = p.current_leader_epoch

    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        if outcome.error is not None:
            listed = [ListedOffset(tp, outcome.error) for tp, _ in asked]
        else:
            answer: ListOffsetsResponse = outcome.body
            listed = answer.partitions
        topics: dict[str, list[Any]] = {}
        for p in listed:
            topics.setdefault(p.tp.topic, []).append(
                _Partition(
                    partition_index=p.tp.partition,
                    error_code=error_code(p.error),
                    timestamp=p.timestamp,
                    offset=p.offset,
                    leader_epoch=p.leader_epoch,
                )
            )
        return _Response(
            throttle_time_ms=0,
            topics=[_Topic(name=name, partitions=parts) for name, parts in topics.items()],
        )

    committed = version >= ISOLATION_FROM_VERSION and body.isolation_level == READ_COMMITTED
    isolation = READ_COMMITTED if committed else 0
    return Plan([ListOffsets(None, asked, epochs, isolation)], respond)
