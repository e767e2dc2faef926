"""Committed offsets: OffsetCommit (v2-7) and OffsetFetch (v1-5), events of the offsets
core (:mod:`workers.offsets_core`) over the same store the ZeroMQ wire uses, so an offset
a Kafka client commits is the one ``kvlog groups describe`` shows, and
``kvlog groups reset-offsets`` moves it for both kinds of client.

A commit's request-level error (a stale generation, an unknown member) is every
partition's error, as Kafka answers it. OffsetCommit's retention time (v2-4) is ignored:
committed offsets stay until their group is deleted. Leader epochs are not kept
(OffsetFetch v5 answers -1).
"""

from __future__ import annotations

from typing import Any

from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest
from kvlog.types import TopicPartition

from ..group_events import CommitEntry, OffsetCommit, OffsetCommitAnswer, OffsetFetch
from .base import KafkaContext, Outcome, Plan, handles

_Commit = response_class(ApiKey.OffsetCommit)
_CommitTopic = _Commit.OffsetCommitResponseTopic
_CommitPartition = _CommitTopic.OffsetCommitResponsePartition
_Fetch = response_class(ApiKey.OffsetFetch)
_FetchTopic = _Fetch.OffsetFetchResponseTopic
_FetchPartition = _FetchTopic.OffsetFetchResponsePartition


def _by_topic(pairs: list[tuple[TopicPartition, Any]]) -> dict[str, list[tuple[int, Any]]]:
    out: dict[str, list[tuple[int, Any]]] = {}
    for tp, value in pairs:
        out.setdefault(tp.topic, []).append((tp.partition, value))
    return out


def commit_entries(body: Any) -> list[CommitEntry]:
    """The offsets of an OffsetCommit or TxnOffsetCommit body (their topics share a shape)."""
    return [
        CommitEntry(
            TopicPartition(t.name, p.partition_index),
            p.committed_offset,
            p.committed_metadata or "",
        )
        for t in body.topics or ()
        for p in t.partitions or ()
    ]


@handles(ApiKey.OffsetCommit)
def offset_commit(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body, version = request.body, request.api_version
    entries = commit_entries(body)
    event = OffsetCommit(
        group_id=body.group_id,
        offsets=entries,
        generation=body.generation_id_or_member_epoch,
        member_id=body.member_id or "",
        instance_id=(body.group_instance_id or None) if version >= 7 else None,
    )

    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        if outcome.error is not None:
            codes = [(e.tp, outcome.code) for e in entries]
        else:
            answer: OffsetCommitAnswer = outcome.body
            codes = [(p.tp, 0 if p.error is None else int(p.error.code)) for p in answer.partitions]
        return _Commit(
            throttle_time_ms=0,
            topics=[
                _CommitTopic(
                    name=topic,
                    partitions=[
                        _CommitPartition(partition_index=p, error_code=code) for p, code in parts
                    ],
                )
                for topic, parts in _by_topic(codes).items()
            ],
        )

    return Plan([event], respond)


@handles(ApiKey.OffsetFetch)
def offset_fetch(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body = request.body
    partitions = None
    if body.topics is not None:
        partitions = [
            TopicPartition(t.name, p) for t in body.topics for p in t.partition_indexes or ()
        ]
    event = OffsetFetch(body.group_id, partitions)

    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        if outcome.error is not None:
            found: list[tuple[TopicPartition, Any]] = [(tp, None) for tp in partitions or ()]
        else:
            found = [(f.tp, f.committed) for f in outcome.body.partitions]
        return _Fetch(
            throttle_time_ms=0,
            error_code=outcome.code,
            topics=[
                _FetchTopic(
                    name=topic,
                    partitions=[
                        _FetchPartition(
                            partition_index=p,
                            committed_offset=-1 if c is None else c.offset,
                            committed_leader_epoch=-1,
                            metadata="" if c is None else c.metadata,
                            error_code=outcome.code,
                        )
                        for p, c in parts
                    ],
                )
                for topic, parts in _by_topic(found).items()
            ],
        )

    return Plan([event], respond)
