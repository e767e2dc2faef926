"""Broker configuration: Kafka's dotted names, defaults and checks, in one table.

Given as a dict (``kvlog.Broker(config={...})``) or in the TOML file of
``kvlog serve --config``; snake_case spellings (``socket_request_max_bytes``) are
accepted too. An unknown name is an error that names the closest valid one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from kvlog.errors import InvalidConfigError
from kvlog.topic_config import unknown_name_error

# dotted name -> (attribute, default, minimum, doc)
_BROKER_KEYS: dict[str, tuple[str, int, int, str]] = {
    "socket.request.max.bytes": (
        "socket_request_max_bytes",
        100 << 20,
        1024,
        "Largest produce request (all its batches) a node accepts.",
    ),
    "max.frame.bytes": (
        "max_frame_bytes",
        128 << 20,
        1024,
        "ZeroMQ MAXMSGSIZE: a peer sending a larger frame is disconnected.",
    ),
    "log.retention.check.interval.ms": (
        "log_retention_check_interval_ms",
        300_000,
        10,
        "How often the sweeper applies retention.ms / retention.bytes.",
    ),
    "node.session.timeout.ms": (
        "node_session_timeout_ms",
        6000,
        100,
        "A node whose heartbeats stop this long is marked dead.",
    ),
    "group.min.session.timeout.ms": (
        "group_min_session_timeout_ms",
        6000,
        1,
        "Smallest session.timeout.ms a consumer may ask for.",
    ),
    "group.max.session.timeout.ms": (
        "group_max_session_timeout_ms",
        1_800_000,
        1,
        "Largest session.timeout.ms a consumer may ask for.",
    ),
    "group.initial.rebalance.delay.ms": (
        "group_initial_rebalance_delay_ms",
        3000,
        0,
        "How long the first rebalance of an empty group waits for more members.",
    ),
    "group.max.size": (
        "group_max_size",
        1000,
        1,
        "Most members one consumer group may have.",
    ),
    "replica.lag.time.max.ms": (
        "replica_lag_time_max_ms",
        30_000,
        10,
        "A follower not caught up for this long leaves the ISR.",
    ),
    "replica.fetch.wait.max.ms": (
        "replica_fetch_wait_max_ms",
        500,
        0,
        "Long-poll wait of a follower's fetch.",
    ),
    "leader.imbalance.check.interval.ms": (
        "leader_imbalance_check_interval_ms",
        30_000,
        10,
        "How often leadership moves back to preferred replicas.",
    ),
    "quota.producer.byte.rate": (
        "quota_producer_byte_rate",
        -1,
        -1,
        "Produce bytes/s per principal (security on); over it, replies are delayed.",
    ),
    "quota.consumer.byte.rate": (
        "quota_consumer_byte_rate",
        -1,
        -1,
        "Fetch bytes/s per principal (security on); over it, replies are delayed.",
    ),
    "max.connections": (
        "max_connections",
        10_000,
        -1,
        "Client connections each server process accepts (-1: no limit); more are shut.",
    ),
    "max.inflight.requests.per.client": (
        "max_inflight_requests_per_client",
        1000,
        1,
        "Requests one client may have waiting at a node.",
    ),
    "test.drop.produce.replies": (
        "test_drop_produce_replies",
        0,
        0,
        "Testing only: each node drops this many produce replies after committing.",
    ),
}

BROKER_CONFIG_DOCS = {name: doc for name, (_, _, _, doc) in _BROKER_KEYS.items()}


@dataclass(frozen=True)
class BrokerConfig:
    socket_request_max_bytes: int = 100 << 20
    max_frame_bytes: int = 128 << 20
    log_retention_check_interval_ms: int = 300_000
    node_session_timeout_ms: int = 6000
    group_min_session_timeout_ms: int = 6000
    group_max_session_timeout_ms: int = 1_800_000
    group_initial_rebalance_delay_ms: int = 3000
    group_max_size: int = 1000
    replica_lag_time_max_ms: int = 30_000
    replica_fetch_wait_max_ms: int = 500
    leader_imbalance_check_interval_ms: int = 30_000
    quota_producer_byte_rate: int = -1
    quota_consumer_byte_rate: int = -1
    max_connections: int = 10_000
    max_inflight_requests_per_client: int = 1000
    test_drop_produce_replies: int = 0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> BrokerConfig:
        by_attr = {attr: (name, low) for name, (attr, _, low, _) in _BROKER_KEYS.items()}
        out: dict[str, int] = {}
        for key, value in values.items():
            name = key if key in _BROKER_KEYS else key.replace("_", ".")
            attr = key if key in by_attr else _BROKER_KEYS.get(name, (None,))[0]
            if attr is None:
                raise unknown_name_error(key, _BROKER_KEYS, "broker config")
            dotted, low = by_attr[attr]
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise InvalidConfigError(f"{dotted} must be an integer, got {value!r}")
            try:
                number = int(value)
            except ValueError:
                raise InvalidConfigError(f"{dotted} must be an integer, got {value!r}") from None
            if number < low:
                raise InvalidConfigError(f"{dotted}={number} is too small; it must be >= {low}")
            out[attr] = number
        return cls(**out)

    def as_dotted(self) -> dict[str, int]:
        names = {attr: name for name, (attr, _, _, _) in _BROKER_KEYS.items()}
        return {names[f.name]: getattr(self, f.name) for f in fields(self)}
