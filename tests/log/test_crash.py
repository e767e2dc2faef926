"""SIGKILL a writer process at random moments; no acknowledged batch may be lost.

A child (``_log_child.py writer``) appends sequence-numbered batches to one partition,
mirrors each sequence number to a second partition and an ``acks`` table row in the same
transaction, and prints every batch once ``LogDir.write`` has returned. The parent kills
it with SIGKILL at a random moment, many times over the same log dir (a fresh child
continues where the log ends), sometimes while the parent itself keeps the environment
open and reads. Then every acknowledged batch must be at its acknowledged offset, intact
and in order, and nothing half-written may be visible.

The run is driven by one printed seed; ``KVLOG_TEST_SEED=<seed>`` replays its choices
(child seeds, delays, which rounds observe), though not the scheduler's exact timing.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _log_child import ACKS_TABLE, MAIN, MIRROR, SEQ, seq_of
from logtest_util import THOROUGH, check_partition, long_test

from kvlog.batch import decode
from kvlog.lmdb_store import LogDir

CHILD = Path(__file__).with_name("_log_child.py")

ROUNDS = 200 if THOROUGH else 30
STARTUP_TIMEOUT_S = 30.0


def _seed() -> int:
    fixed = os.environ.get("KVLOG_TEST_SEED")
    seed = int(fixed) if fixed else random.SystemRandom().randrange(1 << 32)
    print(f"crash test seed: KVLOG_TEST_SEED={seed}")
    return seed


class Child:
    """One writer process and the lines it printed (complete lines only)."""

    def __init__(self, path: Path, seed: int, stderr_path: Path) -> None:
        self.stderr = stderr_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), "writer", str(path), str(seed)],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
        )
        self.buffer = b""
        self.lines: list[dict[str, Any]] = []

    def _take(self, chunk: bytes) -> None:
        self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\n")
        self.lines.extend(json.loads(line) for line in complete)

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while not self.lines:
            left = deadline - time.monotonic()
            assert left > 0, "the writer did not start in time"
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 1 << 16)
                assert chunk, f"the writer exited early (rc={self.proc.wait()})"
                self._take(chunk)
        return self.lines[0]

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait(timeout=30)
        for chunk in iter(lambda: self.proc.stdout.read(1 << 16), b""):
            self._take(chunk)  # a torn last line stays in the buffer: not acknowledged
        self.proc.stdout.close()
        self.stderr.close()
        return rc


def verify(store: LogDir, acked: dict[int, tuple[int, int]]) -> int:
    """Everything acknowledged is there; the log is whole. Returns the number of batches."""
    main_state = check_partition(store, MAIN)
    mirror_state = check_partition(store, MIRROR)
    with store.reader() as r:
        stored = r.read(MAIN, 0, 1 << 62) if main_state.log_end_offset else []
        mirror = (
            r.read(MIRROR, mirror_state.log_start_offset, 1 << 62)
            if mirror_state.log_end_offset > mirror_state.log_start_offset
            else []
        )
        rows = {SEQ.unpack(k)[0]: SEQ.unpack(v)[0] for k, v in r.items(ACKS_TABLE)}

    # MAIN: batch n carries sequence n, contiguous offsets from 0, nothing torn.
    assert main_state.log_start_offset == 0
    next_offset = 0
    for n, (base, batch) in enumerate(stored):
        assert base == next_offset, f"gap or overlap before offset {base}"
        assert seq_of(batch, base) == n, f"batch at {base} is not sequence {n}"
        next_offset = base + len(decode(batch, base))
    assert next_offset == main_state.log_end_offset == main_state.high_watermark

    for seq, (base, count) in acked.items():
        assert seq < len(stored), f"acknowledged sequence {seq} (offset {base}) was lost"
        got_base, batch = stored[seq]
        assert got_base == base, f"sequence {seq} acknowledged at {base}, stored at {got_base}"
        assert len(decode(batch, base)) == count

    # Written in the same transactions: the acks table and the mirror agree with MAIN.
    assert rows == {n: base for n, (base, _) in enumerate(stored)}
    if stored:
        assert mirror_state.log_end_offset == len(stored)
        assert [seq_of(b, base) for base, b in mirror] == [base for base, _ in mirror]
        assert mirror[-1][0] == len(stored) - 1
    else:
        assert mirror_state.log_end_offset == 0
    return len(stored)


@long_test
def test_sigkill_never_loses_an_acknowledged_batch(tmp_path):
    seed = _seed()
    rng = random.Random(seed)
    path = tmp_path / "logdir"
    stderr_path = tmp_path / "children.stderr"
    acked: dict[int, tuple[int, int]] = {}
    observer: LogDir | None = None
    child: Child | None = None
    try:
        for round_no in range(ROUNDS):
            # Half the rounds, this process keeps the environment open across the kill
            # (as a reader process would) and reads while the child writes.
            if round_no % 2 and observer is None and path.exists():
                observer = LogDir(path, map_size=64 << 10)
            elif not round_no % 2 and observer is not None:
                observer.close()
                observer = None

            child = Child(path, rng.randrange(1 << 32), stderr_path)
            if rng.random() < 0.2:
                # Kill somewhere in start-up: imports, opening, recovery, first writes.
                time.sleep(rng.uniform(0, 0.4))
            else:
                ready = child.wait_ready(STARTUP_TIMEOUT_S)
                assert ready["ready"] >= len(acked) and (
                    not acked or ready["ready"] > max(acked)
                ), f"round {round_no}: the writer restarts at {ready} after acks {max(acked)}"
                if observer is not None:
                    with observer.reader() as r:
                        r.offsets(MAIN)  # reads while the child writes (and grows the map)
                time.sleep(rng.uniform(0, 0.12))
            rc = child.kill()
            assert rc == -signal.SIGKILL, (
                f"round {round_no}: the writer exited by itself (rc={rc}); "
                f"stderr: {stderr_path.read_text()[-2000:]}"
            )
            for line in child.lines:
                if "seq" in line:
                    assert line["seq"] not in acked, f"sequence {line['seq']} acknowledged twice"
                    acked[line["seq"]] = (line["base"], line["count"])
            child = None
            if observer is not None:
                verify(observer, acked)

        if observer is not None:
            observer.close()
            observer = None
        with LogDir(path, map_size=64 << 10) as store:
            stored = verify(store, acked)
        print(f"{ROUNDS} kills, {len(acked)} batches acknowledged, {stored} stored")
        assert len(acked) > ROUNDS, "too few acknowledged batches to mean anything"
        assert stored - len(acked) <= ROUNDS  # at most one unacknowledged write per kill
    finally:
        if child is not None and child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
        if observer is not None:
            observer.close()
