"""kvlog._records: a native batch read in place gives exactly the records cbor2's decoding
gives (tests/broker/test_records.py runs every hand-out on both); here, which batches it
reads, and that a corrupt payload is refused the same way."""

from __future__ import annotations

import gc
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvlog import batch as batch_format
from kvlog.codecs import Codec
from kvlog.errors import CorruptRecordError
from kvlog.ipc import records as records_module
from kvlog.ipc.records import DecodedBatch, decode_batch

pytestmark = pytest.mark.skipif(records_module.native is None, reason="kvlog._records not built")

optional_bytes = st.none() | st.binary(max_size=300)


def _cbor2_way(raw: bytes, base: int) -> DecodedBatch:
    header, columns = batch_format.decode_raw(raw)
    return DecodedBatch(header, columns, base)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(optional_bytes, optional_bytes, st.integers(-5_000, 5_000)),
        min_size=1,
        max_size=60,
    ),
    codec=st.sampled_from(list(Codec)),
    base=st.integers(0, 2**50),
    deserialize=st.booleans(),
)
def test_records_built_in_place_equal_the_decoded_ones(rows, codec, base, deserialize) -> None:
    first = 1_700_000_000_000
    raw = batch_format.encode(
        [ts for _, _, ts in rows],
        [k for k, _, _ in rows],
        [v for _, v, _ in rows],
        first_timestamp=first,
        max_timestamp=first + max(ts for _, _, ts in rows),
        codec=codec,
    )
    native = decode_batch(raw, base)
    assert native.native is not None
    fn = (lambda b: None if b is None else b[::-1]) if deserialize else None
    assert native.take_records("t", 3, 1000, fn, fn) == _cbor2_way(raw, base).take_records(
        "t", 3, 1000, fn, fn
    )
    columns = decode_batch(raw, base).take_columns("t", 3, 1000, fn, fn)
    expected = _cbor2_way(raw, base).take_columns("t", 3, 1000, fn, fn)
    for name in ("offsets", "timestamps", "keys", "values", "headers", "timestamp_type"):
        assert list(getattr(columns, name) or []) == list(getattr(expected, name) or []), name


def test_batches_of_other_shapes_go_through_cbor2() -> None:
    plain = batch_format.build_batch([(b"k", b"v"), (None, None)])
    assert decode_batch(plain, 0).native is not None
    with_headers = batch_format.build_batch([(b"k", b"v", [("h", b"1")], 5)])
    gaps = batch_format.encode(
        0, [None, None], [b"a", b"b"], first_timestamp=1, max_timestamp=1, offset_deltas=[0, 2]
    )
    for raw in (with_headers, gaps):
        decoded = decode_batch(raw, 10)
        assert decoded.native is None
        assert decoded.take_records("t", 0, 10, None, None) == _cbor2_way(raw, 10).take_records(
            "t", 0, 10, None, None
        )


def _framed(columns: Any, count: int) -> bytes:
    """A batch whose CRC is right around the payload ``columns`` encodes to."""
    payload = columns if isinstance(columns, bytes) else cbor2.dumps(columns)
    return batch_format.encode_payload(payload, count, first_timestamp=1, max_timestamp=1)


@pytest.mark.parametrize(
    "raw",
    [
        _framed([None, 0, [b"k"], [b"v"]], 2),  # fewer records than the header says
        _framed([None, 0, [b"k", 5], [b"v", b"w"]], 2),  # a key that is not bytes
        _framed([None, 0, [b"k"]], 1),  # three columns
        _framed(cbor2.dumps([None, 0, [b"k"], [b"v"]])[:-1], 1),  # truncated
    ],
)
def test_a_corrupt_payload_is_refused_as_cbor2_refuses_it(raw: bytes) -> None:
    with pytest.raises(CorruptRecordError):
        decode_batch(raw, 0).take_records("t", 0, 10, None, None)


def test_records_of_bytes_are_not_left_to_the_garbage_collector() -> None:
    raw = batch_format.build_batch([(b"k", b"v")] * 3)
    records = decode_batch(raw, 0).take_records("t", 0, 3, None, None)
    assert not any(gc.is_tracked(r) for r in records)
    parsed = decode_batch(raw, 0).take_records("t", 0, 3, None, lambda v: {"v": v})
    assert all(gc.is_tracked(r) for r in parsed)  # a dict inside: the collector must see it
