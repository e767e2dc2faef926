"""``kvlog users add|remove|list``: the SCRAM users Kafka clients log in with (SASL).

Like Kafka's ``kafka-configs --bootstrap-server ... --entity-type users --alter
--add-config 'SCRAM-SHA-256=[password=...]'``, these talk to a running broker (its
ZeroMQ bootstrap; with security on, as a super user: ``--command-config`` with the
CURVE keys ``kvlog acls`` uses). The password is salted here, by this command: only the
salted credentials (RFC 5802: salt, stored key, server key, iterations) reach the broker,
which keeps them in its metadata store; every Kafka listener picks a change up within a
second. A removed user cannot log in on any new connection, and its open connections are
closed at their next request.

There is no offline form (Kafka's ``kafka-storage format --add-scram``): Kafka needs one
because its first SCRAM admin has no other way in, while kvlog's super users already
authenticate with their CURVE keys, and one writer of the store (the coordinator) stays
one writer.

The password comes from a prompt (a terminal), ``--password-stdin`` (its first line) or
``--password-file`` (its first line), never from the command line, where other users
could read it in the process list.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kvlog.ipc.kafka.scram import (
    DEFAULT_ITERATIONS,
    MAX_ITERATIONS,
    MECHANISMS,
    MIN_ITERATIONS,
)

from .client_cli import admin_client, client_options
from .common import Group, print_listing

BOTH = "both"


@click.group(cls=Group)
def users() -> None:
    """SCRAM users for Kafka clients (SASL/SCRAM-SHA-256, SCRAM-SHA-512)."""


def _password(password_stdin: bool, password_file: Path | None) -> str:
    if password_stdin and password_file is not None:
        raise click.UsageError("give --password-stdin or --password-file, not both")
    if password_file is not None:
        lines = password_file.read_text().splitlines()
        password = lines[0] if lines else ""
    elif password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        raise click.UsageError(
            "no password: give --password-stdin or --password-file (stdin is not a terminal)"
        )
    if not password:
        raise click.UsageError("the password is empty")
    return password


@users.command()
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin's first line.")
@click.option(
    "--password-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Read the password from this file's first line.",
)
@click.option(
    "--mechanism",
    type=click.Choice([*MECHANISMS, BOTH]),
    default=BOTH,
    show_default=True,
    help="Which SCRAM mechanism(s) the user may log in with.",
)
@click.option(
    "--iterations",
    type=click.IntRange(MIN_ITERATIONS, MAX_ITERATIONS),
    default=DEFAULT_ITERATIONS,
    show_default=True,
    help="PBKDF2 iterations of the salted password.",
)
@client_options
def add(
    name: str,
    password_stdin: bool,
    password_file: Path | None,
    mechanism: str,
    iterations: int,
    bootstrap_server: str | None,
    command_config: Path | None,
) -> None:
    """Add SCRAM user NAME, or change its password (for the mechanisms given).

    NAME is the principal its Kafka connections get: the name `kvlog acls` grants to,
    shared with CURVE key names (a user named like a super user is one)."""
    password = _password(password_stdin, password_file)
    mechanisms = list(MECHANISMS) if mechanism == BOTH else [mechanism]
    admin = admin_client(bootstrap_server, command_config)
    try:
        created = admin.upsert_scram_user(name, password, mechanisms, iterations)
    finally:
        admin.close()
    what = "Added" if created else "Updated"
    click.echo(f"{what} SCRAM user {name} ({', '.join(mechanisms)}; {iterations} iterations).")


@users.command()
@click.argument("name")
@client_options
def remove(name: str, bootstrap_server: str | None, command_config: Path | None) -> None:
    """Remove SCRAM user NAME (every mechanism); its connections are closed."""
    admin = admin_client(bootstrap_server, command_config)
    try:
        mechanisms = admin.remove_scram_user(name)
    finally:
        admin.close()
    click.echo(f"Removed SCRAM user {name} ({', '.join(mechanisms)}).")


@users.command("list")
@click.option("--json", "as_json", is_flag=True)
@client_options
def list_(as_json: bool, bootstrap_server: str | None, command_config: Path | None) -> None:
    """List the SCRAM users and their mechanisms (never a credential)."""
    admin = admin_client(bootstrap_server, command_config)
    try:
        entries = admin.list_scram_users()
    finally:
        admin.close()
    print_listing(
        entries,
        as_json=as_json,
        empty="no SCRAM users",
        columns=("user", "mechanism", "iterations"),
        rows=[
            (str(e.get("name")), mechanism, str(count))
            for e in entries
            for mechanism, count in sorted((e.get("mechanisms") or {}).items())
        ],
    )
