"""Kafka mode's settings: kvlog's client settings as librdkafka's, and what passes through.

A Kafka-mode client takes the same settings as in kvlog mode, checked by the same tables
(ipc/config.py), so a misspelt name or a bad value fails the same way in both modes and
the defaults are kvlog's (a program behaves the same in both). Each kvlog setting then
becomes its librdkafka name (:data:`PRODUCER_MAP`, ...). Settings a Kafka cluster needs and
kvlog's own wire does not (``security.protocol=SASL_SSL``, ``sasl.*``, ``ssl.*``, ...)
pass through unchecked, as librdkafka spells them; kafka-python's names for the same
(``sasl_plain_username``, ``ssl_cafile``, ...) are translated. What has no meaning on a
Kafka cluster (CURVE keys, a callable assignor, the ``sticky`` assignor librdkafka lacks)
is an InvalidConfigError naming the setting.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvlog.errors import InvalidConfigError

from ..config import ADMIN_SETTINGS, CONSUMER_SETTINGS, PRODUCER_SETTINGS, resolve
from . import KAFKA_SCHEME, is_kafka_bootstrap

__all__ = ["KAFKA_SCHEME", "KafkaSettings", "is_kafka_bootstrap", "kafka_settings"]

# Names that pass through to librdkafka as they are: what a Kafka cluster needs to be
# reached (security, DNS, sockets) and kvlog's own wire has no use for.
_PASSTHROUGH = re.compile(
    r"(security\.protocol|sasl\..+|ssl\..+|enable\.ssl\.certificate\.verification|"
    r"socket\..+|broker\.address\.family|client\.dns\.lookup|client\.rack|debug|"
    r"oauthbearer\..+|https\..+)"
)
# kafka-python's spellings of the same settings.
_ALIASES = {
    "sasl.plain.username": "sasl.username",
    "sasl.plain.password": "sasl.password",
    "ssl.cafile": "ssl.ca.location",
    "ssl.certfile": "ssl.certificate.location",
    "ssl.keyfile": "ssl.key.location",
    "ssl.password": "ssl.key.password",
    "ssl.crlfile": "ssl.crl.location",
    "ssl.check.hostname": "ssl.endpoint.identification.algorithm",
}
_KAFKA_SECURITY = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
# kvlog-only settings with no meaning on a Kafka cluster, and why.
_REFUSED = {
    "curve.server.key": "CURVE is kvlog's ZeroMQ security; a Kafka cluster takes "
    "security.protocol=SSL or SASL_SSL with sasl.* / ssl.* settings",
    "curve.secret.key": "CURVE is kvlog's ZeroMQ security; a Kafka cluster takes "
    "security.protocol=SSL or SASL_SSL with sasl.* / ssl.* settings",
}

# kvlog setting (snake_case attr) -> librdkafka name; values converted below.
_COMMON_MAP = {
    "client_id": "client.id",
    "metadata_max_age_ms": "metadata.max.age.ms",
    "retry_backoff_ms": "retry.backoff.ms",
}
PRODUCER_MAP = {
    **_COMMON_MAP,
    "linger_ms": "linger.ms",
    "batch_size": "batch.size",
    "retries": "retries",
    "delivery_timeout_ms": "delivery.timeout.ms",
    "max_in_flight_requests_per_connection": "max.in.flight",
    "max_request_size": "message.max.bytes",
    "request_timeout_ms": "request.timeout.ms",
}
CONSUMER_MAP = {
    **_COMMON_MAP,
    "group_instance_id": "group.instance.id",
    "auto_commit_interval_ms": "auto.commit.interval.ms",
    "session_timeout_ms": "session.timeout.ms",
    "heartbeat_interval_ms": "heartbeat.interval.ms",
    "max_poll_interval_ms": "max.poll.interval.ms",
    "fetch_max_wait_ms": "fetch.wait.max.ms",
    "fetch_min_bytes": "fetch.min.bytes",
    "fetch_max_bytes": "fetch.max.bytes",
    "max_partition_fetch_bytes": "max.partition.fetch.bytes",
    "check_crcs": "check.crcs",
}
_ASSIGNORS = {
    "range": "range",
    "roundrobin": "roundrobin",
    "cooperative-sticky": "cooperative-sticky",
}
_TABLES = {"producer": PRODUCER_SETTINGS, "consumer": CONSUMER_SETTINGS, "admin": ADMIN_SETTINGS}


@dataclass
class KafkaSettings:
    """A Kafka-mode client's settings: ``kvlog`` as the kvlog client would hold them
    (snake_case, defaults filled in), ``librdkafka`` the configuration dict for
    confluent-kafka, ``bootstrap`` the host:port list."""

    kvlog: dict[str, Any]
    librdkafka: dict[str, Any]
    bootstrap: list[str] = field(default_factory=list)


def _dotted(name: str) -> str:
    return name if "." in name else name.replace("_", ".")


def split_bootstrap(servers: str | Sequence[str]) -> list[str]:
    """``kafka://h1:9092,h2:9092`` (or a list) -> ``["h1:9092", "h2:9092"]``."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        scheme, sep, rest = item.partition("://")
        if sep:
            if scheme.lower() not in (KAFKA_SCHEME, "plaintext"):
                raise InvalidConfigError(
                    f"{item!r}: a Kafka-mode bootstrap server is kafka://host:port (or "
                    "host:port with protocol='kafka'); security goes in security.protocol"
                )
            item = rest
        if ":" not in item:
            raise InvalidConfigError(f"bootstrap server {item!r} needs a port (host:port)")
        out.append(item)
    if not out:
        raise InvalidConfigError("bootstrap.servers is empty: give kafka://host:port")
    return out


def kafka_settings(
    kind: str, config: Mapping[str, Any] | None, kwargs: Mapping[str, Any]
) -> KafkaSettings:
    """Check a ``kind`` (producer, consumer, admin) client's settings with kvlog's table
    and turn them into librdkafka's."""
    own: dict[str, Any] = {}
    passed: dict[str, Any] = {}
    for name, value in [*(config or {}).items(), *kwargs.items()]:
        dotted = _ALIASES.get(_dotted(name), _dotted(name))
        if dotted == "protocol":
            continue
        if dotted in _REFUSED:
            raise InvalidConfigError(f"{name} cannot be used in Kafka mode: {_REFUSED[dotted]}")
        if dotted == "security.protocol":
            spelled = str(value).strip().lower()
            if spelled not in _KAFKA_SECURITY:
                raise InvalidConfigError(
                    f"security.protocol={value!r} is not a Kafka security protocol; use "
                    "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (CURVE is kvlog's own wire)"
                )
            passed[dotted] = spelled.upper()
        elif _PASSTHROUGH.fullmatch(dotted):
            passed[dotted] = value
        else:
            own[name] = value
    bootstrap_given = own.pop("bootstrap.servers", own.pop("bootstrap_servers", None))
    cfg = resolve(_TABLES[kind], own, {})
    if bootstrap_given is None:
        raise InvalidConfigError("Kafka mode needs bootstrap.servers (kafka://host:port)")
    bootstrap = split_bootstrap(bootstrap_given)
    cfg["bootstrap_servers"] = bootstrap
    rd: dict[str, Any] = {
        "bootstrap.servers": ",".join(bootstrap),
        # librdkafka's own log lines go through Python's logging, not straight to stderr.
        "logger": logging.getLogger(f"kvlog.kafka.{kind}"),
    }
    table = {"producer": PRODUCER_MAP, "consumer": CONSUMER_MAP, "admin": _COMMON_MAP}[kind]
    for attr, rd_name in table.items():
        if cfg.get(attr) is not None:
            rd[rd_name] = cfg[attr]
    if kind == "producer":
        _producer(cfg, rd)
    elif kind == "consumer":
        _consumer(cfg, rd)
    rd.update(passed)
    return KafkaSettings(cfg, rd, bootstrap)


def _producer(cfg: dict[str, Any], rd: dict[str, Any]) -> None:
    acks = cfg["acks"]
    rd["acks"] = "all" if acks == -1 else str(acks)
    # Kafka's idempotence needs acks=all (librdkafka refuses the mix); with acks 0 or 1 it
    # is off, as in Kafka's Java client when acks is set explicitly.
    rd["enable.idempotence"] = bool(cfg["enable_idempotence"]) and acks == -1
    rd["compression.type"] = cfg["compression_type"].name.lower()
    rd["queue.buffering.max.kbytes"] = max(1, cfg["buffer_memory"] // 1024)
    # kvlog's producer (and Kafka's Java client) place keyed records by murmur2 and spread
    # unkeyed ones in sticky batches; librdkafka's default is CRC32.
    rd["partitioner"] = "murmur2_random"


def _consumer(cfg: dict[str, Any], rd: dict[str, Any]) -> None:
    group = cfg["group_id"]
    if group is None:
        # librdkafka wants a group.id even for assign(); this one is never committed to.
        rd["group.id"] = f"kvlog-nogroup-{uuid.uuid4().hex[:12]}"
        rd["enable.auto.commit"] = False
    else:
        rd["group.id"] = group
        rd["enable.auto.commit"] = bool(cfg["enable_auto_commit"])
    # Offsets are stored for what poll() hands out (kvlog's positions), not for what
    # librdkafka fetched: commit() and auto commit then commit kvlog's positions.
    rd["enable.auto.offset.store"] = False
    reset = cfg["auto_offset_reset"]
    rd["auto.offset.reset"] = "error" if reset == "none" else reset
    names = []
    for item in cfg["partition_assignment_strategy"]:
        if callable(item) or item not in _ASSIGNORS:
            raise InvalidConfigError(
                f"partition.assignment.strategy {item!r} cannot be used in Kafka mode: "
                "librdkafka has range, roundrobin and cooperative-sticky"
            )
        names.append(item)
    if "cooperative-sticky" in names and len(set(names)) > 1:
        raise InvalidConfigError(
            "partition.assignment.strategy: in Kafka mode cooperative-sticky cannot be mixed "
            "with eager assignors (librdkafka's rule)"
        )
    rd["partition.assignment.strategy"] = ",".join(names)
