"""tune_allocator: buffers of a megabyte come from the heap after it, and a process whose
environment configures glibc's allocator keeps that configuration."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only"),
]

# Counts glibc's mmapped chunks (mallinfo2().hblks, glibc >= 2.33) around a 1 MiB allocation,
# before and after tune_allocator().
_CHILD = r"""
import ctypes, ctypes.util, sys
import kvlog

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
if not hasattr(libc, "mallinfo2"):
    print("no-mallinfo2"); sys.exit(0)
libc.mallinfo2.restype = MallInfo2

def mmapped_for_one_mib():
    before = libc.mallinfo2().hblks
    buffer = bytearray(1 << 20)
    during = libc.mallinfo2().hblks
    del buffer
    return during - before

untuned = mmapped_for_one_mib()
took = kvlog.tune_allocator()
print(untuned, int(took), mmapped_for_one_mib())
"""


def _run(extra_env: dict[str, str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    env.update(extra_env)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    if out == ["no-mallinfo2"]:
        pytest.skip("this libc has no mallinfo2")
    return out


def test_after_tuning_a_megabyte_buffer_comes_from_the_heap() -> None:
    untuned, took, tuned = _run({})
    assert untuned == "1", "glibc's default should mmap a 1 MiB buffer (the test's premise)"
    assert took == "1"
    assert tuned == "0", "after tune_allocator a 1 MiB buffer should come from the heap"


def test_an_allocator_configured_by_the_environment_is_left_alone() -> None:
    untuned, took, tuned = _run({"MALLOC_MMAP_THRESHOLD_": str(64 << 10)})
    assert (untuned, took, tuned) == ("1", "0", "1")
