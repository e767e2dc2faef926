"""Allocator tuning for processes that move large record batches.

A record batch of ~1,000 small records is ~124 KB, just under glibc's 128 KiB mmap
threshold, so every copy comes from the heap. When a reader drops a megabyte of batches,
glibc returns the top of the heap to the kernel (``M_TRIM_THRESHOLD``, 128 KiB by default)
and the next read faults it back in, page by page: measured, that halves read
throughput (BENCHMARKS.md, "Where kvlog's read time goes").

Raising the trim threshold alone is not enough: any ``mallopt`` switches off glibc's
dynamic mmap threshold, so every buffer of 128 KiB or more (1 MiB produce batches, message
frames, the node's copies) would become a fresh ``mmap`` faulted in page by page, which cost
produce about 40% (BENCHMARKS.md, "A. The allocator setting"). So the mmap threshold is
fixed at 32 MiB (glibc's maximum on 64-bit) as well: buffers up to that come from the heap
and are reused.

kvlog's own processes (every server process, pool workers, the ``kvlog`` command) call
:func:`tune_allocator` at start; a program embedding the log may call it itself. Importing
kvlog never changes the allocator, and a process started with glibc's own settings in its
environment (``MALLOC_TRIM_THRESHOLD_`` and the like, or ``glibc.malloc`` tunables) keeps
them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
DEFAULT_TRIM_THRESHOLD = 256 << 20
DEFAULT_MMAP_THRESHOLD = 32 << 20  # HEAP_MAX_SIZE / 2 on 64-bit glibc: the largest accepted


_GLIBC_THRESHOLD_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def _configured_by_environment() -> bool:
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return True
    return any(name in os.environ for name in _GLIBC_THRESHOLD_VARIABLES)


def tune_allocator(
    trim_threshold: int = DEFAULT_TRIM_THRESHOLD,
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
) -> bool:
    """Serve buffers up to ``mmap_threshold`` bytes from the heap and keep up to
    ``trim_threshold`` bytes of freed heap instead of returning it to the kernel (glibc
    only; elsewhere, or when the environment already configures glibc's allocator, a
    no-op). Returns whether both settings took."""
    if not sys.platform.startswith("linux") or _configured_by_environment():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_set = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold))
    trim_set = bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    return mmap_set and trim_set
