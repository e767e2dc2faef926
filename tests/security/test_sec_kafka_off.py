"""With security on, the Kafka listeners stay off (Kafka clients cannot authenticate until
SASL is served), and each process says why in its log."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from sectest_util import KeyRing, stderr_to

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kafka"))
from kafka_broker import KafkaBroker


def test_security_keeps_the_kafka_listeners_off(tmp_path: Path, ring: KeyRing) -> None:
    broker = KafkaBroker(
        tmp_path / "data",
        "tcp://127.0.0.1:0",
        curve_secret_key=ring.server_secret,
        curve_authorized_keys=ring.authorized,
        super_users=["admin"],
        log_level="INFO",
    )
    log_path = tmp_path / "broker.log"
    with stderr_to(log_path):
        broker.start()
    try:
        for address in (broker.kafka_bootstrap, broker.kafka_coordinator):
            host, _, port = address.rpartition(":")
            with socket.socket() as sock:
                assert sock.connect_ex((host, int(port))) != 0, f"{address} accepts connections"
    finally:
        broker.stop()
    said = log_path.read_text()
    assert said.count("the Kafka listener stays off") == 2, said[-2000:]
