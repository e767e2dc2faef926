"""The client I/O thread's wake-up (ipc/rpc.py ``IOThread.wake``).

``wake()`` writes one byte to the loop's pipe unless a wake is already pending (a flag,
so a busy producer does not write a byte per record). The loop must clear that flag only
after it drained the pipe: cleared before, a ``wake()`` landing between the clear and the
read has its byte drained with the flag left set, no later ``wake()`` writes again, and
every later ``send()`` waits for the loop's 100 ms tick (seen as an e2e p99 of 100 ms).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from kvlog.ipc import rpc
from kvlog.ipc.rpc import IOThread

TICK_S = 0.1  # the loop's longest poll (IOThread._run)


class _Driver:
    """Counts its turns; asks for no turn of its own (the loop's tick still runs it)."""

    def __init__(self) -> None:
        self.turns = 0
        self.turned = threading.Condition()

    def run(self, io: Any, now: float) -> float | None:
        with self.turned:
            self.turns += 1
            self.turned.notify_all()
        return now + 3600.0

    def wait_turn_after(self, seen: int, timeout_s: float) -> bool:
        with self.turned:
            return self.turned.wait_for(lambda: self.turns > seen, timeout_s)


def test_a_wake_landing_while_the_loop_drains_its_pipe_is_not_lost(monkeypatch: Any) -> None:
    driver = _Driver()
    io = IOThread("wake-test", driver=driver)
    real_read = os.read
    raced = threading.Event()
    try:
        # The race, made certain: the first time the loop drains its pipe, another
        # thread's wake() lands just before the read.
        def read(fd: int, n: int) -> bytes:
            if fd == io._wake_r and not raced.is_set():
                raced.set()
                io.wake()
            return real_read(fd, n)

        monkeypatch.setattr(rpc.os, "read", read)
        seen = driver.turns
        io.wake()
        assert driver.wait_turn_after(seen, 5.0)
        assert raced.wait(5.0)
        # Each wake right after a turn: a lost wake-up waits for the next tick (~100 ms).
        delays = []
        for _ in range(3):
            seen = driver.turns
            assert driver.wait_turn_after(seen, 5.0)  # the tick, or the wake above
            seen = driver.turns
            started = time.monotonic()
            io.wake()
            assert driver.wait_turn_after(seen, 5.0)
            delays.append(time.monotonic() - started)
        assert min(delays) < TICK_S / 2, f"wake() -> turn took {delays} s: the wake-up was lost"
    finally:
        monkeypatch.setattr(rpc.os, "read", real_read)
        io.close()
