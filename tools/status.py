"""``kvlog status``: the running processes of a data dir, and an exit code that says
whether a broker runs there (0: it does; 1: nothing runs), so scripts and health checks
can ask it (``kvlog status --data-dir D || kvlog serve ...``).

It replaces tools/serve.py's ``status`` (the CLI names this one), with the same output.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from .common import Command, make_console
from .serve import DEFAULT_DATA_DIR, STATUS_KEYS, read_run_file, status_entries


@click.command(cls=Command)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(DEFAULT_DATA_DIR),
    show_default=True,
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print a JSON list of {role, node_id, pid, endpoint, kafka, log_dir, started_at} "
    "(kafka: the process's Kafka address, null when off).",
)
def status(data_dir: Path, as_json: bool) -> None:
    """List the running processes of a data dir.

    Exits 0 when a broker runs there and 1 when nothing does (--json then prints [], the
    table form says so).
    """
    entries = status_entries(data_dir)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
    elif not entries:
        click.echo(f"no kvlog processes are running for data dir {data_dir.resolve()}", err=True)
    else:
        run = read_run_file(data_dir)
        table = Table(
            title=f"kvlog on {run.get('bootstrap', '?')}, "
            f"Kafka on {run.get('kafka_bootstrap') or 'off'}, "
            f"metrics {run.get('metrics') or 'off'} "
            f"(supervisor pid {run.get('supervisor_pid', '?')}, data dir {data_dir.resolve()})"
        )
        for key in STATUS_KEYS:
            table.add_column(key, justify="right" if key in ("node_id", "pid") else "left")
        for entry in entries:
            table.add_row(*("" if entry[k] is None else str(entry[k]) for k in STATUS_KEYS))
        make_console().print(table)
    if not entries:
        raise SystemExit(1)
