"""SIGKILL a process while it compacts under load: nothing lost, nothing doubled.

A child (``_compact_child.py``) appends batches of keyed records (both formats, every
codec, some tombstones) from one thread and compacts the same partition over and over
from another (tiny maps: many passes; tiny I/O buffers: many write transactions), printing
every batch once its append was durable. The parent kills it with SIGKILL at a random
moment, many times over the same log dir, and after every kill checks what a consumer
reading from the start would see:

- offsets strictly increasing: no offset twice, no record out of place;
- every record is one that was appended, at its own offset, unchanged;
- for every key, its latest acknowledged record is there, or a later record of the key
  is (one appended just before the kill); tombstones stay (delete.retention.ms is huge);
- the partition's structure holds (log end = end of the last batch, sizes add up, every
  batch validates).

Driven by one printed seed (``KVLOG_TEST_SEED`` replays the choices, not the timing).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from _compact_child import TP, key_of, value_of
from logtest_util import THOROUGH, check_partition, long_test
from test_crash import Child

from kvlog import batch as batch_format
from kvlog.lmdb_store import LogDir

CHILD = Path(__file__).with_name("_compact_child.py")
ROUNDS = 100 if THOROUGH else 24


class CompactingChild(Child):
    def __init__(self, path: Path, seed: int, stderr_path: Path) -> None:
        self.stderr = stderr_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(path), str(seed)],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
        )
        self.buffer = b""
        self.lines = []


def verify(path: Path, acked: dict[int, tuple[bytes, bool]]) -> int:
    """What a consumer from the start sees is a compaction of what was acknowledged.
    Returns the number of records stored."""
    with LogDir(path, map_size=64 << 10) as store:
        state = check_partition(store, TP)
        with store.reader() as r:
            stored = r.read(TP, 0, 1 << 40) if state.log_end_offset else []
        for _base, value in stored:
            batch_format.validate(value)
    seen: dict[int, tuple[bytes | None, bytes | None]] = {}
    last = -1
    for base, value in stored:
        for rec in batch_format.decode(value, base):
            assert rec.offset > last, f"offset {rec.offset} after {last}: doubled or misplaced"
            last = rec.offset
            assert rec.value in (None, value_of(rec.offset)), f"record {rec.offset} changed"
            seen[rec.offset] = (rec.key, rec.value)
    for offset, (key, tombstone) in acked.items():
        if offset in seen:
            assert seen[offset] == (key, None if tombstone else value_of(offset)), offset
    latest: dict[bytes, int] = {}
    for offset, (key, _tombstone) in acked.items():
        latest[key] = max(latest.get(key, -1), offset)
    for key, offset in latest.items():
        if offset in seen:
            continue
        later = [o for o, (k, _v) in seen.items() if k == key and o > offset]
        assert later, f"the latest acknowledged record of {key!r} (offset {offset}) was lost"
    return len(seen)


@long_test
def test_sigkill_during_compaction_loses_and_doubles_nothing(tmp_path):
    fixed = os.environ.get("KVLOG_TEST_SEED")
    seed = int(fixed) if fixed else random.SystemRandom().randrange(1 << 32)
    print(f"compaction crash test seed: KVLOG_TEST_SEED={seed}")
    rng = random.Random(seed)
    path = tmp_path / "logdir"
    stderr_path = tmp_path / "children.stderr"
    acked: dict[int, tuple[bytes, bool]] = {}
    compactions = removed = 0
    child = None
    try:
        for round_no in range(ROUNDS):
            child = CompactingChild(path, rng.randrange(1 << 32), stderr_path)
            child.wait_ready(30.0)
            time.sleep(rng.uniform(0.05, 0.5))
            rc = child.kill()
            assert rc == -signal.SIGKILL, (
                f"round {round_no}: the child exited by itself (rc={rc}); "
                f"stderr: {stderr_path.read_text()[-2000:]}"
            )
            for line in child.lines:
                if "base" in line:
                    for i, (key, tomb) in enumerate(
                        zip(line["keys"], line["tombstones"], strict=True)
                    ):
                        assert line["base"] + i not in acked, "an offset acknowledged twice"
                        acked[line["base"] + i] = (key.encode(), tomb)
                elif "compacted" in line:
                    compactions += 1
                    removed += line["compacted"]
            child = None
            verify(path, acked)
        stored = verify(path, acked)
        print(
            f"{ROUNDS} kills, {len(acked)} records acknowledged, {stored} stored, "
            f"{compactions} compactions removed {removed} records"
        )
        # 40 keys: a compacted log holds a small part of what was appended (each kill lands
        # in the middle of some compaction: they run back to back).
        assert stored < len(acked) // 2, "too little was compacted to mean anything"
        assert len(acked) > 20 * ROUNDS and {k for k, _ in acked.values()} > {key_of(0)}
    finally:
        if child is not None and child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
