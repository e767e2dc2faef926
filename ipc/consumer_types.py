"""The consumer API's small value types and its rebalance listener interface (Kafka's
``OffsetAndMetadata``, ``OffsetAndTimestamp`` and ``ConsumerRebalanceListener``).

They live apart from ipc/consumer.py so that the group membership (ipc/group_member.py)
can use them without importing the consumer; ``kvlog.ipc.consumer`` re-exports them.
"""

from __future__ import annotations

from typing import NamedTuple

from kvlog.types import TopicPartition


class OffsetAndMetadata(NamedTuple):
    """A committed position: the next offset to read, plus free-form metadata."""

    offset: int
    metadata: str = ""
    leader_epoch: int = -1


class OffsetAndTimestamp(NamedTuple):
    offset: int
    timestamp: int


class ConsumerRebalanceListener:
    """Override to act when a group rebalance moves partitions (Kafka's interface)."""

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Before partitions leave: commit what was processed."""

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """After partitions arrive: seek if needed."""

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        """Partitions were taken away without a clean revoke (session lost); by default
        the same as revoked, as in Kafka."""
        self.on_partitions_revoked(lost)
