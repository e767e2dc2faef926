"""tests/groups/test_groups_integration.py in Kafka mode (see conftest.py): the same
consumer-group tests, every consumer (in this process and in the child processes) made
from the Kafka listener's ``kafka://`` bootstrap."""

from collections.abc import Iterator
from typing import Any

import pytest
from group_procs import BROKER_CONFIG
from kafka_mode_util import KafkaView
from test_groups_integration import *  # noqa: F403

import kvlog

# It starts a broker of its own (its bootstrap is kvlog's wire): it runs in kvlog mode.
del test_group_and_offsets_survive_a_coordinator_sigkill  # noqa: F821


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaView]:
    data = tmp_path_factory.mktemp("groups-broker")
    with kvlog.Broker(data_dir=data, listen="tcp://127.0.0.1:0", config=BROKER_CONFIG) as b:
        yield KafkaView(b)


@pytest.fixture
def admin(broker: KafkaView) -> Iterator[Any]:
    with kvlog.Admin(bootstrap_servers=broker.bootstrap) as a:
        yield a
