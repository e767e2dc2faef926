"""Kafka RecordBatch v2 in kvlog's log, checked against kafka-python's own record code.

kafka-python's ``DefaultRecordBatchBuilder`` writes batches as a Kafka client does and its
``MemoryRecords`` reads them as a Kafka consumer does: every conversion is checked both
ways against it, over every codec, null keys and values, headers (null values too), gaps
in offsets and many records, for the C loop and its pure-Python twin alike.
"""

from __future__ import annotations

import importlib
import struct
from typing import Any

import pytest
from crc32c import crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.codec import snappy_encode
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.legacy_records import LegacyRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords

from kvlog import _kafka_records_py, kafka_batch
from kvlog import batch as bf
from kvlog.batch import BatchBuilder
from kvlog.codecs import Codec
from kvlog.errors import (
    CorruptRecordError,
    InvalidRecordError,
    UnsupportedCompressionTypeError,
    UnsupportedVersionError,
)


def _c_module() -> Any:
    try:
        return importlib.import_module("kvlog._kafka_records")
    except ImportError:
        return None


_C = _c_module()
IMPLS = [
    pytest.param(_kafka_records_py, id="python"),
    pytest.param(
        _C, id="c", marks=pytest.mark.skipif(_C is None, reason="C accelerator not built")
    ),
]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Runs the test with kafka_batch using one implementation of the record loop."""
    module = request.param
    monkeypatch.setattr(kafka_batch, "decode_records", module.decode_records)
    monkeypatch.setattr(kafka_batch, "encode_records", module.encode_records)
    return module


EXAMPLES = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

blobs = st.none() | st.binary(max_size=40)
header_names = st.text(max_size=8)
headers = st.lists(st.tuples(header_names, st.none() | st.binary(max_size=12)), max_size=3)
timestamps = st.integers(0, 2**41)
record = st.tuples(blobs, blobs, headers, timestamps)
records = st.lists(record, min_size=1, max_size=30)
codecs = st.sampled_from(list(Codec))


def kafka_python_batch(
    recs: list[tuple[Any, Any, list[tuple[str, Any]], int]],
    codec: int = 0,
    *,
    offsets: list[int] | None = None,
    producer: tuple[int, int, int] = (-1, -1, -1),
    transactional: bool = False,
) -> bytes:
    """A whole record set as kafka-python's producer writes it."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=transactional,
        producer_id=producer[0],
        producer_epoch=producer[1],
        base_sequence=producer[2],
        batch_size=1 << 30,
    )
    for i, (key, value, hdrs, ts) in enumerate(recs):
        offset = i if offsets is None else offsets[i]
        assert builder.append(offset, timestamp=ts, key=key, value=value, headers=hdrs)
    return bytes(builder.build())


def kafka_python_read(record_set: bytes) -> list[tuple[Any, ...]]:
    """Every record of a record set as kafka-python's consumer reads it (CRC checked)."""
    out = []
    records = MemoryRecords(record_set)
    while records.has_next():
        batch = records.next_batch()
        assert batch.validate_crc()
        for rec in batch:
            hdrs = [(k, v) for k, v in rec.headers]
            out.append((rec.offset, rec.timestamp, rec.key, rec.value, hdrs))
    return out


def compressible(recs: list[Any]) -> list[Any]:
    """The same records with values long and repetitive enough that every codec shrinks
    them (kafka-python sends a batch uncompressed when compressing does not pay)."""
    return [(k, (v or b"") + b"x" * 200, h, ts) for k, v, h, ts in recs]


# -- Kafka client -> kvlog -------------------------------------------------------------------


@EXAMPLES
@given(recs=records, codec=codecs, base=st.integers(0, 2**40))
def test_a_kafka_batch_reads_as_kvlog_records(impl, recs, codec, base):
    wire = kafka_python_batch(recs, codec, producer=(7, 3, 41))
    stored = kafka_batch.from_record_set(wire)
    header = bf.validate(stored)
    assert header.magic == bf.KAFKA_MAGIC
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (7, 3, 41)
    assert header.record_count == len(recs)
    assert header.first_timestamp == recs[0][3]
    assert header.max_timestamp == max(r[3] for r in recs)
    got = [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in bf.decode(stored, base)]
    want = [(base + i, ts, k, v, list(h)) for i, (k, v, h, ts) in enumerate(recs)]
    assert got == want


@pytest.mark.parametrize("codec", list(Codec))
def test_every_codec_is_read_when_the_client_compressed(impl, codec):
    recs = compressible([(b"k%d" % i, b"v%d" % i, [("n", b"h")], 1000 + i) for i in range(50)])
    stored = kafka_batch.from_record_set(kafka_python_batch(recs, codec))
    assert bf.validate(stored).codec is codec  # kafka-python did compress
    assert [r.value for r in bf.decode(stored, 0)] == [r[1] for r in recs]


def test_snappy_in_xerial_framing_and_raw_are_both_read(impl):
    recs = compressible([(None, b"%d" % i, [], 5) for i in range(2000)])
    # kafka-python writes xerial's framing, as Java does; 32 KiB blocks: several here.
    xerial = kafka_batch.from_record_set(kafka_python_batch(recs, Codec.SNAPPY))
    assert bytes(xerial[bf.HEADER_SIZE : bf.HEADER_SIZE + 8]) == b"\x82SNAPPY\x00"
    raw = kafka_batch.encode(
        None,
        0,
        [None] * 2000,
        [r[1] for r in recs],
        None,
        first_timestamp=5,
        max_timestamp=5,
        codec=Codec.SNAPPY,
    )
    for stored in (xerial, raw):
        assert [r.value for r in bf.decode(stored, 0)] == [r[1] for r in recs]
    assert snappy_encode  # the framing under test is kafka-python's default


def test_xerial_snappy_decompresses_within_a_buffer_or_refuses(impl):
    recs = compressible([(b"k", b"%d" % i, [], 5) for i in range(2000)])
    xerial = memoryview(kafka_batch.from_record_set(kafka_python_batch(recs, Codec.SNAPPY)))
    body = xerial[bf.HEADER_SIZE :]
    whole = kafka_batch._decompress(Codec.SNAPPY, body)
    assert len(whole) > 32 * 1024, "several xerial blocks"
    out = memoryview(bytearray(len(whole) + 1))
    assert bytes(kafka_batch.decompress_within(Codec.SNAPPY, body, out)) == bytes(whole)
    with pytest.raises(ValueError):
        kafka_batch.decompress_within(Codec.SNAPPY, body, out[: len(whole) - 1])


def test_offset_gaps_survive(impl):
    recs = [(b"a", b"1", [], 1), (b"b", b"2", [], 2), (b"c", b"3", [], 3)]
    stored = kafka_batch.from_record_set(kafka_python_batch(recs, offsets=[0, 4, 9]))
    header, cols = bf.decode_raw(stored)
    assert list(cols.offset_deltas) == [0, 4, 9]
    assert header.last_offset_delta == 9
    assert bf.next_offset(100, stored) == 110


def test_consecutive_offsets_come_back_as_a_range(impl):
    stored = kafka_batch.from_record_set(kafka_python_batch([(None, b"v", [], 1)] * 4))
    _, cols = bf.decode_raw(stored)
    assert cols.offset_deltas == range(4)
    assert cols.headers is None


def test_many_records(impl):
    recs = [(b"key-%06d" % i, b"v" * 100, [], 1_700_000_000_000 + i // 10) for i in range(20_000)]
    stored = kafka_batch.from_record_set(kafka_python_batch(recs, Codec.LZ4))
    _, cols = bf.decode_raw(stored)
    assert cols.keys == [r[0] for r in recs]
    assert [1_700_000_000_000 + d for d in cols.timestamp_deltas] == [r[3] for r in recs]


# -- kvlog -> Kafka client -------------------------------------------------------------------


@EXAMPLES
@given(recs=records, codec=codecs, out_codec=codecs, base=st.integers(0, 2**40))
def test_a_native_batch_reads_as_kafka_records(impl, recs, codec, out_codec, base):
    builder = BatchBuilder(codec, producer_id=11, producer_epoch=2, base_sequence=5)
    for key, value, hdrs, ts in recs:
        builder.append(value, key, [(n, v) for n, v in hdrs if v is not None], ts)
    stored = bf.stamp_leader_epoch(builder.build(), 6)
    wire = b"".join(kafka_batch.to_record_set(base, stored, codec=out_codec))
    want = [
        (r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in bf.decode(stored, base)
    ]
    assert kafka_python_read(wire) == want
    kbatch = MemoryRecords(wire).next_batch()
    assert (kbatch.producer_id, kbatch.producer_epoch, kbatch.base_sequence) == (11, 2, 5)
    assert kbatch.leader_epoch == 6
    assert kbatch.compression_type == out_codec


@EXAMPLES
@given(recs=records, codec=codecs)
def test_kvlog_written_magic_2_reads_in_kafka_python(impl, recs, codec):
    stored = kafka_batch.encode(
        None,
        [ts - recs[0][3] for *_, ts in recs],
        [r[0] for r in recs],
        [r[1] for r in recs],
        [[list(p) for p in r[2]] or None for r in recs],
        first_timestamp=recs[0][3],
        max_timestamp=max(r[3] for r in recs),
        codec=codec,
    )
    bf.validate(stored)
    wire = kafka_batch.kafka_prefix(0, stored) + stored
    want = [(i, ts, k, v, list(h)) for i, (k, v, h, ts) in enumerate(recs)]
    assert kafka_python_read(wire) == want


def test_a_kafka_batch_goes_back_to_kafka_untouched(impl):
    wire = kafka_python_batch([(b"k", b"v", [("h", b"x")], 10)] * 3, Codec.GZIP)
    stored = kafka_batch.from_record_set(wire)
    parts = kafka_batch.to_record_set(0, stored)
    assert parts[1] is stored  # no copy, no per-record work
    assert b"".join(parts) == wire
    parts = kafka_batch.to_record_set(1234, stored)
    assert kafka_python_read(b"".join(parts))[0][0] == 1234


def test_timestamp_type_and_offset_gaps_carry_to_kafka(impl):
    stored = bf.encode(
        [0, 0],
        [b"a", b"b"],
        [b"1", b"2"],
        first_timestamp=50,
        max_timestamp=50,
        offset_deltas=[0, 3],
        timestamp_type=bf.TIMESTAMP_LOG_APPEND_TIME,
    )
    kbatch = MemoryRecords(b"".join(kafka_batch.to_record_set(10, stored))).next_batch()
    assert kbatch.timestamp_type == 1
    assert [r.offset for r in kbatch] == [10, 13]
    assert kbatch.last_offset_delta == 3


# -- the leader's view: one header check for both formats ------------------------------------


def test_stamping_the_leader_epoch_keeps_the_crc(impl):
    stored = kafka_batch.from_record_set(kafka_python_batch([(b"k", b"v", [], 1)]))
    stamped = bf.stamp_leader_epoch(stored, 42)
    header = bf.validate(stamped)
    assert header.partition_leader_epoch == 42
    kbatch = MemoryRecords(kafka_batch.kafka_prefix(0, stamped) + stamped).next_batch()
    assert kbatch.validate_crc() and kbatch.leader_epoch == 42


def test_any_bit_flip_after_the_leader_epoch_is_detected():
    stored = bytes(
        kafka_batch.from_record_set(
            kafka_python_batch([(b"key", b"value" * 5, [("h", b"v")], 1), (None, b"x", [], 2)])
        )
    )
    for position in range(4, len(stored)):
        for bit in range(8):
            flipped = bytearray(stored)
            flipped[position] ^= 1 << bit
            with pytest.raises(
                (CorruptRecordError, InvalidRecordError, UnsupportedCompressionTypeError)
            ):
                bf.validate(bytes(flipped))
                bf.decode(bytes(flipped), 0)


def test_magic_0_and_1_record_sets_are_unsupported_versions():
    for magic in (0, 1):
        builder = LegacyRecordBatchBuilder(magic=magic, compression_type=0, batch_size=1 << 20)
        builder.append(0, timestamp=None if magic == 0 else 5, key=b"k", value=b"v")
        with pytest.raises(UnsupportedVersionError, match=f"magic {magic}"):
            kafka_batch.from_record_set(bytes(builder.build()))


def test_transactional_batches_are_accepted_and_control_batches_refused_from_producers():
    wire = kafka_python_batch([(b"k", b"v", [], 1)], producer=(1, 0, 0), transactional=True)
    header = bf.validate(kafka_batch.from_record_set(wire))
    assert header.is_transactional and not header.is_control
    bf.check_produced(header)  # a producer may send it
    control = bytearray(kafka_batch.from_record_set(kafka_python_batch([(b"k", b"v", [], 1)])))
    attributes = struct.unpack_from(">h", control, 9)[0] | 0x20
    struct.pack_into(">h", control, 9, attributes)
    struct.pack_into(">I", control, 5, crc32c(bytes(control[9:])))
    header = bf.validate(bytes(control))  # a leader's marker is a valid batch to store
    with pytest.raises(InvalidRecordError, match="control"):
        bf.check_produced(header)  # but no producer may send one
    without_producer = kafka_python_batch([(b"k", b"v", [], 1)], transactional=True)
    with pytest.raises(InvalidRecordError, match="producer id"):
        bf.check_produced(bf.validate(kafka_batch.from_record_set(without_producer)))


def test_record_sets_that_are_not_one_batch_are_refused():
    one = kafka_python_batch([(b"k", b"v", [], 1)])
    with pytest.raises(InvalidRecordError, match="more than one"):
        kafka_batch.from_record_set(one + one)
    with pytest.raises(InvalidRecordError, match="no record batch"):
        kafka_batch.from_record_set(b"")
    with pytest.raises(CorruptRecordError, match="length"):
        kafka_batch.from_record_set(one[:-1])
    with pytest.raises(CorruptRecordError, match="magic"):
        kafka_batch.from_record_set(one[:16] + b"\x07" + one[17:])


# -- the record loop on hostile input --------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), count=st.integers(-1, 40))
def test_c_and_python_agree_on_any_bytes(data, count):
    if _C is None:
        pytest.skip("C accelerator not built")
    outcomes = []
    for module in (_C, _kafka_records_py):
        try:
            outcomes.append(("ok", module.decode_records(data, count)))
        except ValueError:
            outcomes.append(("error", None))
    assert outcomes[0] == outcomes[1]


@settings(max_examples=100, deadline=None)
@given(recs=records, cut=st.integers(1, 50), junk=st.binary(min_size=1, max_size=8))
def test_truncated_or_padded_records_are_corrupt(recs, cut, junk):
    wire = kafka_python_batch(recs)
    stored = kafka_batch.from_record_set(wire)
    records_section = bytes(stored[bf.HEADER_SIZE :])
    for module in [m for m in (_C, _kafka_records_py) if m is not None]:
        assert module.decode_records(records_section, len(recs))[2] == [r[0] for r in recs]
        with pytest.raises(ValueError):
            module.decode_records(records_section[: max(0, len(records_section) - cut)], len(recs))
        with pytest.raises(ValueError):
            module.decode_records(records_section + junk, len(recs))


def test_a_huge_count_in_a_corrupt_header_allocates_nothing(impl):
    with pytest.raises(ValueError, match="cannot fit"):
        impl.decode_records(b"\x00" * 70, 2**31 - 1)


def test_encode_refuses_what_kafka_cannot_carry(impl):
    with pytest.raises(TypeError):
        impl.encode_records(None, 0, [b"k"], ["not bytes"], None)
    with pytest.raises(TypeError):
        impl.encode_records(None, 0, [b"k"], [b"v"], [[[b"name-not-str", b"v"]]])
    with pytest.raises(ValueError):
        impl.encode_records(None, 0, [b"k", b"k"], [b"v"], None)


def test_header_names_that_are_not_utf8_round_trip_exactly(impl):
    name = b"\xff\xfeh".decode("utf-8", "surrogateescape")
    records = impl.encode_records(None, 0, [None], [b"v"], [[[name, b"x"]]])
    assert b"\xff\xfeh" in records
    _, _, _, _, hdrs = impl.decode_records(records, 1)
    assert hdrs == [[[name, b"x"]]]


def test_lz4_is_written_with_independent_blocks(impl):
    # Java's KafkaLZ4BlockInputStream refuses linked blocks; kafka-python does not check.
    stored = bf.build_batch([(b"k", b"v" * 300)] * 20)
    wire = kafka_batch.native_to_kafka(0, stored, codec=Codec.LZ4)
    frame = wire[kafka_batch.PREFIX_SIZE + bf.HEADER_SIZE :]
    assert frame[:4] == b"\x04\x22\x4d\x18"  # LZ4 frame magic
    assert frame[4] & 0x20  # FLG: block independence
