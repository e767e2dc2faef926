"""Kafka mode: kvlog's clients on a Kafka cluster, through confluent-kafka (librdkafka).

``kvlog.Producer``, ``kvlog.Consumer`` and ``kvlog.Admin`` (and so ``kvlog.ConsumerPool``
and the CLI) given ``bootstrap_servers="kafka://host:9092,host2:9092"`` or
``protocol="kafka"`` return the classes of this package instead: the same API (settings,
serializers, ``send()`` futures, ``send_batch``, ``poll``/``poll_batch``, groups and
rebalance listeners, commits, seek, offset queries, admin calls, kvlog's exceptions) over
Kafka's protocol. The public classes dispatch here with a few lines in ``__new__``;
nothing of kvlog's own wire is used.

confluent-kafka is an optional dependency (``pip install 'kvlog[kafka]'``); this module
imports it only when a Kafka-mode client is made.

- :mod:`.settings`: kvlog's settings as librdkafka's; security settings pass through.
- :mod:`.errors`: librdkafka's errors as kvlog's exceptions.
- :mod:`.producer`, :mod:`.consumer`, :mod:`.admin`: the three clients.
- :mod:`.wire`: a small Kafka-protocol client of kvlog's own (produce of whole record
  batches, fetch, offsets), for the mirror's data path, where librdkafka's per-record
  calls would cost too much.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvlog.errors import InvalidConfigError

KAFKA_SCHEME = "kafka"


def is_kafka_bootstrap(servers: str | Sequence[str]) -> bool:
    """Whether a bootstrap list names Kafka-protocol servers (``kafka://host:port``)."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    return any(
        isinstance(item, str) and item.strip().lower().startswith(KAFKA_SCHEME + "://")
        for item in items
    )


def wanted(config: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> bool:
    """Whether a client's settings ask for Kafka mode: ``protocol="kafka"`` or a
    ``kafka://`` bootstrap server (``protocol="kvlog"`` with one is an error)."""
    items = {**(config or {}), **kwargs}
    protocol = items.get("protocol")
    servers = items.get("bootstrap.servers", items.get("bootstrap_servers"))
    kafka_servers = servers is not None and is_kafka_bootstrap(servers)
    if protocol is None:
        return kafka_servers
    spelled = str(protocol).strip().lower()
    if spelled not in ("kafka", "kvlog"):
        raise InvalidConfigError(f"protocol must be 'kvlog' or 'kafka', got {protocol!r}")
    if spelled == "kvlog" and kafka_servers:
        raise InvalidConfigError(
            f"protocol='kvlog' with a kafka:// bootstrap server ({servers!r}): drop one"
        )
    return spelled == "kafka"


def _require_confluent() -> None:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        raise InvalidConfigError(
            "Kafka mode (a kafka:// bootstrap server or protocol='kafka') needs "
            "confluent-kafka: pip install 'kvlog[kafka]'"
        ) from None


def make_producer(config: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> Any:
    """A Kafka-mode Producer (what ``kvlog.Producer(...)`` returns in Kafka mode)."""
    _require_confluent()
    from .producer import KafkaModeProducer

    return KafkaModeProducer(config, **kwargs)


def make_consumer(topics: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """A Kafka-mode Consumer (``kvlog.Consumer(*topics, **kwargs)`` in Kafka mode)."""
    _require_confluent()
    from .consumer import KafkaModeConsumer

    return KafkaModeConsumer(*topics, **kwargs)


def make_admin(config: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> Any:
    """A Kafka-mode Admin (``kvlog.Admin(...)`` in Kafka mode)."""
    _require_confluent()
    from .admin import KafkaModeAdmin

    return KafkaModeAdmin(config, **kwargs)


def consumer_wanted(topics: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    """``wanted`` for Consumer's signature (a settings dict may come first)."""
    from ..client_args import split_consumer_args

    return wanted(split_consumer_args(topics)[0], kwargs)
