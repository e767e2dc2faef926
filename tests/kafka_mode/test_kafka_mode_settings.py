"""Which mode a client is in, and Kafka mode's settings: kvlog's names checked by kvlog's
tables and turned into librdkafka's, security settings passed through (kafka-python's
spellings too), and what cannot be mapped refused with its name. No process needed."""

from __future__ import annotations

import pytest

import kvlog
from kvlog.errors import InvalidConfigError
from kvlog.ipc.kafka_client import is_kafka_bootstrap, wanted
from kvlog.ipc.kafka_client.settings import kafka_settings


def test_the_mode_follows_the_bootstrap_string_or_the_protocol_setting() -> None:
    assert is_kafka_bootstrap("kafka://a:9092,b:9092")
    assert not is_kafka_bootstrap("tcp://127.0.0.1:7092")
    assert wanted(None, {"bootstrap_servers": "kafka://a:9092"})
    assert wanted({"protocol": "kafka", "bootstrap.servers": "a:9092"}, {})
    assert not wanted(None, {"bootstrap_servers": "tcp://127.0.0.1:7092"})
    with pytest.raises(InvalidConfigError, match="drop one"):
        wanted(None, {"protocol": "kvlog", "bootstrap_servers": "kafka://a:9092"})
    with pytest.raises(InvalidConfigError, match="'kvlog' or 'kafka'"):
        wanted(None, {"protocol": "amqp"})


def test_the_public_classes_hand_kafka_mode_to_their_twins() -> None:
    # librdkafka connects lazily: nothing listens on this port, and nothing needs to.
    producer = kvlog.Producer(bootstrap_servers="kafka://127.0.0.1:1", linger_ms=7)
    try:
        assert type(producer).__name__ == "KafkaModeProducer"
        assert producer.config["linger_ms"] == 7  # kvlog's names and defaults
    finally:
        producer.close(timeout=0)
    consumer = kvlog.Consumer(bootstrap_servers="kafka://127.0.0.1:1", group_id="g")
    try:
        assert type(consumer).__name__ == "KafkaModeConsumer"
    finally:
        consumer.close(autocommit=False)
    admin = kvlog.Admin(bootstrap_servers="kafka://127.0.0.1:1")
    assert type(admin).__name__ == "KafkaModeAdmin"


def test_settings_become_librdkafkas_and_security_passes_through() -> None:
    s = kafka_settings(
        "consumer",
        {"security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512"},
        {
            "bootstrap_servers": "kafka://h1:9092,h2:9093",
            "group_id": "billing",
            "sasl_plain_username": "alice",  # kafka-python's spelling
            "ssl_cafile": "/etc/ca.pem",
            "auto_offset_reset": "none",
        },
    )
    assert s.bootstrap == ["h1:9092", "h2:9093"]
    rd = s.librdkafka
    assert rd["bootstrap.servers"] == "h1:9092,h2:9093"
    assert rd["security.protocol"] == "SASL_SSL" and rd["sasl.mechanism"] == "SCRAM-SHA-512"
    assert rd["sasl.username"] == "alice" and rd["ssl.ca.location"] == "/etc/ca.pem"
    assert rd["group.id"] == "billing" and rd["auto.offset.reset"] == "error"
    assert rd["enable.auto.offset.store"] is False  # kvlog's positions are committed
    producer = kafka_settings("producer", None, {"bootstrap_servers": "kafka://h:1"}).librdkafka
    assert producer["partitioner"] == "murmur2_random"  # keyed records land as in kvlog mode
    assert producer["acks"] == "all" and producer["enable.idempotence"] is True


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"curve_server_key": "x" * 40}, "curve_server_key"),
        ({"partition_assignment_strategy": ["sticky"]}, "sticky"),
        ({"security_protocol": "curve"}, "security.protocol"),
        ({"lingr_ms": 5}, "linger"),  # misspelt: the same table as kvlog mode
    ],
)
def test_what_cannot_be_mapped_is_refused_by_name(setting: dict, named: str) -> None:
    kind = "consumer" if "partition_assignment_strategy" in setting else "producer"
    with pytest.raises(InvalidConfigError, match=named):
        kafka_settings(kind, None, {"bootstrap_servers": "kafka://h:1", **setting})
