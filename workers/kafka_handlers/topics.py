"""Topic admin: CreateTopics (v2-4), DeleteTopics (v1-3), CreatePartitions (v0-1), one
controller event per topic (:mod:`workers.controller_core`), answered once the nodes
host the change, as on the ZeroMQ wire. ``validate_only`` makes every check and changes
nothing. CreateTopics v4's -1 partitions or replication factor take the broker's
``num.partitions`` / ``default.replication.factor`` (KIP-464). kvlog places replicas
itself: a request that assigns them gets INVALID_REPLICA_ASSIGNMENT for that topic.
"""

from __future__ import annotations

from typing import Any

from kvlog.errors import InvalidReplicaAssignmentError
from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest

from ..controller_events import CreatePartitions, CreateTopic, DeleteTopic
from .base import KafkaContext, Outcome, Plan, handles

_Create = response_class(ApiKey.CreateTopics)
_Delete = response_class(ApiKey.DeleteTopics)
_Partitions = response_class(ApiKey.CreatePartitions)


def _placed_by_kvlog(what: str) -> Outcome:
    return Outcome(
        error=InvalidReplicaAssignmentError(
            f"{what}: kvlog places replicas itself; leave the assignment out"
        )
    )


@handles(ApiKey.CreateTopics)
def create_topics(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body = request.body
    names = [t.name for t in body.topics or ()]
    steps: list[Any] = []
    for topic in body.topics or ():
        if topic.assignments:
            steps.append(_placed_by_kvlog(f"topic {topic.name!r}"))
            continue
        steps.append(
            CreateTopic(
                topic.name,
                topic.num_partitions,
                topic.replication_factor,
                {c.name: c.value for c in topic.configs or () if c.value is not None},
                validate_only=bool(body.validate_only),
                broker_defaults=request.api_version >= 4,
            )
        )

    def respond(outcomes: list[Outcome]) -> Any:
        return _Create(
            throttle_time_ms=0,
            topics=[
                _Create.CreatableTopicResult(name=name, error_code=o.code, error_message=o.message)
                for name, o in zip(names, outcomes, strict=True)
            ],
        )

    return Plan(steps, respond)


@handles(ApiKey.DeleteTopics)
def delete_topics(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    names = list(request.body.topic_names or ())

    def respond(outcomes: list[Outcome]) -> Any:
        return _Delete(
            throttle_time_ms=0,
            responses=[
                _Delete.DeletableTopicResult(name=name, error_code=o.code)
                for name, o in zip(names, outcomes, strict=True)
            ],
        )

    return Plan([DeleteTopic(name) for name in names], respond)


@handles(ApiKey.CreatePartitions)
def create_partitions(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body = request.body
    names = [t.name for t in body.topics or ()]
    steps: list[Any] = [
        _placed_by_kvlog(f"topic {t.name!r}")
        if t.assignments
        else CreatePartitions(t.name, t.count, validate_only=bool(body.validate_only))
        for t in body.topics or ()
    ]

    def respond(outcomes: list[Outcome]) -> Any:
        return _Partitions(
            throttle_time_ms=0,
            results=[
                _Partitions.CreatePartitionsTopicResult(
                    name=name, error_code=o.code, error_message=o.message
                )
                for name, o in zip(names, outcomes, strict=True)
            ],
        )

    return Plan(steps, respond)
