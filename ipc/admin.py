"""The Admin client: topics and cluster description (groups in the groups module).

Every call is a request to the broker (the bootstrap endpoint), which forwards changes to
the coordinator and answers once the change is visible in its metadata, so a topic is
usable as soon as ``create_topic`` returns.

kafka-python's calls are here too: ``create_topics([NewTopic(...)], validate_only=...)``
(TopicAlreadyExistsError for a topic that exists, which scripts catch to be re-runnable)
and ``describe_topics()`` with kafka-python's field names.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvlog.errors import (
    InvalidConfigError,
    InvalidRequestError,
    KvlogError,
    NoBrokersAvailable,
    UnknownTopicOrPartitionError,
    error_from_code,
)
from kvlog.topic_config import effective_topic_config
from kvlog.types import TopicPartition

from . import kafka_client
from .client_args import (
    NewTopic,
    create_each,
    warn_partition_mapping,
)

# Re-exported: programs and tools/topics.py import the warning from here.
from .client_args import PartitionMappingWarning as PartitionMappingWarning
from .client_args import new_topics as new_topics_of
from .config import ADMIN_SETTINGS, resolve
from .kafka.scram import DEFAULT_ITERATIONS, SCRAM_SHA_256, SCRAM_SHA_512, scram_credential
from .metadata import PartitionInfo
from .rpc import IOThread
from .security import client_header_fields, client_socket_options
from .wire import split_bootstrap

log = logging.getLogger(__name__)


@dataclass
class TopicDescription:
    name: str
    topic_id: str
    partitions: list[PartitionInfo]
    replication_factor: int
    config: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)


class _AdminGroupsAndAcls:
    """Mixed into Admin below: consumer groups, ACLs, leader elections."""

    _call: Any

    # -- consumer groups -----------------------------------------------------------------------

    def list_groups(self) -> list[dict[str, Any]]:
        """Every group with members or committed offsets: group_id, state, protocol_type."""
        return list(self._call("list_groups").get("groups", []))

    def describe_groups(self, group_ids: list[str]) -> list[dict[str, Any]]:
        """State, generation, protocol, leader and members (with assignments) per group."""
        out = []
        for entry in self._call("describe_groups", group_ids=list(group_ids)).get("groups", []):
            if entry.get("error"):
                raise error_from_code(entry["error"], entry.get("message"))
            out.append(entry)
        return out

    def delete_groups(self, group_ids: list[str]) -> None:
        """Delete groups and their committed offsets; refused while a group has members."""
        for entry in self._call("delete_groups", group_ids=list(group_ids)).get("results", []):
            if entry.get("error"):
                raise error_from_code(entry["error"], entry.get("message"))

    def list_group_offsets(self, group_id: str) -> dict[TopicPartition, int]:
        """The group's committed offsets (the next offset each partition reads)."""
        reply = self._call("offset_fetch", group_id=group_id, partitions=None)
        return {
            TopicPartition(e["topic"], e["partition"]): e["offset"]
            for e in reply.get("partitions", [])
            if e.get("offset", -1) >= 0
        }

    def alter_group_offsets(self, group_id: str, offsets: dict[TopicPartition, int]) -> None:
        """Set a group's committed offsets; only while the group has no members."""
        reply = self._call(
            "offset_commit",
            group_id=group_id,
            generation=-1,
            member_id="",
            offsets=[
                {"topic": tp.topic, "partition": tp.partition, "offset": off, "metadata": ""}
                for tp, off in offsets.items()
            ],
        )
        for entry in reply.get("partitions", []):
            if entry.get("error"):
                raise error_from_code(entry["error"], entry.get("message"))

    # -- leaders ---------------------------------------------------------------------------------

    def elect_leaders(self, topics: list[str] | None = None) -> list[TopicPartition]:
        """Move leadership back to each partition's preferred (first) replica where it is
        in sync; returns the partitions that moved."""
        fields: dict[str, Any] = {} if topics is None else {"topics": list(topics)}
        reply = self._call("elect_leaders", **fields)
        return [TopicPartition(t, p) for t, p in reply.get("elected", [])]

    # -- ACLs --------------------------------------------------------------------------------------

    def add_acl(self, principal: str, resource_type: str, name: str, operation: str) -> bool:
        reply = self._call(
            "acl_add",
            principal=principal,
            resource_type=resource_type,
            name=name,
            operation=operation,
        )
        return bool(reply.get("added"))

    def remove_acls(self, **match: str | None) -> list[dict[str, str]]:
        """Remove every ACL matching the given fields (principal, resource_type, name,
        operation); returns what was removed."""
        fields = {k: v for k, v in match.items() if v is not None}
        return list(self._call("acl_remove", **fields).get("removed", []))

    def list_acls(self) -> list[dict[str, str]]:
        return list(self._call("acl_list").get("acls", []))

    # -- SCRAM users (Kafka clients' SASL logins) ---------------------------------------------

    def upsert_scram_user(
        self,
        name: str,
        password: str,
        mechanisms: Sequence[str] = (SCRAM_SHA_256, SCRAM_SHA_512),
        iterations: int = DEFAULT_ITERATIONS,
    ) -> bool:
        """Add SCRAM user ``name``, or replace its credentials for ``mechanisms`` (others
        it has stay); returns whether the user is new. The password is salted here: only
        the salted credentials travel (RFC 5802). Super users only, with security on."""
        try:
            credentials = [scram_credential(m, password, iterations) for m in mechanisms]
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        reply = self._call("user_upsert", name=name, credentials=[c.to_wire() for c in credentials])
        return bool(reply.get("created"))

    def remove_scram_user(self, name: str) -> list[str]:
        """Remove SCRAM user ``name`` (RESOURCE_NOT_FOUND if there is none); returns the
        mechanisms it had."""
        return list(self._call("user_remove", name=name).get("mechanisms", []))

    def list_scram_users(self) -> list[dict[str, Any]]:
        """``[{"name": ..., "mechanisms": {mechanism: iterations}}]``, by name."""
        return list(self._call("user_list").get("users", []))


class Admin(_AdminGroupsAndAcls):
    """Manage topics. Safe to share between threads."""

    def __new__(cls, config: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        # Kafka mode (a kafka:// bootstrap server or protocol="kafka"): ipc/kafka_client/.
        if cls is Admin and kafka_client.wanted(config, kwargs):
            return kafka_client.make_admin(config, kwargs)
        return super().__new__(cls)

    def __init__(self, config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        cfg = resolve(ADMIN_SETTINGS, config, kwargs)
        self.config = cfg
        self._bootstrap = split_bootstrap(cfg["bootstrap_servers"])
        self._timeout_ms = cfg["request_timeout_ms"]
        self._io = IOThread(
            f"admin-{cfg['client_id']}",
            request_timeout_ms=self._timeout_ms,
            socket_options=client_socket_options(cfg),
            header_fields=client_header_fields(cfg),
        )
        self._next = 0

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._io.close()

    def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request to a bootstrap server; a retriable failure tries the next one. A
        refused connection moves on at once, and NoBrokersAvailable comes within about a
        second when nothing listens at any of them."""
        error: KvlogError | None = None
        count = len(self._bootstrap)
        for attempt in range(count):
            start = (self._next + attempt) % count
            order = self._bootstrap[start:] + self._bootstrap[:start]
            try:
                header, _ = self._io.bootstrap_call(order, op, fields, timeout_ms=self._timeout_ms)
                return header
            except NoBrokersAvailable:
                raise
            except KvlogError as exc:
                if exc.retriable and count > 1:
                    error = exc
                    continue
                raise
        self._next += 1
        assert error is not None
        raise error

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
        """Create a topic; returns its topic id. Raises TopicAlreadyExistsError when it
        exists. ``validate_only``: only check that it could be created (nothing is
        created; the id is then "")."""
        fields: dict[str, Any] = {
            "name": name,
            "partitions": partitions,
            "replication_factor": replication_factor,
            "config": dict(config or {}),
        }
        if validate_only:  # sent only when asked: servers without it never see the field
            fields["validate_only"] = True
        reply = self._call("create_topic", **fields)
        return str(reply.get("topic_id", ""))

    def create_topics(
        self,
        new_topics: Any,
        timeout_ms: int | None = None,
        validate_only: bool = False,
        raise_errors: bool = True,
    ) -> dict[str, Any]:
        """kafka-python's create_topics: ``new_topics`` is a list of :class:`NewTopic` or
        of names, or ``{name: {"num_partitions", "replication_factor", "configs"}}``.
        Every topic is tried; then, with ``raise_errors``, the first failure is raised
        (TopicAlreadyExistsError for one that exists). Returns ``{"topics": [{"name",
        "topic_id", "error_code", "error_message"}, ...]}``. ``timeout_ms`` is accepted:
        a kvlog broker answers once the topics exist."""

        def check(topic: NewTopic) -> None:
            if topic.replica_assignments:
                raise InvalidConfigError(
                    f"topic {topic.name!r}: replica_assignments are not supported; kvlog "
                    "places replicas round robin over its log dirs"
                )

        def create(topic: NewTopic) -> str:
            return self.create_topic(
                topic.name,
                1 if topic.num_partitions == -1 else topic.num_partitions,
                1 if topic.replication_factor == -1 else topic.replication_factor,
                topic.topic_configs,
                validate_only=validate_only,
            )

        return create_each(new_topics_of(new_topics), check, create, raise_errors)

    def delete_topic(self, name: str) -> None:
        self._call("delete_topic", name=name)

    def create_partitions(self, name: str, count: int) -> int:
        """Grow ``name`` to ``count`` partitions; returns the old count.

        Warns (PartitionMappingWarning) that keyed records move: a key's partition is
        murmur2(key) % partition count, so most keys now map elsewhere, and per-key order
        across the change is no longer guaranteed.
        """
        reply = self._call("create_partitions", name=name, count=count)
        old = int(reply.get("old_count", 0))
        warn_partition_mapping(name, old, count)
        return old

    def alter_topic_config(self, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        """Set topic config keys (a value of None removes the override); returns the
        topic's overrides after the change."""
        reply = self._call("alter_topic_config", name=name, config=dict(config))
        return dict(reply.get("config") or {})

    def _metadata(self, topics: list[str] | None) -> dict[str, Any]:
        fields: dict[str, Any] = {} if topics is None else {"topics": topics}
        return self._call("metadata", **fields)

    def list_topics(self) -> list[str]:
        return sorted(t["name"] for t in self._metadata(None)["topics"] if not t.get("error"))

    def describe_topic(self, name: str) -> TopicDescription:
        reply = self._metadata([name])
        entry = next((t for t in reply["topics"] if t["name"] == name), None)
        if entry is None:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        if entry.get("error"):
            raise error_from_code(entry["error"], entry.get("message"))
        overrides = dict(entry.get("config") or {})
        return TopicDescription(
            name=name,
            topic_id=entry.get("topic_id", ""),
            partitions=[PartitionInfo.from_wire(p) for p in entry["partitions"]],
            replication_factor=entry.get("replication_factor", 1),
            config=effective_topic_config(overrides),
            overrides=overrides,
        )

    def describe_topics(self, topics: list[str] | None = None) -> list[dict[str, Any]]:
        """kafka-python's describe_topics: one dict per topic (every topic without
        ``topics``) with Kafka's field names: ``name``, ``error_code``, ``topic_id``,
        ``is_internal`` and ``partitions`` (``partition_index``, ``leader_id``,
        ``leader_epoch``, ``replica_nodes``, ``isr_nodes``, ``offline_replicas``,
        ``error_code``)."""
        reply = self._metadata(None if topics is None else list(topics))
        alive = {n["node_id"] for n in reply.get("nodes", []) if n.get("alive", True)}
        out = []
        for entry in reply.get("topics", []):
            partitions = [PartitionInfo.from_wire(p) for p in entry.get("partitions", [])]
            out.append(
                {
                    "name": entry["name"],
                    "error_code": int(entry.get("error", 0)),
                    "topic_id": entry.get("topic_id", ""),
                    "is_internal": entry["name"].startswith("__"),
                    "partitions": [
                        {
                            "partition_index": p.partition,
                            "leader_id": p.leader,
                            "leader_epoch": p.leader_epoch,
                            "replica_nodes": list(p.replicas),
                            "isr_nodes": list(p.isr),
                            "offline_replicas": [r for r in p.replicas if r not in alive],
                            "error_code": 0,
                        }
                        for p in partitions
                    ],
                }
            )
        return out

    def describe_cluster(self) -> dict[str, Any]:
        reply = self._metadata([])
        return {"nodes": reply.get("nodes", []), "coordinator": reply.get("coordinator")}
