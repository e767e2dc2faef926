"""``kvlog keys generate`` (CURVE key pairs) and ``kvlog acls add|list|remove|reload``.

Keys are zmq.auth certificates: ``DIR/NAME.key`` (public: copy it into the server's
authorized keys directory) and ``DIR/NAME.key_secret`` (secret: stays with the client),
with NAME recorded as the principal that ACLs name.

``kvlog acls reload`` sends SIGHUP to the ``kvlog serve`` supervisor of a data dir (its pid
is in ``DATA_DIR/run/processes.json``), which makes every server process re-read the
authorized keys directory.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import click

from .client_cli import admin_client, client_options
from .common import Group, print_listing

OPERATIONS = ("read", "write", "create", "delete", "describe", "alter")
CLUSTER_NAME = "kvlog"  # the one cluster resource's name (workers/acl.py)


@click.group(cls=Group)
def keys() -> None:
    """CURVE keys for authentication and encryption."""


@keys.command()
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where to write NAME.key and NAME.key_secret.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing key pair.")
def generate(name: str, directory: Path, force: bool) -> None:
    """Write a CURVE key pair for principal NAME."""
    from kvlog.ipc.security import generate_keys

    existing = [
        p for p in (directory / f"{name}.key", directory / f"{name}.key_secret") if p.exists()
    ]
    if existing and not force:
        raise click.ClickException(
            f"{existing[0]} exists; use --force to replace the key pair (clients holding the "
            "old one are then refused)"
        )
    try:
        public, secret = generate_keys(directory, name)
    except OSError as exc:
        raise click.ClickException(f"cannot write keys to {directory}: {exc.strerror}") from None
    click.echo(f"public key:  {public}")
    click.echo(f"secret key:  {secret}")
    click.echo(f"principal:   {name}")


_ONE = "--topic T, --group G, --transactional-id ID or --cluster"


def _resource(
    topic: str | None,
    group: str | None,
    cluster: bool,
    *,
    required: bool,
    transactional_id: str | None = None,
) -> tuple[str, str] | None:
    given = [
        (kind, value)
        for kind, value in (
            ("topic", topic),
            ("group", group),
            ("transactional_id", transactional_id),
        )
        if value is not None
    ]
    if cluster:
        given.append(("cluster", CLUSTER_NAME))
    if len(given) > 1:
        raise click.UsageError(f"give one resource: {_ONE}")
    if not given:
        if required:
            raise click.UsageError(f"give a resource: {_ONE}")
        return None
    return given[0]


def _resource_options(f: Any) -> Any:
    f = click.option("--cluster", is_flag=True, help="The cluster resource.")(f)
    f = click.option(
        "--transactional-id",
        default=None,
        help="A transactional producer's transactional.id ('*': every one).",
    )(f)
    f = click.option("--group", default=None, help="A consumer group ('*': every group).")(f)
    f = click.option("--topic", default=None, help="A topic ('*': every topic).")(f)
    return f


@click.group(cls=Group)
def acls() -> None:
    """Add, list and remove ACLs; reload the authorized keys."""


@acls.command()
@click.option("--principal", required=True, help="Principal (a key's name; '*': anyone).")
@_resource_options
@click.option("--operation", type=click.Choice(OPERATIONS), required=True)
@client_options
def add(
    principal: str,
    topic: str | None,
    group: str | None,
    cluster: bool,
    transactional_id: str | None,
    operation: str,
    bootstrap_server: str | None,
    command_config: Path | None,
) -> None:
    """Allow PRINCIPAL an operation on a topic, group, transactional id or the cluster."""
    resource = _resource(topic, group, cluster, required=True, transactional_id=transactional_id)
    assert resource is not None
    admin = admin_client(bootstrap_server, command_config)
    try:
        added = admin.add_acl(principal, resource[0], resource[1], operation)
    finally:
        admin.close()
    what = f"{principal} may {operation} {resource[0]} {resource[1]}"
    click.echo(f"Added: {what}." if added else f"Already there: {what}.")


@acls.command("list")
@click.option("--principal", default=None, help="Only this principal's ACLs.")
@_resource_options
@click.option("--json", "as_json", is_flag=True)
@client_options
def list_(
    principal: str | None,
    topic: str | None,
    group: str | None,
    cluster: bool,
    transactional_id: str | None,
    as_json: bool,
    bootstrap_server: str | None,
    command_config: Path | None,
) -> None:
    """List ACLs (optionally of one principal or resource)."""
    resource = _resource(topic, group, cluster, required=False, transactional_id=transactional_id)
    admin = admin_client(bootstrap_server, command_config)
    try:
        entries = admin.list_acls()
    finally:
        admin.close()
    entries = [
        e
        for e in entries
        if (principal is None or e.get("principal") == principal)
        and (resource is None or (e.get("resource_type"), e.get("name")) == resource)
    ]
    keys = ("principal", "resource_type", "name", "operation")
    print_listing(
        entries,
        as_json=as_json,
        empty="no ACLs",
        columns=("principal", "resource type", "name", "operation"),
        rows=sorted(tuple(str(e.get(k, "")) for k in keys) for e in entries),
    )


@acls.command()
@click.option("--principal", default=None, help="Only this principal's ACLs.")
@_resource_options
@click.option(
    "--operation", type=click.Choice(OPERATIONS), default=None, help="Only this operation."
)
@client_options
def remove(
    principal: str | None,
    topic: str | None,
    group: str | None,
    cluster: bool,
    transactional_id: str | None,
    operation: str | None,
    bootstrap_server: str | None,
    command_config: Path | None,
) -> None:
    """Remove the ACLs matching every filter given (at least a principal or a resource)."""
    resource = _resource(topic, group, cluster, required=False, transactional_id=transactional_id)
    if principal is None and resource is None:
        raise click.UsageError(
            "give --principal and/or a resource (--topic, --group, --transactional-id, --cluster)"
        )
    admin = admin_client(bootstrap_server, command_config)
    try:
        removed = admin.remove_acls(
            principal=principal,
            resource_type=None if resource is None else resource[0],
            name=None if resource is None else resource[1],
            operation=operation,
        )
    finally:
        admin.close()
    if not removed:
        click.echo("No ACL matched; nothing removed.")
        return
    click.echo(f"Removed {len(removed)} ACL(s):")
    for e in removed:
        click.echo(
            f"  {e.get('principal')} {e.get('operation')} {e.get('resource_type')} {e.get('name')}"
        )


def _is_kvlog_serve(pid: int) -> bool:
    """Whether ``pid`` runs ``kvlog serve`` (an embedded kvlog.Broker's host process
    would be killed by a SIGHUP it does not handle)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the status file
    return b"serve" in argv


@acls.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("./kvlog-data"),
    show_default=True,
)
def reload(data_dir: Path) -> None:
    """Make a running `kvlog serve` re-read its authorized keys directory (SIGHUP)."""
    from .serve import read_run_file

    pid = read_run_file(data_dir).get("supervisor_pid")
    if not isinstance(pid, int) or pid <= 0:
        raise click.ClickException(f"no kvlog broker is running for data dir {data_dir.resolve()}")
    if not _is_kvlog_serve(pid):
        raise click.ClickException(
            f"pid {pid} runs kvlog.Broker inside another program, not `kvlog serve`; call "
            "broker.reload_security() there instead"
        )
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise click.ClickException(
            f"no kvlog broker is running for data dir {data_dir.resolve()} (pid {pid} is gone)"
        ) from None
    except PermissionError:
        raise click.ClickException(
            f"not allowed to signal pid {pid} (another user's broker?)"
        ) from None
    click.echo(f"Sent SIGHUP to kvlog serve (pid {pid}): the authorized keys are being reloaded.")
