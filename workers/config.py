"""Broker configuration: one table of every setting (Kafka's ``ConfigDef`` shape).

:data:`BROKER_CONFIG` holds the broker config keys: Kafka's dotted names, given as a dict
(``kvlog.Broker(config={...})``) or in the TOML file of ``kvlog serve --config``;
snake_case spellings (``socket_request_max_bytes``) are accepted too. An unknown name is an
error that names the closest valid one. Each key says which processes use it
(``used_by``) and under which settings field (``field``, when not its snake_case name):
the supervisor hands each process its keys from there (:func:`process_settings`), and the
settings dataclasses (``workers/settings.py``) take their defaults from here.

:data:`SERVER_SETTINGS` holds what ``kvlog serve`` takes as flags or config file keys
beside them (``listen``, ``data_dir``, ...). ``docs/CONFIG.md`` is generated from both
(``kvlog config docs``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvlog.config_def import (
    BOOLEAN,
    STRING,
    STRING_LIST,
    ConfigDef,
    ConfigKey,
    ConfigType,
    integer,
    one_of,
    optional,
)
from kvlog.errors import InvalidConfigError
from kvlog.ipc.config import DEFAULT_BOOTSTRAP
from kvlog.ipc.kafka.scram import MECHANISMS as SCRAM_MECHANISMS

from .console.listen import parse_console_listen
from .kafka_addresses import AUTO, parse_kafka_listen
from .metrics_http import parse_metrics_listen

# The processes a broker key can be for. "server" is every server process (coordinator,
# node, broker): workers/runtime.py reads those keys before it starts the role's server.
# "supervisor" is the process that starts and restarts them (workers/supervisor.py).
PROCESSES = ("server", "coordinator", "node", "broker", "sweeper", "supervisor")

BROKER_CONFIG = ConfigDef(
    "broker config",
    [
        ConfigKey(
            "socket.request.max.bytes",
            integer(1024),
            100 << 20,
            "Largest produce request (all its batches) a node accepts.",
            used_by=("node",),
            field="message_max_bytes",
        ),
        ConfigKey(
            "max.frame.bytes",
            integer(1024),
            128 << 20,
            "ZeroMQ MAXMSGSIZE: a peer sending a larger frame is disconnected.",
            used_by=("server",),
        ),
        ConfigKey(
            "log.retention.check.interval.ms",
            integer(10),
            300_000,
            "How often the sweeper applies retention.ms / retention.bytes.",
            used_by=("sweeper",),
            field="interval_ms",
        ),
        ConfigKey(
            "log.cleaner.enable",
            BOOLEAN,
            True,
            "Compact the partitions of topics with cleanup.policy=compact when due (the "
            "sweeper); kvlog topics compact still works when false.",
            used_by=("sweeper",),
            field="cleaner_enable",
        ),
        ConfigKey(
            "log.cleaner.backoff.ms",
            integer(10),
            15_000,
            "How often the sweeper looks for partitions due for compaction.",
            used_by=("sweeper",),
            field="cleaner_backoff_ms",
        ),
        ConfigKey(
            "log.cleaner.dedupe.buffer.size",
            integer(1 << 20),
            128 << 20,
            "Memory of the compaction key -> offset map (24 bytes a key, 90% full at most); "
            "a partition with more dirty keys is compacted in several passes.",
            used_by=("sweeper",),
            field="dedupe_buffer_bytes",
        ),
        ConfigKey(
            "log.cleaner.io.buffer.size",
            integer(4096),
            1 << 20,
            "Bytes the cleaner reads per read transaction and rewrites per write "
            "transaction (smaller: shorter holds of the log dir's write lock).",
            used_by=("sweeper",),
            field="io_buffer_bytes",
        ),
        ConfigKey(
            "node.session.timeout.ms",
            integer(100),
            6000,
            "A node whose heartbeats stop this long is marked dead.",
            used_by=("coordinator",),
            field="node_timeout_ms",
        ),
        ConfigKey(
            "group.min.session.timeout.ms",
            integer(1),
            6000,
            "Smallest session.timeout.ms a consumer may ask for.",
            used_by=("coordinator",),
        ),
        ConfigKey(
            "group.max.session.timeout.ms",
            integer(1),
            1_800_000,
            "Largest session.timeout.ms a consumer may ask for.",
            used_by=("coordinator",),
        ),
        ConfigKey(
            "group.initial.rebalance.delay.ms",
            integer(0),
            3000,
            "How long the first rebalance of an empty group waits for more members.",
            used_by=("coordinator",),
        ),
        ConfigKey(
            "group.max.size",
            integer(1),
            1000,
            "Most members one consumer group may have.",
            used_by=("coordinator",),
        ),
        ConfigKey(
            "transaction.max.timeout.ms",
            integer(1),
            900_000,
            "Largest transaction.timeout.ms a transactional producer may ask for; "
            "a transaction open longer than its timeout is aborted.",
            used_by=("coordinator",),
        ),
        ConfigKey(
            "transactional.id.expiration.ms",
            integer(1),
            604_800_000,
            "A transactional.id with no transaction for this long is forgotten.",
            used_by=("coordinator",),
        ),
        ConfigKey(
            "auto.create.topics.enable",
            BOOLEAN,
            True,
            "Kafka clients' Metadata requests may create the missing topics they name.",
            used_by=("coordinator",),
        ),
        ConfigKey(
            "num.partitions",
            integer(1, 10_000),
            1,
            "Partitions of an auto-created topic.",
            used_by=("coordinator",),
        ),
        ConfigKey(
            "default.replication.factor",
            integer(1),
            1,
            "Replication factor of an auto-created topic (at most the number of log dirs).",
            used_by=("coordinator",),
        ),
        ConfigKey(
            "replica.lag.time.max.ms",
            integer(10),
            30_000,
            "A follower not caught up for this long leaves the ISR.",
            used_by=("node",),
        ),
        ConfigKey(
            "replica.fetch.wait.max.ms",
            integer(0),
            500,
            "Long-poll wait of a follower's fetch.",
            used_by=("node",),
        ),
        ConfigKey(
            "leader.imbalance.check.interval.ms",
            integer(10),
            30_000,
            "How often leadership moves back to preferred replicas.",
            used_by=("coordinator",),
        ),
        ConfigKey(
            "quota.producer.byte.rate",
            integer(-1),
            -1,
            "Produce bytes/s per principal (security on); over it, replies are delayed.",
            used_by=("node",),
        ),
        ConfigKey(
            "quota.consumer.byte.rate",
            integer(-1),
            -1,
            "Fetch bytes/s per principal (security on); over it, replies are delayed.",
            used_by=("node",),
        ),
        ConfigKey(
            "max.connections",
            integer(-1),
            10_000,
            "Client connections each server process accepts (-1: no limit); more are shut.",
            used_by=("server",),
        ),
        ConfigKey(
            "connection.failed.authentication.delay.ms",
            integer(0),
            100,
            "A failed SASL login's connection closes this long after its error response "
            "(Kafka's; slows password guessing, and lets clients read why).",
            used_by=("server",),
        ),
        ConfigKey(
            "max.inflight.requests.per.client",
            integer(1),
            1000,
            "Requests one client may have waiting at a node.",
            used_by=("node",),
        ),
        ConfigKey(
            "restart.backoff.ms",
            integer(0),
            200,
            "How long the supervisor waits before it restarts a process that died; each "
            "death within 30 s of the process's start doubles the wait, up to "
            "restart.backoff.max.ms (a process that keeps dying is not restarted in a "
            "tight loop).",
            used_by=("supervisor",),
        ),
        ConfigKey(
            "restart.backoff.max.ms",
            integer(0),
            10_000,
            "The longest wait before a restart: restart.backoff.ms doubles up to this (a "
            "smaller value is restart.backoff.ms).",
            used_by=("supervisor",),
        ),
        ConfigKey(
            "test.drop.produce.replies",
            integer(0),
            0,
            "Testing only: each node drops this many produce replies after committing.",
            used_by=("node",),
        ),
        ConfigKey(
            "commit.pipelined",
            BOOLEAN,
            False,
            "Each node runs its group commits on a committer thread: the node keeps "
            "receiving requests and answering fetches during a commit's fsync, and "
            "acknowledges once it is durable. Off: the commit runs in the node's loop (on a "
            "2-core machine under load the thread hand-offs cost more than the overlap "
            "gains; BENCHMARKS.md J).",
            used_by=("node",),
        ),
        ConfigKey(
            "test.commit.fail",
            integer(0),
            0,
            "Testing only: each node's group commit of this number (1 is the first; 0: "
            "none) fails in its fsync phase, after its transaction's body ran "
            "(with commit.pipelined).",
            used_by=("node",),
        ),
    ],
)

for _key in BROKER_CONFIG.values():
    assert _key.used_by and set(_key.used_by) <= set(PROCESSES), _key.name


def field_name(key: ConfigKey) -> str:
    """The settings field a process reads ``key`` from."""
    return key.field or key.attr


def process_settings(config: Mapping[str, Any], process: str) -> dict[str, Any]:
    """The keys of a complete broker config (``BROKER_CONFIG.complete``) that ``process``
    uses, by their settings field names."""
    return {
        field_name(key): config[key.name]
        for key in BROKER_CONFIG.values()
        if process in key.used_by
    }


def broker_default(name: str) -> Any:
    """A broker key's default (settings dataclasses take theirs from here)."""
    return BROKER_CONFIG.default(name)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _sasl_mechanisms(name: str, value: Any) -> list[str]:
    """A list of SCRAM mechanisms, or Kafka's comma-separated spelling of one."""
    items = value.split(",") if isinstance(value, str) else value
    names = [m.strip().upper() for m in STRING_LIST.parse(name, items) if m.strip()]
    for mechanism in names:
        if mechanism not in SCRAM_MECHANISMS:
            raise InvalidConfigError(
                f"{name}: {mechanism!r} is not served; kvlog serves {', '.join(SCRAM_MECHANISMS)}"
            )
    if len(set(names)) != len(names):
        raise InvalidConfigError(f"{name} names a mechanism twice")
    return names


def _log_level(name: str, value: Any) -> str:
    spelled = value.upper() if isinstance(value, str) else value
    if spelled not in LOG_LEVELS:
        raise InvalidConfigError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return str(spelled)


SERVER_SETTINGS = ConfigDef(
    "server setting",
    [
        ConfigKey(
            "listen",
            STRING,
            f"tcp://{DEFAULT_BOOTSTRAP}",
            "ZeroMQ bootstrap endpoint (tcp://host:port or ipc://path); port 0 picks a free one.",
        ),
        ConfigKey(
            "kafka_listen",
            ConfigType("string", parse_kafka_listen, "HOST:PORT, auto, none"),
            AUTO,
            "Kafka bootstrap HOST:PORT (the broker process); the coordinator takes PORT+1 and "
            "node N PORT+2+N; port 0: a free port each; none: no Kafka listener. auto: "
            "127.0.0.1:9092, or 127.0.0.1:0 when listen picks a free port.",
        ),
        ConfigKey(
            "metrics_listen",
            ConfigType("string", parse_metrics_listen, "HOST:PORT, auto, none"),
            AUTO,
            "Prometheus metrics endpoint HOST:PORT (served by the supervisor at /metrics; "
            "docs/METRICS.md); port 0: a free port; none: off. auto: 127.0.0.1:9645, or "
            "127.0.0.1:0 when listen picks a free port.",
        ),
        ConfigKey(
            "console_listen",
            ConfigType("string", parse_console_listen, "HOST:PORT, auto, none"),
            AUTO,
            "Web console HOST:PORT (its own process; off while security is on); none: no "
            "console. auto: 127.0.0.1:7180, or 127.0.0.1:0 when listen picks a free port.",
        ),
        ConfigKey(
            "kafka_advertised_host",
            optional(STRING),
            None,
            "IPv4 address Kafka clients are given (default: the bind address; for 0.0.0.0, "
            "advertised_host, else this host's primary IPv4 address).",
        ),
        ConfigKey(
            "data_dir",
            STRING,
            "./kvlog-data",
            "Data dir: metadata, the default log dir, run files.",
        ),
        ConfigKey(
            "log_dirs",
            STRING_LIST,
            [],
            "Log dirs, one node process each (several: replication); none: DATA_DIR/logs/0.",
        ),
        ConfigKey(
            "curve_secret_key",
            optional(STRING),
            None,
            "The server's .key_secret file: turns on CURVE authentication and encryption.",
        ),
        ConfigKey(
            "curve_authorized_keys",
            optional(STRING),
            None,
            "Directory of authorized client public keys (*.key); re-read on SIGHUP.",
        ),
        ConfigKey("super_users", STRING_LIST, [], "Principals that bypass ACLs."),
        ConfigKey(
            "kafka_sasl_mechanisms",
            ConfigType("list", _sasl_mechanisms, ", ".join(SCRAM_MECHANISMS)),
            [],
            "SASL mechanisms Kafka clients log in with (users: kvlog users add); needs "
            "security on, which keeps the Kafka listeners off without a way to log in.",
        ),
        ConfigKey(
            "kafka_ssl_certfile",
            optional(STRING),
            None,
            "PEM certificate (chain) of the Kafka listeners: turns TLS on (SASL_SSL, or SSL "
            "with client certificates); needs security on.",
        ),
        ConfigKey(
            "kafka_ssl_keyfile",
            optional(STRING),
            None,
            "PEM private key of kafka_ssl_certfile (default: read from the certfile).",
        ),
        ConfigKey(
            "kafka_ssl_cafile",
            optional(STRING),
            None,
            "PEM CA certificates that Kafka client certificates must chain to.",
        ),
        ConfigKey(
            "kafka_ssl_client_auth",
            one_of("none", "requested", "required"),
            "none",
            "Kafka's ssl.client.auth. required without kafka_sasl_mechanisms: the client "
            "certificate is the login (SSL), its subject's CN the principal.",
        ),
        ConfigKey(
            "advertised_host",
            optional(STRING),
            None,
            "Host ZeroMQ clients use for endpoints bound to a wildcard address.",
        ),
        ConfigKey(
            "log_level",
            ConfigType("string", _log_level, ", ".join(LOG_LEVELS)),
            "INFO",
            "Log level of every process (kvlog.Broker's own default: WARNING).",
        ),
    ],
    snake_case=False,
)
