"""``kvlog groups``: list, describe, delete consumer groups and reset their offsets
(named after Kafka's ``kafka-consumer-groups``).

``describe`` shows the members (member id, client id, assigned partitions) and, per
partition, the committed offset, the log end offset (the high watermark, from a
consumer's ``end_offsets``) and the lag between them. A committed offset outside the
log (past its end: the topic was deleted and created again; before its start: retention
removed the records) has no lag: the row says what the group does about it instead.

``reset-offsets`` computes new committed offsets for a group with no members and, as
Kafka's tool does, only prints the plan unless ``--execute`` is given (``--dry-run`` says
the default out loud). As in Kafka, every new offset is
clamped to the partition's current range [log start, log end]. ``--to-datetime`` takes
ISO 8601 (``2024-05-01T12:00:00Z``; without a zone: local time) and picks the first
offset at or after it (the log end if none). ``--shift-by`` moves from the committed
offset, or from the log start where the group has none.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from kvlog.ipc.cluster_reports import (
    describe_or_empty,
    group_report,
    log_ranges,
    plan_reset,
)

from .client_cli import admin_client, client_config, client_options
from .common import (
    Group,
    make_console,
    plain_table,
    print_listing,
)


@contextlib.contextmanager
def _clients(
    bootstrap_server: str | None, command_config: Path | None, *, consumer: bool
) -> Iterator[tuple[Any, Any]]:
    """An Admin and (if asked) a group-less Consumer for offset lookups."""
    admin = admin_client(bootstrap_server, command_config)
    offsets_client = None
    try:
        if consumer:
            from kvlog.ipc.consumer import Consumer

            offsets_client = Consumer(
                client_config(
                    "consumer", bootstrap_server, command_config, client_id="kvlog-groups"
                )
            )
        yield admin, offsets_client
    finally:
        if offsets_client is not None:
            offsets_client.close()
        admin.close()


@click.group(cls=Group)
def groups() -> None:
    """List, describe, delete consumer groups and reset their offsets."""


@groups.command("list")
@click.option("--json", "as_json", is_flag=True)
@client_options
def list_(as_json: bool, bootstrap_server: str | None, command_config: Path | None) -> None:
    """Every group with members or committed offsets."""
    admin = admin_client(bootstrap_server, command_config)
    try:
        found = admin.list_groups()
    finally:
        admin.close()
    print_listing(
        found,
        as_json=as_json,
        empty="no consumer groups",
        columns=("group", "state", "protocol type"),
        rows=(
            (g.get("group_id", ""), g.get("state", ""), g.get("protocol_type") or "")
            for g in sorted(found, key=lambda g: g.get("group_id", ""))
        ),
    )


def _print_report(console: Any, report: dict[str, Any]) -> None:
    members = report["members"]
    console.print(
        f"[bold]{report['group_id']}[/bold]  state {report['state']}  generation "
        f"{report.get('generation') if report.get('generation') is not None else '-'}  "
        f"protocol {report.get('protocol') or '-'}  {len(members)} member(s)"
    )
    if members:
        console.print("members:")
        rows = [
            (
                m["member_id"] + (" (leader)" if m["member_id"] == report.get("leader") else ""),
                m["client_id"] or "",
                m["instance_id"] or "",
                ", ".join(m["assignment"]) or "-",
            )
            for m in members
        ]
        console.print(
            plain_table(("member id", "client id", "instance id", "assigned partitions"), rows)
        )
    if not report["partitions"]:
        console.print("no committed offsets and no assigned partitions")
        return
    console.print("offsets:")
    rows = [
        (
            r["topic"],
            str(r["partition"]),
            _or_dash(r["committed_offset"]),
            _or_dash(r["log_end_offset"]),
            "out of range" if r.get("problem") else _or_dash(r["lag"]),
            f"{r['member_id']} / {r['client_id']}" if r["member_id"] else "-",
        )
        for r in report["partitions"]
    ]
    columns = ("topic", "partition", "committed", "log end", "lag", "member / client")
    console.print(plain_table(columns, rows, right=("partition", "committed", "log end", "lag")))
    for r in report["partitions"]:
        if r.get("problem"):
            console.print(f"{r['topic']}-{r['partition']}: {r['problem']}")


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


@groups.command()
@click.argument("group_ids", nargs=-1)
@click.option("--group", "group_opts", multiple=True, help="Same as GROUP_IDS (Kafka's spelling).")
@click.option("--json", "as_json", is_flag=True)
@client_options
def describe(
    group_ids: tuple[str, ...],
    group_opts: tuple[str, ...],
    as_json: bool,
    bootstrap_server: str | None,
    command_config: Path | None,
) -> None:
    """Members, committed offsets, log end offsets and lag of groups."""
    wanted = list(group_ids) + list(group_opts)
    if not wanted:
        raise click.UsageError("name a group: kvlog groups describe GROUP (or --group GROUP)")
    with _clients(bootstrap_server, command_config, consumer=True) as (admin, consumer):
        reports = [group_report(admin, lambda tps: log_ranges(consumer, tps), g) for g in wanted]
    missing = [r["group_id"] for r in reports if _missing(r)]
    found = [r for r in reports if not _missing(r)]
    if as_json:
        click.echo(json.dumps(found, indent=2))
    else:
        console = make_console()
        for i, report in enumerate(found):
            if i:
                console.print()
            _print_report(console, report)
    if missing:
        raise click.ClickException(
            f"consumer group{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"do{'' if len(missing) > 1 else 'es'} not exist (no members, no committed "
            "offsets); kvlog groups list shows the groups there are"
        )


def _missing(report: dict[str, Any]) -> bool:
    """A group the coordinator does not know: no members, no committed offsets."""
    return report["state"] in (None, "Dead") and not report["members"] and not report["partitions"]


@groups.command()
@click.argument("group_ids", nargs=-1)
@click.option("--group", "group_opts", multiple=True, help="Same as GROUP_IDS.")
@client_options
def delete(
    group_ids: tuple[str, ...],
    group_opts: tuple[str, ...],
    bootstrap_server: str | None,
    command_config: Path | None,
) -> None:
    """Delete groups and their committed offsets (refused while a group has members)."""
    wanted = list(group_ids) + list(group_opts)
    if not wanted:
        raise click.UsageError("name a group: kvlog groups delete GROUP")
    admin = admin_client(bootstrap_server, command_config)
    try:
        for g in wanted:
            admin.delete_groups([g])
            click.echo(f"Deleted group {g}.")
    finally:
        admin.close()


def parse_datetime(value: str) -> int:
    """ISO 8601 -> ms since the epoch (no zone: local time)."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date-time (e.g. 2024-05-01T12:00:00Z)",
            param_hint="--to-datetime",
        ) from None
    return int(moment.timestamp() * 1000)


def _topic_partitions(specs: tuple[str, ...], consumer: Any) -> list[Any]:
    """``T`` (every partition) or ``T:0,2`` -> TopicPartitions."""
    from kvlog.types import TopicPartition

    out: list[TopicPartition] = []
    for spec in specs:
        topic, _, parts = spec.partition(":")
        existing = sorted(consumer.partitions_for_topic(topic))
        if not parts:
            out.extend(TopicPartition(topic, p) for p in existing)
            continue
        for item in parts.split(","):
            try:
                p = int(item)
            except ValueError:
                raise click.BadParameter(
                    f"{spec!r}: partitions must be numbers", param_hint="--topic"
                ) from None
            if p not in existing:
                raise click.BadParameter(
                    f"topic {topic} has no partition {p} (it has {len(existing)})",
                    param_hint="--topic",
                )
            out.append(TopicPartition(topic, p))
    return sorted(set(out))


@groups.command("reset-offsets")
@click.option("--group", "group_id", required=True)
@click.option(
    "--topic",
    "topic_specs",
    multiple=True,
    required=True,
    metavar="TOPIC[:P,P...]",
    help="Topic (all partitions) or TOPIC:0,2 (repeatable).",
)
@click.option("--to-earliest", is_flag=True, help="The log start offset.")
@click.option("--to-latest", is_flag=True, help="The log end offset.")
@click.option("--to-offset", type=click.IntRange(min=0), default=None, help="This offset.")
@click.option("--to-datetime", default=None, metavar="ISO8601", help="First offset at/after it.")
@click.option("--shift-by", type=int, default=None, metavar="N", help="Committed offset + N.")
@click.option(
    "--execute", is_flag=True, help="Store the new offsets (without it: print the plan only)."
)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing (the default).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@client_options
def reset_offsets(
    group_id: str,
    topic_specs: tuple[str, ...],
    to_earliest: bool,
    to_latest: bool,
    to_offset: int | None,
    to_datetime: str | None,
    shift_by: int | None,
    execute: bool,
    dry_run: bool,
    as_json: bool,
    bootstrap_server: str | None,
    command_config: Path | None,
) -> None:
    """Plan new committed offsets for a group, and store them with --execute (refused
    while the group has members)."""
    if execute and dry_run:
        raise click.UsageError("--execute and --dry-run do not mix")
    dry_run = not execute
    chosen = [
        name
        for name, given in (
            ("--to-earliest", to_earliest),
            ("--to-latest", to_latest),
            ("--to-offset", to_offset is not None),
            ("--to-datetime", to_datetime is not None),
            ("--shift-by", shift_by is not None),
        )
        if given
    ]
    if len(chosen) != 1:
        raise click.UsageError(
            "give exactly one of --to-earliest, --to-latest, --to-offset, --to-datetime, "
            f"--shift-by{f' (got {chr(44).join(chosen)})' if chosen else ''}"
        )
    if to_datetime is not None:
        parse_datetime(to_datetime)  # a bad date is a usage error before any network call
    with _clients(bootstrap_server, command_config, consumer=True) as (admin, consumer):
        desc = describe_or_empty(admin, group_id)
        members = desc.get("members") or []
        if members:
            raise click.ClickException(
                f"group {group_id} has {len(members)} active member(s) (state "
                f"{desc.get('state')}); stop its consumers first: offsets can only be reset "
                "while a group is empty"
            )
        tps = _topic_partitions(topic_specs, consumer)
        committed = admin.list_group_offsets(group_id)
        if to_earliest or to_latest:
            strategy, value = ("earliest" if to_earliest else "latest"), None
        elif to_offset is not None:
            strategy, value = "offset", to_offset
        elif to_datetime is not None:
            strategy, value = "timestamp", parse_datetime(to_datetime)
        else:
            strategy, value = "shift", shift_by
        begin = consumer.beginning_offsets(tps)
        end = consumer.end_offsets(tps)
        plan = plan_reset(
            strategy,
            value,
            {tp: (begin[tp], end[tp]) for tp in tps},
            committed,
            consumer.offsets_for_times,
        )
        if not dry_run:
            admin.alter_group_offsets(group_id, plan)
    rows = [
        {
            "topic": tp.topic,
            "partition": tp.partition,
            "current_offset": committed.get(tp),
            "new_offset": offset,
        }
        for tp, offset in sorted(plan.items())
    ]
    if as_json:
        click.echo(
            json.dumps({"group_id": group_id, "dry_run": dry_run, "partitions": rows}, indent=2)
        )
        return
    console = make_console()
    console.print(
        f"group {group_id}: "
        + ("plan (dry run, nothing changed; --execute applies it)" if dry_run else "offsets reset")
    )
    lines = [
        (r["topic"], str(r["partition"]), _or_dash(r["current_offset"]), str(r["new_offset"]))
        for r in rows
    ]
    columns = ("topic", "partition", "current", "new")
    console.print(plain_table(columns, lines, right=("partition", "current", "new")))
