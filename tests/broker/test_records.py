"""ipc/records.py: handing out a decoded batch as records and as columns, in any mix of
slice sizes, gives back exactly the batch's records (what kvlog.batch.decode says)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvlog import batch as batch_format
from kvlog.ipc import records as records_module
from kvlog.ipc.records import DecodedBatch, RecordColumns, UndecodableRecord, decode_batch

pytestmark = pytest.mark.timeout(120)

# Every test runs on batches decoded by cbor2 into lists and, where the C extension reads
# the batch in place (kvlog._records: no headers), on that view.
_native = [True, False]


@pytest.fixture(
    autouse=True,
    params=["cbor2"] + (["native"] if records_module.native is not None else []),
)
def decoder(request: pytest.FixtureRequest) -> None:
    _native[0] = request.param == "native"


optional_bytes = st.none() | st.binary(max_size=20)
headers = st.none() | st.lists(
    st.tuples(st.text(max_size=5), st.binary(max_size=5)), min_size=1, max_size=2
)
records = st.lists(
    st.tuples(
        optional_bytes,
        optional_bytes,
        headers,
        st.none() | st.integers(1_600_000_000_000, 1_600_000_100_000),
    ),
    min_size=1,
    max_size=40,
)


def _decoded(recs: list[Any] | bytes, base: int) -> DecodedBatch:
    raw = recs if isinstance(recs, bytes) else batch_format.build_batch(recs)
    if _native[0]:
        return decode_batch(raw, base)
    header, columns = batch_format.decode_raw(raw)
    return DecodedBatch(header, columns, base)


def _plain(r: Any) -> tuple[Any, ...]:
    return (r.offset, r.timestamp, r.key, r.value, [tuple(h) for h in r.headers])


@settings(max_examples=200, deadline=None)
@given(
    recs=records,
    base=st.integers(0, 2**40),
    skip=st.integers(0, 45),
    takes=st.lists(st.tuples(st.booleans(), st.integers(1, 15)), min_size=1, max_size=30),
)
def test_any_mix_of_takes_hands_out_each_record_once_in_order(
    recs: list[Any], base: int, skip: int, takes: list[tuple[bool, int]]
) -> None:
    raw = batch_format.build_batch(recs)
    expected = [
        (r.offset, r.timestamp, r.key, r.value, [tuple(h) for h in r.headers])
        for r in batch_format.decode(raw, base)
    ][skip:]
    decoded = _decoded(raw, base)
    decoded.skip_to(base + skip)
    got: list[tuple[Any, ...]] = []
    for as_columns, limit in takes:
        if not decoded:
            break
        before = len(decoded)
        if as_columns:
            run = decoded.take_columns("t", 3, limit, None, None)
            assert isinstance(run, RecordColumns) and len(run) == min(limit, before)
            assert run.next_offset == run.offsets[-1] + 1
            got += [_plain(r) for r in run.records()]
        else:
            out = decoded.take_records("t", 3, limit, None, None)
            assert len(out) == min(limit, before)
            assert all((r.topic, r.partition) == ("t", 3) for r in out)
            assert all(
                r.serialized_value_size == (-1 if r.value is None else len(r.value)) for r in out
            )
            got += [_plain(r) for r in out]
        assert len(decoded) == before - min(limit, before)
    while decoded:
        got += [_plain(r) for r in decoded.take_records("t", 3, 1000, None, None)]
    assert got == expected


@settings(max_examples=100, deadline=None)
@given(first=records, second=records)
def test_extending_a_run_concatenates_the_columns(first: list[Any], second: list[Any]) -> None:
    a = _decoded(first, 100).take_columns("t", 0, 1000, None, None)
    b = _decoded(second, 100 + len(first)).take_columns("t", 0, 1000, None, None)
    expected = [_plain(r) for r in a.records()] + [_plain(r) for r in b.records()]
    a.extend(b)
    assert isinstance(a.offsets, range), "contiguous runs keep a range of offsets"
    assert [_plain(r) for r in a.records()] == expected
    assert a.next_offset == 100 + len(first) + len(second)


def test_a_failing_deserializer_stops_at_the_record_it_refuses() -> None:
    """The records before it are handed out; the one it refuses stays for the next poll,
    which raises with its offset and raw bytes (issue 13: the consumer's position rests
    on the record the error names)."""
    decoded = _decoded([(None, b"1"), (None, b"x"), (None, b"3")], 0)

    def strict(value: bytes) -> int:
        return int(value)

    assert [r.value for r in decoded.take_records("t", 0, 10, None, strict)] == [1]
    for _ in range(2):
        with pytest.raises(UndecodableRecord) as info:
            decoded.take_records("t", 0, 10, None, strict)
        assert (info.value.offset, info.value.field, info.value.value) == (1, "value", b"x")
        assert isinstance(info.value.cause, ValueError)
        assert len(decoded) == 2, "the records stay for the next poll"
    columns = _decoded([(None, b"1"), (None, b"x")], 0)
    assert list(columns.take_columns("t", 0, 10, None, strict).values) == [1]
    with pytest.raises(UndecodableRecord):
        columns.take_columns("t", 0, 10, None, strict)
