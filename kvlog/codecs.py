"""Compression codecs for record-batch payloads (cramjam covers all four)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import cramjam

from .errors import InvalidConfigError, UnsupportedCompressionTypeError


class Codec(enum.IntEnum):
    """Kafka's compression.type ids, stored in the low 3 bits of a batch's attributes."""

    NONE = 0
    GZIP = 1
    SNAPPY = 2
    LZ4 = 3
    ZSTD = 4

    @classmethod
    def parse(cls, value: str | int | Codec | None) -> Codec:
        """Accept Kafka's compression.type spellings ('none', 'gzip', ...) or an id."""
        if value is None:
            return cls.NONE
        if isinstance(value, Codec):
            return value
        if isinstance(value, int):
            try:
                return cls(value)
            except ValueError:
                raise UnsupportedCompressionTypeError(
                    f"unknown compression codec id {value}; use 0-4 (none, gzip, snappy, lz4, zstd)"
                ) from None
        try:
            return cls[str(value).strip().upper()]
        except KeyError:
            raise InvalidConfigError(
                f"compression.type={value!r} is not one of none, gzip, snappy, lz4, zstd"
            ) from None


def _block(fn: Callable[..., object]) -> Callable[[bytes], bytes]:
    def run(data: bytes) -> bytes:
        return bytes(fn(data))  # cramjam returns its own Buffer type

    return run


# Standard, interoperable formats (PROTOCOL.md): gzip (RFC 1952), raw snappy, LZ4 frame,
# zstd frame. Levels favour speed: batches are compressed on the producer's I/O path
# (LZ4's default level runs at ~130 MB/s, level 1 at ~1.9 GB/s).
_COMPRESS: dict[Codec, Callable[[bytes], bytes]] = {
    Codec.GZIP: lambda data: bytes(cramjam.gzip.compress(data, level=1)),
    Codec.SNAPPY: _block(cramjam.snappy.compress_raw),
    Codec.LZ4: lambda data: bytes(cramjam.lz4.compress(data, level=1)),
    Codec.ZSTD: lambda data: bytes(cramjam.zstd.compress(data, level=1)),
}
_DECOMPRESS: dict[Codec, Callable[[bytes], bytes]] = {
    Codec.GZIP: _block(cramjam.gzip.decompress),
    Codec.SNAPPY: _block(cramjam.snappy.decompress_raw),
    Codec.LZ4: _block(cramjam.lz4.decompress),
    Codec.ZSTD: _block(cramjam.zstd.decompress),
}


def compress(codec: Codec, data: bytes) -> bytes:
    if codec is Codec.NONE:
        return data
    return _COMPRESS[codec](data)


def decompress(codec: Codec, data: bytes | memoryview) -> bytes | memoryview:
    if codec is Codec.NONE:
        return data
    return _DECOMPRESS[codec](data)


# Decompression into a caller's buffer: the result may not outgrow it.
_DECOMPRESS_INTO: dict[Codec, Callable[[Any, Any], int]] = {
    Codec.GZIP: cramjam.gzip.decompress_into,
    Codec.SNAPPY: cramjam.snappy.decompress_raw_into,
    Codec.LZ4: cramjam.lz4.decompress_into,
    Codec.ZSTD: cramjam.zstd.decompress_into,
}


def decompress_within(codec: Codec, data: bytes | memoryview, out: memoryview) -> memoryview:
    """``data`` decompressed into ``out``: the view of ``out`` it fills. ValueError when it
    does not decompress or would not fit: for a server that must not let a small batch
    take unbounded memory (a decompression bomb: zstd reaches ~32,000 to 1)."""
    if codec is Codec.NONE:
        if len(data) > len(out):
            raise ValueError(f"{len(data)} bytes do not fit in {len(out)}")
        return memoryview(data)
    if codec is Codec.SNAPPY and cramjam.snappy.decompress_raw_len(data) > len(out):
        raise ValueError(f"snappy data decompresses to more than {len(out)} bytes")
    try:
        size = _DECOMPRESS_INTO[codec](data, out)
    except cramjam.DecompressionError as exc:
        # Also what a full buffer raises (gzip, lz4 and zstd do not say their size first).
        raise ValueError(f"does not decompress within {len(out)} bytes ({exc})") from exc
    if size >= len(out):
        # Exactly full: it may have been cut there.
        raise ValueError(f"decompresses to {len(out)} bytes or more")
    return out[:size]
