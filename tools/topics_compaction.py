"""``kvlog topics compact TOPIC`` and the compaction part of ``kvlog topics describe``.

Both work on a local data dir (``--data-dir``, the default ``kvlog serve`` uses): the
sweeper that compacts has no socket, so a forced pass is a request file it picks up
(``kvlog.workers.compact_requests``), and a partition's dirty ratio and last compaction
are read from its log dirs' LMDB files, read-only (safe while the broker runs; the same
planning code the cleaner runs computes the ratio).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from .common import make_console, plain_table
from .topics import topics

DEFAULT_TIMEOUT_S = 120.0


def _default_data_dir() -> Path:
    from kvlog.workers.config import SERVER_SETTINGS

    return Path(SERVER_SETTINGS.default("data_dir"))


def log_dirs(data_dir: Path) -> list[Path]:
    """The log dirs of a data dir: the running nodes' (from the run file), else
    ``<data_dir>/logs/*``."""
    from kvlog.workers.data_dir import read_status

    dirs = [Path(e["log_dir"]) for e in read_status(data_dir) if e.get("log_dir")]
    if not dirs and (data_dir / "logs").is_dir():
        dirs = sorted(p for p in (data_dir / "logs").iterdir() if (p / "data.mdb").is_file())
    return [d for d in dict.fromkeys(dirs) if (d / "data.mdb").is_file()]


def compaction_status(data_dir: Path | None, desc: Any) -> list[dict[str, Any]]:
    """Per replica of each partition of a described topic in this data dir: dirty ratio,
    clean and dirty bytes, the last compaction (empty when the topic is not compacted or
    the data dir holds none of it)."""
    from kvlog.cleaner import Cleaner, TopicInfo
    from kvlog.lmdb_store import LogDir
    from kvlog.topic_config import cleanup_policies, effective_topic_config
    from kvlog.types import TopicPartition

    if "compact" not in cleanup_policies(effective_topic_config(desc.config)):
        return []
    info = TopicInfo(desc.topic_id, desc.config)
    rows = []
    for path in log_dirs(data_dir or _default_data_dir()):
        store = LogDir(path, readonly=True)
        try:
            cleaner = Cleaner(store, lambda _topic: info)
            for p in desc.partitions:
                tp = TopicPartition(desc.name, p.partition)
                if not store.has_partition(tp):
                    continue
                status = cleaner.status(tp, info)
                rows.append(
                    {
                        "partition": p.partition,
                        "log_dir": str(path),
                        "dirty_ratio": round(status.plan.dirty_ratio, 4),
                        "clean_bytes": status.plan.clean_bytes,
                        "dirty_bytes": status.plan.dirty_bytes,
                        "first_dirty_offset": status.plan.first_dirty,
                        "due": status.plan.reason,
                        "tombstones_due_ms": status.tombstone_due_ms,
                        "last_compaction": None if status.last is None else vars(status.last),
                    }
                )
        finally:
            store.close()
    return rows


def _ago(ms: int) -> str:
    seconds = max(0.0, time.time() - ms / 1000)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def print_compaction(console: Any, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    table = []
    for row in rows:
        last = row["last_compaction"]
        table.append(
            (
                str(row["partition"]),
                row["log_dir"],
                f"{row['dirty_ratio']:.2f}",
                f"{row['clean_bytes']:,} / {row['dirty_bytes']:,}",
                "never"
                if last is None
                else f"{_ago(last['finished_ms'])}: -{last['records_removed']:,} records "
                f"({last['tombstones_removed']:,} tombstones), {last['bytes_before']:,} -> "
                f"{last['bytes_after']:,} B, {last['duration_ms']} ms ({last['reason']})",
            )
        )
    columns = ("partition", "log dir", "dirty ratio", "clean / dirty bytes", "last compaction")
    console.print(plain_table(columns, table, right=("partition", "dirty ratio")))


@topics.command()
@click.argument("name")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The running broker's data dir (default: kvlog serve's).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for the sweeper's answer.",
)
@click.option("--no-wait", is_flag=True, help="Leave the request and return at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the sweeper's answer as JSON.")
def compact(name: str, data_dir: Path | None, timeout: float, no_wait: bool, as_json: bool) -> None:
    """Compact topic NAME now (every partition, every replica), whatever its dirty ratio.

    The sweeper of the broker running on --data-dir does it; records newer than
    min.compaction.lag.ms and past the high watermark stay as they are."""
    from kvlog.clock import now_ms
    from kvlog.workers import compact_requests
    from kvlog.workers.data_dir import read_status

    data_dir = data_dir or _default_data_dir()
    if not any(e.get("role") == "sweeper" for e in read_status(data_dir)):
        raise click.ClickException(
            f"no kvlog sweeper is running for data dir {data_dir.resolve()}; "
            "start the broker (kvlog serve) or pass --data-dir"
        )
    request_id = compact_requests.submit(data_dir, name, now_ms())
    if no_wait:
        click.echo(f"Compaction of {name} requested ({request_id}).")
        return
    answer = compact_requests.wait(data_dir, request_id, timeout)
    if answer is None:
        raise click.ClickException(
            f"the sweeper did not answer within {timeout:g} s; the request stays queued"
        )
    if as_json:
        click.echo(json.dumps(answer, indent=2))
    if answer.get("error"):
        raise click.ClickException(answer["error"])
    if as_json:
        return
    parts = answer.get("partitions", [])
    if not parts:
        click.echo(f"{name}: nothing to compact.")
        return
    rows = [
        (
            str(p["partition"]),
            p["log_dir"],
            f"{p['records_removed']:,}",
            f"{p['tombstones_removed']:,}",
            f"{p['bytes_before']:,} -> {p['bytes_after']:,}",
            f"{p['duration_ms']}",
        )
        for p in parts
    ]
    columns = ("partition", "log dir", "records removed", "tombstones", "bytes", "ms")
    make_console().print(plain_table(columns, rows, right=(*columns[2:], "partition")))
