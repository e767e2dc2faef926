"""Topic configuration: Kafka's names, types, defaults and legal values, in one table
(:class:`~kvlog.config_def.ConfigDef`, the shape every kvlog config table has).

A topic's stored config holds only its overrides; :func:`effective_topic_config` fills in
the rest. Names are always dotted (topic configs travel as maps).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config_def import BOOLEAN, ConfigDef, ConfigKey, integer, one_of, unknown_name_error

UNLIMITED = -1
DAY_MS = 24 * 60 * 60 * 1000

_RETENTION = integer(UNLIMITED, valid="-1 or >= 0")

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
            one_of("delete", fold_case=False),
            "delete",
            "How old data goes: 'delete' (retention). Compaction is not supported yet.",
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
    "TOPIC_CONFIG",
    "UNLIMITED",
    "effective_topic_config",
    "unknown_name_error",
    "validate_topic_config",
]


def validate_topic_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Checked, typed overrides; raises InvalidConfigError naming the problem."""
    return TOPIC_CONFIG.parse(config)


def effective_topic_config(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults with the topic's overrides applied."""
    return TOPIC_CONFIG.defaults() | dict(overrides or {})
