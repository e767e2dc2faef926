"""Client configuration with Kafka's names, defaults and checks.

Every client takes its settings either as a dict of Kafka's dotted names
(``kvlog.Producer({"bootstrap.servers": "...", "acks": "all"})``) or as snake_case keyword
arguments (``kvlog.Producer(bootstrap_servers="...", acks="all")``), or both. An unknown
name is an error naming the closest valid one; a bad value names the setting and what it
accepts.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kvlog.codecs import Codec
from kvlog.errors import InvalidConfigError


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    doc: str
    parse: Callable[[str, Any], Any]

    @property
    def attr(self) -> str:
        return self.name.replace(".", "_")


def _int(low: int = 0, high: int = 2**63 - 1) -> Callable[[str, Any], int]:
    def parse(name: str, value: Any) -> int:
        if isinstance(value, bool):
            raise InvalidConfigError(f"{name} must be an integer, got {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise InvalidConfigError(f"{name} must be an integer, got {value!r}") from None
        if not low <= number <= high:
            raise InvalidConfigError(f"{name}={number} is outside {low}..{high}")
        return number

    return parse


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidConfigError(f"{name} must be true or false, got {value!r}")


def _str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidConfigError(f"{name} must be a string, got {value!r}")
    return value


def _opt_str(name: str, value: Any) -> str | None:
    return None if value is None else _str(name, value)


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def parse(name: str, value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise InvalidConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value.lower()

    return parse


def _acks(name: str, value: Any) -> int:
    """Kafka's acks: 'all' or -1, 0, 1 (strings accepted)."""
    spelled = {"all": -1, "-1": -1, "0": 0, "1": 1}
    if isinstance(value, str) and value.lower() in spelled:
        return spelled[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and value in (-1, 0, 1):
        return value
    raise InvalidConfigError(f"acks must be 0, 1 or 'all' (-1), got {value!r}")


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


_COMMON = (
    Setting("bootstrap.servers", "127.0.0.1:9092", "host:port of a kvlog broker.", _bootstrap),
    Setting("client.id", "kvlog", "A name for this client in server logs.", _str),
    Setting("request.timeout.ms", 30_000, "How long to wait for any reply.", _int(1)),
    Setting("metadata.max.age.ms", 300_000, "Refresh metadata at least this often.", _int(0)),
    Setting("retry.backoff.ms", 100, "Wait between retries.", _int(0)),
    Setting("security.protocol", "plaintext", "plaintext or curve.", _choice("plaintext", "curve")),
    Setting("curve.server.key", None, "The server's public key (path or Z85).", _opt_str),
    Setting("curve.secret.key", None, "This client's secret key file.", _opt_str),
)

PRODUCER_SETTINGS = (
    *_COMMON,
    Setting("acks", -1, "0: don't wait; 1: the leader has it; all: every in-sync replica.", _acks),
    Setting("linger.ms", 5, "Wait this long for more records before sending a batch.", _int(0)),
    Setting("batch.size", 16_384, "Target batch size in bytes per partition.", _int(1)),
    Setting("compression.type", Codec.NONE, "none, gzip, snappy, lz4 or zstd.", _codec),
    Setting("enable.idempotence", True, "Retries never duplicate or reorder.", _bool),
    Setting("retries", 2_147_483_647, "How often to retry a retriable failure.", _int(0)),
    Setting("delivery.timeout.ms", 120_000, "Give up on a record after this long.", _int(1)),
    Setting("max.in.flight.requests.per.connection", 5, "Pipelined requests per node.", _int(1, 5)),
    Setting("max.request.size", 1_048_576, "Largest request the producer sends.", _int(64)),
    Setting("buffer.memory", 33_554_432, "Bytes of records waiting to be sent.", _int(1024)),
    Setting("max.block.ms", 60_000, "How long send() may block (buffer full, metadata).", _int(0)),
    Setting("key.serializer", None, "bytes (None), 'str', 'json', 'cbor' or a callable.", _any),
    Setting("value.serializer", None, "bytes (None), 'str', 'json', 'cbor' or a callable.", _any),
)

CONSUMER_SETTINGS = (
    *_COMMON,
    Setting("group.id", None, "The consumer group; None for manual assignment only.", _opt_str),
    Setting("group.instance.id", None, "Static membership id.", _opt_str),
    Setting("enable.auto.commit", True, "Commit polled offsets in the background.", _bool),
    Setting("auto.commit.interval.ms", 5000, "How often auto commit runs.", _int(1)),
    Setting(
        "auto.offset.reset",
        "latest",
        "Where to start without a committed offset: earliest, latest or none (error).",
        _choice("earliest", "latest", "none"),
    ),
    Setting("max.poll.records", 500, "Most records one poll() returns.", _int(1)),
    Setting("session.timeout.ms", 45_000, "A member silent this long is removed.", _int(1)),
    Setting("heartbeat.interval.ms", 3000, "Heartbeat period (~1/3 of the session).", _int(1)),
    Setting("max.poll.interval.ms", 300_000, "Most time allowed between polls.", _int(1)),
    Setting("fetch.max.wait.ms", 500, "Long-poll wait of a fetch.", _int(0)),
    Setting("fetch.min.bytes", 1, "Bytes a fetch waits for.", _int(0)),
    Setting("fetch.max.bytes", 52_428_800, "Most bytes one fetch returns.", _int(1)),
    Setting("max.partition.fetch.bytes", 1_048_576, "Most bytes per partition.", _int(1)),
    Setting("check.crcs", True, "Verify each batch's CRC32C.", _bool),
    Setting(
        "partition.assignment.strategy",
        ["range"],
        "range, roundrobin, sticky or cooperative-sticky.",
        _strategies,
    ),
    Setting("key.deserializer", None, "bytes (None), 'str', 'json', 'cbor' or a callable.", _any),
    Setting("value.deserializer", None, "bytes (None), 'str', 'json', 'cbor' or a callable.", _any),
    Setting(
        "consumer.timeout.ms",
        None,
        "Stop iteration after this long without records (kafka-python's).",
        lambda n, v: None if v is None else _int(0)(n, v),
    ),
    Setting("exclude.internal.topics", True, "Patterns never match internal topics.", _bool),
)

ADMIN_SETTINGS = _COMMON


def resolve(
    settings: tuple[Setting, ...],
    config: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
    *,
    what: str,
) -> dict[str, Any]:
    """Merge a dotted-name dict and snake_case kwargs into ``{attr: value}``."""
    by_name = {s.name: s for s in settings}
    by_attr = {s.attr: s for s in settings}
    values: dict[str, Any] = {s.attr: s.default for s in settings}
    given: list[tuple[str, Any]] = list((config or {}).items()) + list(kwargs.items())
    for key, value in given:
        setting = by_name.get(key) or by_attr.get(key) or by_name.get(key.replace("_", "."))
        if setting is None:
            names = list(by_name) + list(by_attr)
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidConfigError(f"unknown {what} setting {key!r}{hint}")
        values[setting.attr] = setting.parse(setting.name, value)
    return values


def describe(settings: tuple[Setting, ...]) -> list[tuple[str, Any, str]]:
    return [(s.name, s.default, s.doc) for s in settings]
