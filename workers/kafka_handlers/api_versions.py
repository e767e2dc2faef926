"""ApiVersions (v0-2; v3+ get KIP-511's answer): the versions table, the same on every
listener (:func:`kvlog.ipc.kafka.api_versions.api_versions_response`). No core."""

from __future__ import annotations

from kvlog.ipc.kafka.api_versions import api_versions_response
from kvlog.ipc.kafka.codec import ApiKey
from kvlog.ipc.kafka.connection import KafkaRequest

from .base import KafkaContext, Plan, handles


@handles(ApiKey.ApiVersions)
def api_versions(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    return Plan([], lambda outcomes: api_versions_response(request))
