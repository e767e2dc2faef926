"""Kafka's default partitioner for keyed records: murmur2, byte for byte.

A keyed record goes to ``(murmur2(key) & 0x7fffffff) % num_partitions``, so keys land on
the same partition numbers Kafka's Java client would pick. Adding partitions changes that
mapping for most keys (``kvlog topics alter --partitions`` warns about it).

The C accelerator (``kvlog._murmur2``) is built when a compiler is available; this module's
pure-Python ``murmur2_py`` is the reference and the fallback.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK32 = 0xFFFFFFFF


def murmur2_py(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: signed 32-bit MurmurHash2, seed 0x9747b28c."""
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    n4 = length >> 2
    if n4:
        for k in struct.unpack_from(f"<{n4}I", data):
            k = (k * _M) & _MASK32
            k ^= k >> 24
            k = (k * _M) & _MASK32
            h = ((h * _M) & _MASK32) ^ k
    rem = length & 3
    if rem:
        tail = data[n4 * 4 :]
        if rem == 3:
            h ^= tail[2] << 16
        if rem >= 2:
            h ^= tail[1] << 8
        h ^= tail[0]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key_py(key: bytes, num_partitions: int) -> int:
    if num_partitions <= 0:
        raise ValueError("num_partitions must be positive")
    return (murmur2_py(key) & 0x7FFFFFFF) % num_partitions


def group_by_partition_py(
    keys: Sequence[bytes | None], values: Sequence[Any], num_partitions: int
) -> dict[int, tuple[list[int], list[bytes | None], list[Any]]]:
    """Records grouped by partition: ``{partition: (indices, keys, values)}`` in the
    order given, partition -1 for a None key (the producer's ``send_batch``)."""
    if num_partitions <= 0:
        raise ValueError("num_partitions must be positive")
    if len(keys) != len(values):
        raise ValueError("as many keys as values are needed")
    groups: dict[int, tuple[list[int], list[bytes | None], list[Any]]] = {}
    for i, (key, value) in enumerate(zip(keys, values, strict=True)):
        partition = -1 if key is None else partition_for_key(key, num_partitions)
        group = groups.get(partition)
        if group is None:
            group = groups[partition] = ([], [], [])
        group[0].append(i)
        group[1].append(key)
        group[2].append(value)
    return groups


try:
    from ._murmur2 import group_by_partition, murmur2, partition_for_key

    ACCELERATED = True
except ImportError:  # no compiler at install time: same results, ~30x slower
    murmur2 = murmur2_py
    partition_for_key = partition_for_key_py
    group_by_partition = group_by_partition_py
    ACCELERATED = False

__all__ = [
    "ACCELERATED",
    "group_by_partition",
    "group_by_partition_py",
    "murmur2",
    "murmur2_py",
    "partition_for_key",
    "partition_for_key_py",
]
