"""The Prometheus endpoint of a real broker (issue 16): the named metrics of
docs/METRICS.md change as records flow, lag falls as a consumer commits, a node kill
shows as a leader election and a restart, and `kvlog top` draws a topic's rate in a
pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from brokertest_util import unique_topic, wait_until
from prometheus_client.parser import text_string_to_metric_families

import kvlog
from kvlog.types import TopicPartition
from kvlog.workers.ports import PortInUseError

REPO = Path(__file__).resolve().parents[2]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        v
        for (n, have), v in samples.items()
        if n == name and all((k, want) in have for k, want in labels.items())
    )


def settled(url: str, check: Any, what: str) -> dict[Any, float]:
    """Scrape until ``check(samples)`` holds (processes push once a second)."""
    return wait_until(lambda: (s := scrape(url)) and check(s) and s, timeout_s=15, what=what)


def test_metrics_change_as_records_flow(broker: Any, admin: Any) -> None:
    url = broker.metrics_url
    assert url and url.startswith("http://127.0.0.1:")
    topic = unique_topic("metrics")
    admin.create_topic(topic, partitions=2)
    before = scrape(url)
    fsyncs = value(before, "kvlog_fsync_seconds_count")
    produced = value(before, "kvlog_produce_requests_total")
    assert value(before, "kvlog_topic_records_in_total", topic=topic) == 0

    payload = b"v" * 100
    with kvlog.Producer(bootstrap_servers=broker.bootstrap) as producer:
        for i in range(500):
            producer.send(topic, value=payload, key=str(i).encode())
        producer.flush()

    def flowed(s: dict[Any, float]) -> bool:
        return (
            value(s, "kvlog_topic_records_in_total", topic=topic) == 500
            and value(s, "kvlog_log_end_offset", topic=topic) == 500
            and value(s, "kvlog_high_watermark", topic=topic) == 500
            # The coordinator pushes on its own second: the topic's partitions may show
            # a push after the node's records.
            and value(s, "kvlog_partitions") >= 2
        )

    after = settled(url, flowed, "500 records in the metrics")
    assert value(after, "kvlog_topic_bytes_in_total", topic=topic) > 500 * len(payload)
    assert value(after, "kvlog_log_size_bytes", topic=topic) > 500 * len(payload)
    assert value(after, "kvlog_log_start_offset", topic=topic) == 0
    assert value(after, "kvlog_partition_leader", topic=topic) == 2
    assert value(after, "kvlog_produce_requests_total") > produced
    assert value(after, "kvlog_fsync_seconds_count") > fsyncs
    assert value(after, "kvlog_produce_commit_seconds_count") > 0
    assert value(after, "kvlog_group_commit_batches_count") > 0
    assert value(after, "kvlog_lmdb_used_pages") > 0
    assert value(after, "kvlog_lmdb_map_size_bytes") > 0
    assert value(after, "kvlog_disk_free_bytes") > 0
    assert value(after, "kvlog_process_up", role="node") == 1

    group = f"g-{topic}"
    tps = [TopicPartition(topic, p) for p in range(2)]
    consumer = kvlog.Consumer(
        topic, bootstrap_servers=broker.bootstrap, group_id=group, auto_offset_reset="earliest"
    )
    try:
        wait_until(lambda: consumer.poll(timeout_ms=200) or consumer.assignment(), what="join")
        consumer.commit(dict.fromkeys(tps, 0))  # nothing read yet: all 500 behind
        lagging = settled(
            url,
            lambda s: value(s, "kvlog_group_lag_sum", group=group) == 500,
            "lag 500 after committing offset 0",
        )
        assert value(lagging, "kvlog_group_members", group=group) == 1
        assert value(lagging, "kvlog_group_state", group=group, state="Stable") == 1
        assert value(lagging, "kvlog_group_rebalances_total", group=group) >= 1
        consumer.seek_to_beginning(*tps)
        read = 0
        deadline = time.monotonic() + 20
        while read < 500 and time.monotonic() < deadline:
            read += sum(len(b) for b in consumer.poll(timeout_ms=500).values())
        assert read == 500
        consumer.commit()
        caught_up = settled(
            url,
            lambda s: (
                value(s, "kvlog_group_lag_sum", group=group) == 0
                and value(s, "kvlog_group_committed_offset", group=group) == 500
            ),
            "lag 0 after the consumer committed",
        )
        assert value(caught_up, "kvlog_group_lag", group=group, topic=topic) == 0
        assert value(caught_up, "kvlog_topic_records_out_total", topic=topic) >= 500
        assert value(caught_up, "kvlog_fetch_requests_total") > 0
        assert value(caught_up, "kvlog_fetch_seconds_count") > 0
    finally:
        consumer.close()


def test_node_kill_shows_as_election_and_restart(tmp_path: Path) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    with kvlog.Broker(
        tmp_path / "data", "tcp://127.0.0.1:0", console_listen="none", log_dirs=dirs
    ) as b:
        topic = unique_topic("kill")
        with kvlog.Admin(bootstrap_servers=b.bootstrap) as admin:
            admin.create_topic(topic, partitions=1, replication_factor=2)
        with kvlog.Producer(bootstrap_servers=b.bootstrap) as producer:
            producer.send(topic, value=b"x").get(30)
        url = b.metrics_url
        assert url is not None
        full = settled(
            url,
            lambda s: (
                value(s, "kvlog_partition_leader", topic=topic) == 1
                and value(s, "kvlog_under_replicated_partitions") == 0
            ),
            "a led partition with a full ISR",
        )
        leader = next(
            dict(labels)["node"]
            for (name, labels), v in full.items()
            if name == "kvlog_partition_leader" and dict(labels)["topic"] == topic and v == 1
        )
        elections = value(full, "kvlog_leader_elections_total")
        pid = next(p["pid"] for p in b.processes() if str(p["node_id"]) == leader)
        os.kill(pid, signal.SIGKILL)
        after = settled(
            url,
            lambda s: (
                value(s, "kvlog_leader_elections_total") > elections
                and value(s, "kvlog_process_restarts_total", role="node", node=leader) == 1
            ),
            "a leader election and a node restart",
        )
        assert value(after, "kvlog_isr_shrinks_total") >= 1


def test_metrics_off_and_taken_port(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        taken = kvlog.Broker(
            tmp_path / "taken",
            "tcp://127.0.0.1:0",
            console_listen="none",
            metrics_listen=f"127.0.0.1:{port}",
        )
        with pytest.raises(PortInUseError, match=f"port {port} .*metrics endpoint"):
            taken.start()
    with kvlog.Broker(
        tmp_path / "off", "tcp://127.0.0.1:0", console_listen="none", metrics_listen="none"
    ) as b:
        assert b.metrics_url is None
        assert not (tmp_path / "off" / "run" / "metrics").exists()


def _read_pty(fd: int, until: float) -> bytes:
    out = b""
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    return out


def test_top_shows_a_topics_rate_in_a_terminal(broker: Any, admin: Any) -> None:
    topic = unique_topic("top")
    admin.create_topic(topic, partitions=1)
    stop = threading.Event()

    def produce() -> None:
        with kvlog.Producer(bootstrap_servers=broker.bootstrap) as producer:
            while not stop.is_set():
                for _ in range(200):
                    producer.send(topic, value=b"r" * 50)
                producer.flush()
                time.sleep(0.05)

    sender = threading.Thread(target=produce, daemon=True)
    sender.start()
    primary, secondary = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "160", "LINES": "50", "TERM": "xterm"}
    command = [sys.executable, "-m", "kvlog.tools.cli", "top", "--url", broker.metrics_url]
    try:
        child = subprocess.Popen(
            [*command, "--interval", "1", "--iterations", "5"],
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            env=env,
            close_fds=True,
        )
        os.close(secondary)
        output = _read_pty(primary, time.monotonic() + 60)
        assert child.wait(timeout=30) == 0, output.decode(errors="replace")
    finally:
        stop.set()
        sender.join(timeout=30)
        os.close(primary)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode(errors="replace"))
    rows = [line for line in text.splitlines() if topic in line]
    assert rows, text[-3000:]
    # A row with a records-in rate, not just the total: "1.23 k/s" or "456/s".
    assert any(re.search(r"\d(\.\d+)? ?k?/s", row) for row in rows), rows[-5:]
    assert "fsync p99" in text
