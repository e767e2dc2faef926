"""Compaction's per-batch work: the C walker and map against their Python twin, both
formats, every codec, headers, tombstones, records without keys."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from logtest_util import budget

from kvlog import _compact_py, kafka_batch
from kvlog import batch as batch_format
from kvlog.codecs import Codec, compress
from kvlog.compact_records import (
    ACCELERATED,
    Action,
    filter_batch,
    first_keyless,
    map_batch,
    new_offset_map,
)

c_impl = pytest.importorskip("kvlog._compact") if ACCELERATED else None
needs_c = pytest.mark.skipif(not ACCELERATED, reason="the C accelerator was not built")

KEYS = [None, b"", b"a", b"key-1", b"key-2", b"x" * 40]


@st.composite
def stored_batches(draw: st.DrawFn) -> tuple[int, bytes]:
    count = draw(st.integers(1, 12))
    gaps = draw(st.lists(st.integers(1, 3), min_size=count, max_size=count))
    deltas = [sum(gaps[: i + 1]) - gaps[0] for i in range(count)]
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=count, max_size=count))
    values = draw(st.lists(st.none() | st.binary(max_size=30), min_size=count, max_size=count))
    headers = draw(
        st.none()
        | st.lists(
            st.none() | st.lists(st.tuples(st.text(max_size=4), st.binary(max_size=4)), max_size=2),
            min_size=count,
            max_size=count,
        )
    )
    ts = draw(st.integers(0, 5) | st.lists(st.integers(-5, 50), min_size=count, max_size=count))
    ts_list = [ts] * count if isinstance(ts, int) else ts
    dense = draw(st.booleans())
    common = dict(
        first_timestamp=1_000,
        max_timestamp=1_000 + max(ts_list),
        codec=draw(st.sampled_from(list(Codec))),
        producer_id=5,
        producer_epoch=2,
        base_sequence=40,
    )
    hdrs = (
        None if headers is None else [None if h is None else [list(p) for p in h] for h in headers]
    )
    if draw(st.booleans()):
        batch = kafka_batch.encode(None if dense else deltas, ts_list, keys, values, hdrs, **common)
    else:
        batch = batch_format.encode(
            ts, keys, values, hdrs, offset_deltas=None if dense else deltas, **common
        )
    return draw(st.integers(0, 1000)), batch


def _map_records(batch: bytes):
    header = batch_format.read_header(batch)
    body = memoryview(batch)[batch_format.HEADER_SIZE :]
    if header.magic == batch_format.KAFKA_MAGIC:
        return header, kafka_batch._decompress(header.attributes & 7, body)
    from kvlog.codecs import decompress

    return header, decompress(header.codec, body)


@needs_c
@given(
    stored=stored_batches(),
    later=st.dictionaries(st.sampled_from(KEYS[1:]), st.integers(0, 1100)),
    cut=st.integers(0, 1100),
    horizon=st.integers(0, 1100),
)
@budget(300)
def test_c_walker_agrees_with_python(stored, later, cut, horizon):
    base, batch = stored
    header, records = _map_records(batch)
    kafka = header.magic == batch_format.KAFKA_MAGIC
    name = "kafka" if kafka else "native"
    results = []
    for impl in (c_impl, _compact_py):
        omap = impl.OffsetMap(64)
        for key, offset in later.items():
            assert omap.put(key, offset)
        filled = getattr(impl, f"put_{name}")(omap, records, header.record_count, base, cut)
        got = getattr(impl, f"filter_{name}")(
            omap, records, header.record_count, base, cut, horizon
        )
        new = got[1]
        if new is not None:
            # Compare what the records decode to, not the bytes (CBOR spellings may differ).
            if kafka:
                payload = kafka_batch._compress(header.codec, new)
            else:
                payload = compress(header.codec, new) if header.codec != Codec.NONE else new
            rebuilt = batch_format.rebuild(batch, payload, record_count=got[0], max_timestamp=0)
            new = [tuple(r) for r in batch_format.decode(rebuilt, base)]
        results.append((filled, got[0], new, *got[2:], sorted((k, omap.get(k)) for k in later)))
    assert results[0] == results[1]


@given(stored=stored_batches(), cut=st.integers(0, 1100), horizon=st.integers(0, 1100))
@budget(200)
def test_filter_keeps_offsets_timestamps_and_identity(stored, cut, horizon):
    base, batch = stored
    omap = new_offset_map(1 << 20, 16)
    map_batch(omap, base, batch, 0)
    outcome = filter_batch(omap, base, batch, cut, horizon)
    before = {r.offset: r for r in batch_format.decode(batch, base)}
    if outcome.action is Action.KEEP:
        assert outcome.kept == len(before)
        return
    if outcome.action is Action.REMOVE:
        assert outcome.kept == 0
        return
    assert outcome.new is not None
    old, new = batch_format.validate(batch), batch_format.validate(outcome.new)
    assert new.magic == old.magic and new.codec == old.codec
    assert new.last_offset_delta == old.last_offset_delta
    assert (new.producer_id, new.producer_epoch, new.base_sequence) == (5, 2, 40)
    assert new.last_sequence == old.last_sequence
    assert new.first_timestamp == old.first_timestamp
    after = batch_format.decode(outcome.new, base)
    assert len(after) == outcome.kept == new.record_count
    assert new.max_timestamp == max(r.timestamp for r in after)
    for rec in after:
        assert tuple(rec) == tuple(before[rec.offset])  # same offset, timestamp, content
        if rec.offset < cut:
            assert rec.key is not None and omap.get(rec.key) <= rec.offset
            assert rec.value is not None or rec.offset >= horizon
    for offset in before:
        if offset >= cut:
            assert offset in {r.offset for r in after}  # past the map: always kept


def test_map_refuses_keys_past_its_load_factor_and_keeps_the_latest_offset():
    omap = new_offset_map(24 * 10, 100)  # 10 slots: 9 keys at most
    assert omap.capacity == 9
    for i in range(9):
        assert omap.put(b"k%d" % i, i)
    assert not omap.put(b"new", 99)
    assert omap.put(b"k3", 50) and omap.get(b"k3") == 50
    assert omap.put(b"k3", 10) and omap.get(b"k3") == 50  # never back
    assert omap.get(b"new") == -1 and len(omap) == 9


def test_a_batch_that_does_not_fit_ends_the_map_at_its_first_unnoted_record():
    keys = [b"k%d" % i for i in range(8)]
    batch = batch_format.encode(0, keys, [b"v"] * 8, first_timestamp=1, max_timestamp=1)
    omap = new_offset_map(24 * 6, 100)  # 5 keys
    assert map_batch(omap, 100, batch, 0) == 105
    assert map_batch(new_offset_map(1 << 20, 8), 100, batch, 0) == -1
    assert map_batch(new_offset_map(24 * 6, 8), 100, batch, 104) == -1  # from min_offset on


@needs_c
def test_indefinite_length_cbor_falls_back_to_the_python_walk():
    # A payload another client's CBOR encoder could write: indefinite-length arrays.
    payload = (
        b"\x84\xf6\x00\x9f"
        + cbor2.dumps(b"a")
        + cbor2.dumps(b"a")
        + b"\xff\x9f"
        + cbor2.dumps(b"1")
        + cbor2.dumps(b"2")
        + b"\xff"
    )
    with pytest.raises(NotImplementedError):
        c_impl.put_native(c_impl.OffsetMap(8), payload, 2, 0, 0)
    body = batch_format._BODY.pack(0, 1, 1, 1, -1, -1, -1, 2)
    from crc32c import crc32c

    batch = batch_format._PREFIX.pack(-1, 1, crc32c(payload, crc32c(body))) + body + payload
    omap = new_offset_map(1 << 20, 2)
    assert map_batch(omap, 0, batch, 0) == -1 and omap.get(b"a") == 1
    outcome = filter_batch(omap, 0, batch, 2, 0)
    assert outcome.action is Action.REWRITE
    assert [(r.offset, r.value) for r in batch_format.decode(outcome.new, 0)] == [(1, b"2")]


@needs_c
def test_hash_spreads_keys():
    seen = {c_impl.hash128(b"key-%d" % i)[0] for i in range(200_000)}
    assert len(seen) == 200_000  # no collision even in one 64-bit half
    assert c_impl.hash128(b"") != (0, 0)  # the empty-slot marker is never a hash


@given(stored=stored_batches())
@budget(200)
def test_first_keyless_names_the_first_record_without_a_key_in_either_format(stored):
    _base, batch = stored
    header, records = _map_records(batch)
    kafka = header.magic == batch_format.KAFKA_MAGIC
    twin = _compact_py.first_keyless_kafka if kafka else _compact_py.first_keyless_native
    expected = twin(records, header.record_count)
    assert first_keyless(batch) == expected
    if ACCELERATED:
        walk = c_impl.first_keyless_kafka if kafka else c_impl.first_keyless_native
        assert walk(records, header.record_count) == expected


@pytest.mark.parametrize("codec", list(Codec))
def test_decompress_within_fills_its_buffer_or_refuses(codec):
    from kvlog.codecs import decompress, decompress_within

    data = b"".join(b"record %d; " % i for i in range(5000))
    packed = compress(codec, data)
    assert bytes(decompress(codec, packed)) == data
    roomy = memoryview(bytearray(len(data) + 1))
    assert bytes(decompress_within(codec, packed, roomy)) == data
    # Exactly full may have been cut there (not when there is nothing to decompress).
    shorts = (len(data) - 1, 10) if codec is Codec.NONE else (len(data), len(data) - 1, 10)
    for short in shorts:
        with pytest.raises(ValueError):
            decompress_within(codec, packed, memoryview(bytearray(short)))


@pytest.mark.parametrize("kafka", [False, True])
def test_a_decompression_bomb_is_refused_not_decompressed(kafka):
    from kvlog.compact_records import MAX_DECOMPRESSION_RATIO, MIN_DECOMPRESSED_BYTES
    from kvlog.errors import InvalidRecordError

    # One record of 3 MiB of zeros: zstd packs it into a few hundred bytes.
    value = bytes(3 * MIN_DECOMPRESSED_BYTES)
    common = dict(first_timestamp=1, max_timestamp=1, codec=Codec.ZSTD)
    if kafka:
        batch = kafka_batch.encode(None, 0, [b"k"], [value], None, **common)
    else:
        batch = batch_format.encode(0, [b"k"], [value], **common)
    assert len(batch) * MAX_DECOMPRESSION_RATIO < MIN_DECOMPRESSED_BYTES
    with pytest.raises(InvalidRecordError, match="does not decompress within"):
        first_keyless(batch)
    # The same record within the bound is walked.
    small = bytes(MIN_DECOMPRESSED_BYTES // 2)
    if kafka:
        fine = kafka_batch.encode(None, 0, [None], [small], None, **common)
    else:
        fine = batch_format.encode(0, [None], [small], **common)
    assert first_keyless(fine) == 0
