"""``kvlog topics``: create, list, describe, alter, delete topics; elect leaders
(named after Kafka's ``kafka-topics`` and ``kafka-leader-election``)."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from kvlog.ipc.cluster_reports import partition_rows

from .client_cli import admin_client, client_options
from .common import (
    Group,
    err,
    make_console,
    parse_pairs,
    plain_table,
)


@contextlib.contextmanager
def _admin(bootstrap_server: str | None, command_config: Path | None) -> Iterator[Any]:
    admin = admin_client(bootstrap_server, command_config)
    try:
        yield admin
    finally:
        admin.close()


@click.group(cls=Group)
def topics() -> None:
    """Create, list, describe, alter and delete topics."""


@topics.command()
@click.argument("name")
@click.option("--partitions", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--replication-factor", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--config",
    "configs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Topic config override, e.g. retention.ms=86400000 (repeatable).",
)
@click.option("--if-not-exists", is_flag=True, help="Succeed quietly if the topic exists.")
@client_options
def create(
    name: str,
    partitions: int,
    replication_factor: int,
    configs: tuple[str, ...],
    if_not_exists: bool,
    bootstrap_server: str | None,
    command_config: Path | None,
) -> None:
    """Create topic NAME."""
    from kvlog.errors import TopicAlreadyExistsError

    config = parse_pairs(configs, "--config")
    with _admin(bootstrap_server, command_config) as admin:
        try:
            admin.create_topic(name, partitions, replication_factor, config)
        except TopicAlreadyExistsError:
            if not if_not_exists:
                raise
            click.echo(f"Topic {name} exists already.")
            return
    click.echo(
        f"Created topic {name} ({partitions} partition{'s' if partitions != 1 else ''}, "
        f"replication factor {replication_factor})."
    )


@topics.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of topic names.")
@client_options
def list_(as_json: bool, bootstrap_server: str | None, command_config: Path | None) -> None:
    """Print every topic name, one per line."""
    with _admin(bootstrap_server, command_config) as admin:
        names = admin.list_topics()
    if as_json:
        click.echo(json.dumps(names))
        return
    for name in names:
        click.echo(name)


def _describe_json(desc: Any) -> dict[str, Any]:
    return {
        "name": desc.name,
        "topic_id": desc.topic_id,
        "replication_factor": desc.replication_factor,
        "partitions": partition_rows(desc),
        "config": desc.config,
        "overrides": desc.overrides,
    }


def _print_description(console: Any, desc: Any) -> None:
    console.print(
        f"[bold]{desc.name}[/bold]  id {desc.topic_id}  partitions {len(desc.partitions)}  "
        f"replication factor {desc.replication_factor}"
    )
    rows = []
    for p in desc.partitions:
        under = set(p.replicas) - set(p.isr)
        isr = ",".join(map(str, p.isr)) or "-"
        rows.append(
            (
                str(p.partition),
                "none" if p.leader is None or p.leader < 0 else str(p.leader),
                str(p.leader_epoch),
                ",".join(map(str, p.replicas)),
                f"[yellow]{isr}[/yellow]" if under else isr,
            )
        )
    columns = ("partition", "leader", "leader epoch", "replicas", "isr")
    console.print(plain_table(columns, rows, right=("partition", "leader", "leader epoch", "isr")))
    config = [
        (key, str(value), "(override)" if key in desc.overrides else "(default)")
        for key, value in sorted(desc.config.items())
    ]
    console.print(plain_table(("config", "value", ""), config))


@topics.command()
@click.argument("names", nargs=-1)
@click.option("--topic", "topic_opts", multiple=True, help="Same as NAMES (Kafka's spelling).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of topic descriptions.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The broker's data dir, for compacted topics' dirty ratio and last compaction "
    "(default: kvlog serve's).",
)
@client_options
def describe(
    names: tuple[str, ...],
    topic_opts: tuple[str, ...],
    as_json: bool,
    data_dir: Path | None,
    bootstrap_server: str | None,
    command_config: Path | None,
) -> None:
    """Per partition leader, replicas and ISR, and the topic config (all topics without
    NAMES); for compacted topics, each replica's dirty ratio and last compaction."""
    from .topics_compaction import compaction_status, print_compaction

    with _admin(bootstrap_server, command_config) as admin:
        wanted = list(names) + list(topic_opts) or admin.list_topics()
        descriptions = [admin.describe_topic(name) for name in wanted]
    if as_json:
        click.echo(
            json.dumps(
                [
                    _describe_json(d) | {"compaction": compaction_status(data_dir, d)}
                    for d in descriptions
                ],
                indent=2,
            )
        )
        return
    console = make_console()
    if not descriptions:
        console.print("no topics")
    for i, desc in enumerate(descriptions):
        if i:
            console.print()
        _print_description(console, desc)
        print_compaction(console, compaction_status(data_dir, desc))


@topics.command()
@click.argument("names", nargs=-1, required=True)
@client_options
def delete(
    names: tuple[str, ...], bootstrap_server: str | None, command_config: Path | None
) -> None:
    """Delete topics and all their records."""
    with _admin(bootstrap_server, command_config) as admin:
        for name in names:
            admin.delete_topic(name)
            click.echo(f"Deleted topic {name}.")


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@topics.command()
@click.argument("name")
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=None,
    help="Grow the topic to this many partitions (keys move: see below).",
)
@click.option("--config", "configs", multiple=True, metavar="KEY=VALUE", help="Set an override.")
@click.option("--delete-config", "deletes", multiple=True, metavar="KEY", help="Drop an override.")
@client_options
def alter(
    name: str,
    partitions: int | None,
    configs: tuple[str, ...],
    deletes: tuple[str, ...],
    bootstrap_server: str | None,
    command_config: Path | None,
) -> None:
    """Add partitions to topic NAME or change its config.

    Adding partitions changes the key -> partition mapping (murmur2(key) % partitions):
    most keys land on another partition from then on.
    """
    changes: dict[str, Any] = dict(parse_pairs(configs, "--config"))
    for key in deletes:
        if key in changes:
            raise click.UsageError(f"{key} is both set (--config) and deleted (--delete-config)")
        changes[key] = None
    if partitions is None and not changes:
        raise click.UsageError("nothing to alter: give --partitions, --config or --delete-config")
    from kvlog.ipc.admin import PartitionMappingWarning

    with _admin(bootstrap_server, command_config) as admin:
        if partitions is not None:
            quiet = _Quiet()
            admin_log = logging.getLogger("kvlog.ipc.admin")
            admin_log.addFilter(quiet)  # the warning is printed below, once
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", PartitionMappingWarning)
                    old = admin.create_partitions(name, partitions)
            finally:
                admin_log.removeFilter(quiet)
            click.echo(f"Topic {name}: {old} -> {partitions} partitions.")
            for w in caught:
                if issubclass(w.category, PartitionMappingWarning):
                    err(f"WARNING: {w.message}")
        if changes:
            overrides = admin.alter_topic_config(name, changes)
            shown = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "none"
            click.echo(f"Topic {name}: config updated; overrides now: {shown}.")


@topics.command("elect-leaders")
@click.option("--topic", "topic_names", multiple=True, help="Only these topics (repeatable).")
@client_options
def elect_leaders(
    topic_names: tuple[str, ...], bootstrap_server: str | None, command_config: Path | None
) -> None:
    """Move leadership back to each partition's preferred (first) in-sync replica."""
    with _admin(bootstrap_server, command_config) as admin:
        moved = admin.elect_leaders(list(topic_names) or None)
    if not moved:
        click.echo("Every partition is already led by its preferred replica (or cannot be).")
        return
    click.echo(f"Elected the preferred leader for {len(moved)} partition(s):")
    for tp in moved:
        click.echo(f"  {tp.topic}-{tp.partition}")


# `kvlog topics compact` lives in its own module, which adds itself to this group.
from . import topics_compaction  # noqa: E402, F401
