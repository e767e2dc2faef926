"""What kvlog serves on Kafka's wire: ONE table of API key -> versions.

Every decision about versions reads this table: the connection decodes only advertised
versions (others close the connection, as Kafka does), ApiVersions lists exactly these
ranges (librdkafka sends any API a broker advertises, so nothing is advertised before it
is served), and each handler is registered by its API key against its entry here, so an
API's versions are written down once. To serve an API: add its line, then its handler.

``served_min`` is for an API advertised from a lower version than it serves, as Produce
must be (0-8 advertised, 3-8 served: librdkafka before 2.11 turns compression off unless
Produce's range starts at 0, KAFKA-18659); its handler answers the versions below with
UNSUPPORTED_VERSION in the response.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .codec import ApiKey, api_name, known_versions


@dataclass(frozen=True)
class ApiVersionRange:
    """One API's advertised ``min_version..max_version`` (and served from ``served_min``)."""

    api_key: int
    min_version: int
    max_version: int
    served_min: int | None = None

    def __post_init__(self) -> None:
        served = self.min_version if self.served_min is None else self.served_min
        if not 0 <= self.min_version <= served <= self.max_version:
            raise ValueError(f"bad version range for {api_name(self.api_key)}: {self}")
        known = known_versions(self.api_key)
        if known is None or self.max_version > known[1]:
            raise ValueError(
                f"{api_name(self.api_key)} v{self.max_version} is beyond what the codec "
                f"decodes ({known})"
            )

    def advertises(self, version: int) -> bool:
        return self.min_version <= version <= self.max_version

    def serves(self, version: int) -> bool:
        low = self.min_version if self.served_min is None else self.served_min
        return low <= version <= self.max_version


class VersionTable:
    """API key -> :class:`ApiVersionRange`. Immutable after construction; shared freely."""

    def __init__(self, ranges: Iterable[ApiVersionRange]) -> None:
        self._ranges: dict[int, ApiVersionRange] = {}
        for entry in ranges:
            if entry.api_key in self._ranges:
                raise ValueError(f"{api_name(entry.api_key)} is declared twice")
            self._ranges[entry.api_key] = entry

    def get(self, api_key: int) -> ApiVersionRange | None:
        return self._ranges.get(api_key)

    def __contains__(self, api_key: object) -> bool:
        return api_key in self._ranges

    def __iter__(self) -> Iterator[ApiVersionRange]:
        return iter(sorted(self._ranges.values(), key=lambda r: r.api_key))

    def __len__(self) -> int:
        return len(self._ranges)


SERVED = VersionTable(
    [
        ApiVersionRange(ApiKey.ApiVersions, 0, 2),
        ApiVersionRange(ApiKey.Metadata, 0, 8),
        # SASL, on every listener as Kafka does: a listener without SASL answers them
        # ILLEGAL_SASL_STATE, which tells a client configured for SASL what is wrong
        # (served by the listener itself: kvlog.ipc.kafka.sasl).
        ApiVersionRange(ApiKey.SaslHandshake, 0, 1),
        ApiVersionRange(ApiKey.SaslAuthenticate, 0, 1),
        # Groups and offsets (the coordinator process).
        ApiVersionRange(ApiKey.FindCoordinator, 0, 2),
        ApiVersionRange(ApiKey.JoinGroup, 0, 5),
        ApiVersionRange(ApiKey.SyncGroup, 0, 3),
        ApiVersionRange(ApiKey.Heartbeat, 0, 3),
        ApiVersionRange(ApiKey.LeaveGroup, 0, 3),
        ApiVersionRange(ApiKey.OffsetCommit, 2, 7),
        ApiVersionRange(ApiKey.OffsetFetch, 1, 5),
        ApiVersionRange(ApiKey.DescribeGroups, 0, 4),
        ApiVersionRange(ApiKey.ListGroups, 0, 2),
        ApiVersionRange(ApiKey.DeleteGroups, 0, 1),
        # Producer ids and admin (the controller: the coordinator process).
        ApiVersionRange(ApiKey.InitProducerId, 0, 4),
        # Transactions (the transaction coordinator: the coordinator process).
        ApiVersionRange(ApiKey.AddPartitionsToTxn, 0, 2),
        ApiVersionRange(ApiKey.AddOffsetsToTxn, 0, 2),
        ApiVersionRange(ApiKey.EndTxn, 0, 2),
        ApiVersionRange(ApiKey.TxnOffsetCommit, 0, 3),  # v3: KIP-447's group metadata
        ApiVersionRange(ApiKey.CreateTopics, 2, 4),
        ApiVersionRange(ApiKey.DeleteTopics, 1, 3),
        ApiVersionRange(ApiKey.CreatePartitions, 0, 1),
        ApiVersionRange(ApiKey.DescribeConfigs, 1, 3),
        ApiVersionRange(ApiKey.AlterConfigs, 0, 1),
        ApiVersionRange(ApiKey.IncrementalAlterConfigs, 0, 1),
        # The data path (each node process, for the partitions it leads).
        ApiVersionRange(ApiKey.Produce, 0, 8, served_min=3),  # v7: zstd; v8: record errors
        ApiVersionRange(ApiKey.Fetch, 4, 11),  # v4: RecordBatch v2; v10: zstd
        ApiVersionRange(ApiKey.ListOffsets, 1, 5),
        ApiVersionRange(ApiKey.OffsetForLeaderEpoch, 2, 3),
        ApiVersionRange(ApiKey.DeleteRecords, 0, 1),
        # ACLs (the coordinator's store; other processes forward them).
        ApiVersionRange(ApiKey.DescribeAcls, 0, 1),
        ApiVersionRange(ApiKey.CreateAcls, 0, 1),
        ApiVersionRange(ApiKey.DeleteAcls, 0, 1),
    ]
)
