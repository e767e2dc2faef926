"""Kafka mode's Admin: kvlog's Admin API over confluent-kafka's AdminClient.

Topics (create with configs and ``validate_only``, describe with the effective config and
the overrides, alter configs incrementally, add partitions with kvlog's warning, delete),
kafka-python's ``create_topics``/``describe_topics``, consumer groups (list, describe in
kvlog's shape, delete, committed offsets and setting them), preferred leader elections
and ACLs (Kafka's, with kvlog's four fields: principal, resource type, name, operation;
allow rules on literal names from any host). Each call waits for the cluster's answer
(``request.timeout.ms``) and raises kvlog's exceptions.

Topic config values kvlog knows come back typed as kvlog gives them (``retention.ms`` as
an int); others as the cluster's strings.

Safe to share between threads (each call is one AdminClient request).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kvlog.errors import InvalidConfigError, KvlogError, UnknownTopicOrPartitionError
from kvlog.topic_config import TOPIC_CONFIG
from kvlog.types import TopicPartition

from ..admin import TopicDescription
from ..client_args import NewTopic, create_each, warn_partition_mapping
from ..client_args import new_topics as new_topics_of
from ..metadata import PartitionInfo
from .errors import LoginWatch, kafka_errors, to_kvlog
from .settings import kafka_settings

log = logging.getLogger(__name__)

_ACL_FIELDS = ("principal", "resource_type", "name", "operation")


class KafkaModeAdmin:
    """Manages a Kafka cluster with kvlog's Admin API (module docstring)."""

    def __init__(self, config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        from confluent_kafka.admin import AdminClient

        settings = kafka_settings("admin", config, kwargs)
        self.config = settings.kvlog
        self._bootstrap = settings.bootstrap
        self._timeout_s = self.config["request_timeout_ms"] / 1000
        self._login = LoginWatch()
        with kafka_errors("cannot create the Kafka admin client: "):
            # librdkafka's admin is a producer, whose metadata requests would create a
            # topic they name (describe_topic of a missing topic must not create it).
            self._rd = AdminClient(
                {
                    **settings.librdkafka,
                    "allow.auto.create.topics": False,
                    "error_cb": self._login.on_error,
                }
            )

    def __enter__(self) -> KafkaModeAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Let librdkafka's handle go now (not when the object does: a traceback that holds
        this admin would keep its connections retrying)."""
        self._rd = _ClosedHandle()

    def _wait(self, future: Any, what: str) -> Any:
        from confluent_kafka import KafkaException

        try:
            return future.result(timeout=self._timeout_s)
        except KafkaException as exc:
            raise self._refine(to_kvlog(exc, f"{what}: ")) from None
        except TimeoutError:
            from kvlog.errors import KafkaTimeoutError

            raise self._refine(
                KafkaTimeoutError(
                    f"{what}: no answer from the Kafka cluster at "
                    f"{', '.join(self._bootstrap)} within request.timeout.ms"
                )
            ) from None

    def _refine(self, exc: KvlogError) -> KvlogError:
        self._rd.poll(0)  # serves librdkafka's error callbacks (the refused login's)
        return self._login.refine(exc)

    def _metadata(self, topic: str | None = None) -> Any:
        try:
            with kafka_errors("metadata: "):
                return self._rd.list_topics(topic, timeout=self._timeout_s)
        except KvlogError as exc:
            raise self._refine(exc) from None

    # -- topics ----------------------------------------------------------------------------

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication_factor: int = 1,
        config: Mapping[str, Any] | None = None,
        *,
        validate_only: bool = False,
    ) -> str:
        """Create a topic; returns its topic id ("" where the cluster does not say).
        Raises TopicAlreadyExistsError when it exists."""
        from confluent_kafka.admin import NewTopic as RdNewTopic

        topic = RdNewTopic(
            name,
            num_partitions=partitions,
            replication_factor=replication_factor,
            config={k: _text(v) for k, v in (config or {}).items()},
        )
        with kafka_errors(f"create topic {name}: "):
            futures = self._rd.create_topics(
                [topic], request_timeout=self._timeout_s, validate_only=validate_only
            )
        self._wait(futures[name], f"create topic {name}")
        return "" if validate_only else self._topic_id(name)

    def _topic_id(self, name: str) -> str:
        """The topic's id as kvlog spells it (32 hex digits); "" from a cluster whose
        Metadata carries none (before v10: kvlog's own Kafka listener serves v0-8)."""
        from confluent_kafka import TopicCollection

        with kafka_errors(f"describe topic {name}: "):
            futures = self._rd.describe_topics(
                TopicCollection([name]), request_timeout=self._timeout_s
            )
        found = self._wait(futures[name], f"describe topic {name}")
        uuid = found.topic_id
        if uuid is None:
            return ""
        bits = (uuid.get_most_significant_bits() & (1 << 64) - 1) << 64
        bits |= uuid.get_least_significant_bits() & (1 << 64) - 1
        return "" if bits == 0 else f"{bits:032x}"

    def create_topics(
        self,
        new_topics: Any,
        timeout_ms: int | None = None,
        validate_only: bool = False,
        raise_errors: bool = True,
    ) -> dict[str, Any]:
        """kafka-python's create_topics (kvlog mode's contract)."""

        def check(topic: NewTopic) -> None:
            if topic.replica_assignments:
                raise InvalidConfigError(
                    f"topic {topic.name!r}: replica_assignments are not supported"
                )

        def create(topic: NewTopic) -> str:
            self.create_topic(
                topic.name,
                topic.num_partitions,
                topic.replication_factor,
                topic.topic_configs,
                validate_only=validate_only,
            )
            return ""  # Kafka mode's result rows carry no topic id (as they never did)

        return create_each(new_topics_of(new_topics), check, create, raise_errors)

    def delete_topic(self, name: str) -> None:
        with kafka_errors(f"delete topic {name}: "):
            futures = self._rd.delete_topics([name], request_timeout=self._timeout_s)
        self._wait(futures[name], f"delete topic {name}")

    def create_partitions(self, name: str, count: int) -> int:
        """Grow ``name`` to ``count`` partitions; returns the old count (and warns, as in
        kvlog mode, that keyed records now map elsewhere)."""
        from confluent_kafka.admin import NewPartitions

        old = len(self.describe_topic(name).partitions)
        with kafka_errors(f"create partitions of {name}: "):
            futures = self._rd.create_partitions(
                [NewPartitions(name, count)], request_timeout=self._timeout_s
            )
        self._wait(futures[name], f"create partitions of {name}")
        warn_partition_mapping(name, old, count)
        return old

    def _topic_configs(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(every config entry, the overrides) of a topic, kvlog-typed where kvlog knows."""
        from confluent_kafka.admin import ConfigResource, ConfigSource

        resource = ConfigResource("TOPIC", name)
        with kafka_errors(f"configs of {name}: "):
            futures = self._rd.describe_configs([resource], request_timeout=self._timeout_s)
        entries = self._wait(next(iter(futures.values())), f"configs of {name}")
        config: dict[str, Any] = {}
        overrides: dict[str, Any] = {}
        for key, entry in entries.items():
            value = _typed(key, entry.value)
            config[key] = value
            if entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value:
                overrides[key] = value
        return config, overrides

    def alter_topic_config(self, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        """Set topic config keys (None removes the override); returns the topic's
        overrides after the change."""
        from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

        ops = [
            ConfigEntry(
                key,
                None if value is None else _text(value),
                incremental_operation=(
                    AlterConfigOpType.DELETE if value is None else AlterConfigOpType.SET
                ),
            )
            for key, value in config.items()
        ]
        resource = ConfigResource("TOPIC", name, incremental_configs=ops)
        with kafka_errors(f"alter configs of {name}: "):
            futures = self._rd.incremental_alter_configs(
                [resource], request_timeout=self._timeout_s
            )
        self._wait(next(iter(futures.values())), f"alter configs of {name}")
        return self._topic_configs(name)[1]

    def list_topics(self) -> list[str]:
        return sorted(
            name for name, entry in self._metadata().topics.items() if entry.error is None
        )

    def describe_topic(self, name: str) -> TopicDescription:
        entry = self._metadata(name).topics.get(name)
        if entry is None or (entry.error is not None and entry.error.code() in (3, -188)):
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        if entry.error is not None:
            raise to_kvlog(entry.error, f"topic {name}: ")
        partitions = [_partition_info(p) for _, p in sorted(entry.partitions.items())]
        config, overrides = self._topic_configs(name)
        return TopicDescription(
            name=name,
            topic_id=self._topic_id(name),
            partitions=partitions,
            replication_factor=len(partitions[0].replicas) if partitions else 0,
            config=config,
            overrides=overrides,
        )

    def describe_topics(self, topics: list[str] | None = None) -> list[dict[str, Any]]:
        """kafka-python's describe_topics, with Kafka's field names."""
        meta = self._metadata()
        alive = set(meta.brokers)
        wanted = list(meta.topics) if topics is None else list(topics)
        out = []
        for name in wanted:
            entry = meta.topics.get(name)
            error = 3 if entry is None else (entry.error.code() if entry.error else 0)
            parts = [] if entry is None else sorted(entry.partitions.items())
            out.append(
                {
                    "name": name,
                    "error_code": error,
                    "topic_id": "",
                    "is_internal": name.startswith("__"),
                    "partitions": [
                        {
                            "partition_index": p.id,
                            "leader_id": p.leader,
                            "leader_epoch": -1,
                            "replica_nodes": list(p.replicas),
                            "isr_nodes": list(p.isrs),
                            "offline_replicas": [r for r in p.replicas if r not in alive],
                            "error_code": p.error.code() if p.error else 0,
                        }
                        for _, p in parts
                    ],
                }
            )
        return out

    def describe_cluster(self) -> dict[str, Any]:
        meta = self._metadata()
        return {
            "nodes": [
                {"node_id": b.id, "endpoint": f"{b.host}:{b.port}", "alive": True}
                for b in meta.brokers.values()
            ],
            "coordinator": None,
            "controller_id": meta.controller_id,
            "cluster_id": meta.cluster_id,
        }

    # -- consumer groups -------------------------------------------------------------------

    def list_groups(self) -> list[dict[str, Any]]:
        """Every group: group_id, state, protocol_type."""
        with kafka_errors("list groups: "):
            future = self._rd.list_consumer_groups(request_timeout=self._timeout_s)
        result = self._wait(future, "list groups")
        return [
            {
                "group_id": g.group_id,
                "state": _state(g.state),
                "protocol_type": "" if g.is_simple_consumer_group else "consumer",
            }
            for g in result.valid
        ]

    def describe_groups(self, group_ids: list[str]) -> list[dict[str, Any]]:
        """State, protocol, members (with assignments) per group, in kvlog's shape."""
        with kafka_errors("describe groups: "):
            futures = self._rd.describe_consumer_groups(
                list(group_ids), request_timeout=self._timeout_s
            )
        out = []
        for group_id in group_ids:
            d = self._wait(futures[group_id], f"describe group {group_id}")
            out.append(
                {
                    "group_id": d.group_id,
                    "state": _state(d.state),
                    "generation": -1,
                    "protocol": d.partition_assignor or "",
                    "protocol_type": "" if d.is_simple_consumer_group else "consumer",
                    "leader": "",
                    "members": [
                        {
                            "member_id": m.member_id,
                            "instance_id": m.group_instance_id,
                            "client_id": m.client_id,
                            "assignment": [
                                [tp.topic, tp.partition]
                                for tp in (m.assignment.topic_partitions if m.assignment else [])
                            ],
                        }
                        for m in d.members
                    ],
                }
            )
        return out

    def delete_groups(self, group_ids: list[str]) -> None:
        """Delete groups and their committed offsets; refused while a group has members."""
        with kafka_errors("delete groups: "):
            futures = self._rd.delete_consumer_groups(
                list(group_ids), request_timeout=self._timeout_s
            )
        for group_id, future in futures.items():
            self._wait(future, f"delete group {group_id}")

    def list_group_offsets(self, group_id: str) -> dict[TopicPartition, int]:
        """The group's committed offsets (the next offset each partition reads)."""
        from confluent_kafka import ConsumerGroupTopicPartitions

        with kafka_errors(f"offsets of group {group_id}: "):
            futures = self._rd.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group_id)], request_timeout=self._timeout_s
            )
        found = self._wait(futures[group_id], f"offsets of group {group_id}")
        return {
            TopicPartition(tp.topic, tp.partition): tp.offset
            for tp in found.topic_partitions or []
            if tp.offset >= 0
        }

    def alter_group_offsets(self, group_id: str, offsets: dict[TopicPartition, int]) -> None:
        """Set a group's committed offsets; only while the group has no members."""
        from confluent_kafka import ConsumerGroupTopicPartitions
        from confluent_kafka import TopicPartition as RdTopicPartition

        chosen = [RdTopicPartition(tp.topic, tp.partition, off) for tp, off in offsets.items()]
        with kafka_errors(f"set offsets of group {group_id}: "):
            futures = self._rd.alter_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group_id, chosen)],
                request_timeout=self._timeout_s,
            )
        result = self._wait(futures[group_id], f"set offsets of group {group_id}")
        for tp in result.topic_partitions or []:
            if tp.error is not None:
                raise to_kvlog(tp.error, f"set offset of {tp.topic}-{tp.partition}: ")

    # -- leaders ---------------------------------------------------------------------------

    def elect_leaders(self, topics: list[str] | None = None) -> list[TopicPartition]:
        """Move leadership back to each partition's preferred replica; returns the
        partitions that moved."""
        from confluent_kafka import ElectionType
        from confluent_kafka import TopicPartition as RdTopicPartition

        chosen = None
        if topics is not None:
            meta = self._metadata()
            chosen = [
                RdTopicPartition(t, p)
                for t in topics
                for p in (meta.topics[t].partitions if t in meta.topics else {})
            ]
        with kafka_errors("elect leaders: "):
            future = self._rd.elect_leaders(ElectionType.PREFERRED, chosen)
        result = self._wait(future, "elect leaders")
        return [
            TopicPartition(tp.topic, tp.partition) for tp, error in result.items() if error is None
        ]

    # -- ACLs ------------------------------------------------------------------------------

    def add_acl(self, principal: str, resource_type: str, name: str, operation: str) -> bool:
        from confluent_kafka.admin import AclBinding

        binding = AclBinding(*_acl_args(principal, resource_type, name, operation))
        with kafka_errors("add ACL: "):
            futures = self._rd.create_acls([binding], request_timeout=self._timeout_s)
        self._wait(futures[binding], "add ACL")
        return True

    def remove_acls(self, **match: str | None) -> list[dict[str, str]]:
        from confluent_kafka.admin import AclBindingFilter

        acl_filter = AclBindingFilter(*_acl_filter_args(match))
        with kafka_errors("remove ACLs: "):
            futures = self._rd.delete_acls([acl_filter], request_timeout=self._timeout_s)
        removed = self._wait(futures[acl_filter], "remove ACLs")
        return [_acl_dict(b) for b in removed]

    def list_acls(self) -> list[dict[str, str]]:
        from confluent_kafka.admin import AclBindingFilter

        acl_filter = AclBindingFilter(*_acl_filter_args({}))
        with kafka_errors("list ACLs: "):
            future = self._rd.describe_acls(acl_filter, request_timeout=self._timeout_s)
        return [_acl_dict(b) for b in self._wait(future, "list ACLs")]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _typed(key: str, value: Any) -> Any:
    """A config value as kvlog types it, where kvlog knows the key."""
    known = TOPIC_CONFIG.lookup(key)
    if known is None or value is None:
        return value
    try:
        return known.parse(value)
    except KvlogError:
        return value


def _state(state: Any) -> str:
    """confluent's ConsumerGroupState as Kafka's name (Stable, Empty, ...)."""
    names = {
        "STABLE": "Stable",
        "EMPTY": "Empty",
        "DEAD": "Dead",
        "PREPARING_REBALANCING": "PreparingRebalance",
        "COMPLETING_REBALANCING": "CompletingRebalance",
    }
    name = getattr(state, "name", str(state))
    return names.get(name, name.title())


def _partition_info(p: Any) -> PartitionInfo:
    return PartitionInfo(p.id, p.leader, -1, tuple(p.replicas), tuple(p.isrs))


def _principal(name: str) -> str:
    return name if ":" in name else f"User:{name}"


def _acl_args(principal: str, resource_type: str, name: str, operation: str) -> tuple[Any, ...]:
    from confluent_kafka.admin import (
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    try:
        rtype = ResourceType[resource_type.upper()]
        op = AclOperation[operation.upper()]
    except KeyError as exc:
        raise InvalidConfigError(f"ACL: unknown resource type or operation {exc}") from None
    return (
        rtype,
        name,
        ResourcePatternType.LITERAL,
        _principal(principal),
        "*",
        op,
        AclPermissionType.ALLOW,
    )


def _acl_filter_args(match: Mapping[str, str | None]) -> tuple[Any, ...]:
    from confluent_kafka.admin import (
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    unknown = set(match) - set(_ACL_FIELDS)
    if unknown:
        raise InvalidConfigError(f"ACL filter: unknown fields {sorted(unknown)}")
    rtype = match.get("resource_type")
    op = match.get("operation")
    principal = match.get("principal")
    return (
        ResourceType[rtype.upper()] if rtype else ResourceType.ANY,
        match.get("name"),
        ResourcePatternType.ANY,
        _principal(principal) if principal else None,
        None,
        AclOperation[op.upper()] if op else AclOperation.ANY,
        AclPermissionType.ANY,
    )


def _acl_dict(binding: Any) -> dict[str, str]:
    principal = binding.principal or ""
    return {
        "principal": principal.removeprefix("User:"),
        "resource_type": binding.restype.name.lower(),
        "name": binding.name,
        "operation": binding.operation.name.lower(),
    }


__all__ = ["KafkaModeAdmin", "NewTopic"]


class _ClosedHandle:
    """Stands in for librdkafka's handle after close(): any use says so."""

    def __getattr__(self, name: str) -> Any:
        from kvlog.errors import IllegalStateError

        raise IllegalStateError(f"{name}() on a closed admin client; create a new one")
