"""Kafka mode of kvlog's clients: the client test suites run again with every client
made from a ``kafka://`` bootstrap (confluent-kafka underneath) against kvlog's own Kafka
listener, which stands in for a Kafka cluster. The test functions are the ones of
tests/broker and tests/groups, imported unchanged; only the ``broker`` fixture differs: its
``bootstrap`` is the Kafka listener's, so the same program runs in the other mode."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_TESTS / "kafka_mode"))
for folder in ("broker", "groups"):
    if str(_TESTS / folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / folder))

from kafka_mode_util import KafkaView  # noqa: E402

import kvlog  # noqa: E402


# Session-scoped: the modules of this folder that use it share one (each start and stop costs
# seconds); their tests use their own topic and group names, as in tests/broker.
@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaView]:
    # tests/groups' broker config (test_groups_kafka_mode.py uses this broker too)
    config = {"group.min.session.timeout.ms": 100, "group.initial.rebalance.delay.ms": 0}
    with kvlog.Broker(
        tmp_path_factory.mktemp("broker"), "tcp://127.0.0.1:0", config=config, console_listen="none"
    ) as b:
        yield KafkaView(b)


@pytest.fixture(scope="session")
def admin(broker: KafkaView) -> Iterator[Any]:
    a = kvlog.Admin(bootstrap_servers=broker.bootstrap)
    try:
        yield a
    finally:
        a.close()
