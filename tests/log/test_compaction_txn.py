"""Compaction of a partition holding transactions (Kafka's cleaner rules): aborted
transactional batches neither supersede committed values nor survive, nothing at or past
the last stable offset is touched, and a marker stays while data of its transaction does,
then goes ``delete.retention.ms`` after the pass that covered it (with its aborted-index
entry), so what ``read_committed`` consumers read never changes."""

from __future__ import annotations

import struct

from crc32c import crc32c
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from logtest_util import THOROUGH

from kvlog import batch as batch_format
from kvlog import control_batch, txn_state
from kvlog.cleaner import Cleaner, TopicInfo
from kvlog.ipc.fetcher import visible_batches
from kvlog.memory_store import MemoryLogDir
from kvlog.types import TopicPartition

TP = TopicPartition("table", 0)


def _batch(key: bytes, value: bytes, pid: int = -1, transactional: bool = False) -> bytes:
    producer = dict(producer_id=pid, producer_epoch=0, base_sequence=0) if pid >= 0 else {}
    raw = bytearray(
        batch_format.encode(0, [key], [value], first_timestamp=0, max_timestamp=0, **producer)
    )
    if transactional:
        struct.pack_into(">h", raw, 9, struct.unpack_from(">h", raw, 9)[0] | 0x10)
        struct.pack_into(">I", raw, 5, crc32c(bytes(raw[9:])))
    return bytes(raw)


def _append(store: MemoryLogDir, table: txn_state.TxnStateTable, batch: bytes) -> int:
    stage = table.stage()

    def write(w: object) -> int:
        [base] = w.append(TP, [batch], leader_epoch=0, advance_high_watermark=True)  # type: ignore[attr-defined]
        stage.record(w, TP, batch_format.read_header(batch), base, batch)  # type: ignore[arg-type]
        hw = w.offsets(TP).high_watermark  # type: ignore[attr-defined]
        stage.settle(w, TP, hw)  # type: ignore[arg-type]
        return base

    base = store.write(write)
    stage.apply()
    return base


def _marker(pid: int, commit: bool) -> bytes:
    kind = control_batch.COMMIT if commit else control_batch.ABORT
    return control_batch.build(pid, 0, kind, timestamp_ms=0)


def test_compaction_keeps_markers_drops_aborted_data_and_stops_at_the_lso() -> None:
    store = MemoryLogDir()
    store.create_partition(TP)
    table = txn_state.TxnStateTable()
    log = [
        _batch(b"a", b"a1"),  # 0: committed a, superseded by the committed a3 below
        _batch(b"b", b"b1"),  # 1: committed b, NOT superseded by the aborted b2
        _batch(b"a", b"a2", 7, True),  # 2: aborted
        _batch(b"b", b"b2", 7, True),  # 3: aborted
        _marker(7, commit=False),  # 4
        _batch(b"a", b"a3", 8, True),  # 5: committed
        _marker(8, commit=True),  # 6
        _batch(b"b", b"b4", 9, True),  # 7: open: the LSO
        _batch(b"a", b"a5"),  # 8: past the LSO, so a3 stays as well
    ]
    for batch in log:
        _append(store, table, batch)
    with store.reader() as r:
        assert table.last_stable_offset(TP, r.offsets(TP).high_watermark, 0) == 7
    with store.reader() as r:
        before = dict(r.read(TP, 0, 1 << 30))
    info = TopicInfo("id", {"cleanup.policy": "compact"})
    [result] = Cleaner(store, lambda _t: info, clock=lambda: 0).run({TP.topic})
    assert result.last.batches_removed == 3
    with store.reader() as r:
        left = {base: batch for base, batch in r.read(TP, 0, 1 << 30)}
        after = txn_state.TxnStateTable()
        after.load(r, [TP])
    assert sorted(left) == [1, 4, 5, 6, 7, 8]  # a1 superseded, the aborted pair removed
    assert all(left[b] == before[b] for b in left)  # kept batches are as written
    # The aborted index still covers what is left of the aborted transaction (nothing),
    # and read_committed readers see b1, a3 (and nothing at or past the LSO).
    assert [a.producer_id for a in after.aborted(TP, 0, 9)] == [7]
    assert after.last_stable_offset(TP, 9, 0) == 7


def test_compaction_below_an_open_transaction_leaves_it_alone() -> None:
    store = MemoryLogDir()
    store.create_partition(TP)
    table = txn_state.TxnStateTable()
    for batch in [
        _batch(b"a", b"open", 3, True),  # 0: open transaction: the LSO
        _batch(b"a", b"later"),  # 1
        _batch(b"a", b"latest"),  # 2
    ]:
        _append(store, table, batch)
    info = TopicInfo("id", {"cleanup.policy": "compact"})
    for result in Cleaner(store, lambda _t: info, clock=lambda: 0).run({TP.topic}):
        assert result.last.records_removed == 0
    with store.reader() as r:
        assert [base for base, _ in r.read(TP, 0, 1 << 30)] == [0, 1, 2]


def _left(store: MemoryLogDir) -> list[int]:
    with store.reader() as r:
        return [base for base, _ in r.read(TP, 0, 1 << 30)]


def test_markers_go_after_delete_retention_once_their_transaction_is_gone() -> None:
    store = MemoryLogDir()
    store.create_partition(TP)
    table = txn_state.TxnStateTable()
    for batch in [
        _batch(b"b", b"b1"),  # 0
        _batch(b"a", b"a2", 7, True),  # 1: aborted
        _marker(7, commit=False),  # 2
        _batch(b"a", b"a3", 8, True),  # 3: committed, stays (latest a)
        _marker(8, commit=True),  # 4: stays with it
        _marker(9, commit=False),  # 5: an epoch bump with no data here
        _batch(b"c", b"c1"),  # 6: the log end
    ]:
        _append(store, table, batch)
    now = [0]
    info = TopicInfo("id", {"cleanup.policy": "compact", "delete.retention.ms": "1000"})
    # One batch a read: the walk carries what it met from chunk to chunk.
    cleaner = Cleaner(store, lambda _t: info, clock=lambda: now[0], io_buffer_bytes=1)
    cleaner.run({TP.topic})
    # The aborted data goes; its marker stays until a later pass (and the horizon).
    assert _left(store) == [0, 2, 3, 4, 5, 6]
    assert cleaner.status(TP, info).tombstone_due_ms == 1000
    now[0] = 999
    assert cleaner.run() == []  # not due yet
    now[0] = 1000
    [result] = cleaner.run()
    assert result.last.reason == "delete.retention.ms"
    assert _left(store) == [0, 3, 4, 6]  # both markers without data went, 8's stays
    with store.reader() as r:
        after = txn_state.TxnStateTable()
        after.load(r, [TP])
        # The abort's index entry went with its marker; a node that still holds it in
        # memory no longer serves it.
        assert after.aborted(TP, 0, 7) == []
        assert txn_state.stored_aborted(r, TP, table.aborted(TP, 0, 7)) == []
        assert txn_state.scan(r, TP, 7) == txn_state.PartitionTxns()
    assert cleaner.status(TP, info).tombstone_due_ms is None
    assert cleaner.run() == []


def test_a_commit_marker_goes_once_its_records_are_superseded() -> None:
    store = MemoryLogDir()
    store.create_partition(TP)
    table = txn_state.TxnStateTable()
    for batch in [
        _batch(b"a", b"a1", 8, True),  # 0: committed
        _marker(8, commit=True),  # 1
        _batch(b"a", b"a2", 8, True),  # 2: committed, a later transaction of 8
        _marker(8, commit=True),  # 3
        _batch(b"b", b"b1"),  # 4: the log end
    ]:
        _append(store, table, batch)
    info = TopicInfo("id", {"cleanup.policy": "compact", "delete.retention.ms": "0"})
    cleaner = Cleaner(store, lambda _t: info, clock=lambda: 5)
    cleaner.run({TP.topic})
    assert _left(store) == [1, 2, 3, 4]  # a1 superseded; its marker waits for a pass
    cleaner.run()  # due at once (delete.retention.ms=0)
    assert _left(store) == [2, 3, 4]  # the second transaction's data keeps its marker


# -- a property: compaction never changes what read_committed consumers read ---------------

STEPS = st.lists(
    st.tuples(
        st.sampled_from(["plain", "txn", "txn", "commit", "abort"]),
        st.sampled_from([b"a", b"b", b"c"]),
        st.integers(0, 2),
    ),
    min_size=1,
    max_size=30,
)


def _committed_view(store: MemoryLogDir, table: txn_state.TxnStateTable) -> dict[bytes, bytes]:
    """Key -> value as a read_committed consumer reading the whole stable log from its
    start sees it, with the aborted list ``table`` (filtered by the rows) gives."""
    with store.reader() as r:
        state = r.offsets(TP)
        lso = table.last_stable_offset(TP, state.high_watermark, state.log_start_offset)
        read = r.read(TP, state.log_start_offset, 1 << 30, max_offset=lso) if lso > 0 else []
        upper = batch_format.next_offset(*read[-1]) if read else 0
        aborted = txn_state.stored_aborted(r, TP, table.aborted(TP, 0, upper))
    visible = visible_batches(
        [b for b, _ in read],
        [bytes(v) for _, v in read],
        [[a.producer_id, a.first_offset] for a in aborted],
    )
    view: dict[bytes, bytes] = {}
    for base, raw in visible:
        for record in batch_format.decode(raw, base):
            view[record.key] = record.value
    return view


@settings(max_examples=600 if THOROUGH else 60, deadline=None)
@given(steps=STEPS, io_buffer=st.sampled_from([1, 1 << 20]))
# An abort whose marker goes, then a commit of the same producer: a node still serving
# the abort's entry would make readers drop the committed records.
@example(
    steps=[("txn", b"a", 1), ("abort", b"a", 1), ("txn", b"a", 1), ("commit", b"a", 1)], io_buffer=1
)
def test_compaction_keeps_the_committed_view(
    steps: list[tuple[str, bytes, int]], io_buffer: int
) -> None:
    store = MemoryLogDir()
    store.create_partition(TP)
    table = txn_state.TxnStateTable()
    open_txns: set[int] = set()
    for i, (kind, key, p) in enumerate(steps):
        pid = 100 + p
        if kind == "plain":
            _append(store, table, _batch(key, b"v%d" % i))
        elif kind == "txn":
            _append(store, table, _batch(key, b"v%d" % i, pid, True))
            open_txns.add(pid)
        else:  # a marker, or an epoch bump with nothing open
            _append(store, table, _marker(pid, commit=kind == "commit"))
            open_txns.discard(pid)
    _append(store, table, _batch(b"end", b"end"))  # the log end: never cleaned
    expected = _committed_view(store, table)
    now = [0]
    info = TopicInfo("id", {"cleanup.policy": "compact", "delete.retention.ms": "1000"})
    cleaner = Cleaner(store, lambda _t: info, clock=lambda: now[0], io_buffer_bytes=io_buffer)
    for now[0] in (0, 1000, 1000, 2500):
        cleaner.run({TP.topic})
        fresh = txn_state.TxnStateTable()
        with store.reader() as r:
            fresh.load(r, [TP])
            hw = r.offsets(TP).high_watermark
            left = r.read(TP, 0, 1 << 30)
            assert set(txn_state.scan(r, TP, hw).open) == open_txns  # nothing reopened
        # The node's memory (stale: the cleaner is another process) and the rows agree.
        assert _committed_view(store, table) == _committed_view(store, fresh) == expected
        for base, raw in left:  # every decided transaction's data keeps its marker
            header = batch_format.read_header(raw)
            if header.is_transactional and not header.is_control:
                assert header.producer_id in open_txns or any(
                    b > base
                    and batch_format.read_header(v).is_control
                    and batch_format.read_header(v).producer_id == header.producer_id
                    for b, v in left
                ), f"{header.producer_id}@{base}: data left without its marker"
    event(f"markers left: {sum(batch_format.read_header(v).is_control for _, v in left)}")
