"""Client configuration with Kafka's names, defaults and checks.

Every client takes its settings either as a dict of Kafka's dotted names
(``kvlog.Producer({"bootstrap.servers": "...", "acks": "all"})``) or as snake_case keyword
arguments (``kvlog.Producer(bootstrap_servers="...", acks="all")``), or both. An unknown
name is an error naming the closest valid one; a bad value names the setting and what it
accepts.

What kafka-python programs pass is accepted too: ``auto_offset_reset="smallest"`` /
``"largest"`` (Kafka's old names for earliest / latest), ``bootstrap_servers`` with a
``PLAINTEXT://`` prefix (ipc/wire.py), and ``api_version`` (kvlog speaks one protocol, so
it is ignored, with one warning per process).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kvlog.codecs import Codec
from kvlog.config_def import (
    BOOLEAN,
    STRING,
    ConfigDef,
    ConfigKey,
    ConfigType,
    integer,
    one_of,
    optional,
)
from kvlog.errors import InvalidConfigError

# kvlog's own wire (ZeroMQ) listens on 7092 by default; Kafka's wire has 9092, the port
# Kafka clients expect. 7092 is Kafka's number with another first digit, and it is clear of
# the ports the Kafka world uses by habit (9092-9094 and a local cluster's next ones,
# Redpanda's 9644/19092/33145, Schema Registry 8081, REST Proxy 8082, Connect 8083, ksqlDB
# 8088, ZooKeeper 2181, JMX 9999, docker setups' 29092), of ZeroMQ's example ports
# 5555-5560, and of Linux's ephemeral range (32768-60999, handed out to outgoing connections).
DEFAULT_PORT = 7092
DEFAULT_BOOTSTRAP = f"127.0.0.1:{DEFAULT_PORT}"

log = logging.getLogger(__name__)


def _acks(name: str, value: Any) -> int:
    """Kafka's acks: 'all' or -1, 0, 1 (strings accepted)."""
    spelled = {"all": -1, "-1": -1, "0": 0, "1": 1}
    if isinstance(value, str) and value.lower() in spelled:
        return spelled[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and value in (-1, 0, 1):
        return value
    raise InvalidConfigError(f"acks must be 0, 1 or 'all' (-1), got {value!r}")


def _offset_reset(name: str, value: Any) -> str:
    """earliest, latest or none; Kafka's old names smallest and largest too."""
    spelled = value.strip().lower() if isinstance(value, str) else value
    spelled = {"smallest": "earliest", "largest": "latest"}.get(spelled, spelled)
    if spelled not in ("earliest", "latest", "none"):
        raise InvalidConfigError(
            f"{name} must be earliest, latest or none (or smallest / largest), got {value!r}"
        )
    return str(spelled)


_API_VERSION_WARNED = False


def _api_version(name: str, value: Any) -> Any:
    """kafka-python's api_version pins the protocol version it speaks to a Kafka broker;
    a kvlog client speaks kvlog's one protocol, so the value is ignored (said once)."""
    global _API_VERSION_WARNED
    if value is not None and not _API_VERSION_WARNED:
        _API_VERSION_WARNED = True
        log.warning(
            "api_version=%r is ignored: kvlog's clients speak kvlog's protocol, whatever "
            "Kafka version a kafka-python program names",
            value,
        )
    return value


def _codec(name: str, value: Any) -> Codec:
    return Codec.parse(value)


def _any(name: str, value: Any) -> Any:
    return value


def _bootstrap(name: str, value: Any) -> str | list[str]:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidConfigError(
        f"{name} must be 'host:port' (or a comma-separated list / a list of them), got {value!r}"
    )


def _strategies(name: str, value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    known = ("range", "roundrobin", "sticky", "cooperative-sticky")
    if not isinstance(items, list | tuple) or not items:
        raise InvalidConfigError(f"{name} must name one or more of {', '.join(known)}")
    out = []
    for item in items:
        if callable(item) and not isinstance(item, str):
            out.append(item)
            continue
        spelled = str(item).strip().lower()
        if spelled not in known:
            raise InvalidConfigError(f"{name}: unknown assignor {item!r}; use {', '.join(known)}")
        out.append(spelled)
    return out


_ACKS = ConfigType("string", _acks, "0, 1, all (-1)")
_CODEC = ConfigType("string", _codec, "none, gzip, snappy, lz4, zstd")
_SERDE = ConfigType("class", _any, "null (bytes), str, json, cbor, or a callable")
_BOOTSTRAP = ConfigType("list", _bootstrap, "host:port, comma-separated, or a list")
_STRATEGIES = ConfigType("list", _strategies, "range, roundrobin, sticky, cooperative-sticky")
_OFFSET_RESET = ConfigType("string", _offset_reset, "earliest, latest, none (smallest, largest)")
_IGNORED = ConfigType("any", _api_version, "anything (ignored)")


# The settings every client has; each client table starts with them.
_COMMON = (
    ConfigKey(
        "bootstrap.servers",
        _BOOTSTRAP,
        DEFAULT_BOOTSTRAP,
        "host:port of a kvlog broker (its ZeroMQ listen address).",
    ),
    ConfigKey(
        "protocol",
        one_of("kvlog", "kafka"),
        "kvlog",
        "kvlog: kvlog's own wire; kafka: Kafka's protocol through confluent-kafka (Kafka "
        "mode, also chosen by a kafka:// bootstrap server).",
    ),
    ConfigKey("client.id", STRING, "kvlog", "A name for this client in server logs."),
    ConfigKey("request.timeout.ms", integer(1), 30_000, "How long to wait for any reply."),
    ConfigKey("metadata.max.age.ms", integer(0), 300_000, "Refresh metadata at least this often."),
    ConfigKey("retry.backoff.ms", integer(0), 100, "Wait between retries."),
    ConfigKey(
        "security.protocol",
        one_of("plaintext", "curve"),
        "plaintext",
        "plaintext, or curve: ZeroMQ's CURVE authentication and encryption.",
    ),
    ConfigKey("curve.server.key", optional(STRING), None, "The server's public key (path or Z85)."),
    ConfigKey("curve.secret.key", optional(STRING), None, "This client's secret key file."),
    ConfigKey(
        "as.principal",
        optional(STRING),
        None,
        "Act as this principal (every request carries it as as_principal): the servers honour "
        "it only from kvlog's own key, as the web console does for its logged-in users.",
    ),
    ConfigKey(
        "api.version",
        _IGNORED,
        None,
        "Accepted for kafka-python programs and ignored (with a warning): kvlog's clients "
        "speak kvlog's protocol.",
    ),
)


PRODUCER_SETTINGS = ConfigDef(
    "producer setting",
    [
        *_COMMON,
        ConfigKey(
            "acks", _ACKS, -1, "0: don't wait; 1: the leader has it; all: every in-sync replica."
        ),
        ConfigKey(
            "linger.ms", integer(0), 5, "Wait this long for more records before sending a batch."
        ),
        # librdkafka's default, not the Java client's 16384 (issue 14, BENCHMARKS.md I):
        # an idempotent producer has at most max.in.flight (5) batches of a partition in
        # flight, each round trip a durable commit, so at 16 KiB a partition moves ~640
        # records of 100 B per fsync (~130 k records/s at a 5 ms commit) however fast
        # send() is. At 1,000,000 bytes batches close on linger.ms instead, as big as the
        # rate fills in 5 ms. It costs nothing at low rates (linger closes them first) and
        # no memory up front (a batch's buffers grow with its records); it stays under
        # max.request.size and the topics' max.message.bytes (1 MiB).
        ConfigKey("batch.size", integer(1), 1_000_000, "Target batch size in bytes per partition."),
        ConfigKey(
            "compression.type",
            _CODEC,
            Codec.NONE,
            "Codec of the record batches the producer builds.",
        ),
        ConfigKey("enable.idempotence", BOOLEAN, True, "Retries never duplicate or reorder."),
        ConfigKey("retries", integer(0), 2_147_483_647, "How often to retry a retriable failure."),
        ConfigKey(
            "delivery.timeout.ms", integer(1), 120_000, "Give up on a record after this long."
        ),
        ConfigKey(
            "max.in.flight.requests.per.connection",
            integer(1, 5),
            5,
            "Pipelined requests per node.",
        ),
        ConfigKey(
            "max.request.size", integer(64), 1_048_576, "Largest request the producer sends."
        ),
        ConfigKey(
            "buffer.memory", integer(1024), 33_554_432, "Bytes of records waiting to be sent."
        ),
        ConfigKey(
            "max.block.ms", integer(0), 60_000, "How long send() may block (buffer full, metadata)."
        ),
        ConfigKey("key.serializer", _SERDE, None, "How keys become bytes."),
        ConfigKey("value.serializer", _SERDE, None, "How values become bytes."),
        ConfigKey(
            "transactional.id",
            optional(STRING),
            None,
            "Makes the producer transactional (init_transactions() first); one live "
            "producer per id: a new one fences the old.",
        ),
        ConfigKey(
            "transaction.timeout.ms",
            integer(1),
            60_000,
            "The coordinator aborts a transaction left open this long.",
        ),
    ],
)

CONSUMER_SETTINGS = ConfigDef(
    "consumer setting",
    [
        *_COMMON,
        ConfigKey(
            "group.id",
            optional(STRING),
            None,
            "The consumer group; None for manual assignment only.",
        ),
        ConfigKey("group.instance.id", optional(STRING), None, "Static membership id."),
        ConfigKey("enable.auto.commit", BOOLEAN, True, "Commit polled offsets in the background."),
        ConfigKey("auto.commit.interval.ms", integer(1), 5000, "How often auto commit runs."),
        ConfigKey(
            "auto.offset.reset",
            _OFFSET_RESET,
            "latest",
            "Where to start without a committed offset: earliest, latest or none (error).",
        ),
        ConfigKey("max.poll.records", integer(1), 500, "Most records one poll() returns."),
        ConfigKey(
            "session.timeout.ms", integer(1), 45_000, "A member silent this long is removed."
        ),
        ConfigKey(
            "heartbeat.interval.ms", integer(1), 3000, "Heartbeat period (~1/3 of the session)."
        ),
        ConfigKey("max.poll.interval.ms", integer(1), 300_000, "Most time allowed between polls."),
        ConfigKey("fetch.max.wait.ms", integer(0), 500, "Long-poll wait of a fetch."),
        ConfigKey("fetch.min.bytes", integer(0), 1, "Bytes a fetch waits for."),
        ConfigKey("fetch.max.bytes", integer(1), 52_428_800, "Most bytes one fetch returns."),
        ConfigKey("max.partition.fetch.bytes", integer(1), 1_048_576, "Most bytes per partition."),
        ConfigKey("check.crcs", BOOLEAN, True, "Verify each batch's CRC32C."),
        ConfigKey(
            "isolation.level",
            one_of("read_uncommitted", "read_committed"),
            "read_uncommitted",
            "read_committed: only committed transactions' records, below the last stable offset.",
        ),
        ConfigKey(
            "partition.assignment.strategy",
            _STRATEGIES,
            ["range"],
            "Assignors in order of preference (the group uses the first every member has).",
        ),
        ConfigKey("key.deserializer", _SERDE, None, "How key bytes become keys."),
        ConfigKey("value.deserializer", _SERDE, None, "How value bytes become values."),
        ConfigKey(
            "consumer.timeout.ms",
            optional(integer(0)),
            None,
            "Stop iteration after this long without records (kafka-python's).",
        ),
        ConfigKey(
            "exclude.internal.topics", BOOLEAN, True, "Patterns never match internal topics."
        ),
    ],
)

ADMIN_SETTINGS = ConfigDef("admin setting", _COMMON)


def resolve(
    settings: ConfigDef,
    config: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """Merge a dotted-name dict and snake_case kwargs (which win) over the defaults, into
    ``{snake_case name: value}``."""
    values: dict[str, Any] = {key.attr: key.default for key in settings.values()}
    for spelled, value in [*(config or {}).items(), *kwargs.items()]:
        key = settings.lookup(spelled)
        if key is None:
            raise settings.unknown(spelled)
        values[key.attr] = key.parse(value)
    return values
