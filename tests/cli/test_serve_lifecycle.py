"""``kvlog serve`` starting and stopping, its listeners, and ``kvlog demo`` on a fresh
directory."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

from clitest_util import Serve, cli, pid_alive, run_kvlog, wait_until


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_serve_with_two_log_dirs_stops_on_sigterm_leaving_nothing(tmp_path: Path) -> None:
    config = tmp_path / "kvlog.toml"
    # The file's listen address is overridden by the --listen flag Serve passes (port 0);
    # were it used, binding port 1 would fail.
    config.write_text('listen = "tcp://127.0.0.1:1"\nlog_level = "WARNING"\n')
    server = Serve(
        tmp_path / "data",
        "--config",
        str(config),
        "--log-dir",
        str(tmp_path / "a"),
        "--log-dir",
        str(tmp_path / "b"),
    )
    try:
        # Both addresses: ZeroMQ for kvlog's clients, Kafka for Kafka's.
        assert server.banner[0] == (
            f"  ZeroMQ bootstrap {server.bootstrap}  (kvlog clients: --bootstrap-server)"
        )
        assert server.kafka_bootstrap and server.kafka_bootstrap.startswith("127.0.0.1:")
        # The metrics endpoint, on a free port as the listener is (issue 16).
        (metrics,) = [line.split()[1] for line in server.banner if line.startswith("  metrics ")]
        assert metrics.startswith("http://127.0.0.1:") and metrics.endswith("/metrics")
        scraped = urllib.request.urlopen(metrics, timeout=10).read().decode()
        assert 'kvlog_process_up{node="1",role="node"} 1.0' in scraped
        entries = server.status()
        nodes = sorted((e["node_id"], e["log_dir"]) for e in entries if e["role"] == "node")
        assert nodes == [(0, str(tmp_path / "a")), (1, str(tmp_path / "b"))]
        kafka = {(e["role"], e["node_id"]): e["kafka"] for e in entries}
        assert kafka[("broker", None)] == server.kafka_bootstrap
        assert len({kafka[k] for k in kafka if k[0] not in ("sweeper", "console")}) == 4
        topic = cli(
            "topics",
            "create",
            "rf2",
            "--replication-factor",
            "2",
            "--bootstrap-server",
            server.bootstrap,
        )
        assert topic.exit_code == 0, topic.output
        desc = json.loads(
            cli(
                "topics", "describe", "rf2", "--json", "--bootstrap-server", server.bootstrap
            ).output
        )
        assert sorted(desc[0]["partitions"][0]["replicas"]) == [0, 1]
        pids = server.pids()
        assert len(pids) == 7 and all(pid_alive(p) for p in pids)
        started = time.monotonic()
        assert server.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 10
        wait_until(lambda: not any(pid_alive(p) for p in pids), 5, "every process to exit")
        assert cli("status", "--data-dir", str(server.data_dir), "--json").output.strip() == "[]"
        assert "kvlog broker stopped" in "".join(server.stderr)
    finally:
        server.kill()


def test_serve_without_kafka_stops_on_sigint_and_refuses_busy_dirs_and_ports(
    tmp_path: Path,
) -> None:
    server = Serve(tmp_path / "data", "--log-level", "WARNING", "--kafka-listen", "none")
    try:
        assert server.kafka_bootstrap is None
        assert "  Kafka bootstrap  off: kafka_listen is none" in server.banner
        (console,) = [line for line in server.banner if line.startswith("  Web console ")]
        assert console.split()[2].startswith("http://127.0.0.1:")
        assert {e["kafka"] for e in server.status()} == {None}
        busy = run_kvlog(
            ["serve", "--data-dir", str(tmp_path / "data"), "--listen", "tcp://127.0.0.1:0"]
        )
        assert busy.returncode == 1
        assert f"in use by kvlog pid {server.proc.pid}" in busy.stderr
        assert "Traceback" not in busy.stderr
        assert len(server.status()) == 5  # the refused start left the run file alone
        # A second kvlog serve on the first one's ZeroMQ port: one line naming the port and
        # the process holding it (the first one's broker process), and no data dir left.
        port = server.bootstrap.rpartition(":")[2]
        (broker,) = [e["pid"] for e in server.status() if e["role"] == "broker"]
        taken = run_kvlog(
            [
                "serve",
                "--data-dir",
                str(tmp_path / "second"),
                "--listen",
                server.bootstrap,
                "--kafka-listen",
                "none",
            ]
        )
        assert taken.returncode == 1
        (line,) = _error_lines(taken.stderr)
        assert line.startswith(f"Error: port {port} (the ZeroMQ listener {server.bootstrap})")
        assert f"in use by pid {broker}, started by pid {server.proc.pid} (" in line
        assert "kvlog.tools.cli serve" in line and "--listen" in line
        assert not (tmp_path / "second").exists()
        pids = server.pids()
        assert server.stop(signal.SIGINT) == 0
        wait_until(lambda: not any(pid_alive(p) for p in pids), 5, "every process to exit")
    finally:
        server.kill()


def test_serve_on_a_taken_kafka_port_says_which_and_leaves_no_data_dir(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        taken = run_kvlog(
            [
                "serve",
                "--data-dir",
                str(tmp_path / "new" / "data"),
                "--log-dir",
                str(tmp_path / "disk1" / "kvlog"),
                "--listen",
                "tcp://127.0.0.1:0",
                "--kafka-listen",
                f"127.0.0.1:{port}",
            ]
        )
    assert taken.returncode == 1
    (line,) = _error_lines(taken.stderr)
    assert line.startswith(f"Error: port {port} (the broker's Kafka listener 127.0.0.1:{port})")
    assert f"in use by pid {os.getpid()} (" in line and "--kafka-listen none" in line
    assert taken.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # new/ and disk1/ removed


def test_demo_on_a_fresh_directory(tmp_path: Path) -> None:
    first = run_kvlog(["demo"], cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "ZeroMQ bootstrap tcp://127.0.0.1:" in first.stdout
    assert "Kafka bootstrap  127.0.0.1:" in first.stdout
    assert "What just happened" in first.stdout
    assert "kvlog topics list" in first.stdout
    assert "an earlier run" not in first.stdout
    assert (tmp_path / "kvlog-data" / "logs" / "0" / "data.mdb").is_file()
    assert (
        cli("status", "--data-dir", str(tmp_path / "kvlog-data"), "--json").output.strip() == "[]"
    )
    # Run again: new records land after the old ones; the group reads only the new ones.
    second = run_kvlog(["demo"], cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "exists already" in second.stdout
    assert "an earlier run" not in second.stdout
    dump = cli("dump", "--log-dir", str(tmp_path / "kvlog-data" / "logs" / "0"), "--json")
    lines = [json.loads(line) for line in dump.output.splitlines()]
    stored = sum(x["log_end_offset"] for x in lines if x["type"] == "partition")
    assert stored == 12
