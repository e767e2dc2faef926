"""Rebuilding a partition's transaction state after a follower truncated its log
(:func:`kvlog.txn_state.rebuild`): a transaction whose first batches retention or
DeleteRecords removed while it was open is invisible in the log, yet it holds the last
stable offset at the log start until its marker, on the leader and so on every follower."""

from __future__ import annotations

import struct

from crc32c import crc32c

from kvlog import batch as batch_format
from kvlog import control_batch, txn_state
from kvlog.log import WriteTxn
from kvlog.memory_store import MemoryLogDir
from kvlog.types import TopicPartition

TP = TopicPartition("t", 0)


def _txn_batch(pid: int) -> bytes:
    raw = bytearray(
        batch_format.build_batch([(None, b"v")], producer_id=pid, producer_epoch=0, base_sequence=0)
    )
    struct.pack_into(">h", raw, 9, struct.unpack_from(">h", raw, 9)[0] | 0x10)
    struct.pack_into(">I", raw, 5, crc32c(bytes(raw[9:])))
    return bytes(raw)


def _plain_batch() -> bytes:
    return batch_format.build_batch([(None, b"x")])


def _marker(pid: int, commit: bool) -> bytes:
    kind = control_batch.COMMIT if commit else control_batch.ABORT
    return control_batch.build(pid, 0, kind, timestamp_ms=0)


class Replica:
    """A follower's store and transaction table, appended to as replication does."""

    def __init__(self) -> None:
        self.store = MemoryLogDir()
        self.store.create_partition(TP)
        self.table = txn_state.TxnStateTable()

    def append(self, *batches: bytes) -> None:
        stage = self.table.stage()

        def write(w: WriteTxn) -> None:
            for batch in batches:
                base = w.offsets(TP).log_end_offset
                w.append_at(TP, base, batch)
                stage.record(w, TP, batch_format.read_header(batch), base, batch)

        self.store.write(write)
        stage.apply()

    def high_watermark(self, hw: int) -> None:
        stage = self.table.stage()

        def write(w: WriteTxn) -> None:
            w.set_high_watermark(TP, hw)
            stage.settle(w, TP, hw)

        self.store.write(write)
        stage.apply()

    def then(self, change: object, leader_open: list[tuple[int, int]] | None = None) -> None:
        """A log change (``change(w)``), then the rebuild a follower does after it."""

        def write(w: WriteTxn) -> None:
            change(w)  # type: ignore[operator]
            txn_state.rebuild(w, TP, w.offsets(TP).high_watermark, leader_open)

        self.store.write(write)
        with self.store.reader() as r:
            self.table.load(r, [TP])

    def lso(self) -> int:
        with self.store.reader() as r:
            state = r.offsets(TP)
        return self.table.last_stable_offset(TP, state.high_watermark, state.log_start_offset)


def test_a_transaction_begun_below_the_log_start_survives_a_truncation() -> None:
    f = Replica()
    f.append(_txn_batch(7), _plain_batch(), _plain_batch(), _plain_batch())  # 0..3
    f.high_watermark(3)
    f.store.write(lambda w: w.delete_before(TP, 2))
    assert f.lso() == 2  # held at the log start by 7's open transaction
    f.then(lambda w: w.truncate_to(TP, 3))  # the follower's history diverged at 3
    assert f.table.partition(TP).open == {7: txn_state.OpenTxn(0)}
    assert f.lso() == 2
    f.append(_marker(7, commit=True), _plain_batch())  # 3, 4
    f.high_watermark(5)
    assert f.lso() == 5


def test_a_truncated_marker_reopens_a_transaction_begun_below_the_log_start() -> None:
    f = Replica()
    f.append(_txn_batch(7), _plain_batch(), _txn_batch(7), _marker(7, commit=False))  # 0..3
    f.high_watermark(3)  # the abort marker is not replicated everywhere yet
    f.store.write(lambda w: w.delete_before(TP, 1))
    assert f.table.partition(TP).aborted == [txn_state.AbortedTxn(7, 0, 3)]
    f.then(lambda w: w.truncate_to(TP, 3))  # the marker is cut off: undecided again
    assert f.table.partition(TP).open == {7: txn_state.OpenTxn(0)}
    assert f.table.partition(TP).aborted == []
    assert f.lso() == 1


def test_a_kept_abort_keeps_where_its_transaction_began() -> None:
    f = Replica()
    f.append(_txn_batch(7), _plain_batch(), _txn_batch(7), _marker(7, commit=False))  # 0..3
    f.append(_plain_batch(), _plain_batch())  # 4, 5
    f.high_watermark(5)
    f.store.write(lambda w: w.delete_before(TP, 1))
    f.then(lambda w: w.truncate_to(TP, 5))
    # The scan alone would see the abort from offset 2: the rows knew it began at 0.
    assert f.table.partition(TP).aborted == [txn_state.AbortedTxn(7, 0, 3)]
    assert f.table.partition(TP).open == {}
    assert f.lso() == 5


def test_a_replica_reset_at_the_log_start_takes_the_leaders_open_transactions() -> None:
    leader = Replica()
    leader.append(_plain_batch(), _txn_batch(7), _txn_batch(8), _plain_batch())  # 0..3
    leader.append(_marker(8, commit=True))  # 4: 8 decided past the log start
    leader.high_watermark(4)
    leader.store.write(lambda w: w.delete_before(TP, 3))
    below = leader.table.partition(TP).open_below(3)
    assert sorted(below) == [(7, 1), (8, 2)]
    assert leader.lso() == 3

    follower = Replica()  # it held nothing: it starts over at the leader's log start
    follower.then(lambda w: w.reset(TP, 3), leader_open=below)
    assert follower.lso() == 3
    follower.append(_plain_batch(), _marker(8, commit=True))  # 3, 4 as the leader's
    follower.high_watermark(4)
    leader.high_watermark(4)
    assert follower.lso() == leader.lso() == 3
    for replica in (leader, follower):
        replica.append(_marker(7, commit=False))  # 5
        replica.high_watermark(6)
    assert follower.lso() == leader.lso() == 6
    assert follower.table.partition(TP).aborted == leader.table.partition(TP).aborted
