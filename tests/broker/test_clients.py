"""Producer, Consumer and Admin as a Kafka user drives them, against one shared broker.

Every test makes its own topics, so they share the module's broker without interfering.
"""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

import cbor2
import pytest
from brokertest_util import RawClient, leader_endpoint, read_partitions, unique_topic

import kvlog
from kvlog import batch as batch_format
from kvlog.codecs import Codec
from kvlog.errors import (
    ErrorCode,
    InvalidConfigError,
    InvalidTimestampError,
    KvlogError,
    NoOffsetForPartitionError,
    SerializationError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from kvlog.ipc.admin import PartitionMappingWarning
from kvlog.types import TopicPartition


def _topic(admin: Any, prefix: str, partitions: int = 1, **config: Any) -> str:
    name = unique_topic(prefix)
    admin.create_topic(name, partitions=partitions, config=config or None)
    return name


def _read(broker: Any, topic: str, partitions: int = 1, **consumer_config: Any) -> list[Any]:
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    read = read_partitions(broker.bootstrap, tps, **consumer_config)
    return [r for tp in tps for r in read[tp]]


# -- producer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_acks(broker: Any, admin: Any, acks: Any) -> None:
    topic = _topic(admin, f"acks{acks}")
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, acks=acks) as producer:
        futures = [producer.send(topic, value=b"%d" % i, partition=0) for i in range(20)]
        producer.flush(10)
        metas = [f.get(timeout=0) for f in futures]
    if acks == 0:  # nothing comes back: the offset is unknown, as in Kafka
        assert all(m.offset == -1 for m in metas)
        consumer = kvlog.Consumer(bootstrap_servers=broker.bootstrap)
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            # acks=0 returns before the leader wrote anything: poll for the end offset
            deadline = time.monotonic() + 10
            while consumer.end_offsets([tp])[tp] < 20 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            consumer.close()
    else:
        assert [m.offset for m in metas] == list(range(20))
    assert [r.value for r in _read(broker, topic)] == [b"%d" % i for i in range(20)]


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_compression_round_trip(broker: Any, admin: Any, codec: str) -> None:
    topic = _topic(admin, f"codec-{codec}")
    values = [b"record %d " % i * (i % 5 + 1) for i in range(200)]
    with kvlog.Producer(
        bootstrap_servers=broker.bootstrap, compression_type=codec, linger_ms=20
    ) as producer:
        for v in values:
            producer.send(topic, value=v, key=b"k", partition=0)
        producer.flush(10)
    assert [r.value for r in _read(broker, topic)] == values
    # The stored batches carry the codec (the leader keeps batches as the producer built them).
    tp = TopicPartition(topic, 0)
    client = RawClient(leader_endpoint(broker.bootstrap, tp))
    try:
        _, frames = client.request(
            "fetch",
            {"max_wait_ms": 0, "partitions": [{"topic": topic, "partition": 0, "offset": 0}]},
        )
    finally:
        client.close()
    assert frames and all(
        batch_format.read_header(f).codec is Codec.parse(codec) for f in frames
    ), [batch_format.read_header(f).codec for f in frames]


@pytest.mark.parametrize(
    ("serde", "key", "value"),
    [
        ("str", "héllo", "wörld"),
        ("json", {"a": [1, 2]}, {"b": None, "c": "x"}),
        ("cbor", [1, b"\x00", "x"], {"k": 1.5}),
    ],
)
def test_named_serializers_round_trip(
    broker: Any, admin: Any, serde: str, key: Any, value: Any
) -> None:
    topic = _topic(admin, f"serde-{serde}")
    with kvlog.Producer(
        bootstrap_servers=broker.bootstrap, key_serializer=serde, value_serializer=serde
    ) as producer:
        producer.send(topic, value=value, key=key).get(timeout=10)
        producer.send(topic, value=None, key=None).get(timeout=10)  # null stays null
    [raw, raw_null] = _read(broker, topic)
    encode = {"str": str.encode, "json": lambda v: json.dumps(v).encode(), "cbor": cbor2.dumps}
    if serde == "json":
        assert json.loads(raw.key) == key and json.loads(raw.value) == value
    else:
        assert (raw.key, raw.value) == (encode[serde](key), encode[serde](value))
    assert raw.serialized_key_size == len(raw.key)
    assert (raw_null.key, raw_null.value) == (None, None)
    [record, null] = _read(broker, topic, key_deserializer=serde, value_deserializer=serde)
    assert (record.key, record.value) == (key, value)
    assert (null.key, null.value) == (None, None)


def test_callable_serializers_round_trip(broker: Any, admin: Any) -> None:
    topic = _topic(admin, "serde-callable")
    with kvlog.Producer(
        bootstrap_servers=broker.bootstrap,
        key_serializer=lambda k: k.upper().encode(),
        value_serializer=lambda v: json.dumps(v).encode()[::-1],
    ) as producer:
        producer.send(topic, value={"n": 1}, key="callable").get(timeout=10)
    [raw] = _read(broker, topic)
    assert raw.key == b"CALLABLE" and raw.value == b'}1 :"n"{'
    [record] = _read(
        broker,
        topic,
        key_deserializer=lambda b: b.decode().lower(),
        value_deserializer=lambda b: json.loads(b[::-1]),
    )
    assert (record.key, record.value) == ("callable", {"n": 1})


def test_a_failing_serializer_raises_serialization_error(broker: Any, admin: Any) -> None:
    topic = _topic(admin, "serde-fail")
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, value_serializer="json") as p:
        with pytest.raises(SerializationError) as info:
            p.send(topic, value={1, 2})  # a set is not JSON
        assert "value_serializer" in str(info.value)
    with (
        kvlog.Producer(bootstrap_servers=broker.bootstrap) as p,
        pytest.raises(SerializationError, match="serializer"),
    ):
        p.send(topic, value=12345)  # no serializer: bytes (or str) only


def test_headers_and_timestamps_round_trip(broker: Any, admin: Any) -> None:
    topic = _topic(admin, "headers", partitions=1)
    now = int(time.time() * 1000)
    sent = [
        (b"k0", b"v0", [("trace", b"\x00\x01"), ("trace", b"dup name"), ("é", b"")], now - 5000),
        (None, b"no key, no headers", None, now - 4000),
        (b"k2", None, [("only", b"header")], now - 3000),  # a tombstone-like null value
    ]
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, linger_ms=50) as producer:
        metas = [
            producer.send(topic, value=v, key=k, headers=h, partition=0, timestamp_ms=ts)
            for k, v, h, ts in sent
        ]
        producer.flush(10)
        assert [m.get(0).timestamp for m in metas] == [ts for *_, ts in sent]
    got = _read(broker, topic)
    assert [(r.key, r.value, list(r.headers), r.timestamp) for r in got] == [
        (k, v, h or [], ts) for k, v, h, ts in sent
    ]


@pytest.mark.parametrize("bad", [-5, 1 << 63, 1.5, "now", True])
def test_an_invalid_timestamp_is_refused_by_send(broker: Any, admin: Any, bad: Any) -> None:
    """Such a timestamp cannot be encoded: accepted, it wedged the record (never sent,
    never failed) and close() waited for it forever."""
    topic = _topic(admin, "bad-ts")
    with kvlog.Producer(bootstrap_servers=broker.bootstrap) as producer:
        with pytest.raises(InvalidTimestampError, match="timestamp"):
            producer.send(topic, value=b"x", timestamp_ms=bad)
        with pytest.raises(InvalidTimestampError):
            producer.send_batch(topic, [b"x"], timestamp_ms=bad)
        assert producer.send(topic, value=b"ok", timestamp_ms=0).get(timeout=10).offset == 0
        producer.flush(10)


@pytest.mark.parametrize("bad", [5, "text", None])
def test_header_values_must_be_bytes(broker: Any, admin: Any, bad: Any) -> None:
    """bytes(5) would have stored five zero bytes."""
    topic = _topic(admin, "bad-header")
    with kvlog.Producer(bootstrap_servers=broker.bootstrap) as producer:
        with pytest.raises(SerializationError, match="header values must be bytes"):
            producer.send(topic, value=b"x", headers=[("h", bad)])
        producer.send(topic, value=b"x", headers=[("h", bytearray(b"ok"))]).get(timeout=10)
    assert [list(r.headers) for r in _read(broker, topic)] == [[("h", b"ok")]]


def test_dict_config_with_dotted_names(broker: Any, admin: Any) -> None:
    topic = _topic(admin, "dotted")
    producer = kvlog.Producer(
        {"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 1, "client.id": "p"}
    )
    with producer:
        assert producer.send(topic, value=b"x").get(timeout=10).offset == 0
    consumer = kvlog.Consumer(
        {"bootstrap.servers": broker.bootstrap, "auto.offset.reset": "earliest"},
        max_poll_records=7,
    )
    try:
        consumer.assign([TopicPartition(topic, 0)])
        assert [r.value for r in consumer.poll(timeout_ms=5000)[TopicPartition(topic, 0)]] == [b"x"]
    finally:
        consumer.close()
    with kvlog.Admin({"bootstrap.servers": broker.bootstrap, "request.timeout.ms": 5000}) as a:
        assert topic in a.list_topics()


@pytest.mark.parametrize(
    ("client", "wrong", "closest"),
    [
        ("Producer", "linger.msec", "linger.ms"),
        ("Producer", "acks_all", "acks"),
        ("Producer", "compresion.type", "compression.type"),
        ("Consumer", "auto.offset.rest", "auto.offset.reset"),
        ("Consumer", "max_poll_record", "max_poll_records"),
        ("Admin", "bootstrap.server", "bootstrap.servers"),
    ],
)
def test_unknown_config_name_names_the_closest(
    broker: Any, client: str, wrong: str, closest: str
) -> None:
    cls = getattr(kvlog, client)
    with pytest.raises(InvalidConfigError) as info:
        if "." in wrong:
            cls({"bootstrap.servers": broker.bootstrap, wrong: 1})
        else:
            cls(bootstrap_servers=broker.bootstrap, **{wrong: 1})
    assert wrong in str(info.value) and closest in str(info.value), str(info.value)


def test_bad_config_values_are_refused(broker: Any) -> None:
    for config, name in [
        ({"acks": 2}, "acks"),
        ({"compression.type": "brotli"}, "brotli"),
        ({"max.in.flight.requests.per.connection": 6}, "max.in.flight"),
    ]:
        with pytest.raises(InvalidConfigError) as info:
            kvlog.Producer({"bootstrap.servers": broker.bootstrap, **config})
        assert name in str(info.value)
    with pytest.raises(InvalidConfigError, match=r"auto\.offset\.reset"):
        kvlog.Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="newest")


def test_send_to_a_missing_topic(broker: Any) -> None:
    missing = unique_topic("missing")
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, max_block_ms=10_000) as producer:
        started = time.monotonic()
        with pytest.raises(UnknownTopicOrPartitionError) as info:
            producer.send(missing, value=b"x")
        assert time.monotonic() - started < 5, "the error waited for max.block.ms"
    message = str(info.value)
    assert missing in message and "create" in message, message


# -- consumer ----------------------------------------------------------------------------------


def _filled(admin: Any, broker: Any, prefix: str, count: int = 10) -> tuple[str, TopicPartition]:
    topic = _topic(admin, prefix)
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, linger_ms=0) as producer:
        for i in range(count):
            producer.send(topic, value=b"%d" % i, partition=0)
        producer.flush(10)
    return topic, TopicPartition(topic, 0)


def _poll_values(consumer: Any, tp: TopicPartition, want: int, timeout_s: float = 10) -> list:
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        out += [r.value for r in consumer.poll(timeout_ms=200).get(tp, [])]
    return out


def test_auto_offset_reset(broker: Any, admin: Any) -> None:
    topic, tp = _filled(admin, broker, "reset")
    earliest = kvlog.Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    latest = kvlog.Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="latest")
    none = kvlog.Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="none")
    try:
        earliest.assign([tp])
        assert _poll_values(earliest, tp, 10) == [b"%d" % i for i in range(10)]
        latest.assign([tp])
        assert latest.position(tp) == 10
        assert latest.poll(timeout_ms=200) == {}
        with kvlog.Producer(bootstrap_servers=broker.bootstrap) as producer:
            producer.send(topic, value=b"new", partition=0).get(timeout=10)
        assert _poll_values(latest, tp, 1) == [b"new"]
        none.assign([tp])
        with pytest.raises(NoOffsetForPartitionError) as info:
            none.poll(timeout_ms=200)
        assert "auto.offset.reset" in str(info.value)
        none.seek(tp, 3)  # a position makes it work
        assert _poll_values(none, tp, 8)[:2] == [b"3", b"4"]
    finally:
        for c in (earliest, latest, none):
            c.close()


def test_seek_position_and_offset_queries(broker: Any, admin: Any) -> None:
    topic = _topic(admin, "seek")
    tp = TopicPartition(topic, 0)
    base_ts = int(time.time() * 1000) - 60_000
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, linger_ms=0) as producer:
        for i in range(10):  # one record per second of (fake) time
            producer.send(topic, value=b"%d" % i, partition=0, timestamp_ms=base_ts + i * 1000)
        producer.flush(10)
    consumer = kvlog.Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    try:
        consumer.assign([tp])
        assert consumer.beginning_offsets([tp]) == {tp: 0}
        assert consumer.end_offsets([tp]) == {tp: 10}
        assert consumer.position(tp) == 0
        consumer.seek(tp, 7)
        assert consumer.position(tp) == 7
        assert _poll_values(consumer, tp, 3) == [b"7", b"8", b"9"]
        assert consumer.position(tp) == 10
        consumer.seek_to_beginning()
        assert consumer.position(tp) == 0
        assert _poll_values(consumer, tp, 1)[0] == b"0"
        consumer.seek_to_end(tp)
        assert consumer.position(tp) == 10
        assert consumer.poll(timeout_ms=200) == {}
        found = consumer.offsets_for_times({tp: base_ts + 4500})
        assert found[tp] is not None and (found[tp].offset, found[tp].timestamp) == (
            5,
            base_ts + 5000,
        )
        assert consumer.offsets_for_times({tp: base_ts})[tp].offset == 0
        assert consumer.offsets_for_times({tp: base_ts + 100_000})[tp] is None
        # a seek drops what was prefetched from before it
        consumer.seek(tp, 2)
        assert _poll_values(consumer, tp, 8)[:1] == [b"2"]
    finally:
        consumer.close()


def test_iteration_with_consumer_timeout(broker: Any, admin: Any) -> None:
    _, tp = _filled(admin, broker, "iter", count=25)
    consumer = kvlog.Consumer(
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=500,
        max_poll_records=4,
    )
    try:
        consumer.assign([tp])
        started = time.monotonic()
        values = [r.value for r in consumer]
        assert values == [b"%d" % i for i in range(25)]
        assert time.monotonic() - started < 10
        assert list(consumer) == []  # nothing new: stops after consumer_timeout_ms again
    finally:
        consumer.close()


def test_poll_batch_returns_the_records_poll_would_as_columns(broker: Any, admin: Any) -> None:
    topic = _topic(admin, "columns", partitions=2)
    with kvlog.Producer(
        bootstrap_servers=broker.bootstrap, value_serializer="json", batch_size=4096
    ) as producer:
        for i in range(600):
            headers = [("n", b"%d" % i)] if i % 7 == 0 else None
            producer.send(topic, value={"i": i}, key=b"k%d" % (i % 13), headers=headers)
        producer.flush(10)
    expected = {
        TopicPartition(topic, p): [
            (r.offset, r.timestamp, r.key, json.loads(r.value), [tuple(h) for h in r.headers])
            for r in _read(broker, topic, 2)
            if r.partition == p
        ]
        for p in range(2)
    }
    consumer = kvlog.Consumer(
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        value_deserializer="json",
        max_poll_records=50,
    )
    got: dict[TopicPartition, list[tuple[Any, ...]]] = {tp: [] for tp in expected}
    try:
        consumer.assign(list(expected))
        deadline = time.monotonic() + 30
        turn = 0
        while sum(map(len, got.values())) < 600 and time.monotonic() < deadline:
            turn += 1
            if turn % 3:  # mostly columns, some records: both take from the same batches
                for tp, run in consumer.poll_batch(timeout_ms=500).items():
                    assert isinstance(run, kvlog.RecordColumns) and len(run) <= 50
                    assert (run.topic, run.partition) == tp
                    assert consumer.position(tp) == run.next_offset
                    headers = run.headers or [()] * len(run)
                    got[tp] += [
                        (o, t, k, v, [tuple(h) for h in hs])
                        for o, t, k, v, hs in zip(
                            run.offsets, run.timestamps, run.keys, run.values, headers, strict=True
                        )
                    ]
            else:
                for tp, records in consumer.poll(timeout_ms=500).items():
                    got[tp] += [
                        (r.offset, r.timestamp, r.key, r.value, [tuple(h) for h in r.headers])
                        for r in records
                    ]
    finally:
        consumer.close()
    assert got == expected


# -- admin -------------------------------------------------------------------------------------


def test_admin_topic_lifecycle(broker: Any, admin: Any) -> None:
    name = unique_topic("admin")
    topic_id = admin.create_topic(name, partitions=3, config={"retention.ms": 3_600_000})
    assert topic_id
    assert name in admin.list_topics()
    with pytest.raises(TopicAlreadyExistsError):
        admin.create_topic(name, partitions=1)
    desc = admin.describe_topic(name)
    assert desc.name == name and desc.topic_id == topic_id
    assert [p.partition for p in desc.partitions] == [0, 1, 2]
    assert all(p.leader >= 0 for p in desc.partitions)
    assert desc.config["retention.ms"] == 3_600_000
    assert desc.overrides == {"retention.ms": 3_600_000}

    overrides = admin.alter_topic_config(name, {"retention.bytes": 10_000_000})
    assert overrides == {"retention.ms": 3_600_000, "retention.bytes": 10_000_000}
    assert admin.describe_topic(name).config["retention.bytes"] == 10_000_000
    assert admin.alter_topic_config(name, {"retention.ms": None}) == {"retention.bytes": 10_000_000}
    with pytest.raises(InvalidConfigError) as info:
        admin.alter_topic_config(name, {"retention.msec": 1})
    assert "retention.ms" in str(info.value)

    with pytest.warns(PartitionMappingWarning, match="partition"):
        assert admin.create_partitions(name, 5) == 3
    assert len(admin.describe_topic(name).partitions) == 5
    with kvlog.Producer(bootstrap_servers=broker.bootstrap) as producer:
        assert producer.send(name, value=b"x", partition=4).get(timeout=10).offset == 0

    admin.delete_topic(name)
    assert name not in admin.list_topics()
    with pytest.raises(UnknownTopicOrPartitionError):
        admin.describe_topic(name)
    with pytest.raises(UnknownTopicOrPartitionError):
        admin.delete_topic(name)


def test_a_recreated_topic_starts_empty(broker: Any, admin: Any) -> None:
    name = unique_topic("recreate")
    admin.create_topic(name, partitions=1)
    with kvlog.Producer(bootstrap_servers=broker.bootstrap) as producer:
        producer.send(name, value=b"old").get(timeout=10)
    admin.delete_topic(name)
    admin.create_topic(name, partitions=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with kvlog.Producer(bootstrap_servers=broker.bootstrap) as producer:
            assert producer.send(name, value=b"new").get(timeout=10).offset == 0
    assert [r.value for r in _read(broker, name)] == [b"new"]


def test_acl_ops_without_security_are_security_disabled(broker: Any, admin: Any) -> None:
    # Kafka's answer to ACL requests on a broker without an authorizer: SECURITY_DISABLED,
    # at the broker (forwarded) and at the coordinator alike.
    with pytest.raises(KvlogError) as caught:
        admin.add_acl("alice", "topic", "t", "read")
    assert caught.value.code is ErrorCode.SECURITY_DISABLED
    for endpoint in (broker.bootstrap, broker.coordinator_endpoint):
        client = RawClient(endpoint)
        try:
            for op, fields in (
                (
                    "acl_add",
                    {"principal": "a", "resource_type": "topic", "name": "t", "operation": "read"},
                ),
                ("acl_remove", {"principal": "a"}),
                ("acl_list", {}),
            ):
                reply, _ = client.request(op, fields)
                assert reply["error"] == ErrorCode.SECURITY_DISABLED, (endpoint, op, reply)
        finally:
            client.close()
