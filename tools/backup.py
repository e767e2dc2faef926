"""``kvlog backup``: a consistent, compacted copy of a data dir, taken while its broker
runs (kvlog/backup.py says how), into a new directory a broker starts on as it is.

    kvlog backup --data-dir /var/lib/kvlog --to /backups/kvlog-2024-05-01
    kvlog serve --data-dir /backups/kvlog-2024-05-01     # restore: a broker on the copy
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import Command, err


@click.command(cls=Command)
@click.option(
    "--data-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="The data dir to copy (its broker may be running).",
)
@click.option(
    "--to",
    "target",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="A new (or empty) directory for the copy.",
)
@click.option(
    "--log-dir",
    "log_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A log dir to copy (repeatable; default: those the running broker names in "
    "run/processes.json, else DATA_DIR/logs/*).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the copy's manifest as JSON.")
def backup(data_dir: Path, target: Path, log_dirs: tuple[Path, ...], as_json: bool) -> None:
    """Copy every LMDB environment of a data dir (LMDB's copy with compaction) into a new
    directory laid out as a data dir: the metadata first, then each log dir, so every
    record acknowledged before the backup began is in the copy. Restore by starting a
    broker on the copy (the command is printed at the end)."""
    from kvlog.backup import backup as copy_data_dir

    report = copy_data_dir(
        data_dir, target, list(log_dirs) or None, progress=None if as_json else err
    )
    if as_json:
        click.echo(json.dumps(report.manifest(), indent=2))
        return
    total = sum(env.bytes for env in report.envs)
    click.echo(
        f"backed up {data_dir} to {report.target}: {len(report.envs)} LMDB environment(s), "
        f"{total:,} bytes, in {report.seconds:.2f} s"
    )
    click.echo(f"restore with: {report.restore_command()}")
