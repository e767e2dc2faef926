"""The process group: retention by the sweeper, restarts by the supervisor, clean stops.

Each test starts its own broker: they kill processes or need a broker config.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from brokertest_util import (
    ServedBroker,
    group_members,
    pid_alive,
    read_partitions,
    unique_topic,
    wait_until,
)

import kvlog
from kvlog.errors import OffsetOutOfRangeError
from kvlog.types import TopicPartition


def _begin(consumer: Any, tp: TopicPartition) -> int:
    return consumer.beginning_offsets([tp])[tp]


def test_retention_deletes_old_data_and_consumers_reset(make_broker: Any) -> None:
    broker = make_broker({"log.retention.check.interval.ms": 100})
    admin = kvlog.Admin(bootstrap_servers=broker.bootstrap)
    by_size, by_time, kept = (unique_topic(p) for p in ("by-size", "by-time", "kept"))
    admin.create_topic(by_size, partitions=1, config={"retention.bytes": 1000})
    admin.create_topic(by_time, partitions=1, config={"retention.ms": 60_000})
    admin.create_topic(kept, partitions=1)
    old = int(time.time() * 1000) - 3_600_000
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, linger_ms=0) as producer:
        for i in range(60):  # one batch each: retention removes whole batches
            producer.send(by_size, value=b"%04d" % i + b"." * 50).get(timeout=10)
            producer.send(kept, value=b"%04d" % i, timestamp_ms=old).get(timeout=10)
        for _ in range(5):
            producer.send(by_time, value=b"old", timestamp_ms=old).get(timeout=10)
    size_tp, time_tp, kept_tp = (TopicPartition(t, 0) for t in (by_size, by_time, kept))

    consumer = kvlog.Consumer(bootstrap_servers=broker.bootstrap)
    try:
        start = wait_until(lambda: _begin(consumer, size_tp), 15, what="retention.bytes")
        assert consumer.end_offsets([size_tp]) == {size_tp: 60}
        wait_until(lambda: _begin(consumer, time_tp) == 5, 15, what="retention.ms")
        assert consumer.end_offsets([time_tp]) == {time_tp: 5}
        # the sweeper ran many times: a topic without retention limits keeps everything
        # (its records are an hour old, but the default retention.ms is 7 days)
        assert _begin(consumer, kept_tp) == 0
    finally:
        consumer.close()
    records = read_partitions(broker.bootstrap, [size_tp])[size_tp]
    start = records[0].offset
    assert start > 0 and [r.offset for r in records] == list(range(start, 60))
    # about retention.bytes (1000) remain: batches of one ~100-byte record
    assert 5 <= len(records) <= 20, len(records)
    assert len(read_partitions(broker.bootstrap, [kept_tp])[kept_tp]) == 60

    # A consumer whose position was deleted resets as auto.offset.reset says.
    for reset, expected in (("earliest", start), ("latest", 60)):
        c = kvlog.Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset=reset)
        try:
            c.assign([size_tp])
            c.seek(size_tp, 0)
            deadline = time.monotonic() + 10
            got: list[Any] = []
            while time.monotonic() < deadline and c.position(size_tp) == 0:
                got += c.poll(timeout_ms=100).get(size_tp, [])
            if reset == "earliest":
                got += c.poll(timeout_ms=2000).get(size_tp, [])
                assert got and got[0].offset == start, (reset, got[:1])
            else:
                assert c.position(size_tp) == expected and not got
        finally:
            c.close()
    c = kvlog.Consumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="none")
    try:
        c.assign([size_tp])
        c.seek(size_tp, 0)
        with pytest.raises(OffsetOutOfRangeError) as info:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                c.poll(timeout_ms=100)
        assert "auto.offset.reset" in str(info.value)
    finally:
        c.close()
    admin.close()


def _child(broker: Any, role: str) -> Any:
    return next(c for c in broker.children if c.role == role)


def _run_file(broker: Any) -> dict[str, Any]:
    return json.loads((broker.run_dir / "processes.json").read_text())


def _kafka_by_process(broker: Any) -> dict[tuple[str, int | None], str | None]:
    """(role, node_id) -> the Kafka address the run file (kvlog status) shows."""
    return {(p["role"], p["node_id"]): p["kafka"] for p in _run_file(broker)["processes"]}


def test_every_server_process_gets_its_own_kafka_address(tmp_path: Path) -> None:
    """kvlog.Broker's defaults with a free ZeroMQ port: a Kafka listener setting on every
    server process, each on its own free port, and ``kafka_bootstrap`` the broker's.
    (No process listens on them yet: the Kafka handlers that bind them are not merged;
    this checks the settings the supervisor hands each process.)"""
    broker = kvlog.Broker(
        data_dir=tmp_path / "d",
        listen="tcp://127.0.0.1:0",
        log_dirs=[tmp_path / "a", tmp_path / "b"],
    ).start()
    try:
        servers = [c for c in broker.children if c.role not in ("sweeper", "console")]
        assert sorted((c.role, c.node_id or 0) for c in servers) == [
            ("broker", 0),
            ("coordinator", 0),
            ("node", 0),
            ("node", 1),
        ]
        listens = {}
        for child in servers:
            server = child.settings["server"]
            host, _, port = server["kafka_listen"].rpartition(":")
            assert host == "127.0.0.1" and server["kafka_advertised_host"] == "127.0.0.1"
            assert int(port) > 0
            listens[(child.role, child.node_id)] = server["kafka_listen"]
        sweeper = _child(broker, "sweeper")
        assert "server" not in sweeper.settings
        ports = [int(a.rpartition(":")[2]) for a in listens.values()]
        zmq_ports = [int(c.endpoint.rpartition(":")[2]) for c in servers]
        assert len(set(ports)) == 4 and not set(ports) & set(zmq_ports)
        assert broker.kafka_bootstrap == listens[("broker", None)]
        run = _run_file(broker)
        assert run["kafka_bootstrap"] == broker.kafka_bootstrap
        assert _kafka_by_process(broker) == {
            **listens,
            ("sweeper", None): None,
            ("console", None): None,
        }
        assert {p["role"]: p["kafka"] for p in broker.processes()}["broker"] == (
            broker.kafka_bootstrap
        )
    finally:
        broker.stop()


def test_no_kafka_listener_when_asked(tmp_path: Path) -> None:
    broker = kvlog.Broker(
        data_dir=tmp_path / "d", listen="tcp://127.0.0.1:0", kafka_listen=None
    ).start()
    try:
        assert broker.kafka_bootstrap is None and broker.kafka_off_reason is None
        for child in broker.children:
            if child.role not in ("sweeper", "console"):
                assert child.settings["server"]["kafka_listen"] is None
        assert set(_kafka_by_process(broker).values()) == {None}
        assert _run_file(broker)["kafka_bootstrap"] is None
    finally:
        broker.stop()


def test_supervisor_restarts_killed_processes(make_broker: Any) -> None:
    """SIGKILL each process in turn: the supervisor starts a new one (new pid, same
    endpoint) and one producer and one consumer, kept across all the kills, carry on."""
    broker = make_broker({"node.session.timeout.ms": 2000})
    topic = unique_topic("restart")
    with kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin:
        admin.create_topic(topic, partitions=2)
    tps = [TopicPartition(topic, p) for p in range(2)]
    producer = kvlog.Producer(
        bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0, request_timeout_ms=3000
    )
    consumer = kvlog.Consumer(
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        request_timeout_ms=3000,
        fetch_max_wait_ms=200,
    )
    consumer.assign(tps)
    seen: list[bytes] = []
    kafka = _kafka_by_process(broker)
    assert len({a for a in kafka.values() if a}) == 3  # node, coordinator, broker: free ports
    try:
        for i, role in enumerate(["node", "coordinator", "broker", "sweeper", "node"]):
            child = _child(broker, role)
            old_pid, endpoint = child.pid, child.endpoint
            server_settings = dict(child.settings.get("server", {}))
            os.kill(old_pid, signal.SIGKILL)
            wait_until(
                lambda c=child, p=old_pid: c.pid != p and pid_alive(c.pid),
                20,
                what=f"the supervisor to restart the {role}",
            )
            assert child.endpoint == endpoint
            # The same Kafka port too: what the new process is handed, and what status shows.
            assert child.settings.get("server", {}) == server_settings
            wait_until(
                lambda c=child: (
                    _run_file(broker)["processes"][broker.children.index(c)]["pid"] == c.pid
                ),
                30,  # the run file is written once the new process is ready: slow under load
                what="the run file to show the new pid",
            )
            assert _kafka_by_process(broker) == kafka
            assert not pid_alive(old_pid)
            listed = [p for p in broker.processes() if p["role"] == role]
            assert [p["pid"] for p in listed] == [child.pid]
            assert child.history and "signal 9" in child.history[-1]

            value = b"after %s kill %d" % (role.encode(), i)
            meta = producer.send(topic, value=value, key=value).get(timeout=30)
            assert meta.offset >= 0
            deadline = time.monotonic() + 30
            while value not in seen and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=200).values():
                    seen += [r.value for r in records]
            assert value in seen, f"the record sent after killing the {role} never arrived"
        assert len(seen) == len(set(seen)) == 5
    finally:
        producer.close(timeout=5)
        consumer.close()


def test_broker_stop_leaves_no_process(tmp_path: Path) -> None:
    broker = kvlog.Broker(data_dir=tmp_path / "d", listen="tcp://127.0.0.1:0").start()
    pids = [p["pid"] for p in broker.processes()]
    assert {p["role"] for p in broker.processes()} == {
        "coordinator",
        "node",
        "broker",
        "sweeper",
        "console",
    }
    assert all(pid_alive(pid) for pid in pids)
    started = time.monotonic()
    broker.stop()
    assert time.monotonic() - started < 10
    assert not [pid for pid in pids if pid_alive(pid)]
    assert not (tmp_path / "d" / "run" / "processes.json").exists()
    # the data dir is free again: a new broker starts on it
    again = kvlog.Broker(data_dir=tmp_path / "d", listen="tcp://127.0.0.1:0").start()
    again.stop()


def test_kvlog_serve_sigterm_stops_the_whole_group(tmp_path: Path) -> None:
    served = ServedBroker(tmp_path / "data").start()
    pids = [p["pid"] for p in served.processes()]
    assert served.proc is not None
    proc, pgid = served.proc, served.pgid
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(15) == 0
        wait_until(lambda: not group_members(pgid), 10, what="the group to exit")
        assert not [pid for pid in pids if pid_alive(pid)]
    finally:
        served.kill()
