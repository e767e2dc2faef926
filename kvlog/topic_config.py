"""Topic configuration: Kafka's names, types, defaults and legal values, in one table
(:class:`~kvlog.config_def.ConfigDef`, the shape every kvlog config table has).

A topic's stored config holds only its overrides; :func:`effective_topic_config` fills in
the rest. Names are always dotted (topic configs travel as maps).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config_def import (
    BOOLEAN,
    ConfigDef,
    ConfigKey,
    ConfigType,
    integer,
    one_of,
    unknown_name_error,
)
from .errors import InvalidConfigError

UNLIMITED = -1
DAY_MS = 24 * 60 * 60 * 1000
# Kafka's max.compaction.lag.ms default, Long.MAX_VALUE: never forces a compaction.
LAG_UNLIMITED = (1 << 63) - 1

_RETENTION = integer(UNLIMITED, valid="-1 or >= 0")
_POLICIES = ("compact", "delete")


def _cleanup_policy(name: str, value: Any) -> str:
    """Kafka's list of ``compact`` and ``delete`` ("compact,delete", "delete, compact",
    or a list), kept in one spelling: "delete", "compact" or "compact,delete"."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
        raise InvalidConfigError(f"{name} must be a list of compact, delete; got {value!r}")
    chosen = {item.strip() for item in items}
    if not chosen or not chosen <= set(_POLICIES):
        raise InvalidConfigError(f"{name} must be delete, compact or compact,delete; got {value!r}")
    return ",".join(p for p in _POLICIES if p in chosen)


def _ratio(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidConfigError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidConfigError(f"{name} must be a number, got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise InvalidConfigError(f"{name}={number} is outside 0..1")
    return number


CLEANUP_POLICY = ConfigType("list", _cleanup_policy, "delete, compact, compact,delete")
RATIO = ConfigType("double", _ratio, "0..1")

TOPIC_CONFIG = ConfigDef(
    "topic config",
    [
        ConfigKey(
            "retention.ms",
            _RETENTION,
            7 * DAY_MS,
            "Delete batches whose newest record is older than this (ms); -1: keep forever.",
        ),
        ConfigKey(
            "retention.bytes",
            _RETENTION,
            UNLIMITED,
            "Delete the oldest batches while the partition holds more bytes; -1: no limit.",
        ),
        ConfigKey(
            "max.message.bytes",
            integer(64),
            1_048_588,
            "Largest record batch the topic accepts, in bytes.",
        ),
        ConfigKey(
            "min.insync.replicas",
            integer(1),
            1,
            "acks=all needs at least this many in-sync replicas to accept a write.",
        ),
        ConfigKey(
            "unclean.leader.election.enable",
            BOOLEAN,
            False,
            "Allow an out-of-sync replica to become leader (may lose acknowledged records).",
        ),
        ConfigKey(
            "cleanup.policy",
            CLEANUP_POLICY,
            "delete",
            "How old data goes: 'delete' (retention.ms / retention.bytes), 'compact' (keep "
            "the latest record of every key; see min.cleanable.dirty.ratio) or both.",
        ),
        ConfigKey(
            "min.cleanable.dirty.ratio",
            RATIO,
            0.5,
            "Compact a partition once this share of its cleanable bytes has not been "
            "compacted yet (dirty bytes / (clean + dirty bytes)).",
        ),
        ConfigKey(
            "min.compaction.lag.ms",
            integer(0),
            0,
            "Records newer than this (by batch max timestamp) are never compacted.",
        ),
        ConfigKey(
            "max.compaction.lag.ms",
            integer(1),
            LAG_UNLIMITED,
            "Compact a partition whose oldest uncompacted record is older than this, "
            "whatever its dirty ratio.",
        ),
        ConfigKey(
            "delete.retention.ms",
            integer(0),
            DAY_MS,
            "How long a tombstone (a record with a null value) stays readable after the "
            "compaction pass that first covered it; then a later pass removes it.",
        ),
        ConfigKey(
            "message.timestamp.type",
            one_of("CreateTime", fold_case=False),
            "CreateTime",
            "Which timestamp records keep: the producer's (CreateTime).",
        ),
    ],
    snake_case=False,
)

__all__ = [
    "DAY_MS",
    "LAG_UNLIMITED",
    "TOPIC_CONFIG",
    "UNLIMITED",
    "cleanup_policies",
    "effective_topic_config",
    "unknown_name_error",
    "validate_topic_config",
]


def validate_topic_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Checked, typed overrides; raises InvalidConfigError naming the problem."""
    return TOPIC_CONFIG.parse(config)


def cleanup_policies(config: Mapping[str, Any]) -> set[str]:
    """The policies of an effective config: a subset of {"compact", "delete"}."""
    return set(str(config["cleanup.policy"]).split(","))


def effective_topic_config(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults with the topic's overrides applied."""
    return TOPIC_CONFIG.defaults() | dict(overrides or {})
