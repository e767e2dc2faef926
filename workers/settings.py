"""Each process's settings, as the supervisor hands them over (plain dataclasses,
picklable across spawn). Fields backed by a broker config key take their defaults from
the broker's config table (workers/config.py), which also says which process gets which
key; the rest are internal timings no config key sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import broker_default


@dataclass
class ServerSettings:
    """What every server process (coordinator, node, broker) takes before its role's."""

    max_frame_bytes: int = broker_default("max.frame.bytes")
    max_connections: int = broker_default("max.connections")
    connection_failed_authentication_delay_ms: int = broker_default(
        "connection.failed.authentication.delay.ms"
    )
    # This process's Kafka listener: the HOST:PORT it binds (port 0: a free one), None for
    # none; and the host it advertises in Kafka metadata (an IPv4 literal) when it binds a
    # wildcard address. The supervisor gives each process its own address.
    kafka_listen: str | None = None
    kafka_advertised_host: str | None = None
    # How the Kafka listener authenticates clients (workers/kafka_security.py); with
    # security off none of these may be set.
    kafka_sasl_mechanisms: list[str] = field(default_factory=list)
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_client_auth: str = "none"


@dataclass
class CoordinatorSettings:
    data_dir: str
    node_ids: list[int]
    node_timeout_ms: int = broker_default("node.session.timeout.ms")
    admin_apply_timeout_ms: int = 5000
    group_min_session_timeout_ms: int = broker_default("group.min.session.timeout.ms")
    group_max_session_timeout_ms: int = broker_default("group.max.session.timeout.ms")
    group_initial_rebalance_delay_ms: int = broker_default("group.initial.rebalance.delay.ms")
    group_max_size: int = broker_default("group.max.size")
    leader_imbalance_check_interval_ms: int = broker_default("leader.imbalance.check.interval.ms")
    auto_create_topics_enable: bool = broker_default("auto.create.topics.enable")
    num_partitions: int = broker_default("num.partitions")
    default_replication_factor: int = broker_default("default.replication.factor")
    transaction_max_timeout_ms: int = broker_default("transaction.max.timeout.ms")
    transactional_id_expiration_ms: int = broker_default("transactional.id.expiration.ms")


@dataclass
class NodeSettings:
    node_id: int
    log_dir: str
    coordinator: str
    heartbeat_wait_ms: int = 1000
    message_max_bytes: int = broker_default("socket.request.max.bytes")
    fetch_max_wait_ms: int = 30_000
    replica_lag_time_max_ms: int = broker_default("replica.lag.time.max.ms")
    producer_id_expiration_ms: int = 86_400_000
    quota_producer_byte_rate: int = broker_default("quota.producer.byte.rate")
    quota_consumer_byte_rate: int = broker_default("quota.consumer.byte.rate")
    max_inflight_requests_per_client: int = broker_default("max.inflight.requests.per.client")
    advertised_host: str | None = None
    replica_fetch_wait_max_ms: int = broker_default("replica.fetch.wait.max.ms")
    # Test hook: drop this many produce replies (after committing) to exercise retries.
    test_drop_produce_replies: int = broker_default("test.drop.produce.replies")
    commit_pipelined: bool = broker_default("commit.pipelined")
    # Test hook: this group commit (1, 2, ...) fails after its body ran (workers/node_shell.py).
    test_commit_fail: int = broker_default("test.commit.fail")
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BrokerSettings:
    coordinator: str
    admin_timeout_ms: int = 15_000
    watch_wait_ms: int = 1000
    cache_catch_up_ms: int = 3000


@dataclass
class SweeperSettings:
    data_dir: str
    log_dirs: list[str]
    interval_ms: int = broker_default("log.retention.check.interval.ms")
    cleaner_enable: bool = broker_default("log.cleaner.enable")
    cleaner_backoff_ms: int = broker_default("log.cleaner.backoff.ms")
    dedupe_buffer_bytes: int = broker_default("log.cleaner.dedupe.buffer.size")
    io_buffer_bytes: int = broker_default("log.cleaner.io.buffer.size")


@dataclass
class SupervisorSettings:
    """What the supervisor itself reads (workers/supervisor.py)."""

    restart_backoff_ms: int = broker_default("restart.backoff.ms")
    restart_backoff_max_ms: int = broker_default("restart.backoff.max.ms")
