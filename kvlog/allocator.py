"""Allocator tuning for processes that move large record batches.

A record batch of ~1,000 small records is ~124 KB, just under glibc's 128 KiB mmap
threshold, so every copy comes from the heap. When a reader drops a megabyte of batches,
glibc returns the top of the heap to the kernel (``M_TRIM_THRESHOLD``, 128 KiB by default)
and the next read faults it back in, page by page: measured, that halves read
throughput (BENCHMARKS.md, "Where kvlog's read time goes"). kvlog's own processes (every
server process, pool workers, the ``kvlog`` command) raise the trim threshold at start;
a program embedding the log may call :func:`tune_allocator` itself. Importing kvlog never
changes the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
DEFAULT_TRIM_THRESHOLD = 256 << 20


def tune_allocator(trim_threshold: int = DEFAULT_TRIM_THRESHOLD) -> bool:
    """Keep up to ``trim_threshold`` bytes of freed heap instead of returning it to the
    kernel (glibc only; elsewhere a no-op). Returns whether the setting took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
