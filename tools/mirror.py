"""``kvlog mirror``: forward topics (and group offsets) from this kvlog to a Kafka cluster;
``kvlog mirror status``: how far a mirror is.

::

    kvlog mirror --to kafka://central:9092 --topics 'sensors.*' --groups billing \\
                 --rename 'sensors.(.*)=site42.sensors.\\1' [--until-caught-up]

runs until SIGTERM/Ctrl-C (or, with ``--until-caught-up``, until every mirrored
partition has reached the end it had when the mirror started: a migration). The source
is the kvlog at ``--bootstrap-server`` (its settings file: ``--command-config``); the
target's settings (``security.protocol``, ``sasl.*``, ``ssl.*``, Kafka's names) come
from ``--target-config FILE`` and ``--target-property NAME=VALUE``. Progress lives on
the target itself and in ``--state-dir`` (default ``./kvlog-data/mirror/NAME``), which
``kvlog mirror status`` reads. How the mirror works: workers/mirror_shell.py.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import click

from .client_cli import client_config, client_options
from .common import Command, load_client_config, make_console, parse_pairs, plain_table

DEFAULT_NAME = "mirror"


def _state_dir(state_dir: Path | None, name: str) -> Path:
    if state_dir is not None:
        return state_dir
    from kvlog.workers.config import SERVER_SETTINGS

    return Path(SERVER_SETTINGS.default("data_dir")) / "mirror" / name


@click.group(cls=click.Group, invoke_without_command=True)
@click.option("--to", "target", metavar="kafka://HOST:PORT[,...]", help="The target cluster.")
@click.option("--topics", metavar="REGEX", help="Source topics to mirror (full match).")
@click.option("--groups", metavar="REGEX", help="Groups whose offsets are translated.")
@click.option(
    "--rename",
    "renames",
    multiple=True,
    metavar="PATTERN=REPLACEMENT",
    help="Target topic name for source topics matching PATTERN, e.g. "
    "'sensors.(.*)=site42.sensors.\\1' (repeatable; the first match wins).",
)
@click.option("--until-caught-up", is_flag=True, help="Stop once caught up (a migration).")
@click.option(
    "--allow-gaps",
    is_flag=True,
    help="Let retention delete records not forwarded yet (skipped, logged and counted).",
)
@click.option("--name", default=DEFAULT_NAME, show_default=True, help="This mirror's name.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the mirror keeps its state and status [default: ./kvlog-data/mirror/NAME].",
)
@click.option(
    "--target-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Settings for the target (TOML or .properties, Kafka's names: security.protocol, "
    "sasl.mechanism, sasl.username, sasl.password, ssl.ca.location, ...).",
)
@click.option(
    "--target-property",
    "target_properties",
    multiple=True,
    metavar="NAME=VALUE",
    help="One target setting (repeatable; over --target-config).",
)
@client_options
@click.pass_context
def mirror(
    ctx: click.Context,
    target: str | None,
    topics: str | None,
    groups: str | None,
    renames: tuple[str, ...],
    until_caught_up: bool,
    allow_gaps: bool,
    name: str,
    state_dir: Path | None,
    target_config: Path | None,
    target_properties: tuple[str, ...],
    bootstrap_server: str | None,
    command_config: Path | None,
) -> None:
    """Forward topics and group offsets from this kvlog to a Kafka cluster (store and
    forward for appliances, migration for everyone else). `kvlog mirror status` shows
    how far it is."""
    if ctx.invoked_subcommand is not None:
        return
    from kvlog.errors import KvlogError
    from kvlog.workers.mirror_model import MirrorSpec, Rename
    from kvlog.workers.mirror_shell import Mirror

    if not target or not topics:
        raise click.UsageError("give --to kafka://HOST:PORT and --topics REGEX")
    source = client_config("consumer", bootstrap_server, command_config)
    settings = {
        **load_client_config(target_config),
        **parse_pairs(target_properties, "--target-property"),
    }
    try:
        spec = MirrorSpec(
            name=name,
            target=target,
            topics=topics,
            source=source.pop("bootstrap.servers"),
            groups=groups,
            renames=[Rename.parse(r) for r in renames],
            allow_gaps=allow_gaps,
            until_caught_up=until_caught_up,
            state_dir=str(_state_dir(state_dir, name)),
            source_settings=source,
            target_settings=settings,
        )
        runner = Mirror(spec)
    except KvlogError as exc:
        raise click.ClickException(exc.message) from None
    old = {s: signal.signal(s, lambda *_: runner.stop()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = runner.run()
    except KvlogError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    ctx.exit(code)


@mirror.command(cls=Command)
@click.option("--name", default=DEFAULT_NAME, show_default=True, help="The mirror's name.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The mirror's state dir [default: ./kvlog-data/mirror/NAME].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(name: str, state_dir: Path | None, as_json: bool) -> None:
    """How far a mirror is: per partition what is forwarded, the lag in records and the
    age of the oldest record not forwarded yet; whether the target answers. Exits 1 when
    no mirror ever ran there."""
    from kvlog.workers.mirror_files import read_status

    where = _state_dir(state_dir, name)
    found = read_status(where)
    if found is None:
        raise click.ClickException(f"no mirror status in {where} (has the mirror run there?)")
    found["alive"] = _alive(found.get("pid"))
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    console = make_console()
    state = found.get("state", "?") if found["alive"] else "not running"
    reach = "answers" if found.get("target_reachable", True) else "UNREACHABLE"
    since = found.get("unreachable_since_ms")
    if since:
        reach += f" (since {time.strftime('%H:%M:%S', time.localtime(since / 1000))})"
    console.print(
        f"[bold]mirror {found.get('name', name)}[/bold]  {state}  target {found.get('target')} "
        f"{reach}  forwarded {found.get('forwarded', 0)}  lag {found.get('lag_records', 0)} "
        f"record(s), oldest {_age(found.get('max_age_ms'))}  gaps {found.get('gaps', 0)}"
    )
    if found.get("error"):
        console.print(f"[red]error:[/red] {found['error']}")
    rows = [
        (
            f["source"],
            f["target"],
            str(f["forwarded_to"]),
            _dash(f.get("source_end")),
            _dash(f.get("lag_records")),
            _age(f.get("age_ms")),
            str(f.get("gaps", 0)),
        )
        for f in found.get("feeds", [])
    ]
    columns = ("source", "target", "forwarded to", "source end", "lag", "oldest", "gaps")
    console.print(plain_table(columns, rows, right=columns[2:]))


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _age(ms: Any) -> str:
    if not ms:
        return "-"
    seconds = ms / 1000
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
