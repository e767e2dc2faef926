"""``kvlog perf log``: throughput of the embedded log against the raw LMDB ceiling.

One run measures, on the same pre-built record batches (building is not timed):

- kvlog write: ``LogDir.write`` appends into a fresh log dir, one durable (fsync'd)
  transaction per ``--batches-per-txn`` batches;
- raw LMDB write: a plain ``lmdb`` environment opened with the same sync flags gets the
  same batch bytes under the same 8-byte big-endian keys in the same transaction grouping
  (``putmulti(append=True)``). The writers take turns, one transaction each (the order
  rotates), so all see the same disk and page-cache conditions; each figure is the sum
  of its own transactions' times;
- kvlog read: ``ReadTxn.read`` from the first appended offset in 1 MiB chunks, one read
  transaction per chunk as a fetch would do; raw LMDB read: one cursor pass copying every
  value to ``bytes``. Both run ``READ_ROUNDS`` times, alternating; the median is reported;
- kvlog read+decode_raw / read+decode: the kvlog read again, decoding every record into
  lists (``decode_raw``) or ``Record`` objects (``decode``), once each.

``--preload N`` first stores N records in both environments (untimed, large
transactions), then times the append there; an empty kvlog log dir and an empty raw
environment take the same turns, so "append with N stored vs. an empty log" is one
paired measurement, not two runs minutes apart on a machine whose disk speed drifts.

MB are 10^6 bytes of stored batches (header + CBOR records), the same bytes for kvlog
and raw LMDB.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import click
import lmdb
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kvlog.batch import BatchBuilder, decode, decode_raw, next_offset, now_ms, read_header
from kvlog.codecs import Codec
from kvlog.lmdb_store import LogDir
from kvlog.log import WriteTxn
from kvlog.types import TopicPartition

TP = TopicPartition("perf", 0)
READ_MAX_BYTES = 1 << 20
READ_ROUNDS = 3
PRELOAD_BATCHES_PER_TXN = 64

Tick = Callable[[int], None]


@dataclass
class Phase:
    """One timed phase: what went through and how long it took."""

    name: str
    records: int
    nbytes: int
    seconds: float
    txn_seconds: list[float] = field(default_factory=list)
    minor_faults: int = 0

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6

    def txn_ms(self, q: float) -> float | None:
        """The ``q`` quantile of transaction times in ms (write phases only)."""
        if not self.txn_seconds:
            return None
        ordered = sorted(self.txn_seconds)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "records": self.records,
            "bytes": self.nbytes,
            "seconds": round(self.seconds, 6),
            "records_per_s": round(self.records_per_s, 1),
            "mb_per_s": round(self.mb_per_s, 2),
            "minor_faults": self.minor_faults,
        }
        if self.txn_seconds:
            out["txns"] = len(self.txn_seconds)
            out["txn_ms_p50"] = round(statistics.median(self.txn_seconds) * 1e3, 4)
            out["txn_ms_p99"] = round(self.txn_ms(0.99) or 0.0, 4)
            out["txn_ms_max"] = round(max(self.txn_seconds) * 1e3, 4)
        return out


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# -- building (untimed) -------------------------------------------------------------------


def build_batches(
    records: int, record_size: int, key_size: int, batch: int, codec: Codec, tick: Tick
) -> list[bytes]:
    """Record batches of random keys and values, ``batch`` records each (the last fewer)."""
    stride = key_size + record_size
    out = []
    ts = now_ms()
    for start in range(0, records, batch):
        n = min(batch, records - start)
        blob = os.urandom(n * stride)
        builder = BatchBuilder(codec)
        for off in range(0, n * stride, stride):
            key = blob[off : off + key_size] if key_size else None
            builder.append(blob[off + key_size : off + stride], key, None, ts)
        out.append(builder.build())
        tick(n)
    return out


def record_count(batch: bytes) -> int:
    return read_header(batch).last_offset_delta + 1


def groups_of(batches: Sequence[bytes], size: int) -> list[Sequence[bytes]]:
    return [batches[i : i + size] for i in range(0, len(batches), size)]


def preload_groups(batches: Sequence[bytes], records: int) -> Iterator[list[bytes]]:
    """At least ``records`` records, cycling through ``batches``, in large groups."""
    source = itertools.cycle(batches)
    stored = 0
    while stored < records:
        group: list[bytes] = []
        while stored < records and len(group) < PRELOAD_BATCHES_PER_TXN:
            b = next(source)
            group.append(b)
            stored += record_count(b)
        yield group


# -- one transaction each ------------------------------------------------------------------


def _append(batches: Sequence[bytes], w: WriteTxn) -> list[int]:
    return w.append(TP, batches)


def kvlog_txn(store: LogDir, group: Sequence[bytes]) -> None:
    """What a node's group commit does: validate, append, update offsets, fsync."""
    store.write(partial(_append, group))


class RawLog:
    """The ceiling: a plain LMDB environment with LogDir's durability flags, one named
    database, the same 8-byte big-endian base-offset keys; no kvlog code."""

    def __init__(self, path: Path, map_size: int) -> None:
        path.mkdir(parents=True)
        self.env = lmdb.open(
            str(path), map_size=map_size, max_dbs=2, sync=True, metasync=True, subdir=True
        )
        self.db = self.env.open_db(b"p/perf/0")
        self.next_offset = 0

    def append(self, group: Sequence[bytes], counts: Sequence[int]) -> None:
        """One durable transaction: ``putmulti(append=True)`` of the batches."""
        offset = self.next_offset
        items = []
        for data, n in zip(group, counts, strict=True):
            items.append((offset.to_bytes(8, "big"), data))
            offset += n
        with self.env.begin(write=True, db=self.db) as txn:
            txn.cursor().putmulti(items, append=True)
        self.next_offset = offset

    def read(self, first_offset: int, records: int, tick: Tick) -> Phase:
        """One read transaction, one cursor pass from ``first_offset``, each value copied."""
        nbytes = 0
        faults = _minor_faults()
        t0 = time.perf_counter()
        with self.env.begin(db=self.db, buffers=True) as txn:
            cursor = txn.cursor()
            if cursor.set_range(first_offset.to_bytes(8, "big")):
                for _key, value in cursor.iternext():
                    nbytes += len(bytes(value))
        elapsed = time.perf_counter() - t0
        faults = _minor_faults() - faults
        tick(1)
        return Phase("raw LMDB read", records, nbytes, elapsed, minor_faults=faults)

    def close(self) -> None:
        self.env.close()


Appender = Callable[[Sequence[bytes], Sequence[int]], None]


def write_interleaved(
    writers: dict[str, tuple[str, Appender]],
    groups: Sequence[Sequence[bytes]],
    counts: Sequence[Sequence[int]],
    tick: Tick,
) -> dict[str, Phase]:
    """Each writer appends each group in its own durable transaction, taking turns (the
    order rotates every group), so all see the same disk and page-cache conditions; a
    writer's figure is the sum of its own transactions' times."""
    keys = list(writers)
    times: dict[str, list[float]] = {k: [] for k in keys}
    faults = dict.fromkeys(keys, 0)
    clock = time.perf_counter
    for i, (group, group_counts) in enumerate(zip(groups, counts, strict=True)):
        shift = i % len(keys)
        for key in keys[shift:] + keys[:shift]:
            f0 = _minor_faults()
            t0 = clock()
            writers[key][1](group, group_counts)
            times[key].append(clock() - t0)
            faults[key] += _minor_faults() - f0
        tick(len(group))
    records = sum(map(sum, counts))
    nbytes = sum(len(b) for g in groups for b in g)
    return {
        key: Phase(name, records, nbytes, sum(times[key]), times[key], faults[key])
        for key, (name, _) in writers.items()
    }


# -- reads ----------------------------------------------------------------------------------


def kvlog_read(
    store: LogDir,
    start_offset: int,
    name: str,
    decoder: Callable[[bytes, int], int] | None,
    tick: Tick,
) -> Phase:
    """Read from ``start_offset`` to the end in 1 MiB chunks, one read txn per chunk."""
    with store.reader() as r:
        end = r.offsets(TP).log_end_offset
    offset = start_offset
    nbytes = records = 0
    faults = _minor_faults()
    t0 = time.perf_counter()
    while offset < end:
        with store.reader() as r:
            chunk = r.read(TP, offset, READ_MAX_BYTES)
        for base, data in chunk:
            nbytes += len(data)
            if decoder is not None:
                records += decoder(data, base)
        base, data = chunk[-1]
        offset = next_offset(base, data)
        tick(len(chunk))
    elapsed = time.perf_counter() - t0
    faults = _minor_faults() - faults
    if decoder is None:
        records = end - start_offset
    return Phase(name, records, nbytes, elapsed, minor_faults=faults)


def _decode(data: bytes, base: int) -> int:
    return len(decode(data, base))


def _decode_raw(data: bytes, base: int) -> int:
    return len(decode_raw(data)[1].values)


def _median(phases: list[Phase]) -> Phase:
    return sorted(phases, key=lambda p: p.seconds)[len(phases) // 2]


# -- a run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    records: int
    record_size: int
    key_size: int
    batch: int
    batches_per_txn: int
    codec: Codec
    preload: int


@dataclass
class Report:
    config: Config
    filesystem: str
    batch_bytes: int
    total_bytes: int
    preloaded: int
    preload_seconds: float
    phases: dict[str, Phase]

    def ratio(self, what: str) -> float:
        """kvlog throughput as a share of raw LMDB's, for 'write' or 'read'."""
        return self.phases[f"raw_{what}"].seconds / self.phases[f"kvlog_{what}"].seconds

    def ratios(self) -> dict[str, float]:
        out = {"write": self.ratio("write"), "read": self.ratio("read")}
        p = self.phases
        if "kvlog_write_empty" in p:
            # append throughput with the preloaded records stored, as a share of an empty log's
            out["kvlog_stored_vs_empty"] = p["kvlog_write_empty"].seconds / p["kvlog_write"].seconds
            out["raw_stored_vs_empty"] = p["raw_write_empty"].seconds / p["raw_write"].seconds
        return out

    def rows(self) -> list[tuple[Phase, Phase | None]]:
        p = self.phases
        rows = [(p["kvlog_write"], p["raw_write"]), (p["raw_write"], None)]
        if "kvlog_write_empty" in p:
            rows += [(p["kvlog_write_empty"], p["raw_write_empty"]), (p["raw_write_empty"], None)]
        return [
            *rows,
            (p["kvlog_read"], p["raw_read"]),
            (p["raw_read"], None),
            (p["kvlog_read_decode_raw"], None),
            (p["kvlog_read_decode"], None),
        ]

    def as_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "config": {
                "records": c.records,
                "record_size": c.record_size,
                "key_size": c.key_size,
                "batch": c.batch,
                "batches_per_txn": c.batches_per_txn,
                "codec": c.codec.name.lower(),
                "preload": c.preload,
                "read_max_bytes": READ_MAX_BYTES,
                "read_rounds": READ_ROUNDS,
            },
            "batch_bytes": self.batch_bytes,
            "total_bytes": self.total_bytes,
            "preloaded_records": self.preloaded,
            "preload_seconds": round(self.preload_seconds, 3),
            "machine": {
                "python": platform.python_version(),
                "lmdb": ".".join(map(str, lmdb.version())),
                "py_lmdb": _version_of("lmdb"),
                "cpus": os.cpu_count(),
                "filesystem": self.filesystem,
                # glibc malloc settings change the read figures (see BENCHMARKS.md)
                "allocator_env": {
                    k: v
                    for k, v in os.environ.items()
                    if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"
                },
            },
            **{name: phase.as_dict() for name, phase in self.phases.items()},
            "ratios": {k: round(v, 4) for k, v in self.ratios().items()},
        }


def run(config: Config, root: Path, bars: Bars) -> Report:
    """Build the batches, preload, then time every phase in ``root`` (must be empty)."""
    c = config
    with bars.phase("building batches", c.records) as tick:
        batches = build_batches(c.records, c.record_size, c.key_size, c.batch, c.codec, tick)
    groups = groups_of(batches, c.batches_per_txn)
    counts = [[record_count(b) for b in g] for g in groups]
    total_bytes = sum(map(len, batches))
    per_record = total_bytes / c.records
    map_size = max(256 << 20, int(2 * per_record * (c.records + c.preload)) + (64 << 20))

    store = LogDir(root / "kvlog")  # LogDir's defaults: its map grows as a user's would
    raw = RawLog(root / "raw", map_size)
    # With --preload, an empty kvlog log and an empty raw environment take the same turns,
    # so "append with N stored vs. an empty log" is measured under the same conditions.
    empty = LogDir(root / "kvlog-empty") if c.preload else None
    raw_empty = RawLog(root / "raw-empty", map_size) if c.preload else None
    phases: dict[str, Phase] = {}
    try:
        store.create_partition(TP)
        preloaded = 0
        t0 = time.perf_counter()
        with bars.phase("preloading", c.preload) as tick:
            for group in preload_groups(batches, c.preload):
                n = [record_count(b) for b in group]
                kvlog_txn(store, group)
                raw.append(group, n)
                preloaded += sum(n)
                tick(sum(n))
        preload_seconds = time.perf_counter() - t0
        with store.reader() as r:
            start = r.offsets(TP).log_end_offset
        assert start == preloaded == raw.next_offset, (start, preloaded, raw.next_offset)

        writers: dict[str, tuple[str, Appender]] = {
            "kvlog_write": ("kvlog write", lambda g, _n: kvlog_txn(store, g)),
            "raw_write": ("raw LMDB write", raw.append),
        }
        if empty is not None and raw_empty is not None:
            empty.create_partition(TP)
            writers["kvlog_write_empty"] = ("kvlog write, empty", lambda g, _n: kvlog_txn(empty, g))
            writers["raw_write_empty"] = ("raw LMDB write, empty", raw_empty.append)
        nb = len(batches)
        with bars.phase("writing", nb) as tick:
            phases.update(write_interleaved(writers, groups, counts, tick))

        kv_reads, raw_reads = [], []
        with bars.phase("reading (kvlog, raw)", READ_ROUNDS * (nb + 1)) as tick:
            for _round in range(READ_ROUNDS):
                kv_reads.append(kvlog_read(store, start, "kvlog read", None, tick))
                raw_reads.append(raw.read(start, c.records, tick))
        phases["kvlog_read"], phases["raw_read"] = _median(kv_reads), _median(raw_reads)
        for name, decoder in (("decode_raw", _decode_raw), ("decode", _decode)):
            with bars.phase(f"reading+{name}", nb) as tick:
                phases[f"kvlog_read_{name}"] = kvlog_read(
                    store, start, f"kvlog read+{name}", decoder, tick
                )
    finally:
        for log in (store, raw, empty, raw_empty):
            if log is not None:
                log.close()

    for phase in phases.values():
        if phase.records != c.records or phase.nbytes != total_bytes:
            raise click.ClickException(
                f"{phase.name} moved {phase.records} records / {phase.nbytes} bytes, "
                f"expected {c.records} / {total_bytes}"
            )
    return Report(
        config,
        filesystem_of(root),
        len(batches[0]),
        total_bytes,
        preloaded,
        preload_seconds,
        phases,
    )


def _version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# -- presentation ---------------------------------------------------------------------------


class Bars:
    """Rich progress bars when stdout is a terminal; no-ops otherwise."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self._progress = (
            Progress(
                TextColumn("{task.description:<22}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            if enabled
            else None
        )

    def __enter__(self) -> Bars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    @contextmanager
    def phase(self, description: str, total: int) -> Iterator[Tick]:
        progress = self._progress
        if progress is None or not total:
            yield _no_tick
            return
        task = progress.add_task(description, total=total)
        yield partial(progress.advance, task)
        progress.remove_task(task)


def _no_tick(_n: int) -> None:
    pass


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts), or '?'."""
    target = str(path.resolve())
    best, fstype = "", "?"
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) < 3 or len(parts[1]) <= len(best):
                    continue
                mount = parts[1]
                if target == mount or target.startswith(mount.rstrip("/") + "/"):
                    best, fstype = mount, parts[2]
    except OSError:
        pass
    return fstype


def _table(rows: list[tuple[Phase, Phase | None]]) -> Table:
    table = Table(title="kvlog perf log", box=box.SIMPLE_HEAD)
    for column in ("phase", "s", "records/s", "MB/s", "txn ms\np50/p99", "vs raw\nLMDB"):
        table.add_column(column, justify="left" if column == "phase" else "right", no_wrap=True)
    for phase, raw in rows:
        p50, p99 = phase.txn_ms(0.5), phase.txn_ms(0.99)
        table.add_row(
            phase.name,
            f"{phase.seconds:.3f}",
            f"{phase.records_per_s:,.0f}",
            f"{phase.mb_per_s:,.1f}",
            "" if p50 is None or p99 is None else f"{p50:.2f}/{p99:.2f}",
            "" if raw is None else f"{raw.seconds / phase.seconds:.0%}",
        )
    return table


# -- the command ----------------------------------------------------------------------------


@click.command("log")
@click.option("--records", type=click.IntRange(min=1), default=1_000_000, show_default=True)
@click.option(
    "--record-size",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Value size in bytes.",
)
@click.option(
    "--key-size",
    type=click.IntRange(min=0),
    default=16,
    show_default=True,
    help="Key size in bytes (0: no key).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Records per batch.",
)
@click.option(
    "--batches-per-txn",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Batches per durable (fsync'd) write transaction.",
)
@click.option(
    "--codec",
    type=click.Choice([c.name.lower() for c in Codec]),
    default="none",
    show_default=True,
    help="Batch compression (values are random bytes: expect no gain).",
)
@click.option(
    "--preload",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Records to store first (untimed, large transactions) before the timed append.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Parent dir for the kvlog/ and raw/ environments (must not hold them yet; kept "
    "after the run). Default: a temporary dir, removed after.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with all figures.")
def perf_log(
    records: int,
    record_size: int,
    key_size: int,
    batch: int,
    batches_per_txn: int,
    codec: str,
    preload: int,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Append and read throughput of the embedded log vs. raw LMDB in the same run."""
    config = Config(
        records, record_size, key_size, batch, batches_per_txn, Codec.parse(codec), preload
    )
    console = Console(highlight=False)
    if data_dir is not None:
        for sub in ("kvlog", "raw"):
            if (data_dir / sub).exists():
                raise click.UsageError(f"{data_dir / sub} exists; give an empty --data-dir")
        data_dir.mkdir(parents=True, exist_ok=True)
        root, temporary = data_dir, False
    else:
        root, temporary = Path(tempfile.mkdtemp(prefix="kvlog-perf-")), True
    try:
        with Bars(console, sys.stdout.isatty() and not as_json) as bars:
            report = run(config, root, bars)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)

    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    console.print(
        f"{records:,} records ({report.total_bytes / 1e6:,.1f} MB): {key_size} B keys, "
        f"{record_size} B values, {batch} records/batch ({report.batch_bytes:,} B), "
        f"{batches_per_txn} batch(es) per fsync'd txn, codec {codec}; "
        f"{report.preloaded:,} records preloaded; data dir {root} ({report.filesystem}"
        f"{', removed after' if temporary else ''})"
    )
    console.print(_table(report.rows()))
    ratios = report.ratios()
    console.print(
        f"kvlog / raw LMDB: write {ratios['write']:.0%}, read {ratios['read']:.0%} "
        f"(reads: median of {READ_ROUNDS})"
    )
    if "kvlog_stored_vs_empty" in ratios:
        console.print(
            f"append with {report.preloaded:,} records stored / empty log: "
            f"kvlog {ratios['kvlog_stored_vs_empty']:.0%}, "
            f"raw LMDB {ratios['raw_stored_vs_empty']:.0%}"
        )
