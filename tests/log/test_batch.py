"""Record batches: round trips, header fields, and corruption detection by validate()."""

from __future__ import annotations

import struct

import cbor2
import pytest
from crc32c import crc32c
from hypothesis import example, given
from hypothesis import strategies as st
from logtest_util import budget, make_batch

from kvlog import batch as bf
from kvlog.batch import BatchBuilder, Record, build_batch, decode, decode_raw, encode, validate
from kvlog.codecs import Codec, compress, decompress
from kvlog.errors import (
    CorruptRecordError,
    InvalidConfigError,
    UnsupportedCompressionTypeError,
)
from kvlog.producer_state import INT32_MAX

INT64_MAX = (1 << 63) - 1
ATTRIBUTES_LOW_BYTE = 10  # attributes is an int16 at [9:11]; the codec is bits 0-2 of [10]

keys_or_values = st.none() | st.binary(max_size=300)
headers = st.lists(st.tuples(st.text(max_size=12), st.binary(max_size=20)), max_size=4)
# ms since the epoch. Records in a batch need not be in timestamp order, so deltas go
# either way; negative absolute values (which Kafka's producer refuses) must still give
# the right first/max timestamps.
timestamps = st.integers(-(1 << 45), 1 << 45)
records = st.lists(
    st.tuples(keys_or_values, keys_or_values, headers, timestamps), min_size=1, max_size=25
)
codecs = st.sampled_from(list(Codec))
producer_ids = st.integers(-1, INT64_MAX)
producer_epochs = st.integers(-1, 32767)
sequences = st.integers(-1, INT32_MAX)


def recrc(buf: bytearray) -> bytes:
    """Recompute the CRC after a deliberate header edit (so only the edit is wrong)."""
    struct.pack_into(">I", buf, 5, crc32c(bytes(buf[9:])))
    return bytes(buf)


@budget(150)
@given(
    recs=records,
    codec=codecs,
    pid=producer_ids,
    epoch=producer_epochs,
    seq=sequences,
    base=st.integers(0, 1 << 62),
)
@example(
    recs=[(None, None, [], 5), (b"", b"", [("", b"")], 0), (b"k", b"v", [("h", b"x")], 9)],
    codec=Codec.NONE,
    pid=-1,
    epoch=-1,
    seq=-1,
    base=0,
)
def test_round_trip_every_codec(recs, codec, pid, epoch, seq, base):
    builder = BatchBuilder(codec, producer_id=pid, producer_epoch=epoch, base_sequence=seq)
    for i, (key, value, hdrs, ts) in enumerate(recs):
        assert builder.append(value, key, hdrs, ts) == i
    assert len(builder) == len(recs)
    buf = builder.build()

    header = validate(buf)
    assert header.magic == bf.MAGIC
    assert header.partition_leader_epoch == bf.NO_LEADER_EPOCH
    assert header.codec is codec
    assert header.timestamp_type == bf.TIMESTAMP_CREATE_TIME
    assert header.record_count == len(recs)
    assert header.last_offset_delta == len(recs) - 1
    assert header.first_timestamp == recs[0][3]
    assert header.max_timestamp == max(r[3] for r in recs)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (pid, epoch, seq)
    assert header.is_idempotent == (pid >= 0)
    assert bf.next_offset(base, buf) == base + len(recs)

    expected = [
        Record(base + i, ts, key, value, list(hdrs))
        for i, (key, value, hdrs, ts) in enumerate(recs)
    ]
    assert decode(buf, base) == expected
    assert decode(memoryview(buf), base) == expected
    raw_header, columns = decode_raw(buf)
    assert raw_header == header
    assert list(columns.offset_deltas) == list(range(len(recs)))
    assert list(columns.timestamp_deltas) == [ts - recs[0][3] for *_, ts in recs]  # any sign
    assert columns.keys == [key for key, *_ in recs]
    assert columns.values == [value for _, value, *_ in recs]


def test_max_timestamp_is_the_largest_even_for_negative_timestamps():
    builder = BatchBuilder()
    builder.append(b"a", timestamp_ms=-50)
    builder.append(b"b", timestamp_ms=-70)
    header = validate(builder.build())
    assert (header.first_timestamp, header.max_timestamp) == (-50, -50)


def test_out_of_order_timestamps_keep_first_and_max():
    buf = build_batch([(None, b"a", None, 500), (None, b"b", None, 100), (None, b"c", None, 900)])
    header = validate(buf)
    assert (header.first_timestamp, header.max_timestamp) == (500, 900)
    assert [r.timestamp for r in decode(buf, 7)] == [500, 100, 900]


def test_build_batch_accepts_pairs_and_full_tuples():
    pairs = build_batch(
        [(b"k1", b"v1"), (None, b"v2")],
        Codec.ZSTD,
        producer_id=3,
        producer_epoch=1,
        base_sequence=10,
    )
    header = validate(pairs)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (3, 1, 10)
    assert header.last_sequence == 11
    assert [(r.key, r.value, r.headers) for r in decode(pairs, 0)] == [
        (b"k1", b"v1", []),
        (None, b"v2", []),
    ]
    full = build_batch([(b"k", None, [("a", b"1"), ("b", b"")], 42)])
    assert decode(full, 100) == [Record(100, 42, b"k", None, [("a", b"1"), ("b", b"")])]


def test_encode_keeps_explicit_offset_delta_and_timestamp_type():
    buf = encode(
        [0, 1],
        [None, None],
        [b"a", b"b"],
        first_timestamp=1000,
        max_timestamp=1001,
        offset_deltas=[0, 5],
        codec=Codec.LZ4,
        timestamp_type=bf.TIMESTAMP_LOG_APPEND_TIME,
    )
    header = validate(buf)
    assert header.last_offset_delta == 5
    assert header.record_count == 2
    assert header.timestamp_type == bf.TIMESTAMP_LOG_APPEND_TIME
    assert header.codec is Codec.LZ4
    assert bf.next_offset(10, buf) == 16
    assert [r.offset for r in decode(buf, 10)] == [10, 15]


def test_encode_refuses_an_empty_batch():
    with pytest.raises(ValueError):
        encode([], [], [], first_timestamp=0, max_timestamp=0)
    with pytest.raises(ValueError):
        BatchBuilder().build()


def test_last_sequence_wraps_at_int32_max():
    buf = make_batch(3, producer_id=1, producer_epoch=0, base_sequence=INT32_MAX)
    header = validate(buf)
    assert header.last_sequence == 1
    assert validate(make_batch(3)).last_sequence == bf.NO_SEQUENCE


# -- corruption -------------------------------------------------------------------------


def _assert_detected(buf: bytes, position: int, bit: int) -> None:
    try:
        validate(buf)
    except UnsupportedCompressionTypeError:
        assert position == ATTRIBUTES_LOW_BYTE and bit < 3, (position, bit)
    except CorruptRecordError:
        pass
    else:
        raise AssertionError(f"flipping bit {bit} of byte {position} went unnoticed")
    with pytest.raises((CorruptRecordError, UnsupportedCompressionTypeError)):
        decode(buf, 0)


@budget(300)
@given(
    recs=st.lists(
        st.tuples(keys_or_values, keys_or_values, headers, timestamps), min_size=1, max_size=6
    ),
    codec=codecs,
    data=st.data(),
)
def test_any_single_bit_flip_after_the_leader_epoch_is_detected(recs, codec, data):
    builder = BatchBuilder(codec, producer_id=7, producer_epoch=2, base_sequence=40)
    for key, value, hdrs, ts in recs:
        builder.append(value, key, hdrs, ts)
    buf = builder.build()
    position = data.draw(st.integers(4, len(buf) - 1), label="position")
    bit = data.draw(st.integers(0, 7), label="bit")
    flipped = bytearray(buf)
    flipped[position] ^= 1 << bit
    _assert_detected(bytes(flipped), position, bit)


@pytest.mark.parametrize("codec", list(Codec))
def test_every_bit_flip_of_a_batch_is_detected(codec):
    buf = build_batch(
        [(b"key", b"value" * 10, [("h", b"v")], 1_700_000_000_000), (None, b"x", None, 1)],
        codec,
        producer_id=9,
        producer_epoch=1,
        base_sequence=0,
    )
    for position in range(4, len(buf)):
        for bit in range(8):
            flipped = bytearray(buf)
            flipped[position] ^= 1 << bit
            _assert_detected(bytes(flipped), position, bit)


def test_codec_bit_flips_report_unsupported_compression():
    buf = bytearray(make_batch(2, codec=Codec.ZSTD))  # codec 4 = 0b100
    buf[ATTRIBUTES_LOW_BYTE] ^= 0b001  # -> 5: no such codec
    with pytest.raises(UnsupportedCompressionTypeError):
        validate(bytes(buf))


@pytest.mark.parametrize("codec_id", [5, 6, 7])
def test_unknown_codec_with_a_valid_crc_is_unsupported(codec_id):
    buf = bytearray(make_batch(2))
    struct.pack_into(">h", buf, 9, codec_id)
    with pytest.raises(UnsupportedCompressionTypeError):
        validate(recrc(buf))


@pytest.mark.parametrize(
    ("fmt", "offset", "value", "match"),
    [
        (">h", 9, 0x40, "attribute"),  # an attribute bit no version defines
        (">h", 9, 0x20, "attribute"),  # control: Kafka's batches (magic 2) only
        (">i", 45, 0, "record_count"),
        (">i", 45, -3, "record_count"),
        (">i", 11, 0, "last_offset_delta"),  # 3 records cannot end at delta 0
    ],
)
def test_header_checks_hold_even_with_a_valid_crc(fmt, offset, value, match):
    buf = bytearray(make_batch(3))
    struct.pack_into(fmt, buf, offset, value)
    with pytest.raises(CorruptRecordError, match=match):
        validate(recrc(buf))


def test_leader_epoch_is_outside_the_crc_and_stamping_keeps_it_valid():
    buf = make_batch(4, codec=Codec.GZIP, producer_id=1, producer_epoch=0, base_sequence=0)
    for source in (buf, memoryview(buf), bytearray(buf)):
        stamped = bf.stamp_leader_epoch(source, 12)
        assert isinstance(stamped, bytes)
        header = validate(stamped)
        assert header.partition_leader_epoch == 12
        assert stamped[4:] == buf[4:]
        assert decode(stamped, 0) == decode(buf, 0)
    assert validate(bf.stamp_leader_epoch(buf, -1)) == validate(buf)
    # The leader epoch bytes are not covered: any value there still validates.
    tampered = bytearray(buf)
    tampered[0] ^= 0x80
    assert validate(bytes(tampered)).crc == validate(buf).crc


@pytest.mark.parametrize("codec", list(Codec))
def test_truncated_or_extended_buffers_are_rejected(codec):
    buf = make_batch(3, codec=codec, value_size=40)
    for length in range(len(buf)):
        with pytest.raises(CorruptRecordError):
            validate(buf[:length])
    with pytest.raises(CorruptRecordError, match="shorter"):
        validate(buf[: bf.HEADER_SIZE - 1])
    with pytest.raises(CorruptRecordError, match="CRC"):
        validate(buf + b"\x00")


# Magic 2 is a Kafka RecordBatch v2 (tests/kafka/test_kafka_batch.py); 3 is the one
# single-bit flip of magic 1 besides 0.
@pytest.mark.parametrize("magic", [0, 3, 0x7F, -1])
def test_wrong_magic_is_rejected(magic):
    buf = bytearray(make_batch(1))
    struct.pack_into(">b", buf, 4, magic)
    with pytest.raises(CorruptRecordError, match="magic"):
        validate(bytes(buf))
    with pytest.raises(CorruptRecordError, match="magic"):
        bf.read_header(bytes(buf))


def test_a_native_payload_under_magic_2_does_not_decode():
    # The magic byte is outside the CRC (as in Kafka), so a native batch relabelled as
    # Kafka's (two bits apart) passes the header check; its payload then fails to decode.
    buf = bytearray(make_batch(3))
    struct.pack_into(">b", buf, 4, bf.KAFKA_MAGIC)
    assert validate(bytes(buf)).magic == bf.KAFKA_MAGIC
    with pytest.raises(CorruptRecordError):
        decode(bytes(buf), 0)


def test_payload_that_does_not_decode_is_corrupt_even_with_a_valid_crc():
    buf = bytearray(make_batch(2, codec=Codec.SNAPPY))
    garbage = recrc(bytearray(buf[: bf.HEADER_SIZE]) + bytearray(b"\xff\x00\x13\x37"))
    validate(garbage)  # the leader's check passes: it never looks inside
    with pytest.raises(CorruptRecordError, match="decode"):
        decode(garbage, 0)


def test_payload_with_the_wrong_record_count_is_corrupt():
    buf = bytearray(make_batch(2))
    struct.pack_into(">ii", buf, 41, -1, 3)  # base_sequence, record_count: 3 claimed
    struct.pack_into(">i", buf, 11, 2)
    with pytest.raises(CorruptRecordError, match="3 entries"):
        decode(recrc(buf), 0)


@pytest.mark.parametrize(
    "columns",
    [
        [None, [0], [None]],  # a column missing
        [None, [0], [None], [b"a", b"b"]],  # a column too long
        [None, 0, [None], [b"a"], [None], [None]],  # too many columns
        [[0], "0", [None], [b"a"]],  # timestamp deltas neither an array nor an int
        {"keys": [None]},  # not an array at all
    ],
)
def test_malformed_payload_is_corrupt(columns):
    buf = bytearray(make_batch(1))[: bf.HEADER_SIZE] + cbor2.dumps(columns)
    with pytest.raises(CorruptRecordError):
        decode(recrc(buf), 0)


# -- codecs -----------------------------------------------------------------------------


@budget(100)
@given(codec=codecs, data=st.binary(max_size=5000))
def test_compress_round_trip(codec, data):
    assert bytes(decompress(codec, compress(codec, data))) == data


def test_codec_parse():
    assert Codec.parse(None) is Codec.NONE
    assert Codec.parse(" Zstd ") is Codec.ZSTD
    assert Codec.parse("lz4") is Codec.LZ4
    assert Codec.parse(2) is Codec.SNAPPY
    assert Codec.parse(Codec.GZIP) is Codec.GZIP
    with pytest.raises(InvalidConfigError):
        Codec.parse("brotli")
    with pytest.raises(UnsupportedCompressionTypeError):
        Codec.parse(9)
