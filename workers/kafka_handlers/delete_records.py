"""DeleteRecords (v0-1): move partitions' log start offsets forward.

A node's handler (:mod:`workers.kafka_node_shell`); admin clients send it to each
partition's leader. The node core (``workers/delete_records_core.py``) moves the log start
to the offset asked for (-1: the high watermark; past it: OFFSET_OUT_OF_RANGE), dropping the
whole batches below it, in one durable write, and answers with the new log start (the
low watermark). Followers move theirs when their next fetch shows the leader's; the
answer does not wait for them (Kafka's does; ``timeout_ms`` is not used).
"""

from __future__ import annotations

from typing import Any

from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest
from kvlog.types import TopicPartition

from ..node_model import DeletedRecords, DeleteRecords
from .base import KafkaContext, Outcome, Plan, error_code

_Response = response_class(ApiKey.DeleteRecords)
_Topic = _Response.DeleteRecordsTopicResult
_Partition = _Topic.DeleteRecordsPartitionResult


def delete_records(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body = request.body
    asked = [
        (TopicPartition(topic.name or "", p.partition_index), p.offset)
        for topic in body.topics or ()
        for p in topic.partitions or ()
    ]

    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        if outcome.error is not None:
            done = [DeletedRecords(tp, outcome.error) for tp, _ in asked]
        else:
            done = outcome.body.partitions
        topics: dict[str, list[Any]] = {}
        for d in done:
            topics.setdefault(d.tp.topic, []).append(
                _Partition(
                    partition_index=d.tp.partition,
                    low_watermark=d.low_watermark,
                    error_code=error_code(d.error),
                )
            )
        return _Response(
            throttle_time_ms=0,
            topics=[_Topic(name=name, partitions=parts) for name, parts in topics.items()],
        )

    return Plan([DeleteRecords(None, asked, max(0, body.timeout_ms))], respond)
