"""Metadata (v0-8): brokers, the controller, topics and their partitions' leaders.

One function, :func:`metadata_response`, turns a :class:`MetadataAnswer` into Kafka's
response wherever it is asked: the coordinator answers from its controller state, the
broker from its cache (and a node can from its own view). Brokers are the live nodes
that have a Kafka listener (broker id = node id) and the coordinator
(:data:`COORDINATOR_BROKER_ID`), listed so that clients reach it as the controller:
kafka-python and the Java admin client look the controller id up among the brokers, and
librdkafka finds it there too. Topics the principal may not describe are left out, or
refused by name (:func:`visible_topics`).

Which topics: v0's empty list and v1+'s null mean every topic; auto-creation is what the
request allows (v4+; before v4 Kafka always allowed it), decided by the core with the
broker's ``auto.create.topics.enable``.
"""

from __future__ import annotations

from typing import Any

from kvlog.errors import ErrorCode
from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest

from .. import kafka_addresses
from ..controller_events import (
    COORDINATOR_BROKER_ID,
    Metadata,
    MetadataAnswer,
    MissingTopic,
    TopicEntry,
    visible_topics,
)
from .base import KafkaContext, Outcome, Plan, handles

CLUSTER_ID = "kvlog"
_Response = response_class(ApiKey.Metadata)
_Broker = _Response.MetadataResponseBroker
_Topic = _Response.MetadataResponseTopic
_Partition = _Topic.MetadataResponsePartition


def split_host_port(address: str) -> tuple[str, int]:
    """An advertised ``"host:port"`` (an IPv4 literal) as Kafka's metadata carries it."""
    return kafka_addresses.split_host_port("Kafka endpoint", address)


def requested_topics(request: Any, version: int) -> list[str] | None:
    """The topic names asked for (None: every topic)."""
    topics = request.topics
    if topics is None or (version == 0 and not topics):
        return None
    return [t.name for t in topics]


@handles(ApiKey.Metadata)
def metadata(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body, version = request.body, request.api_version
    names = requested_topics(body, version)
    allow = bool(body.allow_auto_topic_creation) if version >= 4 else True
    event = Metadata(names, allow_auto_create=allow and names is not None)

    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        if outcome.error is not None:  # no metadata yet: every topic asked for waits
            code = int(outcome.error.code)
            missing: list[TopicEntry | MissingTopic] = [
                MissingTopic(n, ErrorCode(code)) for n in names or ()
            ]
            return metadata_response(MetadataAnswer(-1, [], missing), ctx, names is not None)
        return metadata_response(outcome.body, ctx, names is not None)

    return Plan([event], respond)


def metadata_response(answer: MetadataAnswer, ctx: KafkaContext, by_name: bool) -> Any:
    """Kafka's Metadata response for a metadata answer (the one encoding of it)."""
    alive = {n.node_id for n in answer.nodes if n.alive}
    brokers = [
        _Broker(node_id=n.node_id, host=host, port=port, rack=None)
        for n in answer.nodes
        if n.alive and n.kafka_endpoint
        for host, port in [split_host_port(n.kafka_endpoint)]
    ]
    controller = -1
    if answer.coordinator_kafka:
        host, port = split_host_port(answer.coordinator_kafka)
        brokers.append(_Broker(node_id=COORDINATOR_BROKER_ID, host=host, port=port, rack=None))
        controller = COORDINATOR_BROKER_ID
    topics = answer.topics
    if ctx.authorizer is not None:
        topics = visible_topics(
            topics,
            lambda name: ctx.may("topic", name, "describe"),
            ctx.principal,
            by_name=by_name,
        )
    return _Response(
        throttle_time_ms=0,
        brokers=brokers,
        cluster_id=CLUSTER_ID,
        controller_id=controller,
        topics=[_topic(t, alive) for t in topics],
    )


def _topic(topic: TopicEntry | MissingTopic, alive: set[int]) -> Any:
    if isinstance(topic, MissingTopic):
        return _Topic(error_code=int(topic.code), name=topic.name, is_internal=False, partitions=[])
    return _Topic(
        error_code=0,
        name=topic.name,
        is_internal=False,
        partitions=[
            _Partition(
                error_code=0 if p.leader >= 0 else int(ErrorCode.LEADER_NOT_AVAILABLE),
                partition_index=p.partition,
                leader_id=p.leader,
                leader_epoch=p.leader_epoch,
                replica_nodes=p.replicas,
                isr_nodes=p.isr,
                offline_replicas=[r for r in p.replicas if r not in alive],
            )
            for p in topic.partitions
        ],
    )
