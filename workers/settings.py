"""Each process's settings, as the supervisor hands them over (plain dataclasses,
picklable across spawn). Their defaults come from the broker's config table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CoordinatorSettings:
    data_dir: str
    node_ids: list[int]
    node_timeout_ms: int = 6000
    admin_apply_timeout_ms: int = 5000
    group_min_session_timeout_ms: int = 6000
    group_max_session_timeout_ms: int = 1_800_000
    group_initial_rebalance_delay_ms: int = 3000
    group_max_size: int = 1000
    leader_imbalance_check_interval_ms: int = 30_000


@dataclass
class NodeSettings:
    node_id: int
    log_dir: str
    coordinator: str
    heartbeat_wait_ms: int = 1000
    message_max_bytes: int = 100 << 20  # the largest produce request accepted
    fetch_max_wait_ms: int = 30_000
    replica_lag_time_max_ms: int = 30_000
    producer_id_expiration_ms: int = 86_400_000
    quota_producer_byte_rate: int = -1
    quota_consumer_byte_rate: int = -1
    max_inflight_requests_per_client: int = 1000
    advertised_host: str | None = None
    replica_fetch_wait_max_ms: int = 500
    # Test hook: drop this many produce replies (after committing) to exercise retries.
    test_drop_produce_replies: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BrokerSettings:
    coordinator: str
    admin_timeout_ms: int = 15_000
    watch_wait_ms: int = 1000
    cache_catch_up_ms: int = 3000
