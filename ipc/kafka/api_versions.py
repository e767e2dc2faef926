"""The ApiVersions handler: the versions table, as Kafka's ApiVersions response.

Sans-IO and process-independent: every Kafka listener answers it the same way. A request
above the served range (ApiVersions v3+ from librdkafka and Java clients) gets
UNSUPPORTED_VERSION (35) in a v0-format body that still lists every supported range
(KIP-511), so the client retries at the highest version it finds for ApiVersions.
"""

from __future__ import annotations

from typing import Any

from kvlog.errors import ErrorCode

from .codec import ApiKey, response_class
from .connection import KafkaRequest
from .versions import SERVED, VersionTable

_Response = response_class(ApiKey.ApiVersions)


def api_versions_response(request: KafkaRequest, table: VersionTable = SERVED) -> Any:
    """The ApiVersions response for ``request`` (any version the connection let through)."""
    entry = _Response.ApiVersion
    entries = [
        entry(api_key=r.api_key, min_version=r.min_version, max_version=r.max_version)
        for r in table
    ]
    own = table.get(ApiKey.ApiVersions)
    if own is None or not own.advertises(request.api_version):
        return _Response(version=0, error_code=int(ErrorCode.UNSUPPORTED_VERSION), api_keys=entries)
    return _Response(error_code=0, api_keys=entries, throttle_time_ms=0)
