"""Fixtures for the broker tests: real kvlog process groups on free ports.

``broker`` is shared by every module of this folder (session-scoped: a start and a stop
cost a few seconds, most of this folder's time when each module had its own): tests sharing
it must not disturb it (no killing, no broker-wide config) and each uses its own topic and
group names. ``group_broker`` is another, with a short initial rebalance delay, which the
modules whose tests start consumer groups take as their ``broker`` (each new group would
wait Kafka's 3 s for more members otherwise: ``on_group_broker.py``). Tests that kill
processes or need a broker config start their own with ``make_broker``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from brokertest_util import pid_alive  # noqa: E402

import kvlog  # noqa: E402


def _start(data_dir: Path, config: dict[str, Any] | None) -> Any:
    # No web console: no test here uses it, and its process costs CPU at every start and
    # up to 2 s at every stop (tests that count a broker's processes start their own).
    broker = kvlog.Broker(
        data_dir=data_dir, listen="tcp://127.0.0.1:0", config=config or {}, console_listen="none"
    )
    return broker.start()


def _stop(broker: Any) -> None:
    pids = [p["pid"] for p in broker.processes()]
    broker.stop()
    # A straggler Broker.stop() SIGKILLed may still be dying when it returns (on a loaded
    # machine, in the middle of an fsync): left behind means alive seconds later.
    deadline = time.monotonic() + 10
    while (alive := [pid for pid in pids if pid_alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, f"processes left behind by Broker.stop(): {alive}"


def _running(data_dir: Path, config: dict[str, Any]) -> Iterator[Any]:
    broker = _start(data_dir, config)
    try:
        yield broker
    finally:
        _stop(broker)


def _admin_of(broker: Any) -> Iterator[Any]:
    admin = kvlog.Admin(bootstrap_servers=broker.bootstrap)
    try:
        yield admin
    finally:
        admin.close()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from _running(tmp_path_factory.mktemp("broker"), {})


@pytest.fixture(scope="session")
def admin(broker: Any) -> Iterator[Any]:
    yield from _admin_of(broker)


@pytest.fixture(scope="session")
def group_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Like ``broker``, with a 100 ms group.initial.rebalance.delay.ms instead of Kafka's
    3 s: for the modules whose tests start new consumer groups and do not look at the
    delay (such a module overrides ``broker`` and ``admin`` with these two)."""
    config = {"group.initial.rebalance.delay.ms": 100}
    yield from _running(tmp_path_factory.mktemp("group-broker"), config)


@pytest.fixture(scope="session")
def group_admin(group_broker: Any) -> Iterator[Any]:
    yield from _admin_of(group_broker)


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start a broker of the test's own (``make_broker(config={...})``); stopped after."""
    started: list[Any] = []

    def make(config: dict[str, Any] | None = None, name: str = "data") -> Any:
        b = _start(tmp_path / name, config)
        started.append(b)
        return b

    try:
        yield make
    finally:
        for b in started:
            _stop(b)
