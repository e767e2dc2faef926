"""One contract, two stores: every test here runs on the LMDB LogDir and on MemoryLogDir.

The ``store`` / ``store_kind`` fixtures (conftest.py) give one of each; ``store_kind``
reopens the store as a restart would (the memory store survives only within a process).
"""

from __future__ import annotations

import pytest
from logtest_util import (
    all_batches,
    batch_end,
    check_partition,
    check_store,
    corrupt,
    make_batch,
    snapshot,
)

from kvlog import batch as bf
from kvlog import metadata_store as ms
from kvlog import producer_state as ps
from kvlog.codecs import Codec
from kvlog.errors import (
    CorruptRecordError,
    InvalidProducerEpochError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceNumberError,
    StorageError,
    UnknownProducerIdError,
    UnknownTopicOrPartitionError,
)
from kvlog.log import PartitionLog
from kvlog.types import PartitionOffsets, TopicPartition

TP = TopicPartition("events", 0)
TP1 = TopicPartition("events", 1)
OTHER = TopicPartition("other", 0)


def fill(store, tp: TopicPartition, counts: list[int], **kw) -> list[tuple[int, bytes]]:
    """Append one batch per count (each its own transaction); returns (base, batch)."""
    out = []
    for i, count in enumerate(counts):
        batch = make_batch(count, tag=f"{tp}#{i}", **kw)
        [base] = store.write(lambda w, b=batch: w.append(tp, [b]))
        out.append((base, batch))
    return out


def offsets(store, tp: TopicPartition = TP) -> PartitionOffsets:
    with store.reader() as r:
        return r.offsets(tp)


def read(store, offset: int, max_bytes: int = 1 << 30, tp=TP, **kw) -> list[tuple[int, bytes]]:
    with store.reader() as r:
        return r.read(tp, offset, max_bytes, **kw)


# -- partitions -------------------------------------------------------------------------


def test_create_drop_list_partitions(store):
    assert store.partitions() == []
    assert store.create_partition(TP) is True
    assert store.create_partition(TP) is False
    assert store.create_partition(OTHER, start_offset=100) is True
    assert store.has_partition(TP) and store.has_partition(OTHER)
    assert not store.has_partition(TP1)
    assert offsets(store) == PartitionOffsets(0, 0, 0, 0)
    assert offsets(store, OTHER) == PartitionOffsets(100, 100, 100, 0)
    assert read(store, 100, tp=OTHER) == []

    assert store.drop_partition(TP) is True
    assert store.drop_partition(TP) is False
    assert store.partitions() == [OTHER]
    with pytest.raises(UnknownTopicOrPartitionError):
        offsets(store)
    # A re-created partition starts empty, not with the dropped one's data.
    fill(store, OTHER, [2])
    store.drop_partition(OTHER)
    store.create_partition(OTHER)
    assert offsets(store, OTHER) == PartitionOffsets(0, 0, 0, 0)
    assert all_batches(store, OTHER) == []


def test_partitions_are_listed_in_one_order(store):
    names = [TopicPartition(t, p) for t in ("t", "a.b", "a", "a-z") for p in (10, 2, 0)]
    for tp in names:
        store.create_partition(tp)
    assert store.partitions() == sorted(names)


def test_unknown_partition_is_refused_everywhere(store):
    batch = make_batch(1)
    for op in (
        lambda w: w.append(TP, [batch]),
        lambda w: w.append_at(TP, 0, batch),
        lambda w: w.set_high_watermark(TP, 0),
        lambda w: w.truncate_to(TP, 0),
        lambda w: w.delete_before(TP, 0),
        lambda w: w.reset(TP, 0),
        lambda w: w.offsets(TP),
    ):
        with pytest.raises(UnknownTopicOrPartitionError):
            store.write(op)
    with pytest.raises(UnknownTopicOrPartitionError):
        read(store, 0)
    with store.reader() as r, pytest.raises(UnknownTopicOrPartitionError):
        list(r.headers(TP))
    assert store.partitions() == []


# -- append and read ----------------------------------------------------------------------


def test_append_assigns_contiguous_base_offsets(store):
    store.create_partition(TP)
    first = [make_batch(n, tag=f"a{n}") for n in (1, 3, 2)]
    assert store.write(lambda w: w.append(TP, first)) == [0, 1, 4]
    second = [make_batch(5, codec=Codec.GZIP), make_batch(1, codec=Codec.LZ4)]
    assert store.write(lambda w: w.append(TP, second)) == [6, 11]
    assert store.write(lambda w: w.append(TP, [])) == []
    sizes = sum(len(b) for b in first + second)
    assert offsets(store) == PartitionOffsets(0, 12, 12, sizes)
    assert read(store, 0) == list(zip([0, 1, 4, 6, 11], first + second, strict=True))
    check_partition(store, TP)


def test_append_accepts_buffers(store):
    store.create_partition(TP)
    batch = make_batch(2)
    store.write(lambda w: w.append(TP, [memoryview(batch), bytearray(batch)]))
    assert read(store, 0) == [(0, batch), (2, batch)]
    assert all(type(value) is bytes for _, value in read(store, 0))


def test_append_without_advancing_the_high_watermark(store):
    store.create_partition(TP)
    store.write(lambda w: w.append(TP, [make_batch(3)], advance_high_watermark=False))
    assert offsets(store)[:3] == (0, 0, 3)
    store.write(lambda w: w.append(TP, [make_batch(1)]))
    assert offsets(store)[:3] == (0, 4, 4)


def test_append_stamps_the_leader_epoch(store):
    store.create_partition(TP)
    batch = make_batch(2, producer_id=5, producer_epoch=0, base_sequence=0)
    store.write(lambda w: w.append(TP, [batch], leader_epoch=7))
    [(_, stored)] = read(store, 0)
    header = bf.validate(stored)
    assert header.partition_leader_epoch == 7
    assert stored[4:] == batch[4:]
    assert offsets(store).size_bytes == len(batch)


def test_read_from_every_offset_returns_whole_batches(store):
    store.create_partition(TP)
    appended = fill(store, TP, [1, 4, 2, 3, 1])
    leo = offsets(store).log_end_offset
    assert leo == 11
    for offset in range(leo):
        got = read(store, offset)
        assert got, offset
        base, value = got[0]
        assert base <= offset < batch_end(base, value), (offset, base)
        assert got == appended[appended.index((base, value)) :]
        # A consumer skips the records before the offset it asked for.
        records = [r for b, v in got for r in bf.decode(v, b) if r.offset >= offset]
        assert [r.offset for r in records] == list(range(offset, leo))


def test_read_honours_max_bytes_but_returns_at_least_one_batch(store):
    store.create_partition(TP)
    appended = fill(store, TP, [1, 1, 1, 1], value_size=100)
    size = len(appended[0][1])
    assert all(len(b) == size for _, b in appended)
    assert read(store, 0, max_bytes=1) == appended[:1]
    assert read(store, 2, max_bytes=0) == appended[2:3]
    assert read(store, 0, max_bytes=size) == appended[:1]
    assert read(store, 0, max_bytes=2 * size - 1) == appended[:1]
    assert read(store, 0, max_bytes=2 * size) == appended[:2]
    assert read(store, 1, max_bytes=3 * size + 5) == appended[1:4]


def test_read_honours_max_offset(store):
    store.create_partition(TP)
    appended = fill(store, TP, [2, 2, 2])  # offsets 0-1, 2-3, 4-5
    assert read(store, 0, max_offset=4) == appended[:2]
    assert read(store, 0, max_offset=3) == appended[:2]  # a batch starting below it counts
    assert read(store, 0, max_offset=2) == appended[:1]
    assert read(store, 2, max_offset=2) == []
    assert read(store, 3, max_offset=1) == []
    assert read(store, 0, max_offset=100) == appended


def test_read_at_the_log_end_is_empty_and_outside_the_log_raises(store):
    store.create_partition(TP, start_offset=10)
    assert read(store, 10) == []
    fill(store, TP, [3])
    assert read(store, 13) == []
    for bad in (9, 14, 1000, -1):
        with pytest.raises(OffsetOutOfRangeError) as info:
            read(store, bad)
        assert info.value.details == {"log_start_offset": 10, "log_end_offset": 13}


def test_headers_lists_every_batch_without_payloads(store):
    store.create_partition(TP)
    appended = fill(store, TP, [2, 1, 3])
    with store.reader() as r:
        everything = list(r.headers(TP))
        from_middle = list(r.headers(TP, 2))
        from_past_end = list(r.headers(TP, 100))
    assert [(b, s) for b, s, _ in everything] == [(b, len(v)) for b, v in appended]
    assert [h for _, _, h in everything] == [bf.validate(v) for _, v in appended]
    assert [b for b, _, _ in from_middle] == [2, 3]
    assert [b for b, _, _ in from_past_end] == [3]  # the batch holding the last offsets


# -- high watermark, truncation, deletion, reset --------------------------------------------


def test_high_watermark_moves_within_the_log(store):
    store.create_partition(TP)
    fill(store, TP, [3])
    store.write(lambda w: w.set_high_watermark(TP, 1))
    assert offsets(store).high_watermark == 1
    assert read(store, 0, max_offset=offsets(store).high_watermark) == read(store, 0)
    store.write(lambda w: w.set_high_watermark(TP, 3))
    assert offsets(store).high_watermark == 3
    for bad in (-1, 4):
        with pytest.raises(ValueError):
            store.write(lambda w, o=bad: w.set_high_watermark(TP, o))
    assert offsets(store).high_watermark == 3


@pytest.mark.parametrize(
    ("offset", "kept", "leo"),
    [
        (10, 4, 10),  # at or past the LEO: nothing changes
        (99, 4, 10),
        (6, 3, 6),  # exactly at a batch end
        (7, 3, 6),  # mid batch: that batch goes whole
        (5, 2, 3),
        (3, 2, 3),
        (1, 1, 1),
        (0, 0, 0),
    ],
)
def test_truncate_to(store, offset, kept, leo):
    store.create_partition(TP)
    appended = fill(store, TP, [1, 2, 3, 4])  # 0, 1-2, 3-5, 6-9
    state = store.write(lambda w: w.truncate_to(TP, offset))
    assert state == offsets(store)
    assert state.log_end_offset == leo
    assert state.high_watermark == leo
    assert state.size_bytes == sum(len(b) for _, b in appended[:kept])
    assert all_batches(store, TP) == appended[:kept]
    check_partition(store, TP)
    # The log continues at the new end.
    assert store.write(lambda w: w.append(TP, [make_batch(1)])) == [leo]


def test_truncate_keeps_a_lower_high_watermark_and_the_log_start(store):
    store.create_partition(TP)
    appended = fill(store, TP, [2, 2, 2, 2])  # 0-1, 2-3, 4-5, 6-7
    store.write(lambda w: w.set_high_watermark(TP, 3))
    state = store.write(lambda w: w.truncate_to(TP, 6))
    assert state[:3] == (0, 3, 6)
    assert all_batches(store, TP) == appended[:3]
    store.write(lambda w: w.set_high_watermark(TP, 6))
    store.write(lambda w: w.delete_before(TP, 3))  # mid batch 2-3: it stays
    assert all_batches(store, TP) == appended[1:3]
    state = store.write(lambda w: w.truncate_to(TP, 1))  # below the log start
    assert state == PartitionOffsets(3, 3, 3, 0)
    assert all_batches(store, TP) == []
    check_partition(store, TP)


def test_delete_before_moves_the_log_start_and_drops_whole_batches(store):
    store.create_partition(TP)
    appended = fill(store, TP, [2, 3, 1, 4])  # 0-1, 2-4, 5, 6-9
    store.write(lambda w: w.set_high_watermark(TP, 6))

    state = store.write(lambda w: w.delete_before(TP, 3))  # mid batch 2-4
    assert state[:3] == (3, 6, 10)
    assert state.size_bytes == sum(len(b) for _, b in appended[1:])
    assert all_batches(store, TP) == appended[1:]
    assert read(store, 3)[0] == appended[1]  # reading at a mid-batch log start works
    with pytest.raises(OffsetOutOfRangeError):
        read(store, 2)

    assert store.write(lambda w: w.delete_before(TP, 1)) == state  # never backwards
    state = store.write(lambda w: w.delete_before(TP, 100))  # capped at the HW
    assert state[:3] == (6, 6, 10)
    assert all_batches(store, TP) == appended[3:]
    check_partition(store, TP)

    store.write(lambda w: w.set_high_watermark(TP, 10))
    state = store.write(lambda w: w.delete_before(TP, 10))
    assert state == PartitionOffsets(10, 10, 10, 0)
    assert read(store, 10) == []
    assert store.write(lambda w: w.append(TP, [make_batch(1)])) == [10]
    check_partition(store, TP)


def test_reset_restarts_the_partition_empty(store):
    store.create_partition(TP)
    fill(store, TP, [3, 3])
    assert store.write(lambda w: w.reset(TP, 50)) == PartitionOffsets(50, 50, 50, 0)
    assert read(store, 50) == []
    assert store.write(lambda w: w.append(TP, [make_batch(2)])) == [50]
    assert store.write(lambda w: w.reset(TP, 0)) == PartitionOffsets(0, 0, 0, 0)
    assert all_batches(store, TP) == []
    check_partition(store, TP)


def test_append_at_follows_the_leader(store):
    store.create_partition(TP)
    leader = [make_batch(2, tag="a"), make_batch(3, tag="b")]
    store.write(lambda w: w.append_at(TP, 0, leader[0]))
    store.write(lambda w: w.append_at(TP, 2, leader[1]))
    assert offsets(store) == PartitionOffsets(0, 0, 5, sum(map(len, leader)))
    for bad in (0, 4):
        with pytest.raises(OffsetOutOfRangeError):
            store.write(lambda w, o=bad: w.append_at(TP, o, make_batch(1)))
    with pytest.raises(CorruptRecordError):
        store.write(lambda w: w.append_at(TP, 5, corrupt(make_batch(1))))
    # A gap (the leader's log start moved past what this follower had) is allowed.
    store.write(lambda w: w.append_at(TP, 9, make_batch(1, tag="c")))
    assert offsets(store)[:3] == (0, 0, 10)
    assert [b for b, _ in read(store, 0)] == [0, 2, 9]
    assert [b for b, _ in read(store, 6)] == [9]
    check_partition(store, TP)


# -- atomicity ------------------------------------------------------------------------------


def _busy_store(store) -> None:
    store.create_partition(TP)
    store.create_partition(OTHER)
    fill(store, TP, [2, 1])
    fill(store, OTHER, [1])
    store.write(lambda w: w.put("x", b"k", b"v"))


def test_a_corrupt_batch_leaves_nothing_behind(store):
    _busy_store(store)
    before = snapshot(store)

    def fn(w):
        w.append(OTHER, [make_batch(3)])
        w.put("x", b"new", b"row")
        w.put("y", b"k", b"v")
        w.create_partition(TP1)
        w.append(TP, [make_batch(1), corrupt(make_batch(2)), make_batch(1)])

    with pytest.raises(CorruptRecordError):
        store.write(fn)
    assert snapshot(store) == before
    assert not store.has_partition(TP1)
    check_store(store)


def test_a_corrupt_batch_caught_inside_fn_does_not_half_append(store):
    # A group commit may refuse one producer's bad batch and go on with the rest.
    _busy_store(store)
    good = make_batch(2, tag="good")

    def fn(w):
        with pytest.raises(CorruptRecordError):
            w.append(TP, [make_batch(1), corrupt(make_batch(1))])
        return w.append(TP, [good])

    assert store.write(fn) == [3]
    assert read(store, 3) == [(3, good)]
    assert offsets(store)[:3] == (0, 5, 5)
    check_store(store)


def test_an_exception_in_fn_rolls_back_everything(store):
    _busy_store(store)
    store.write(lambda w: w.put("x", b"gone?", b"no"))
    before = snapshot(store)

    class Boom(Exception):
        pass

    def fn(w):
        w.append(TP, [make_batch(4)])
        w.append(OTHER, [make_batch(1)], leader_epoch=3)
        w.set_high_watermark(TP, 1)
        w.truncate_to(TP, 2)
        w.delete_before(TP, 1)
        w.reset(OTHER, 77)
        w.create_partition(TP1)
        w.append(TP1, [make_batch(1)])
        w.drop_partition(TP)
        w.put("x", b"k", b"changed")
        w.delete("x", b"gone?")
        w.put("y", b"new", b"row")
        raise Boom

    with pytest.raises(Boom):
        store.write(fn)
    assert snapshot(store) == before
    check_store(store)
    # Still writable, with the same handles.
    assert store.write(lambda w: w.append(TP, [make_batch(1)])) == [3]
    assert store.write(lambda w: w.append(OTHER, [make_batch(1)])) == [1]


def test_write_returns_what_fn_returns_and_sees_its_own_writes(store):
    store.create_partition(TP)

    def fn(w):
        bases = w.append(TP, [make_batch(2)])
        assert w.offsets(TP).log_end_offset == 2
        assert [b for b, _ in w.read(TP, 0, 1 << 20)] == [0]
        w.put("x", b"a", b"1")
        assert w.get("x", b"a") == b"1"
        assert list(w.items("x")) == [(b"a", b"1")]
        return ("done", bases)

    assert store.write(fn) == ("done", [0])


def test_drop_and_recreate_in_one_transaction(store):
    store.create_partition(TP)
    fill(store, TP, [3])

    def fn(w):
        assert w.drop_partition(TP)
        assert w.create_partition(TP, start_offset=5)
        return w.append(TP, [make_batch(1)])

    assert store.write(fn) == [5]
    assert offsets(store)[:3] == (5, 6, 6)
    check_partition(store, TP)


# -- durability across reopen ---------------------------------------------------------------


def test_everything_survives_a_reopen(store_kind):
    store = store_kind.open()
    _busy_store(store)
    store.write(lambda w: w.set_high_watermark(TP, 2))
    store.write(lambda w: w.delete_before(TP, 1))
    before = snapshot(store)
    store = store_kind.reopen()
    assert snapshot(store) == before
    assert store.write(lambda w: w.append(TP, [make_batch(1)])) == [3]
    check_store(store)


# -- key-value tables -----------------------------------------------------------------------


def test_tables_get_put_delete_items(store):
    with store.reader() as r:
        assert r.get("x", b"a") is None
        assert list(r.items("x")) == []

    def fill_tables(w):
        for key in (b"b", b"a", b"ab", b"a\x00", b"b\xff", b"c"):
            w.put("x", key, b"x-" + key)
        w.put("y", b"a", b"y-a")

    store.write(fill_tables)
    with store.reader() as r:
        assert r.get("x", b"a") == b"x-a"
        assert r.get("y", b"a") == b"y-a"
        assert [k for k, _ in r.items("x")] == [b"a", b"a\x00", b"ab", b"b", b"b\xff", b"c"]
        assert list(r.items("x", b"a")) == [
            (b"a", b"x-a"),
            (b"a\x00", b"x-a\x00"),
            (b"ab", b"x-ab"),
        ]
        assert [k for k, _ in r.items("x", b"b")] == [b"b", b"b\xff"]
        assert list(r.items("x", b"d")) == []
        assert list(r.items("x", b"0")) == []
        assert list(r.items("y")) == [(b"a", b"y-a")]

    store.write(lambda w: w.put("x", b"a", b"overwritten"))
    assert store.write(lambda w: w.delete("x", b"ab")) is True
    assert store.write(lambda w: w.delete("x", b"ab")) is False
    assert store.write(lambda w: w.delete("nope", b"ab")) is False
    with store.reader() as r:
        assert r.get("x", b"a") == b"overwritten"
        assert r.get("x", b"ab") is None
        assert r.get("y", b"ab") is None


@pytest.mark.parametrize("key", [b"", b"k" * 512], ids=["empty", "512-bytes"])
def test_table_keys_must_fit_lmdb(store, key):
    # The model refuses what LMDB refuses, so code tested on it also runs on disk.
    store.write(lambda w: w.put("x", b"k" * 511, b"v"))  # the longest key LMDB takes
    with pytest.raises(StorageError):
        store.write(lambda w: w.put("x", key, b"v"))
    with store.reader() as r:
        assert [k for k, _ in r.items("x")] == [b"k" * 511]


# -- metadata_store -------------------------------------------------------------------------


def test_topics_table(store):
    meta = ms.TopicMetadata("orders", "id-1", 3, 1, [[0], [0], [0]], {"retention.ms": 5}, 123)
    other = ms.TopicMetadata("audit", "id-2", 1, 1, [[0]])
    store.write(lambda w: (ms.put_topic(w, meta), ms.put_topic(w, other)))
    with store.reader() as r:
        assert ms.get_topic(r, "orders") == meta
        assert ms.get_topic(r, "order") is None
        assert [t.name for t in ms.list_topics(r)] == ["audit", "orders"]
    assert store.write(lambda w: ms.delete_topic(w, "orders")) is True
    assert store.write(lambda w: ms.delete_topic(w, "orders")) is False
    with store.reader() as r:
        assert ms.list_topics(r) == [other]


def test_committed_offsets_are_per_group(store):
    groups = ["g", "g1", "g\x00", "gg", ""]  # prefixes of each other on purpose
    tps = [TP, TP1, OTHER, TopicPartition("events.x", 0), TopicPartition("e", 1 << 20)]

    def commit_all(w):
        for gi, group in enumerate(groups):
            for ti, tp in enumerate(tps):
                committed = ms.CommittedOffset(gi * 100 + ti, f"m{gi}", 1000 + ti, gi)
                ms.commit_offset(w, group, tp, committed)

    store.write(commit_all)
    with store.reader() as r:
        for gi, group in enumerate(groups):
            got = ms.group_offsets(r, group)
            assert set(got) == set(tps), group
            for ti, tp in enumerate(tps):
                assert got[tp] == ms.CommittedOffset(gi * 100 + ti, f"m{gi}", 1000 + ti, gi)
                assert ms.fetch_offset(r, group, tp) == got[tp]
        assert ms.fetch_offset(r, "nobody", TP) is None
        assert ms.group_offsets(r, "nobody") == {}
        everything = list(ms.all_offsets(r))
        assert len(everything) == len(groups) * len(tps)
        assert {(g, tp) for g, tp, _ in everything} == {(g, tp) for g in groups for tp in tps}

    # Committing again replaces; one group's commit never touches another's.
    store.write(lambda w: ms.commit_offset(w, "g", TP, ms.CommittedOffset(9)))
    assert store.write(lambda w: ms.delete_group_offsets(w, "g1", topic="events")) == 2
    assert store.write(lambda w: ms.delete_group_offsets(w, "g\x00")) == len(tps)
    assert store.write(lambda w: ms.delete_group_offsets(w, "g\x00")) == 0
    with store.reader() as r:
        assert ms.fetch_offset(r, "g", TP) == ms.CommittedOffset(9)
        assert ms.fetch_offset(r, "gg", TP).offset == 300
        assert set(ms.group_offsets(r, "g1")) == set(tps) - {TP, TP1}
        assert ms.group_offsets(r, "g\x00") == {}
        assert len(ms.group_offsets(r, "g")) == len(tps)


def test_offsets_commit_atomically_with_appends(store):
    store.create_partition(TP)

    def fn(w):
        w.append(TP, [make_batch(1)])
        ms.commit_offset(w, "g", TP, ms.CommittedOffset(1))
        w.append(TP, [corrupt(make_batch(1))])

    with pytest.raises(CorruptRecordError):
        store.write(fn)
    with store.reader() as r:
        assert ms.fetch_offset(r, "g", TP) is None
        assert r.offsets(TP).log_end_offset == 0


# -- producer state ---------------------------------------------------------------------------

PID = 1000


def pbatch(seq: int, count: int = 1, *, epoch: int = 0, pid: int = PID) -> bytes:
    return make_batch(count, producer_id=pid, producer_epoch=epoch, base_sequence=seq)


def produce(store, table: ps.ProducerStateTable, batch: bytes, tp=TP) -> tuple[int, bool]:
    """The leader's idempotent append: check, append, record in one txn; apply after."""

    def fn(w):
        stage = table.stage()  # a fresh stage per run: a re-run fn starts clean
        header = bf.validate(batch)
        duplicate = stage.check(tp, header)
        if duplicate is not None:
            return stage, duplicate, True
        [base] = w.append(tp, [batch])
        stage.record(w, tp, header, base)
        return stage, base, False

    stage, base, duplicate = store.write(fn)
    stage.apply()
    return base, duplicate


@pytest.fixture
def idem(store):
    store.create_partition(TP)
    store.create_partition(TP1)
    return store, ps.ProducerStateTable()


def test_in_sequence_batches_append(idem):
    store, table = idem
    assert produce(store, table, pbatch(0, 3)) == (0, False)
    assert produce(store, table, pbatch(3, 2)) == (3, False)
    assert table.entry(TP, PID).last_seq == 4
    assert produce(store, table, make_batch(2)) == (5, False)  # not idempotent: no checks
    assert produce(store, table, make_batch(2)) == (7, False)
    assert len(table) == 1


def test_a_duplicate_of_any_of_the_last_five_batches_returns_its_offset(idem):
    store, table = idem
    bases = [produce(store, table, pbatch(seq * 2, 2))[0] for seq in range(7)]
    leo = offsets(store).log_end_offset
    for i in range(2, 7):  # the last five
        assert produce(store, table, pbatch(i * 2, 2)) == (bases[i], True)
    for i in range(2):  # older: no longer known, and not the next sequence either
        with pytest.raises(OutOfOrderSequenceNumberError):
            produce(store, table, pbatch(i * 2, 2))
    assert offsets(store).log_end_offset == leo
    # A batch that overlaps a cached one without matching it exactly is out of order.
    with pytest.raises(OutOfOrderSequenceNumberError):
        produce(store, table, pbatch(12, 1))


def test_out_of_order_sequences_are_refused(idem):
    store, table = idem
    produce(store, table, pbatch(0, 2))
    for seq in (3, 5, 1, -1):
        with pytest.raises(OutOfOrderSequenceNumberError):
            produce(store, table, pbatch(seq))
    assert produce(store, table, pbatch(2)) == (2, False)


def test_an_older_epoch_is_fenced_and_a_new_epoch_starts_at_zero(idem):
    store, table = idem
    produce(store, table, pbatch(0, 2, epoch=3))
    with pytest.raises(InvalidProducerEpochError):
        produce(store, table, pbatch(2, epoch=2))
    with pytest.raises(OutOfOrderSequenceNumberError):
        produce(store, table, pbatch(2, epoch=4))
    assert produce(store, table, pbatch(0, epoch=4)) == (2, False)
    assert table.entry(TP, PID).epoch == 4
    with pytest.raises(InvalidProducerEpochError):
        produce(store, table, pbatch(1, epoch=3))
    # The old epoch's batches are forgotten: a retry of one is not a duplicate.
    with pytest.raises(InvalidProducerEpochError):
        produce(store, table, pbatch(0, 2, epoch=3))


def test_an_unknown_producer_must_start_at_zero(idem):
    store, table = idem
    with pytest.raises(UnknownProducerIdError):
        produce(store, table, pbatch(5))
    assert produce(store, table, pbatch(0)) == (0, False)
    # State is per partition and per producer.
    with pytest.raises(UnknownProducerIdError):
        produce(store, table, pbatch(1), tp=TP1)
    with pytest.raises(UnknownProducerIdError):
        produce(store, table, pbatch(1, pid=PID + 1))
    assert produce(store, table, pbatch(0), tp=TP1) == (0, False)


def test_sequences_wrap_at_int32_max(idem):
    store, table = idem
    other = PID + 1
    # Two producers whose last batches ended at INT32_MAX - 2 (state only, no batches).
    earlier = [bf.validate(pbatch(ps.INT32_MAX - 9, 8, pid=pid)) for pid in (PID, other)]

    def seed(w):
        stage = table.stage()
        for header in earlier:
            stage.record(w, TP, header, 0)
        return stage

    store.write(seed).apply()
    # One ends exactly at INT32_MAX; its next batch starts again at 0.
    assert produce(store, table, pbatch(ps.INT32_MAX - 1, 2)) == (0, False)
    assert table.entry(TP, PID).last_seq == ps.INT32_MAX
    with pytest.raises(OutOfOrderSequenceNumberError):
        produce(store, table, pbatch(1))  # after INT32_MAX comes 0
    assert produce(store, table, pbatch(0, 3)) == (2, False)
    assert produce(store, table, pbatch(ps.INT32_MAX - 1, 2)) == (0, True)
    # The other's batch runs across the wrap: MAX - 1, MAX, 0, 1.
    assert produce(store, table, pbatch(ps.INT32_MAX - 1, 4, pid=other)) == (5, False)
    assert table.entry(TP, other).last_seq == 1
    assert produce(store, table, pbatch(2, pid=other)) == (9, False)
    assert produce(store, table, pbatch(ps.INT32_MAX - 1, 4, pid=other)) == (5, True)
    with pytest.raises(OutOfOrderSequenceNumberError):
        produce(store, table, pbatch(0, pid=other))


def test_stage_changes_land_only_on_apply(idem):
    store, table = idem
    stage = table.stage()
    header = bf.validate(pbatch(0, 2))

    def fn(w):
        assert stage.check(TP, header) is None
        [base] = w.append(TP, [pbatch(0, 2)])
        stage.record(w, TP, header, base)
        # Later batches of the same transaction see the staged state.
        assert stage.check(TP, header) == base
        assert stage.check(TP, bf.validate(pbatch(2))) is None
        with pytest.raises(OutOfOrderSequenceNumberError):
            stage.check(TP, bf.validate(pbatch(3)))

    store.write(fn)
    assert table.entry(TP, PID) is None and len(table) == 0
    stage.apply()
    assert table.entry(TP, PID).last_seq == 1
    stage.apply()  # applying twice changes nothing
    assert table.entry(TP, PID).last_seq == 1


def test_a_rolled_back_transaction_leaves_no_producer_state(idem):
    store, table = idem

    def fails(w):
        stage = table.stage()
        header = bf.validate(pbatch(0, 2))
        stage.record(w, TP, header, w.append(TP, [pbatch(0, 2)])[0])
        raise RuntimeError("the commit fails")

    with pytest.raises(RuntimeError):
        store.write(fails)
    assert len(table) == 0
    with store.reader() as r:
        assert list(r.items(ps.PRODUCERS_TABLE)) == []
    # The retry is appended, not taken for a duplicate of the rolled-back attempt.
    assert produce(store, table, pbatch(0, 2)) == (0, False)


def test_a_rerun_write_fn_sees_clean_producer_state(tmp_path):
    # LogDir re-runs fn after growing its map; a tiny map makes that happen.
    from kvlog.lmdb_store import LogDir

    with LogDir(tmp_path / "tiny", map_size=32 << 10) as store:
        store.create_partition(TP)
        table = ps.ProducerStateTable()
        runs = []
        big = make_batch(4, value_size=60_000, producer_id=PID, producer_epoch=0, base_sequence=0)

        def fn(w):
            runs.append(1)
            stage = table.stage()
            header = bf.validate(big)
            assert stage.check(TP, header) is None
            [base] = w.append(TP, [big])
            stage.record(w, TP, header, base)
            return stage, base

        stage, base = store.write(fn)
        stage.apply()
        assert len(runs) > 1, "the map did not need to grow"
        assert base == 0
        assert offsets(store).log_end_offset == 4
        assert produce(store, table, big) == (0, True)


def test_producer_state_row_bytes():
    """The stored row of a producer's state is [epoch, last_timestamp, [[first_seq,
    last_seq, base_offset, last_offset_delta], ...]] in CBOR: data dirs written by earlier
    versions load, whatever Python type encodes it."""
    entry = ps.ProducerEntry(3, 1_700_000_000_000)
    entry.batches.extend([ps.BatchMetadata(0, 4, 100, 4), ps.BatchMetadata(5, 9, 105, 4)])
    row = bytes.fromhex("83031b0000018bcfe5680082840004186404840509186904")
    assert entry.encode() == row
    decoded = ps.ProducerEntry.decode(row)
    assert (decoded.epoch, decoded.last_timestamp, list(decoded.batches)) == (
        3,
        1_700_000_000_000,
        list(entry.batches),
    )


def test_producer_state_persists_with_the_log(store_kind):
    store = store_kind.open()
    store.create_partition(TP)
    store.create_partition(TP1)
    table = ps.ProducerStateTable()
    produce(store, table, pbatch(0, 2))
    produce(store, table, pbatch(2, 3))
    produce(store, table, pbatch(0, 1, pid=7))
    produce(store, table, pbatch(0, 1), tp=TP1)
    expected = {key: table.entry(*key) for key in [(TP, PID), (TP, 7), (TP1, PID)]}

    store = store_kind.reopen()
    reloaded = ps.ProducerStateTable()
    with store.reader() as r:
        reloaded.load(r, [TP, TP1])
    assert len(reloaded) == 3
    for key, entry in expected.items():
        got = reloaded.entry(*key)
        assert (got.epoch, got.last_timestamp, list(got.batches)) == (
            entry.epoch,
            entry.last_timestamp,
            list(entry.batches),
        )
    # The reloaded state answers a retry with its original offset and goes on in sequence.
    assert produce(store, reloaded, pbatch(2, 3)) == (2, True)
    assert produce(store, reloaded, pbatch(5)) == (6, False)

    # Dropping a partition's state removes its rows only.
    store.write(lambda w: ps.delete_partition_state(w, TP))
    store.write(lambda w: ps.delete_producer(w, TP1, PID))
    again = ps.ProducerStateTable()
    with store.reader() as r:
        again.load(r, [TP, TP1])
    assert len(again) == 0


def test_expire_forgets_idle_producers():
    table = ps.ProducerStateTable()
    stage = table.stage()

    class Sink:
        def put(self, *_):
            pass

    for pid, ts in ((1, 1000), (2, 5000)):
        header = bf.validate(
            make_batch(1, timestamp_ms=ts, producer_id=pid, producer_epoch=0, base_sequence=0)
        )
        stage.record(Sink(), TP, header, 0)
    stage.apply()
    assert table.expire(now_ms=6000, expiration_ms=4000) == [(TP, 1)]
    assert table.entry(TP, 1) is None and table.entry(TP, 2) is not None


# -- the PartitionLog facade ----------------------------------------------------------------


def test_partition_log_facade(store):
    log = PartitionLog(store, TP)
    assert repr(log) == "PartitionLog('events', 0)"
    assert store.has_partition(TP)
    assert log.append([make_batch(2), make_batch(1)], leader_epoch=1) == [0, 2]
    assert (log.log_start_offset, log.high_watermark, log.log_end_offset) == (0, 3, 3)
    assert log.size_bytes == offsets(store).size_bytes
    assert [b for b, _ in log.read(1)] == [0, 2]
    assert [b for b, _, _ in log.headers(2)] == [2]
    log.append_at(3, make_batch(1))
    log.set_high_watermark(4)
    assert log.delete_before(2).log_start_offset == 2
    assert log.truncate_to(3).log_end_offset == 3
    assert log.reset(9) == PartitionOffsets(9, 9, 9, 0)
    assert PartitionLog(store, TP, create=False).offsets() == log.offsets()


# -- snapshots and threads ------------------------------------------------------------------


def test_a_reader_is_a_snapshot(store_kind):
    store_kind.map_size = 16 << 20  # no map growth here (growing ends open LMDB readers)
    store = store_kind.open()
    store.create_partition(TP)
    fill(store, TP, [2])
    store.write(lambda w: w.put("x", b"k", b"old"))
    with store.reader() as r:
        before = (r.offsets(TP), r.read(TP, 0, 1 << 20), r.get("x", b"k"))
        # A write that commits while the reader is open (same thread: the stores
        # serialise threads) must not show through it.
        store.write(lambda w: (w.append(TP, [make_batch(3)]), w.put("x", b"k", b"new")))
        store.write(lambda w: w.create_partition(TP1))
        assert (r.offsets(TP), r.read(TP, 0, 1 << 20), r.get("x", b"k")) == before
        with pytest.raises(UnknownTopicOrPartitionError):
            r.offsets(TP1)
    with store.reader() as r:
        assert r.offsets(TP).log_end_offset == 5
        assert r.get("x", b"k") == b"new"


def test_threads_share_one_store(store):
    import threading

    tps = [TopicPartition("threads", p) for p in range(3)]
    for tp in tps:
        store.create_partition(tp)
    errors: list[BaseException] = []
    results: dict[int, list[int]] = {}

    def writer(n: int) -> None:
        tp = tps[n % len(tps)]
        try:
            mine = []
            for i in range(25):
                batch = make_batch(1 + i % 3, tag=f"w{n}-{i}")
                mine.extend(store.write(lambda w, b=batch: w.append(tp, [b])))
            results[n] = mine
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(60):
                for tp in tps:
                    check_partition(store, tp)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    for n, bases in results.items():
        assert bases == sorted(bases), n  # one writer's batches stay in its order
    for tp in tps:
        state = check_partition(store, tp)
        assert len(all_batches(store, tp)) == 50
        assert state.log_end_offset == sum(2 * (1 + i % 3) for i in range(25))


# -- compaction's replace_batches ----------------------------------------------------------


def _without_keys(batch: bytes, base: int, drop: set[bytes], map_end: int) -> bytes | None:
    """The batch with the records of ``drop`` keys removed (compaction's own rebuild)."""
    from kvlog.compact_records import Action, filter_batch, new_offset_map

    omap = new_offset_map(1 << 20, len(drop))
    for key in drop:
        omap.put(key, 1 << 40)  # "a later record exists" for these keys
    outcome = filter_batch(omap, base, batch, map_end, 0)
    return outcome.new if outcome.action is Action.REWRITE else None


def test_replace_batches_swaps_in_place_and_keeps_offsets(store):
    from kvlog.log import BatchReplacement

    store.create_partition(TP)
    appended = fill(store, TP, [3, 3, 3])  # 0-2, 3-5, 6-8; keys k0 k1 k2 in each
    (b0, first), (b1, second), (_b2, last) = appended
    sparse = _without_keys(first, b0, {b"k1"}, 9)
    assert sparse is not None
    before = offsets(store)
    applied = store.write(
        lambda w: w.replace_batches(
            TP, [BatchReplacement(b0, first, sparse), BatchReplacement(b1, second, None)]
        )
    )
    assert applied == [True, True]
    state = offsets(store)
    assert state[:3] == before[:3]  # log start, HW, LEO unchanged
    assert state.size_bytes == len(sparse) + len(last)
    assert [r.offset for r in bf.decode(read(store, 0)[0][1], 0)] == [0, 2]
    assert bf.next_offset(0, sparse) == 3  # the batch's last offset stays true
    # A fetch from a removed offset gets the next batch.
    assert [b for b, _ in read(store, 4)] == [6]
    assert [b for b, _ in read(store, 1)] == [0, 6]
    check_partition(store, TP)


def test_replace_batches_skips_what_changed_or_must_stay(store):
    from kvlog.log import BatchReplacement

    store.create_partition(TP)
    appended = fill(store, TP, [3, 3, 3])
    (b0, first), (b1, second), (b2, last) = appended
    store.write(lambda w: w.set_high_watermark(TP, 5))  # batch 3-5 ends past the HW
    sparse = _without_keys(first, b0, {b"k0"}, 9)
    skipped = [
        BatchReplacement(b0, second, sparse),  # not what is stored there
        BatchReplacement(b1, second, None),  # not wholly below the high watermark
        BatchReplacement(7, last, None),  # no batch at that key
    ]
    assert store.write(lambda w: w.replace_batches(TP, skipped)) == [False, False, False]
    store.write(lambda w: w.set_high_watermark(TP, 9))
    # The last batch marks the log end: never removed (rewriting it is allowed).
    assert store.write(lambda w: w.replace_batches(TP, [BatchReplacement(b2, last, None)])) == [
        False
    ]
    assert all_batches(store, TP) == appended
    with pytest.raises(ValueError, match="ends at delta"):
        store.write(lambda w: w.replace_batches(TP, [BatchReplacement(b0, first, make_batch(2))]))
    with pytest.raises(ValueError, match="more records"):
        store.write(lambda w: w.replace_batches(TP, [BatchReplacement(b0, sparse, first)]))
    with pytest.raises(CorruptRecordError):
        store.write(lambda w: w.replace_batches(TP, [BatchReplacement(b0, first, corrupt(first))]))
    assert all_batches(store, TP) == appended
    check_partition(store, TP)


def test_replaced_batches_survive_a_restart(store_kind):
    from kvlog.log import BatchReplacement

    store = store_kind.open()
    store.create_partition(TP)
    (b0, first), (b1, second) = fill(store, TP, [3, 3])
    sparse = _without_keys(first, b0, {b"k2"}, 6)
    store.write(lambda w: w.replace_batches(TP, [BatchReplacement(b0, first, sparse)]))
    store = store_kind.reopen()
    assert all_batches(store, TP) == [(b0, sparse), (b1, second)]
    check_partition(store, TP)
