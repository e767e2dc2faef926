"""The transaction coordinator's data: one :class:`TxnMetadata` per transactional id.

Kafka's ``TransactionMetadata`` and ``TransactionState``. Each state says how requests are
answered in it (*action*) and what moves it on (*transition*); :data:`PREVIOUS` is the one
table of legal moves, and :meth:`TxnMetadata.moved` refuses any other (a programmer's
error: the core only makes legal moves).

- ``EMPTY``: the producer has an id and epoch and no transaction. *Action*:
  AddPartitionsToTxn / AddOffsetsToTxn begin one; EndTxn is INVALID_TXN_STATE.
  *Transition*: to ONGOING; to DEAD when the id expires.
- ``ONGOING``: a transaction is open (``partitions``, ``groups``, since ``start_ms``).
  *Action*: more partitions and groups join it; TxnOffsetCommit stores pending offsets.
  *Transition*: EndTxn -> PREPARE_COMMIT / PREPARE_ABORT; its timeout, or
  InitProducerId from a new instance, -> PREPARE_ABORT with the epoch bumped (fencing).
- ``PREPARE_COMMIT`` / ``PREPARE_ABORT``: decided and durable; markers are being written
  to every partition. *Action*: requests for this id wait (parked) for the end.
  *Transition*: to COMPLETE_COMMIT / COMPLETE_ABORT once every marker is written.
- ``COMPLETE_COMMIT`` / ``COMPLETE_ABORT``: done. *Action*: a repeated EndTxn of the same
  outcome succeeds, of the other is INVALID_TXN_STATE; the next AddPartitionsToTxn begins
  a new transaction. *Transition*: as EMPTY.
- ``DEAD``: expired (``transactional.id.expiration.ms``); forgotten, nothing stored.

Stored in the coordinator's store, table ``transactions``, one row per transactional id
(CBOR), written before any reply that depends on it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

import cbor2

from kvlog.types import TopicPartition

TRANSACTIONS_TABLE = "transactions"
NO_START = -1
# Kafka's: an epoch at Short.MaxValue - 1 cannot be bumped, so the id gets a new producer id.
MAX_EPOCH = 32_766


class TxnState(enum.Enum):
    EMPTY = "Empty"
    ONGOING = "Ongoing"
    PREPARE_COMMIT = "PrepareCommit"
    PREPARE_ABORT = "PrepareAbort"
    COMPLETE_COMMIT = "CompleteCommit"
    COMPLETE_ABORT = "CompleteAbort"
    DEAD = "Dead"

    @property
    def preparing(self) -> bool:
        return self in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT)

    @property
    def idle(self) -> bool:
        """No transaction open or ending: a new one may begin, the id may expire."""
        return self in (TxnState.EMPTY, TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT)


_IDLE = frozenset({TxnState.EMPTY, TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT})

PREVIOUS: dict[TxnState, frozenset[TxnState]] = {
    TxnState.EMPTY: _IDLE,
    TxnState.ONGOING: _IDLE | {TxnState.ONGOING},
    TxnState.PREPARE_COMMIT: frozenset({TxnState.ONGOING}),
    TxnState.PREPARE_ABORT: frozenset({TxnState.ONGOING}),
    TxnState.COMPLETE_COMMIT: frozenset({TxnState.PREPARE_COMMIT}),
    TxnState.COMPLETE_ABORT: frozenset({TxnState.PREPARE_ABORT}),
    TxnState.DEAD: _IDLE,
}


@dataclass(frozen=True)
class TxnMetadata:
    """One transactional id's state (immutable: each change is a new value, stored before
    it replaces the old one in memory)."""

    transactional_id: str
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    state: TxnState = TxnState.EMPTY
    partitions: frozenset[TopicPartition] = field(default_factory=frozenset)
    groups: frozenset[str] = field(default_factory=frozenset)
    start_ms: int = NO_START
    updated_ms: int = 0

    @property
    def committing(self) -> bool:
        return self.state in (TxnState.PREPARE_COMMIT, TxnState.COMPLETE_COMMIT)

    def moved(self, state: TxnState, now_ms: int, **changes: object) -> TxnMetadata:
        """This metadata in ``state`` (with ``changes``); only Kafka's transitions."""
        if self.state not in PREVIOUS[state]:
            raise AssertionError(
                f"transactional id {self.transactional_id!r}: {self.state.value} -> "
                f"{state.value} is not a transaction state transition"
            )
        return replace(self, state=state, updated_ms=now_ms, **changes)  # type: ignore[arg-type]

    def expires_at(self, expiration_ms: int) -> int | None:
        return self.updated_ms + expiration_ms if self.state.idle else None

    def times_out_at(self) -> int | None:
        return self.start_ms + self.timeout_ms if self.state is TxnState.ONGOING else None

    def encode(self) -> bytes:
        return cbor2.dumps(
            [
                self.producer_id,
                self.producer_epoch,
                self.timeout_ms,
                self.state.value,
                sorted([tp.topic, tp.partition] for tp in self.partitions),
                sorted(self.groups),
                self.start_ms,
                self.updated_ms,
            ]
        )

    @classmethod
    def decode(cls, transactional_id: str, raw: bytes) -> TxnMetadata:
        pid, epoch, timeout, state, parts, groups, start, updated = cbor2.loads(raw)
        return cls(
            transactional_id,
            pid,
            epoch,
            timeout,
            TxnState(state),
            frozenset(TopicPartition(t, p) for t, p in parts),
            frozenset(groups),
            start,
            updated,
        )


__all__ = [
    "MAX_EPOCH",
    "NO_START",
    "PREVIOUS",
    "TRANSACTIONS_TABLE",
    "TxnMetadata",
    "TxnState",
]
