"""No broker, an answer at once (issue 13, bug 3): a refused connection is known at once,
so bootstrap fails within a second or two naming the address, poll(timeout_ms) never
blocks longer than asked, and a broker lost mid-run is logged once, then once more when
it is back. Through real processes: the CLI as a subprocess, a kvlog.Broker stopped and
started again on the same port."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from brokertest_util import unique_topic

import kvlog
from kvlog.errors import NoBrokersAvailable
from kvlog.types import TopicPartition

CHECKOUT = Path(kvlog.__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kvlog(*args: str, stdin: str = "") -> tuple[subprocess.CompletedProcess[str], float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "kvlog.tools.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    return done, time.monotonic() - started


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (("topics", "list"), ""),
        (("consume", "orders", "--timeout-ms", "2000"), ""),
        (("consume", "orders", "--group", "billing", "--timeout-ms", "2000"), ""),
        (("produce", "orders"), "hello\n"),
    ],
    ids=["topics-list", "consume", "consume-group", "produce"],
)
def test_cli_without_a_broker_fails_at_once_and_says_why(args: tuple[str, ...], stdin: str) -> None:
    address = f"127.0.0.1:{_free_port()}"
    done, took = _kvlog(*args, "--bootstrap-server", address, stdin=stdin)
    assert done.returncode == 1, (done.stdout, done.stderr)
    expected = f"no kvlog broker at {address} (connection refused); is `kvlog serve` running?"
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    # Python's start-up and imports take their share; the wait itself is about a second.
    assert took < 8, f"took {took:.1f} s"


def test_clients_without_a_broker_fail_within_two_seconds() -> None:
    address = f"127.0.0.1:{_free_port()}"
    calls = {
        "admin": lambda: kvlog.Admin(bootstrap_servers=address).list_topics(),
        "producer": lambda: kvlog.Producer(bootstrap_servers=address).send("t", b"v"),
        "consumer": lambda: kvlog.Consumer(bootstrap_servers=address).partitions_for_topic("t"),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(NoBrokersAvailable, match="connection refused"):
            call()
        took = time.monotonic() - started
        assert took < 2.0, f"{name} took {took:.1f} s"


def test_poll_never_blocks_longer_than_asked_without_a_broker() -> None:
    address = f"127.0.0.1:{_free_port()}"
    consumer = kvlog.Consumer(bootstrap_servers=address, group_id="g")
    try:
        consumer.subscribe(["t"])
        started = time.monotonic()
        with pytest.raises(NoBrokersAvailable):
            for _ in range(20):
                before = time.monotonic()
                assert consumer.poll(timeout_ms=300) == {}
                assert time.monotonic() - before < 0.6
        assert time.monotonic() - started < 2.5
    finally:
        consumer.close()


def _broker(data: Path, listen: str) -> Any:
    return kvlog.Broker(
        data_dir=data, listen=listen, console_listen="none", metrics_listen="none"
    ).start()


def test_a_broker_lost_mid_run_is_logged_once_and_again_when_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listen = f"tcp://127.0.0.1:{_free_port()}"
    data = tmp_path / "data"
    topic = unique_topic("lost")
    tp = TopicPartition(topic, 0)
    # listen has a fixed port (the broker comes back on it): off, the console and metrics
    # would take their fixed default ports, which another broker may hold.
    broker = _broker(data, listen)
    consumer = None
    try:
        with kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin:
            admin.create_topic(topic, partitions=1)
        consumer = kvlog.Consumer(bootstrap_servers=broker.bootstrap, client_id="watcher")
        consumer.assign([tp])
        consumer.seek(tp, 0)
        assert consumer.poll(timeout_ms=300) == {}
        caplog.set_level(logging.WARNING, logger="kvlog.ipc.rpc")
        broker.stop()
        for _ in range(8):
            before = time.monotonic()
            assert consumer.poll(timeout_ms=250) == {}
            assert time.monotonic() - before < 0.6, "poll() blocked past its timeout"

        def said(words: str) -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if "consumer-watcher" in r.getMessage() and words in r.getMessage()
            ]

        assert len(said("lost the connection")) == 1, caplog.text
        assert said("again") == []
        broker = _broker(data, listen)
        with kvlog.Producer(bootstrap_servers=broker.bootstrap) as producer:
            producer.send(topic, value=b"back", partition=0).get(timeout=20)
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            got = [r.value for rs in consumer.poll(timeout_ms=200).values() for r in rs]
        assert got == [b"back"]
        assert len(said("again")) == 1, caplog.text
        assert len(said("lost the connection")) == 1, caplog.text
    finally:
        if consumer is not None:
            consumer.close()
        broker.stop()
