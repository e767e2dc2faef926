"""OffsetForLeaderEpoch (v2-3): where a leader epoch ends in the leader's log.

A node's handler (:mod:`workers.kafka_node_shell`). Consumers ask it after a leader
change (librdkafka validates its position with it, KIP-320): the node core answers from
the epoch cache kvlog keeps for its followers (:mod:`kvlog.epochs`), with the largest
epoch at or below the one asked for and where it ends, and fences a stale
``current_leader_epoch``. ``replica_id`` (v3) is not used: kvlog's followers ask on their
own wire.
"""

from __future__ import annotations

from typing import Any

from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest
from kvlog.types import TopicPartition

from ..node_model import EpochEndOffset, EpochQuery, OffsetForLeaderEpoch
from .base import KafkaContext, Outcome, Plan, error_code

_Response = response_class(ApiKey.OffsetForLeaderEpoch)
_Topic = _Response.OffsetForLeaderTopicResult
_Partition = _Topic.EpochEndOffset


def offset_for_leader_epoch(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    queries = [
        EpochQuery(
            TopicPartition(topic.topic or "", p.partition), p.leader_epoch, p.current_leader_epoch
        )
        for topic in request.body.topics or ()
        for p in topic.partitions or ()
    ]

    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        if outcome.error is not None:
            ends = [EpochEndOffset(q.tp, outcome.error) for q in queries]
        else:
            ends = outcome.body.partitions
        topics: dict[str, list[Any]] = {}
        for e in ends:
            topics.setdefault(e.tp.topic, []).append(
                _Partition(
                    error_code=error_code(e.error),
                    partition=e.tp.partition,
                    leader_epoch=e.leader_epoch,
                    end_offset=e.end_offset,
                )
            )
        return _Response(
            throttle_time_ms=0,
            topics=[_Topic(topic=name, partitions=parts) for name, parts in topics.items()],
        )

    return Plan([OffsetForLeaderEpoch(None, queries)], respond)
