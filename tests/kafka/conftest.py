"""Fixtures and setup shared by the Kafka-wire tests.

``kafka_broker`` is one broker with Kafka listeners on free ports and the default config,
shared by every module here that needs no config of its own (a start and a stop cost a few
seconds each): its tests use their own topic and group names and do not disturb it (no
killing, no broker-wide config). ``kafka_groups_broker`` is the same with a short initial
rebalance delay, for the group modules. Modules that need another config or kill broker
processes start their own.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

# kafka-python 3.0 loads its JSON schemas with importlib.resources' legacy calls, once per
# message class at import: import those modules now, with that one warning silenced.
with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", category=DeprecationWarning, message=r".*(read_text|open_text) is deprecated"
    )
    import kafka.protocol.admin
    import kafka.protocol.consumer
    import kafka.protocol.metadata
    import kafka.protocol.producer
    import kafka.protocol.sasl  # noqa: F401


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from kafka_broker import KafkaBroker

    # No web console: no test here uses it (its process costs CPU at start, seconds at stop).
    b = KafkaBroker(
        str(tmp_path_factory.mktemp("kafka-shared")),
        listen="tcp://127.0.0.1:0",
        console_listen="none",
    )
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def kafka_groups_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from kafka_broker import KafkaBroker

    # A short initial rebalance delay keeps the group tests quick (Kafka's default is 3 s).
    b = KafkaBroker(
        str(tmp_path_factory.mktemp("kafka-groups")),
        listen="tcp://127.0.0.1:0",
        config={"group.initial.rebalance.delay.ms": 100},
        console_listen="none",
    )
    b.start()
    try:
        yield b
    finally:
        b.stop()
