"""Helpers for the tests of a node's Kafka listener (not a test module): Kafka record sets
built by kafka-python's own record builder, raw Produce/Fetch/ListOffsets/... requests at
any version, and where each node's Kafka listener is."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from kafka.protocol.admin import DeleteRecordsRequest
from kafka.protocol.consumer import FetchRequest, ListOffsetsRequest, OffsetForLeaderEpochRequest
from kafka.protocol.producer import ProduceRequest
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka_wire import RawClient

import kvlog
from kvlog import control_batch, kafka_batch

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int]


def record_set(
    values: Sequence[bytes | None],
    *,
    codec: int = 0,
    keys: Sequence[bytes | None] | None = None,
    headers: Sequence[list[tuple[str, bytes | None]]] | None = None,
    timestamps: Sequence[int] | None = None,
    producer: tuple[int, int, int] = (-1, -1, -1),
    transactional: bool = False,
) -> bytes:
    """One RecordBatch v2 as a Kafka client sends it (kafka-python's builder)."""
    pid, epoch, seq = producer
    builder = MemoryRecordsBuilder(
        magic=2,
        compression_type=codec,
        batch_size=1 << 26,
        transactional=transactional,
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
    )
    now = int(time.time() * 1000)
    for i, value in enumerate(values):
        builder.append(
            timestamp=timestamps[i] if timestamps else now,
            key=keys[i] if keys else None,
            value=value,
            headers=list(headers[i]) if headers else [],
        )
    builder.close()
    return bytes(builder.buffer())


def control_record_set(commit: bool = True, producer: tuple[int, int] = (9, 0)) -> bytes:
    """A transaction marker as a (misbehaving) client would send it in a Produce request:
    only partition leaders write markers."""
    marker = control_batch.build(
        producer[0],
        producer[1],
        control_batch.COMMIT if commit else control_batch.ABORT,
        timestamp_ms=int(time.time() * 1000),
    )
    return kafka_batch.kafka_prefix(0, marker) + marker


def records_of(raw: Any) -> list[Record]:
    """(key, value, headers, timestamp) of each record in a Fetch response's record set,
    with its offset first."""
    out = []
    records = MemoryRecords(bytes(raw or b""))
    while (batch := records.next_batch()) is not None:
        for rec in batch:
            out.append((rec.offset, rec.key, rec.value, list(rec.headers), rec.timestamp))
    return out


def batch_bases(raw: Any) -> list[int]:
    out = []
    records = MemoryRecords(bytes(raw or b""))
    while (batch := records.next_batch()) is not None:
        out.append(batch.base_offset)
    return out


def produce(
    version: int,
    parts: Iterable[tuple[str, int, bytes | None]],
    *,
    acks: int = -1,
    timeout_ms: int = 10_000,
) -> Any:
    T = ProduceRequest.TopicProduceData
    topics: dict[str, list[Any]] = {}
    for topic, partition, records in parts:
        topics.setdefault(topic, []).append(
            T.PartitionProduceData(index=partition, records=records)
        )
    return ProduceRequest(
        version=version,
        transactional_id=None,
        acks=acks,
        timeout_ms=timeout_ms,
        topic_data=[T(name=t, partition_data=p) for t, p in topics.items()],
    )


def fetch(
    version: int,
    parts: Iterable[tuple[str, int, int]],
    *,
    max_wait_ms: int = 0,
    min_bytes: int = 1,
    max_bytes: int = 1 << 24,
    partition_max_bytes: int = 1 << 22,
    isolation_level: int = 0,
    session_id: int = 0,
    session_epoch: int = -1,
    leader_epoch: int = -1,
) -> Any:
    FT = FetchRequest.FetchTopic
    topics: dict[str, list[Any]] = {}
    for topic, partition, offset in parts:
        topics.setdefault(topic, []).append(
            FT.FetchPartition(
                partition=partition,
                current_leader_epoch=leader_epoch,
                fetch_offset=offset,
                log_start_offset=-1,
                partition_max_bytes=partition_max_bytes,
            )
        )
    return FetchRequest(
        version=version,
        replica_id=-1,
        max_wait_ms=max_wait_ms,
        min_bytes=min_bytes,
        max_bytes=max_bytes,
        isolation_level=isolation_level,
        session_id=session_id,
        session_epoch=session_epoch,
        topics=[FT(topic=t, partitions=p) for t, p in topics.items()],
        forgotten_topics_data=[],
        rack_id="",
    )


def list_offsets(
    version: int,
    parts: Iterable[tuple[str, int, int]],
    *,
    leader_epoch: int = -1,
    isolation: int = 0,
) -> Any:
    T = ListOffsetsRequest.ListOffsetsTopic
    topics: dict[str, list[Any]] = {}
    for topic, partition, timestamp in parts:
        topics.setdefault(topic, []).append(
            T.ListOffsetsPartition(
                partition_index=partition,
                current_leader_epoch=leader_epoch,
                timestamp=timestamp,
                max_num_offsets=1,
            )
        )
    return ListOffsetsRequest(
        version=version,
        replica_id=-1,
        isolation_level=isolation,
        topics=[T(name=t, partitions=p) for t, p in topics.items()],
    )


def offset_for_leader_epoch(
    version: int, parts: Iterable[tuple[str, int, int]], *, current: int = -1
) -> Any:
    T = OffsetForLeaderEpochRequest.OffsetForLeaderTopic
    topics: dict[str, list[Any]] = {}
    for topic, partition, epoch in parts:
        topics.setdefault(topic, []).append(
            T.OffsetForLeaderPartition(
                partition=partition, current_leader_epoch=current, leader_epoch=epoch
            )
        )
    return OffsetForLeaderEpochRequest(
        version=version,
        replica_id=-1,
        topics=[T(topic=t, partitions=p) for t, p in topics.items()],
    )


def delete_records(version: int, parts: Iterable[tuple[str, int, int]]) -> Any:
    T = DeleteRecordsRequest.DeleteRecordsTopic
    topics: dict[str, list[Any]] = {}
    for topic, partition, offset in parts:
        topics.setdefault(topic, []).append(
            T.DeleteRecordsPartition(partition_index=partition, offset=offset)
        )
    return DeleteRecordsRequest(
        version=version,
        topics=[T(name=t, partitions=p) for t, p in topics.items()],
        timeout_ms=10_000,
    )


def partition_results(response: Any) -> list[Any]:
    """Every partition entry of a response, in order (whatever the API calls them)."""
    out = []
    for topic in getattr(response, "responses", None) or getattr(response, "topics", []):
        parts = getattr(topic, "partition_responses", None)
        out += parts if parts is not None else topic.partitions
    return out


def node_address(broker: Any, node_id: int = 0) -> str:
    """Where node ``node_id`` listens for Kafka clients (the supervisor's plan)."""
    return broker.kafka_plan.nodes[node_id].advertised


def wait_led(broker: Any, topic: str, partitions: int, timeout_s: float = 20.0) -> dict[int, int]:
    """Partition -> the node id whose Kafka listener leads it, once every partition has
    a leader that answers ListOffsets."""
    deadline = time.monotonic() + timeout_s
    nodes = sorted(broker.kafka_plan.nodes)
    while True:
        led: dict[int, int] = {}
        for node in nodes:
            with RawClient(node_address(broker, node)) as client:
                response = client.send(list_offsets(1, [(topic, p, -1) for p in range(partitions)]))
            for entry in partition_results(response):
                if entry.error_code == 0:
                    led[entry.partition_index] = node
        if len(led) == partitions:
            return led
        if time.monotonic() > deadline:
            raise AssertionError(f"{topic}: partitions led so far {led}")
        time.sleep(0.05)


def create_topic(
    broker: Any, topic: str, partitions: int = 1, rf: int = 1, **config: Any
) -> dict[int, int]:
    with kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin:
        admin.create_topic(
            topic, partitions=partitions, replication_factor=rf, config=config or None
        )
    return wait_led(broker, topic, partitions)
