"""The transactional producer's side of Kafka's transactions (KIP-98), over kvlog's wire.

A :class:`TransactionManager` belongs to a Producer built with ``transactional_id``. Its
API calls run on the application's thread and talk to the transaction coordinator
(PROTOCOL.md, ``init_producer_id`` with a transactional id, ``add_partitions_to_txn``,
``add_offsets_to_txn``, ``txn_offset_commit``, ``end_txn``) with blocking calls,
retrying what is retriable until ``max.block.ms``.

Partitions join the transaction from the I/O thread, batch by batch, never per record:
on each of its turns the sender hands :meth:`TransactionManager.register` the partitions
of the batches the accumulator holds (open ones too, as Kafka's client adds a partition
when its first record is appended rather than when its batch is ready), and the new ones
are added (``add_partitions_to_txn``, several in one request); a partition's batches are
sent (:meth:`TransactionManager.sendable`) once the coordinator has it.

States (Kafka's client names): UNINITIALIZED -> (init_transactions) READY ->
(begin_transaction) IN_TRANSACTION -> (commit/abort) COMMITTING / ABORTING -> READY. A
batch that fails inside a transaction makes it ABORTABLE (commit raises, abort works);
PRODUCER_FENCED or INVALID_PRODUCER_EPOCH anywhere makes the producer FATAL: every later
call raises :class:`~kvlog.errors.ProducerFencedError` (a newer producer with the same id
took over). ``send()`` is allowed in IN_TRANSACTION only; the manager opens and closes
the accumulator's send gate (ipc/accumulator.py ``SendGate``) with every state change, so
the check costs nothing per record while a transaction is open.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kvlog.errors import (
    ErrorCode,
    InvalidTxnStateError,
    KvlogError,
    ProducerFencedError,
    error_from_code,
)
from kvlog.types import TopicPartition

from .metadata import ClusterMetadata
from .rpc import IOThread

FENCING = {ErrorCode.PRODUCER_FENCED, ErrorCode.INVALID_PRODUCER_EPOCH}
# A leader lost this producer's sequence (its state expired, or the partition was
# recreated): its sequences can only restart at 0 under a new epoch (KIP-360).
SEQUENCE_LOST = {ErrorCode.UNKNOWN_PRODUCER_ID, ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER}


class TxnState(enum.Enum):
    UNINITIALIZED = "uninitialized"
    READY = "ready"
    IN_TRANSACTION = "in transaction"
    COMMITTING = "committing"
    ABORTING = "aborting"
    ABORTABLE = "abortable error"
    FATAL = "fatal error"


# Where the I/O thread adds partitions: batches of the transaction are still to be sent.
_ADDING = frozenset(
    {TxnState.IN_TRANSACTION, TxnState.COMMITTING, TxnState.ABORTING, TxnState.ABORTABLE}
)


@dataclass(frozen=True)
class ConsumerGroupMetadata:
    """What ``send_offsets_to_transaction`` needs of a consumer (``Consumer.group_metadata()``)."""

    group_id: str
    generation_id: int = -1
    member_id: str = ""
    group_instance_id: str | None = None


def _fenced(error: KvlogError) -> ProducerFencedError:
    return ProducerFencedError(
        "this producer was fenced: a newer producer with the same transactional.id called "
        f"init_transactions() ({error.message}); close it"
    )


class TransactionManager:
    """Owned by one Producer. Thread-safe: the API runs on the application's thread, the
    sender's hooks on the I/O thread, under one lock."""

    def __init__(
        self,
        transactional_id: str,
        timeout_ms: int,
        io: Callable[[], IOThread],
        metadata: ClusterMetadata,
        bootstrap: list[str],
        max_block_s: float,
        backoff_s: float,
        gate: Callable[[bool], None] = lambda open_: None,
        settled: Callable[[], bool] = lambda: False,
        restart_sequences: Callable[[int, int], None] = lambda pid, epoch: None,
    ) -> None:
        self.transactional_id = transactional_id
        self.timeout_ms = timeout_ms
        self._io = io
        self.metadata = metadata
        self.bootstrap = bootstrap
        self.max_block_s = max_block_s
        self.backoff_s = backoff_s
        self._gate = gate  # opens/closes send() (the accumulator's SendGate)
        # KIP-360's epoch bump: the sender restarts its sequences under the new epoch,
        # which it may only while no batch is unsettled.
        self._settled = settled
        self._restart_sequences = restart_sequences
        self._bump_wanted = False  # KIP-360: bump the epoch once this transaction aborts
        self._lock = threading.Lock()
        self.state = TxnState.UNINITIALIZED
        self.producer_id = -1
        self.producer_epoch = -1
        self.error: KvlogError | None = None  # why ABORTABLE / FATAL
        self._added: set[TopicPartition] = set()
        self._adding: set[TopicPartition] = set()
        self._add_retry_at = 0.0
        self._offsets_added = False
        self._end_sent = False  # EndTxn went out for the transaction ending now
        gate(False)

    # -- the application's calls ----------------------------------------------------------

    def init(self) -> tuple[int, int]:
        """init_transactions(): a producer id and a new epoch for the id (fencing older
        producers; the coordinator aborts or completes their open transaction first)."""
        with self._lock:
            self._check_fatal()
            if self.state is not TxnState.UNINITIALIZED:
                raise InvalidTxnStateError("init_transactions() was called already")
        fields = {
            "transactional_id": self.transactional_id,
            "transaction_timeout_ms": self.timeout_ms,
        }
        reply = self._call("init_producer_id", fields, include_producer=False)
        with self._lock:
            self.producer_id = int(reply["producer_id"])
            self.producer_epoch = int(reply["producer_epoch"])
            self._move_locked(TxnState.READY)
        return self.producer_id, self.producer_epoch

    def begin(self) -> None:
        with self._lock:
            self._check_fatal()
            if self.state is not TxnState.READY:
                raise InvalidTxnStateError(
                    f"begin_transaction() needs a ready producer, not one {self.state.value} "
                    "(call init_transactions() first, and end each transaction)"
                )
            self.error = None
            self._added.clear()
            self._offsets_added = False
            self._end_sent = False
            self._move_locked(TxnState.IN_TRANSACTION)

    def check_send(self) -> None:
        """send() is allowed only inside a transaction (raises why not). The accumulator
        calls it through the producer's hooks only while its send gate is closed."""
        state = self.state
        if state is TxnState.IN_TRANSACTION:
            return
        with self._lock:
            self._check_fatal()
            if self.state is TxnState.ABORTABLE:
                raise InvalidTxnStateError(
                    f"the transaction failed ({self._why()}); call abort_transaction()"
                )
            if self.state in (TxnState.COMMITTING, TxnState.ABORTING):
                raise InvalidTxnStateError(
                    f"the transaction is {self.state.value}: send() belongs to the next "
                    "one (begin_transaction() after the commit or abort returns)"
                )
            raise InvalidTxnStateError(
                "a transactional producer sends inside a transaction: call "
                "begin_transaction() first"
            )

    def send_offsets(
        self,
        offsets: Mapping[TopicPartition, Any],
        group: ConsumerGroupMetadata | str,
    ) -> None:
        """The consumer group's offsets, committed if and only if the transaction is. With
        the consumer's group metadata (not a bare group id), the coordinator fences a
        consumer the group has moved on from (KIP-447): ILLEGAL_GENERATION,
        UNKNOWN_MEMBER_ID or FENCED_INSTANCE_ID, after which only an abort ends the
        transaction."""
        if isinstance(group, str):
            group = ConsumerGroupMetadata(group)
        group_id = group.group_id
        with self._lock:
            self._check_fatal()
            if self.state is not TxnState.IN_TRANSACTION:
                raise InvalidTxnStateError(
                    "send_offsets_to_transaction() is for an open transaction"
                )
        self._call("add_offsets_to_txn", {"group_id": group_id})
        with self._lock:
            self._offsets_added = True
        entries = [
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "offset": value if isinstance(value, int) else value.offset,
                "metadata": "" if isinstance(value, int) else (value.metadata or ""),
            }
            for tp, value in offsets.items()
        ]
        fields: dict[str, Any] = {"group_id": group_id, "offsets": entries}
        if group.generation_id >= 0 or group.member_id or group.group_instance_id:
            fields.update(
                generation=group.generation_id,
                member_id=group.member_id,
                group_instance_id=group.group_instance_id,
            )
        try:
            self._call("txn_offset_commit", fields)
        except KvlogError as exc:
            with self._lock:  # the offsets did not go in: the transaction cannot commit
                if not exc.retriable and self.state is TxnState.IN_TRANSACTION:
                    self.error = exc
                    self._move_locked(TxnState.ABORTABLE)
            raise

    def end(self, commit: bool, flush: Callable[[float | None], None]) -> None:
        """commit_transaction() / abort_transaction(): every record sent first, then the
        coordinator's decision (durable when this returns; markers follow). ``send()``
        is refused from the start (Kafka's COMMITTING / ABORTING states). Raises
        KafkaTimeoutError if the records are not all settled within max.block.ms; a call
        that raises a timeout may be retried (the same outcome; an abort, too, if the
        commit timed out before its EndTxn went out)."""
        ending = TxnState.COMMITTING if commit else TxnState.ABORTING
        with self._lock:
            self._check_fatal()
            state = self.state
            if commit and state is TxnState.ABORTABLE:
                raise InvalidTxnStateError(
                    f"the transaction failed ({self._why()}); call abort_transaction()"
                )
            retry = state is ending or (state is TxnState.COMMITTING and not self._end_sent)
            if not retry and state not in (TxnState.IN_TRANSACTION, TxnState.ABORTABLE):
                raise InvalidTxnStateError(
                    f"no transaction to {'commit' if commit else 'abort'} (the producer "
                    f"is {state.value})"
                )
            if state is not TxnState.ABORTABLE:
                self._move_locked(ending)
        # An abort, too, raises when its records are not all sent or failed in time (call
        # it again): one left in the accumulator would go out later, in the next
        # transaction, and commit with it.
        flush(self.max_block_s)
        with self._lock:
            self._check_fatal()
            if commit and self.state is TxnState.ABORTABLE:
                raise InvalidTxnStateError(
                    f"the transaction failed ({self._why()}); call abort_transaction()"
                )
            touched = bool(self._added or self._adding) or self._offsets_added
            self._end_sent = True
        if touched:  # else the coordinator never heard of this transaction
            self._call("end_txn", {"committed": commit})
        if not commit and self._bump_wanted:
            self._bump_epoch()
        with self._lock:
            self._added.clear()
            self._offsets_added = False
            self.error = None
            self._move_locked(TxnState.READY)

    def _bump_epoch(self) -> None:
        """KIP-360, after the abort: InitProducerId with this producer's id and epoch
        bumps the epoch (fenced if a newer instance took over meanwhile), and the sender
        restarts every partition's sequence at 0 under it."""
        if not self._settled():
            return  # batches still unsettled (the abort's flush timed out): next abort
        fields = {
            "transactional_id": self.transactional_id,
            "transaction_timeout_ms": self.timeout_ms,
            "producer_id": self.producer_id,
            "producer_epoch": self.producer_epoch,
        }
        reply = self._call("init_producer_id", fields, include_producer=False)
        with self._lock:
            self.producer_id = int(reply["producer_id"])
            self.producer_epoch = int(reply["producer_epoch"])
            self._bump_wanted = False
        self._restart_sequences(self.producer_id, self.producer_epoch)

    # -- the sender's hooks (I/O thread) --------------------------------------------------

    def register(self, io: IOThread, tps: Iterable[TopicPartition], now: float) -> None:
        """The partitions that hold batches (open ones too): those new to the transaction
        are added, in one request, while earlier requests may still be in flight."""
        with self._lock:
            if self.state not in _ADDING or now < self._add_retry_at:
                return
            new = {tp for tp in tps if tp not in self._added and tp not in self._adding}
            if not new:
                return
            self._adding |= new
            fields = {
                **self._producer_fields(),
                "partitions": [[tp.topic, tp.partition] for tp in sorted(new)],
            }
        endpoint = self._coordinator_now()

        def done(
            header: dict[str, Any] | None, frames: list[bytes], error: KvlogError | None
        ) -> None:
            with self._lock:
                self._adding -= new
                if error is None and header is not None:
                    for entry in header.get("partitions", []):
                        tp = TopicPartition(entry["topic"], entry["partition"])
                        code = entry.get("error", 0)
                        if not code:
                            self._added.add(tp)
                            continue
                        error = error_from_code(code, entry.get("message"))
                if error is not None:
                    self._on_error_locked(error)
                    self._add_retry_at = time.monotonic() + self.backoff_s
            io.wake()

        io.send_now(endpoint, "add_partitions_to_txn", fields, done, fail_fast=True)

    def sendable(
        self, io: IOThread, ready: list[TopicPartition], now: float
    ) -> list[TopicPartition]:
        """The ready partitions already in the transaction (the others are added first:
        :meth:`register`)."""
        self.register(io, ready, now)
        with self._lock:
            if self.state is TxnState.FATAL:
                return []
            return [tp for tp in ready if tp in self._added]

    def batch_failed(self, error: BaseException) -> None:
        """A batch of the transaction failed for good: only an abort ends it now."""
        with self._lock:
            if isinstance(error, KvlogError) and error.code in SEQUENCE_LOST:
                self._bump_wanted = True
            if isinstance(error, KvlogError) and error.code in FENCING:
                self._fatal_locked(error)
            elif self.state in (TxnState.IN_TRANSACTION, TxnState.COMMITTING):
                self.error = error if isinstance(error, KvlogError) else KvlogError(str(error))
                self._move_locked(TxnState.ABORTABLE)

    @property
    def fatal(self) -> bool:
        return self.state is TxnState.FATAL

    # -- internals --------------------------------------------------------------------------

    def _why(self) -> str:
        return self.error.message if self.error is not None else "unknown"

    def _check_fatal(self) -> None:
        if self.state is TxnState.FATAL:
            assert self.error is not None
            raise self.error

    def _move_locked(self, state: TxnState) -> None:
        self.state = state
        self._gate(state is TxnState.IN_TRANSACTION)

    def _fatal_locked(self, error: KvlogError) -> None:
        if self.state is not TxnState.FATAL:
            self.error = _fenced(error) if error.code in FENCING else error
            self._move_locked(TxnState.FATAL)

    def _on_error_locked(self, error: KvlogError) -> None:
        if error.code in FENCING:
            self._fatal_locked(error)
        elif not error.retriable and self.state in (TxnState.IN_TRANSACTION, TxnState.COMMITTING):
            self.error = error
            self._move_locked(TxnState.ABORTABLE)

    def _producer_fields(self) -> dict[str, Any]:
        return {
            "transactional_id": self.transactional_id,
            "producer_id": self.producer_id,
            "producer_epoch": self.producer_epoch,
        }

    def _coordinator_now(self) -> str:
        # The broker forwards transaction ops to the coordinator when none is known yet.
        return self.metadata.coordinator or self.bootstrap[0]

    def _call(
        self, op: str, fields: dict[str, Any], *, include_producer: bool = True
    ) -> dict[str, Any]:
        """One request to the coordinator, retried while retriable until max.block.ms."""
        if include_producer:
            fields = {**self._producer_fields(), **fields}
        deadline = time.monotonic() + self.max_block_s
        while True:
            try:
                header, _ = self._io().call(self._coordinator_now(), op, fields, fail_fast=True)
                failed = [e for e in header.get("partitions", []) if e.get("error")]
                if failed:
                    raise error_from_code(failed[0]["error"], failed[0].get("message"))
                return header
            except KvlogError as exc:
                if exc.code in FENCING:
                    with self._lock:
                        self._fatal_locked(exc)
                        assert self.error is not None
                        raise self.error from None
                if not exc.retriable or time.monotonic() + self.backoff_s >= deadline:
                    raise
                self.metadata.mark_stale()
                time.sleep(self.backoff_s)


__all__ = ["ConsumerGroupMetadata", "TransactionManager", "TxnState"]
