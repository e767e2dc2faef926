"""What a group member and its consumer see of each other, and one exchange with the
group's coordinator.

:class:`ConsumerLink` is the consumer as its GroupMember (ipc/group_member.py) sees it:
the consumer's I/O thread and metadata, and five operations on its subscription,
assignment and positions (ipc/consumer.py implements it), so the membership logic
reaches nothing else of the consumer. :class:`Exchange` is one JoinGroup or SyncGroup in
flight: sent from the consumer's thread, completed on the I/O thread, waited for by the
next poll().
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from kvlog.errors import KafkaTimeoutError, KvlogError
from kvlog.types import TopicPartition

from .metadata import ClusterMetadata
from .rpc import IOThread


class ConsumerLink(Protocol):
    """What a GroupMember needs from its consumer (ipc/consumer.py implements it)."""

    @property
    def io(self) -> IOThread:
        """The consumer's I/O thread, which carries the group's requests too."""
        ...

    @property
    def metadata(self) -> ClusterMetadata:
        """The consumer's view of the cluster (topics, partition counts, coordinator)."""
        ...

    def ensure_metadata(self, topics: list[str] | None, deadline: float | None = None) -> None:
        """Make sure the metadata knows ``topics`` (None: all); raises if one is missing,
        KafkaTimeoutError when the monotonic ``deadline`` passes first."""
        ...

    def subscribed_topics(self) -> set[str]:
        """The subscribed topics (for a pattern: the existing topics it matches)."""
        ...

    def follows_pattern(self) -> bool:
        """True when the subscription is a pattern (new matching topics rebalance)."""
        ...

    def set_assignment(self, tps: set[TopicPartition]) -> None:
        """Read exactly these partitions from now on."""
        ...

    def positions(self, only: set[TopicPartition] | None) -> dict[TopicPartition, int]:
        """The next offset to read of each assigned partition with a known position."""
        ...


class Exchange:
    """One JoinGroup or SyncGroup in flight, completed on the I/O thread."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None
        self.error: KvlogError | None = None

    def finish(self, reply: dict[str, Any] | None, error: KvlogError | None) -> None:
        self.reply = reply
        self.error = (
            error
            if error is not None or reply is not None
            else KafkaTimeoutError("no reply from the group coordinator")
        )
        self.done.set()
