"""Kafka's APIs over kvlog's cores: one small handler per API or family (Redpanda's shape).

Shell side. Each module registers its handlers by API key (:func:`.base.handles`); the
versions each serves are its line in ``kvlog.ipc.kafka.versions.SERVED``, the one table
that also answers ApiVersions. A handler turns a decoded request into core events and
the cores' typed answers into Kafka's response (:class:`.base.Plan`); the process shells
(:mod:`workers.kafka_shell` and the per-process modules) run the plans. Which process
serves which API is the shells' business: :data:`HANDLERS` holds the coordinator's and
the broker's; the node's data path (``produce``, ``fetch``, ``list_offsets``,
``leader_epochs``, ``delete_records``) is not registered here but named by the node's
shell (:data:`workers.kafka_node_shell.NODE_HANDLERS`), since the coordinator serves every
API in :data:`HANDLERS`.
"""

from __future__ import annotations

from . import (  # noqa: F401  (each module registers its handlers)
    acls,
    api_versions,
    configs,
    find_coordinator,
    group_admin,
    groups,
    metadata,
    offsets,
    producer_id,
    topics,
    transactions,
)
from .base import HANDLERS, BrokerConfigEntry, KafkaContext, Outcome, Plan

__all__ = ["HANDLERS", "BrokerConfigEntry", "KafkaContext", "Outcome", "Plan"]
