"""Each process's Kafka address (workers/kafka_addresses.py) and the supervisor's port
helpers (workers/ports.py): no processes, only sockets on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvlog.errors import InvalidConfigError
from kvlog.workers import kafka_addresses, ports
from kvlog.workers.config import SERVER_SETTINGS
from kvlog.workers.kafka_addresses import plan, resolve_auto
from kvlog.workers.supervisor import Broker


def _fixed_ports(host: str, count: int) -> list[int]:
    return [40000 + i for i in range(count)]


def test_given_port_p_broker_p_coordinator_p1_node_n_p2n() -> None:
    kafka = plan("127.0.0.1:9092", [0, 1, 3])
    assert kafka.broker.listen == "127.0.0.1:9092"
    assert kafka.coordinator.listen == "127.0.0.1:9093"
    assert {n: a.listen for n, a in kafka.nodes.items()} == {
        0: "127.0.0.1:9094",
        1: "127.0.0.1:9095",
        3: "127.0.0.1:9097",  # by node id: a node keeps its port when others go
    }
    assert [a.process for a in kafka] == ["broker", "coordinator", "node 0", "node 1", "node 3"]
    assert all(a.advertised == a.listen for a in kafka)


def test_port_zero_asks_for_a_free_port_per_process() -> None:
    kafka = plan("127.0.0.1:0", [0, 1], free_ports=_fixed_ports)
    assert [a.port for a in kafka] == [40000, 40001, 40002, 40003]
    assert kafka.for_process("node", 1).port == 40003
    assert kafka.for_process("coordinator").port == 40001


def test_addresses_are_ipv4_literals() -> None:
    local = plan("localhost:9092", [0])
    assert local.broker.listen == "127.0.0.1:9092" and local.broker.advertised_host == "127.0.0.1"
    wildcard = plan("0.0.0.0:9092", [0], kafka_advertised_host="10.1.2.3")
    assert wildcard.broker.listen == "0.0.0.0:9092"
    assert {a.advertised for a in wildcard} == {"10.1.2.3:9092", "10.1.2.3:9093", "10.1.2.3:9094"}
    # An empty host binds every interface, as Kafka's listeners= does.
    assert plan(":9092", [0], kafka_advertised_host="10.1.2.3").broker.bind_host == "0.0.0.0"
    # Without kafka_advertised_host: the ZeroMQ advertised_host, else the primary address.
    assert plan("0.0.0.0:9092", [0], advertised_host="localhost").broker.advertised_host == (
        "127.0.0.1"
    )
    primary = plan("0.0.0.0:9092", [0]).broker.advertised_host
    assert primary == kafka_addresses.primary_ipv4()
    socket.inet_aton(primary)  # an IPv4 literal
    assert primary != "0.0.0.0"
    # An explicit kafka_advertised_host wins over the bind address (NAT, containers).
    assert plan("127.0.0.1:9092", [0], kafka_advertised_host="10.0.0.5").broker.advertised == (
        "10.0.0.5:9092"
    )


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("9092", "HOST:PORT"),
        ("127.0.0.1:x", "HOST:PORT"),
        ("127.0.0.1:70000", "0..65535"),
        ("[::1]:9092", "IPv4"),
        ("::1:9092", "IPv4"),
    ],
)
def test_bad_kafka_listen_values_are_refused(value: str, words: str) -> None:
    with pytest.raises(InvalidConfigError, match="kafka_listen") as caught:
        SERVER_SETTINGS["kafka_listen"].parse(value)
    assert words in caught.value.message


def test_ports_past_65535_are_refused() -> None:
    with pytest.raises(InvalidConfigError, match="65535"):
        plan("127.0.0.1:65534", [0])


def test_unresolvable_hosts_are_refused() -> None:
    with pytest.raises(InvalidConfigError, match="cannot resolve"):
        plan("no-such-host.invalid:9092", [0])


def test_none_auto_and_defaults() -> None:
    parse = SERVER_SETTINGS["kafka_listen"].parse
    assert parse("none") is None and parse("NONE") is None and parse(None) is None
    assert parse("auto") == "auto" and parse(" 127.0.0.1:1 ") == "127.0.0.1:1"
    assert SERVER_SETTINGS.default("kafka_listen") == "auto"
    # `kvlog serve` and kvlog.Broker() with no arguments: Kafka on 9092, ZeroMQ on 7092.
    assert SERVER_SETTINGS.default("listen") == "tcp://127.0.0.1:7092"
    assert resolve_auto("auto", "tcp://127.0.0.1:7092") == "127.0.0.1:9092"
    default = Broker()
    assert default.listen == "tcp://127.0.0.1:7092" and default.kafka_listen == "127.0.0.1:9092"
    # A free ZeroMQ port (tests, the demo, embedded brokers): free Kafka ports too.
    assert resolve_auto("auto", "tcp://127.0.0.1:0") == "127.0.0.1:0"
    assert resolve_auto("auto", "ipc:///tmp/kvlog.sock") == "127.0.0.1:0"
    assert resolve_auto("10.0.0.1:19092", "tcp://127.0.0.1:0") == "10.0.0.1:19092"
    assert Broker(listen="tcp://127.0.0.1:0", kafka_listen="none").kafka_listen is None


@pytest.fixture
def held() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


def test_a_taken_port_names_its_holder(held: socket.socket) -> None:
    port = held.getsockname()[1]
    assert ports.holder_pid(port) == os.getpid()
    assert ports.in_use(ports.check_bindable("127.0.0.1", port))
    kafka = plan(f"127.0.0.1:{port}", [0])
    with pytest.raises(ports.PortInUseError) as caught:
        ports.check_listeners("tcp://127.0.0.1:0", kafka)
    message = caught.value.message
    assert message.startswith(f"port {port} (the broker's Kafka listener 127.0.0.1:{port})")
    assert f"in use by pid {os.getpid()} (" in message and "--kafka-listen none" in message
    assert "\n" not in message
    with pytest.raises(ports.PortInUseError, match=f"port {port} \\(the ZeroMQ listener"):
        ports.check_listeners(f"tcp://127.0.0.1:{port}", [])
    with pytest.raises(ports.PortInUseError, match=f"port {port} \\(the ZeroMQ listener"):
        ports.check_listeners(f"tcp://*:{port}", [])


@pytest.fixture
def held_above_two_free() -> Iterator[socket.socket]:
    """A held port P whose two ports below are free now: the broker's and coordinator's
    Kafka ports of a scheme based at P - 2 (any process of a busy machine may hold the
    ports next to a port 0 bind, and the check would name that one instead)."""
    for _ in range(100):
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        if port > 2 and all(
            ports.check_bindable("127.0.0.1", p) is None for p in (port - 2, port - 1)
        ):
            break
        sock.close()
    else:
        raise AssertionError("no held port with two free ports below it")
    try:
        yield sock
    finally:
        sock.close()


def test_a_node_port_of_the_scheme_is_checked_too(held_above_two_free: socket.socket) -> None:
    port = held_above_two_free.getsockname()[1]
    with pytest.raises(ports.PortInUseError, match=f"node 0's Kafka listener 127.0.0.1:{port}"):
        ports.check_listeners("tcp://127.0.0.1:0", plan(f"127.0.0.1:{port - 2}", [0]))


def test_zeromq_and_kafka_on_one_port_is_refused() -> None:
    with pytest.raises(InvalidConfigError, match="both want port 9093"):
        ports.check_listeners("tcp://127.0.0.1:9093", plan("127.0.0.1:9092", [0]))


def test_free_ports_are_distinct_and_kept_from_other_binds() -> None:
    picked = ports.free_ports("127.0.0.1", 16)
    assert len(set(picked)) == 16
    # Port-0 binds (as the group's ZeroMQ endpoints make) never get a picked port: with
    # 16 of Linux's ~28000 ephemeral ports picked, 8000 unguarded binds would hit about 4.6.
    for _ in range(8000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            assert sock.getsockname()[1] not in picked
    # ... while the process each is for binds it by number.
    for port in picked:
        assert ports.check_bindable("127.0.0.1", port) is None
        socket.create_server(("127.0.0.1", port)).close()


def test_a_non_loopback_kafka_bind_without_security_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The supervisor's plan alone (no process starts): every fixed port is checked.
    broker = Broker(tmp_path / "d", "tcp://127.0.0.1:0", kafka_listen="0.0.0.0:0")
    with caplog.at_level(logging.WARNING, logger="kvlog.supervisor"):
        broker._plan_kafka([0, 1])
    assert broker.kafka_plan is not None
    assert broker.kafka_bootstrap == broker.kafka_plan.broker.advertised
    assert broker.kafka_plan.broker.listen.startswith("0.0.0.0:")
    assert broker.kafka_plan.broker.advertised_host == kafka_addresses.primary_ipv4()
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "binds 0.0.0.0 without security" in warning and "every topic" in warning
    caplog.clear()
    loopback = Broker(tmp_path / "e", "tcp://127.0.0.1:0", kafka_listen="127.0.0.1:0")
    with caplog.at_level(logging.WARNING, logger="kvlog.supervisor"):
        loopback._plan_kafka([0])
    assert not caplog.records
