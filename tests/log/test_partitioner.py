"""Kafka's murmur2 default partitioner: Kafka's own test vectors, C and Python alike."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from logtest_util import budget

from kvlog import partitioner


def _c_module():
    try:
        return importlib.import_module("kvlog._murmur2")
    except ImportError:
        return None


_C = _c_module()
_IMPLS = [
    pytest.param((partitioner.murmur2_py, partitioner.partition_for_key_py), id="python"),
    pytest.param(
        (getattr(_C, "murmur2", None), getattr(_C, "partition_for_key", None)),
        id="c",
        marks=pytest.mark.skipif(_C is None, reason="C accelerator not built (no compiler)"),
    ),
]

# org.apache.kafka.common.utils.UtilsTest#testMurmur2
MURMUR2_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}
# Partitions Kafka's DefaultPartitioner picks for these keys with 1000 partitions.
PARTITION_VECTORS = {
    b"": 681,
    b"a": 524,
    b"ab": 434,
    b"abc": 107,
    b"123456789": 566,
    b"\x00 ": 742,
}


@pytest.mark.parametrize("impl", _IMPLS)
@pytest.mark.parametrize(("key", "expected"), MURMUR2_VECTORS.items())
def test_murmur2_matches_kafka(impl, key, expected):
    murmur2, _ = impl
    assert murmur2(key) == expected
    assert murmur2(bytearray(key)) == expected
    assert murmur2(memoryview(key)) == expected
    assert murmur2(memoryview(b"__" + key + b"__")[2:-2]) == expected


@pytest.mark.parametrize("impl", _IMPLS)
@pytest.mark.parametrize(("key", "expected"), PARTITION_VECTORS.items())
def test_partition_for_key_matches_kafka(impl, key, expected):
    _, partition_for_key = impl
    assert partition_for_key(key, 1000) == expected
    assert partition_for_key(bytearray(key), 1000) == expected
    assert partition_for_key(memoryview(key), 1000) == expected


@pytest.mark.parametrize("impl", _IMPLS)
def test_partition_for_key_rejects_bad_partition_counts(impl):
    _, partition_for_key = impl
    for bad in (0, -1, -(1 << 40)):
        with pytest.raises(ValueError):
            partition_for_key(b"k", bad)
    with pytest.raises(TypeError):
        partition_for_key(b"k", "3")
    with pytest.raises(TypeError):
        partition_for_key("not bytes", 3)


def test_module_exports_the_accelerator_when_built():
    accelerated = _C is not None
    assert partitioner.ACCELERATED is accelerated
    if _C is not None:
        assert partitioner.murmur2 is _C.murmur2
        assert partitioner.partition_for_key is _C.partition_for_key
        assert partitioner.group_by_partition is _C.group_by_partition


@pytest.mark.skipif(_C is None, reason="C accelerator not built (no compiler)")
@budget(400)
@given(key=st.binary(max_size=300), partitions=st.integers(1, (1 << 63) - 1), data=st.data())
def test_c_and_python_agree(key, partitions, data):
    assert _C.murmur2(key) == partitioner.murmur2_py(key)
    small = data.draw(st.integers(1, 5000), label="small partition count")
    for n in (small, partitions):
        expected = partitioner.partition_for_key_py(key, n)
        assert 0 <= expected < n
        assert _C.partition_for_key(key, n) == expected
        assert _C.partition_for_key(bytearray(key), n) == expected


@budget(200)
@given(key=st.binary(max_size=64), partitions=st.integers(1, 1 << 20))
def test_same_key_same_partition(key, partitions):
    first = partitioner.partition_for_key(key, partitions)
    assert partitioner.partition_for_key(bytes(key), partitions) == first
    assert 0 <= first < partitions
    assert -(1 << 31) <= partitioner.murmur2(key) < (1 << 31)


@pytest.mark.skipif(_C is None, reason="C accelerator not built (no compiler)")
@pytest.mark.parametrize("partitions", [1 << 32, (1 << 32) + 1, (1 << 63) - 1])
def test_c_partition_for_key_survives_counts_past_32_bits(partitions):
    # Run in a child: the bug this guards against killed the interpreter with SIGFPE.
    code = (
        "import sys; from kvlog._murmur2 import partition_for_key as f; "
        f"print(f(b'abc', {partitions}), f(b'', {partitions}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expected = [partitioner.partition_for_key_py(k, partitions) for k in (b"abc", b"")]
    assert [int(x) for x in done.stdout.split()] == expected


_GROUPERS = [partitioner.group_by_partition_py] + (
    [_C.group_by_partition] if _C is not None else []
)


@pytest.mark.parametrize("group", _GROUPERS)
@budget(200)
@given(
    keys=st.lists(st.one_of(st.none(), st.binary(max_size=40)), max_size=60),
    partitions=st.integers(1, 2000),
)
def test_group_by_partition_groups_as_partition_for_key_would(group, keys, partitions):
    values = [object() for _ in keys]  # any value, passed through by identity
    groups = group(keys, values, partitions)
    expected: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        p = -1 if key is None else partitioner.partition_for_key_py(key, partitions)
        expected.setdefault(p, []).append(i)
    assert {p: g[0] for p, g in groups.items()} == expected
    assert list(groups) == list(expected)  # partitions in order of first appearance
    for indices, group_keys, group_values in groups.values():
        assert group_keys == [keys[i] for i in indices]
        assert all(v is values[i] for v, i in zip(group_values, indices, strict=True))


@pytest.mark.parametrize("group", _GROUPERS)
def test_group_by_partition_rejects_bad_input(group):
    with pytest.raises(ValueError):
        group([b"a"], [b"x"], 0)
    with pytest.raises(ValueError):
        group([b"a", b"b"], [b"x"], 4)
    with pytest.raises(TypeError):
        group([b"a", 7], [b"x", b"y"], 4)
