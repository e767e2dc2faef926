"""The codec adapter, the framing and the sans-IO connection, against kafka-python's own
encoders and decoders (what its clients put on the wire and read back)."""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.protocol.consumer import FetchRequest, FetchResponse
from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse
from kafka.protocol.producer import ProduceRequest, ProduceResponse

from kvlog.ipc.kafka import codec
from kvlog.ipc.kafka.api_versions import api_versions_response
from kvlog.ipc.kafka.connection import CLOSED, NEED_DATA, PAUSED, KafkaConnection
from kvlog.ipc.kafka.framing import FrameReader, KafkaProtocolError, peek_request
from kvlog.ipc.kafka.versions import SERVED, ApiVersionRange, VersionTable

ALL_VERSIONS = VersionTable(
    [
        ApiVersionRange(codec.ApiKey.ApiVersions, 0, 2),
        ApiVersionRange(codec.ApiKey.Produce, 0, 8, served_min=3),
        ApiVersionRange(codec.ApiKey.Fetch, 4, 11),
    ]
)


API_VERSIONS_ONLY = VersionTable([ApiVersionRange(codec.ApiKey.ApiVersions, 0, 2)])


def encoded(request: Any, correlation_id: int = 1, client_id: str | None = "test") -> bytes:
    request.with_header(correlation_id=correlation_id, client_id=client_id)
    return bytes(request.encode(header=True, framed=True))


def produce(version: int, records: list[bytes], acks: int = -1) -> Any:
    topic = ProduceRequest.TopicProduceData
    return ProduceRequest(
        version=version,
        transactional_id=None,
        acks=acks,
        timeout_ms=1000,
        topic_data=[
            topic(
                name="t",
                partition_data=[
                    topic.PartitionProduceData(index=i, records=r) for i, r in enumerate(records)
                ],
            )
        ],
    )


def fetch_response(records: list[Any]) -> Any:
    topic = FetchResponse.FetchableTopicResponse
    return FetchResponse(
        throttle_time_ms=0,
        error_code=0,
        session_id=0,
        responses=[
            topic(
                topic="t",
                partitions=[
                    topic.PartitionData(
                        partition_index=i,
                        error_code=0,
                        high_watermark=5,
                        last_stable_offset=5,
                        log_start_offset=0,
                        aborted_transactions=None,
                        preferred_read_replica=-1,
                        records=r,
                    )
                    for i, r in enumerate(records)
                ],
            )
        ],
    )


def joined(buffers: list[Any]) -> bytes:
    return b"".join(bytes(b) for b in buffers)


# -- codec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 7, 8, 9, 13])
def test_produce_records_arrive_as_the_bytes_sent(version):
    records = [os.urandom(1000), b"", os.urandom(70_000)]
    frame_bytes = encoded(produce(version, records))[4:]
    api_key, api_version, correlation_id = peek_request(frame_bytes)
    client_id, body = codec.decode_request(frame_bytes, api_key, api_version)
    assert (api_key, api_version, correlation_id, client_id) == (0, version, 1, "test")
    got = [p.records for p in body.topic_data[0].partition_data]
    assert got == records
    assert all(type(r) is bytes for r in got)  # not parsed: opaque bytes


@pytest.mark.parametrize("version", [4, 7, 11, 12, 16])
@pytest.mark.parametrize(
    "records",
    [
        [b"one batch"],
        [[b"\x00" * 12, memoryview(b"stored batch"), b"more"], None, b""],
        [[]],
    ],
)
def test_fetch_response_splices_record_sets_exactly(version, records):
    spliced = codec.encode_response(codec.ApiKey.Fetch, version, 42, fetch_response(records))
    reference = fetch_response([joined(r) if isinstance(r, list) else r for r in records])
    reference.API_VERSION = version
    reference.with_header(correlation_id=42)
    assert joined(spliced) == bytes(reference.encode(header=True, framed=True))
    decoded = FetchResponse.decode(joined(spliced)[4:], version=version, header=True)
    assert decoded.header.correlation_id == 42


def test_fetch_record_buffers_are_not_copied():
    stored = memoryview(bytearray(os.urandom(1 << 20)))
    out = codec.encode_response(codec.ApiKey.Fetch, 11, 1, fetch_response([[b"x" * 12, stored]]))
    assert any(b is stored for b in out)
    assert sum(len(b) for b in out) < len(stored) + 200


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=5),
    version=st.sampled_from([4, 11, 12]),
)
def test_fetch_splicing_matches_kafka_python_for_any_sizes(sizes, version):
    records = [os.urandom(n) for n in sizes]
    out = joined(codec.encode_response(codec.ApiKey.Fetch, version, 9, fetch_response(records)))
    decoded = FetchResponse.decode(out[4:], version=version, header=True)
    assert [p.records for p in decoded.responses[0].partitions] == records


def test_response_type_and_version_are_checked():
    with pytest.raises(TypeError):
        codec.encode_response(codec.ApiKey.Fetch, 4, 1, ProduceResponse(responses=[]))
    response = ProduceResponse(version=7, responses=[], throttle_time_ms=0)
    with pytest.raises(ValueError, match="v7"):
        codec.encode_response(codec.ApiKey.Produce, 8, 1, response)


def test_api_versions_response_header_is_v0_even_when_flexible():
    request = ApiVersionsRequest(version=3, client_software_name="a", client_software_version="b")
    frame_bytes = encoded(request)[4:]
    conn = KafkaConnection(VersionTable([ApiVersionRange(codec.ApiKey.ApiVersions, 0, 3)]))
    conn.receive_data(struct.pack(">i", len(frame_bytes)) + frame_bytes)
    event = conn.next_event()
    conn.send_response(event, api_versions_response(event, conn.table))
    out = joined(conn.data_to_send())
    # length, correlation id, then straight to the body's error code: no header tags
    assert struct.unpack_from(">iih", out) == (len(out) - 4, 1, 0)
    response = ApiVersionsResponse.decode(out[4:], version=3, header=True)
    assert response.error_code == 0


def test_a_schema_cannot_be_served_past_what_the_codec_knows():
    with pytest.raises(ValueError, match="beyond"):
        ApiVersionRange(codec.ApiKey.ApiVersions, 0, 99)
    with pytest.raises(ValueError, match="twice"):
        VersionTable([ApiVersionRange(18, 0, 1), ApiVersionRange(18, 0, 2)])
    entry = ApiVersionRange(codec.ApiKey.Produce, 0, 8, served_min=3)
    assert entry.advertises(0) and not entry.serves(2) and entry.serves(3)


def test_the_served_table_is_what_kvlog_advertises():
    # Advertise exactly what is served (librdkafka sends any advertised API), non-flexible.
    K = codec.ApiKey
    assert {r.api_key: (r.min_version, r.max_version) for r in SERVED} == {
        K.ApiVersions: (0, 2),
        K.Metadata: (0, 8),
        K.SaslHandshake: (0, 1),
        K.SaslAuthenticate: (0, 1),
        K.FindCoordinator: (0, 2),
        K.JoinGroup: (0, 5),
        K.SyncGroup: (0, 3),
        K.Heartbeat: (0, 3),
        K.LeaveGroup: (0, 3),
        K.OffsetCommit: (2, 7),
        K.OffsetFetch: (1, 5),
        K.DescribeGroups: (0, 4),
        K.ListGroups: (0, 2),
        K.DeleteGroups: (0, 1),
        K.InitProducerId: (0, 4),
        K.AddPartitionsToTxn: (0, 2),
        K.AddOffsetsToTxn: (0, 2),
        K.EndTxn: (0, 2),
        K.TxnOffsetCommit: (0, 3),
        K.CreateTopics: (2, 4),
        K.DeleteTopics: (1, 3),
        K.CreatePartitions: (0, 1),
        K.DescribeConfigs: (1, 3),
        K.AlterConfigs: (0, 1),
        K.IncrementalAlterConfigs: (0, 1),
        K.DescribeAcls: (0, 1),
        K.CreateAcls: (0, 1),
        K.DeleteAcls: (0, 1),
        K.Produce: (0, 8),
        K.Fetch: (4, 11),
        K.ListOffsets: (1, 5),
        K.OffsetForLeaderEpoch: (2, 3),
        K.DeleteRecords: (0, 1),
    }
    assert SERVED.get(K.Produce).served_min == 3


# -- framing ---------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=10, max_size=300), min_size=1, max_size=5),
    cuts=st.lists(st.integers(1, 50), max_size=30),
)
def test_frames_survive_any_chunking(payloads, cuts):
    stream = b"".join(struct.pack(">i", len(p)) + p for p in payloads)
    reader = FrameReader()
    frames = []
    pos = 0
    for cut in [*cuts, len(stream)]:
        frames += reader.feed(stream[pos : pos + cut])
        pos += cut
    assert [bytes(f) for f in frames] == payloads
    assert reader.buffered == 0


def test_frame_length_limits():
    with pytest.raises(KafkaProtocolError, match="negative"):
        FrameReader().feed(struct.pack(">i", -1))
    with pytest.raises(KafkaProtocolError, match=r"socket\.request\.max\.bytes=100"):
        FrameReader(100).feed(struct.pack(">i", 101))
    assert FrameReader(100).feed(struct.pack(">i", 100)) == []  # waits for the bytes


# -- connection ------------------------------------------------------------------------------


def test_requests_fed_byte_by_byte():
    conn = KafkaConnection(ALL_VERSIONS)
    stream = encoded(ApiVersionsRequest(version=2), 5) + encoded(produce(8, [b"abc"]), 6)
    events = []
    for i in range(len(stream)):
        conn.receive_data(stream[i : i + 1])
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
    assert [(e.api_key, e.correlation_id) for e in events] == [(18, 5), (0, 6)]
    assert events[1].body.topic_data[0].partition_data[0].records == b"abc"
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED


def test_produce_with_acks_0_owes_no_response():
    conn = KafkaConnection(ALL_VERSIONS)
    conn.receive_data(encoded(produce(8, [b"x"], acks=0)))
    event = conn.next_event()
    assert not event.expects_response and conn.pending == 0
    with pytest.raises(ValueError, match="acks=0"):
        conn.send_response(event, ProduceResponse(responses=[]))


def test_pause_after_max_pending_and_resume_when_answered():
    conn = KafkaConnection(max_pending=2)
    conn.receive_data(b"".join(encoded(ApiVersionsRequest(version=2), i) for i in range(3)))
    first, second = conn.next_event(), conn.next_event()
    assert conn.next_event() is PAUSED and not conn.wants_data
    conn.send_response(second, api_versions_response(second))
    assert conn.data_to_send() == []  # the first is not answered: nothing may leave
    conn.send_response(first, api_versions_response(first))
    out = joined(conn.data_to_send())
    assert [struct.unpack_from(">i", out, 4)[0]] == [0]
    third = conn.next_event()
    assert third.correlation_id == 2
    with pytest.raises(ValueError, match="answered already"):
        conn.send_response(first, api_versions_response(first))


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (encoded(ApiVersionsRequest(version=2))[:-1] + b"", "inside a frame"),
        (struct.pack(">i", 12) + struct.pack(">hhih", 3, 1, 1, 0) + b"\x00\x00", "not served"),
        (encoded(produce(9, [b"x"])), "outside the served versions"),
        (
            encoded(
                FetchRequest(
                    version=4,
                    replica_id=-1,
                    max_wait_ms=1,
                    min_bytes=1,
                    max_bytes=1,
                    isolation_level=0,
                    topics=[],
                )
            ),
            "Fetch",
        ),
    ],
)
def test_protocol_errors_are_raised_once_and_kill_the_connection(stream, reason):
    conn = KafkaConnection(ALL_VERSIONS if reason != "Fetch" else API_VERSIONS_ONLY)
    conn.receive_data(stream)
    conn.receive_data(b"")
    with pytest.raises(KafkaProtocolError, match=reason):
        conn.next_event()
    with pytest.raises(KafkaProtocolError):
        conn.next_event()
    assert not conn.wants_data


def test_garbage_body_is_a_protocol_error_not_a_crash():
    header = struct.pack(">hhih", 0, 8, 1, 0)
    body = b"\xff" * 7
    conn = KafkaConnection(ALL_VERSIONS)
    conn.receive_data(struct.pack(">i", len(header) + len(body)) + header + body)
    with pytest.raises(KafkaProtocolError, match="does not decode"):
        conn.next_event()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_any_bytes_give_events_or_the_one_error(data):
    conn = KafkaConnection(ALL_VERSIONS)
    conn.receive_data(data)
    conn.receive_data(b"")
    for _ in range(50):
        try:
            event = conn.next_event()
        except KafkaProtocolError:
            return
        if event is CLOSED:
            return
        assert event is not NEED_DATA
