"""Topic configuration: Kafka's names, types, defaults and legal values, in one table."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidConfigError

UNLIMITED = -1
DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class ConfigKey:
    name: str
    kind: type
    default: Any
    doc: str
    check: Callable[[Any], bool] = lambda _v: True
    rule: str = ""


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _retention(v: int) -> bool:
    return v == UNLIMITED or v >= 0


TOPIC_CONFIG: dict[str, ConfigKey] = {
    key.name: key
    for key in (
        ConfigKey(
            "retention.ms",
            int,
            7 * DAY_MS,
            "Delete batches whose newest record is older than this (ms); -1: keep forever.",
            _retention,
            "-1 or >= 0",
        ),
        ConfigKey(
            "retention.bytes",
            int,
            UNLIMITED,
            "Delete the oldest batches while the partition holds more bytes; -1: no limit.",
            _retention,
            "-1 or >= 0",
        ),
        ConfigKey(
            "max.message.bytes",
            int,
            1_048_588,
            "Largest record batch the topic accepts, in bytes.",
            _int_at_least(64),
            ">= 64",
        ),
        ConfigKey(
            "min.insync.replicas",
            int,
            1,
            "acks=all needs at least this many in-sync replicas to accept a write.",
            _int_at_least(1),
            ">= 1",
        ),
        ConfigKey(
            "unclean.leader.election.enable",
            bool,
            False,
            "Allow an out-of-sync replica to become leader (may lose acknowledged records).",
        ),
        ConfigKey(
            "cleanup.policy",
            str,
            "delete",
            "How old data goes: 'delete' (retention). Compaction is not supported yet.",
            lambda v: v == "delete",
            "'delete'",
        ),
        ConfigKey(
            "message.timestamp.type",
            str,
            "CreateTime",
            "Which timestamp records keep: the producer's (CreateTime).",
            lambda v: v == "CreateTime",
            "'CreateTime'",
        ),
    )
}

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(key: ConfigKey, value: Any) -> Any:
    """Accept native values and their string spellings (as from a CLI or a file)."""
    if key.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise InvalidConfigError(f"{key.name} must be true or false, got {value!r}")
    if key.kind is int:
        if isinstance(value, bool):
            raise InvalidConfigError(f"{key.name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise InvalidConfigError(f"{key.name} must be an integer, got {value!r}")
    if not isinstance(value, str):
        raise InvalidConfigError(f"{key.name} must be a string, got {value!r}")
    return value


def unknown_name_error(name: str, known: Mapping[str, object], what: str) -> InvalidConfigError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = (
        f"; did you mean {close[0]!r}?" if close else f"; known names: {', '.join(sorted(known))}"
    )
    return InvalidConfigError(f"unknown {what} {name!r}{hint}")


def validate_topic_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Checked, typed overrides; raises InvalidConfigError naming the problem."""
    out: dict[str, Any] = {}
    for name, raw in (config or {}).items():
        key = TOPIC_CONFIG.get(name)
        if key is None:
            raise unknown_name_error(name, TOPIC_CONFIG, "topic config")
        value = _coerce(key, raw)
        if not key.check(value):
            raise InvalidConfigError(f"{name}={value!r} is not legal; it must be {key.rule}")
        out[name] = value
    return out


def effective_topic_config(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults with the topic's overrides applied."""
    return {name: key.default for name, key in TOPIC_CONFIG.items()} | dict(overrides or {})
