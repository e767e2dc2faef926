"""The group side of Kafka mode's Consumer: subscriptions, the rebalance listener and
commits, over librdkafka's group membership.

Mixed into :class:`~ipc.kafka_client.consumer.KafkaModeConsumer`; it shares that
object's state (``_rd``, ``_assigned``, ``_positions``, ``config``) and thread (the
rebalance callbacks run inside its ``poll()``, as in Kafka). A ``pattern`` is a Python
regex matched here against the cluster's topics (rechecked every few seconds), so it
means what it means in kvlog mode; librdkafka is given the names. ``commit_async`` runs
its commits in order on one helper thread, where its callback runs too.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kvlog.errors import (
    CommitFailedError,
    IllegalStateError,
    KvlogError,
    UnknownTopicOrPartitionError,
)
from kvlog.types import TopicPartition

from ..client_args import subscription_args
from ..consumer_types import ConsumerRebalanceListener, OffsetAndMetadata
from .errors import kafka_errors, to_kvlog

log = logging.getLogger(__name__)

_OFFSET_INVALID = -1001
_PATTERN_RECHECK_S = 3.0
# Kafka's codes for a commit from a member the group moved on from.
_STALE_MEMBER = {22, 25, 27, 82}


def _rd(tp: TopicPartition, offset: int = _OFFSET_INVALID, metadata: str | None = None) -> Any:
    from confluent_kafka import TopicPartition as RdTopicPartition

    if metadata:
        return RdTopicPartition(tp.topic, tp.partition, offset, metadata=metadata)
    return RdTopicPartition(tp.topic, tp.partition, offset)


def _tps(partitions: Iterable[Any]) -> set[TopicPartition]:
    return {TopicPartition(p.topic, p.partition) for p in partitions}


class GroupSide:
    """See the module docstring. Not thread-safe (the consumer's thread only)."""

    config: dict[str, Any]
    _rd: Any
    _assigned: set[TopicPartition]
    _positions: dict[TopicPartition, int]
    _deferred: KvlogError | None
    _timeout_s: float
    _set_assignment: Callable[[set[TopicPartition]], None]

    def __init__(self) -> None:
        self._subscription: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._manual = False
        self._listener: ConsumerRebalanceListener | None = None
        self._group_topics: list[str] | None = None
        self._pattern_checked = 0.0
        self._in_rebalance = False
        self._commits: queue.Queue[Any] | None = None
        self._committer: threading.Thread | None = None

    # -- subscriptions ---------------------------------------------------------------------

    def subscribe(
        self,
        topics: Iterable[str] = (),
        pattern: str | None = None,
        listener: ConsumerRebalanceListener | None = None,
    ) -> None:
        """Subscribe to topics (or a regex ``pattern``). With a ``group_id`` the group
        shares their partitions; without one this consumer reads all of them."""
        topic_list, self._pattern = subscription_args(topics, pattern, self._manual)
        self._subscription = set(topic_list)
        self._listener = listener
        if self.config["group_id"] is None:
            self._set_assignment(self._all_partitions(self._matching_topics()))
            return
        self._group_topics = None
        self._follow(sorted(self._matching_topics()))

    def subscription(self) -> set[str]:
        return set(self._subscription)

    def unsubscribe(self) -> None:
        with kafka_errors("unsubscribe: "):
            if self.config["group_id"] is not None and not self._manual:
                self._rd.unsubscribe()
            else:
                self._rd.unassign()
        self._subscription = set()
        self._pattern = None
        self._manual = False
        self._group_topics = None
        self._assigned = set()
        self._positions = {}

    def _matching_topics(self) -> set[str]:
        if self._pattern is None:
            return set(self._subscription)
        with kafka_errors("metadata: "):
            names = self._rd.list_topics(timeout=self._timeout_s).topics
        self._pattern_checked = time.monotonic()
        return {
            t
            for t in names
            if self._pattern.fullmatch(t)
            and not (self.config["exclude_internal_topics"] and t.startswith("__"))
        }

    def _all_partitions(self, topics: set[str]) -> set[TopicPartition]:
        out = set()
        missing = []
        with kafka_errors("metadata: "):
            for topic in sorted(topics):
                entry = self._rd.list_topics(topic, timeout=self._timeout_s).topics.get(topic)
                if entry is None or (entry.error is not None and entry.error.code() in (3, -188)):
                    missing.append(topic)
                elif entry.error is None:
                    out |= {TopicPartition(topic, p) for p in entry.partitions}
        if missing:  # as kvlog mode says it
            raise UnknownTopicOrPartitionError(
                f"topic(s) {', '.join(missing)} do not exist; create them first"
            )
        return out

    def _follow(self, topics: list[str]) -> None:
        """Subscribe librdkafka to exactly these topic names."""
        if topics == self._group_topics:
            return
        self._group_topics = topics
        with kafka_errors("subscribe: "):
            if not topics:
                self._rd.unsubscribe()
                return
            self._rd.subscribe(
                topics,
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )

    def _group_tick(self) -> None:
        """Between polls: follow the topics a pattern matches now."""
        if (
            self._pattern is not None
            and self.config["group_id"] is not None
            and time.monotonic() - self._pattern_checked >= _PATTERN_RECHECK_S
        ):
            self._follow(sorted(self._matching_topics()))

    # -- rebalances (inside librdkafka's poll) ---------------------------------------------

    def _cooperative(self) -> bool:
        return "cooperative-sticky" in self.config["partition_assignment_strategy"]

    def _call_listener(self, what: str, tps: set[TopicPartition]) -> None:
        listener = self._listener
        if listener is None:
            return
        self._in_rebalance = True
        try:
            getattr(listener, what)(tps)
        except Exception as exc:  # raised by the poll() that ran the rebalance
            log.exception("rebalance listener %s raised", what)
            if self._deferred is None:
                self._deferred = exc if isinstance(exc, KvlogError) else to_kvlog(exc)
        finally:
            self._in_rebalance = False

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        tps = _tps(partitions)
        cooperative = self._cooperative()
        if cooperative:
            self._assigned |= tps
        else:
            self._assigned = set(tps)
            self._positions = {}
        for tp in tps:
            self._positions.pop(tp, None)
        if tps or not cooperative:  # as kvlog mode: a cooperative round adding nothing is quiet
            self._call_listener("on_partitions_assigned", tps)
        # Positions the listener sought to, else the committed offset / reset policy.
        chosen = [_rd(tp, self._positions.get(tp, _OFFSET_INVALID)) for tp in sorted(tps)]
        if cooperative:
            consumer.incremental_assign(chosen)
        else:
            consumer.assign(chosen)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        tps = _tps(partitions)
        self._call_listener("on_partitions_revoked", tps)
        self._drop(consumer, partitions, tps)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        tps = _tps(partitions)
        self._call_listener("on_partitions_lost", tps)
        self._drop(consumer, partitions, tps)

    def _drop(self, consumer: Any, partitions: list[Any], tps: set[TopicPartition]) -> None:
        if self._cooperative():
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()
        self._assigned -= tps
        for tp in tps:
            self._positions.pop(tp, None)

    def _reassign(self) -> None:
        """Hand librdkafka the assignment again at the positions known (how a seek lands
        on a partition that is not fetching yet)."""
        if self._in_rebalance:
            return  # _on_assign assigns at the sought positions when the listener returns
        chosen = [
            _rd(tp, self._positions.get(tp, _OFFSET_INVALID)) for tp in sorted(self._assigned)
        ]
        with kafka_errors("seek: "):
            if self.config["group_id"] is not None and not self._manual and self._cooperative():
                self._rd.incremental_unassign(chosen)
                self._rd.incremental_assign(chosen)
            else:
                self._rd.assign(chosen)

    # -- commits ---------------------------------------------------------------------------

    def _require_group(self, what: str) -> None:
        if self.config["group_id"] is None:
            raise IllegalStateError(f"{what} needs a group_id")

    def _store(self, handed: Mapping[TopicPartition, Any]) -> None:
        """Feed librdkafka's offset store (what auto commit commits) with the positions."""
        if self.config["group_id"] is None:
            return
        with kafka_errors("store offsets: "):
            self._rd.store_offsets(offsets=[_rd(tp, self._positions[tp]) for tp in handed])

    def _commit_list(
        self, offsets: Mapping[TopicPartition, OffsetAndMetadata | int] | None
    ) -> list[Any]:
        if offsets is None:
            offsets = {tp: p for tp, p in self._positions.items() if tp in self._assigned}
        out = []
        for tp, value in offsets.items():
            if isinstance(value, int):
                out.append(_rd(TopicPartition(*tp), value))
            else:
                out.append(_rd(TopicPartition(*tp), value.offset, value.metadata or None))
        return out

    def _commit_now(self, chosen: list[Any]) -> None:
        from confluent_kafka import KafkaException

        try:
            result = self._rd.commit(offsets=chosen, asynchronous=False)
        except KafkaException as exc:
            raise _commit_error(exc.args[0]) from None
        for entry in result or ():
            if entry.error is not None:
                raise _commit_error(entry.error)

    def commit(
        self, offsets: Mapping[TopicPartition, OffsetAndMetadata | int] | None = None
    ) -> None:
        """Commit positions (default: what poll() returned so far) synchronously."""
        self._require_group("commit()")
        chosen = self._commit_list(offsets)
        if chosen:
            self._commit_now(chosen)

    def commit_async(
        self,
        offsets: Mapping[TopicPartition, OffsetAndMetadata | int] | None = None,
        callback: Any = None,
    ) -> None:
        """Commit without waiting; ``callback(offsets, error)`` runs when it is done."""
        self._require_group("commit_async()")
        chosen = self._commit_list(offsets)
        snapshot = {TopicPartition(c.topic, c.partition): c.offset for c in chosen}
        if self._commits is None:
            self._commits = queue.Queue()
            self._committer = threading.Thread(
                target=self._run_commits, name="kafka-consumer-commits", daemon=True
            )
            self._committer.start()
        self._commits.put((chosen, snapshot, callback))

    def _run_commits(self) -> None:
        assert self._commits is not None
        while True:
            item = self._commits.get()
            if item is None:
                return
            chosen, snapshot, callback = item
            error: KvlogError | None = None
            try:
                if chosen:
                    self._commit_now(chosen)
            except KvlogError as exc:
                error = exc
                log.warning("async commit failed: %s", exc.message)
            if callback is not None:
                try:
                    callback(snapshot, error)
                except Exception:
                    log.exception("commit_async callback raised")

    def _stop_group(self) -> None:
        if self._commits is not None and self._committer is not None:
            self._commits.put(None)
            self._committer.join(self._timeout_s)

    def _committed_offset(self, tp: TopicPartition) -> int | None:
        with kafka_errors(f"committed offset of {tp}: "):
            [found] = self._rd.committed([_rd(tp)], timeout=self._timeout_s)
        return found.offset if found.offset >= 0 else None

    def committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset for ``partition`` (the next offset to read)."""
        self._require_group("committed()")
        return self._committed_offset(TopicPartition(*partition))


def _commit_error(error: Any) -> KvlogError:
    if hasattr(error, "code") and error.code() in _STALE_MEMBER:
        return CommitFailedError(
            f"the commit failed because this consumer no longer owns the partition "
            f"({error.str()}); the group rebalanced"
        )
    if hasattr(error, "code") and error.code() == -168:  # _NO_OFFSET: nothing to commit
        return KvlogError("nothing to commit")
    return to_kvlog(error, "commit: ")
