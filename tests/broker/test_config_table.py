"""The broker config table is the one place of each broker default: every process's
settings take theirs from it, and the supervisor routes each key by the table."""

from __future__ import annotations

import dataclasses

import pytest

from kvlog.errors import InvalidConfigError
from kvlog.workers.config import (
    BROKER_CONFIG,
    PROCESSES,
    SERVER_SETTINGS,
    field_name,
    process_settings,
)
from kvlog.workers.settings import (
    BrokerSettings,
    CoordinatorSettings,
    NodeSettings,
    ServerSettings,
    SupervisorSettings,
    SweeperSettings,
)
from kvlog.workers.supervisor import Broker

SETTINGS = {
    "server": (ServerSettings, {}),
    "coordinator": (CoordinatorSettings, {"data_dir": "d", "node_ids": [0]}),
    "node": (NodeSettings, {"node_id": 0, "log_dir": "l", "coordinator": "tcp://c:1"}),
    "broker": (BrokerSettings, {"coordinator": "tcp://c:1"}),
    "sweeper": (SweeperSettings, {"data_dir": "d", "log_dirs": ["l"]}),
    "supervisor": (SupervisorSettings, {}),
}


@pytest.mark.parametrize("process", PROCESSES)
def test_each_process_settings_default_to_the_table(process: str) -> None:
    cls, required = SETTINGS[process]
    defaults = process_settings(BROKER_CONFIG.defaults(), process)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in defaults.items():
        assert name in fields, f"{cls.__name__} has no field {name}"
        assert fields[name].default == value, name
    # What the supervisor hands over builds the dataclass, and a changed key arrives.
    assert cls(**required, **defaults) == cls(**required)
    for key in BROKER_CONFIG.values():
        if process in key.used_by:
            changed = (not key.default) if isinstance(key.default, bool) else key.default + 1
            given = BROKER_CONFIG.complete({key.name: changed})
            built = cls(**required, **process_settings(given, process))
            assert getattr(built, field_name(key)) == changed, key.name


def test_broker_config_is_checked_and_completed() -> None:
    broker = Broker(config={"group.initial.rebalance.delay.ms": "0", "max_connections": 5})
    assert broker.config == {
        **BROKER_CONFIG.defaults(),
        "group.initial.rebalance.delay.ms": 0,
        "max.connections": 5,
    }
    with pytest.raises(InvalidConfigError, match=r"node\.session\.timeout\.ms=5 is too small"):
        Broker(config={"node.session.timeout.ms": 5})
    with pytest.raises(InvalidConfigError, match=r"did you mean 'group\.max\.size'"):
        Broker(config={"group.max.sizes": 5})


def test_server_settings_are_the_brokers_defaults() -> None:
    import inspect

    params = inspect.signature(Broker).parameters
    assert params["data_dir"].default == SERVER_SETTINGS.default("data_dir")
    assert params["listen"].default == SERVER_SETTINGS.default("listen")
