"""What every ``kvlog`` client command shares: error handling, ``--bootstrap-server``,
``--command-config`` files, ``k=v`` options, signals and JSON-safe bytes.

Errors: commands are built with :class:`Command` / :class:`Group`, which turn a
``KvlogError`` (and a few file errors) into click's one-line ``Error: ...`` and exit code 1,
never a traceback.

Client settings files (``--command-config FILE``): Kafka's dotted names
(``security.protocol``, ``curve.server.key``, ``curve.secret.key``, ``request.timeout.ms``,
...), as TOML (``*.toml``) or as Java-style ``.properties`` (anything else). A relative key
path in the file is taken relative to the file's directory when such a file exists there.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from kvlog.errors import KvlogError
from kvlog.ipc.config import ADMIN_SETTINGS

DEFAULT_BOOTSTRAP: str = ADMIN_SETTINGS.default("bootstrap.servers")
# Client settings whose values may be file paths (resolved against the config file's dir).
_PATH_SETTINGS = ("curve.server.key", "curve.secret.key")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


# -- errors ------------------------------------------------------------------------------------


class Command(click.Command):
    """A click command whose kvlog errors print as one line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KvlogError as exc:
            raise click.ClickException(exc.message) from None
        except BrokenPipeError:
            # Output piped into `head` and the like: stop quietly, as Unix tools do.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(0)


class Group(click.Group):
    """A click group whose subcommands are :class:`Command` s."""

    command_class = Command


# -- parsing -----------------------------------------------------------------------------------


def parse_pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    """``("k=v", ...)`` -> ``{"k": "v"}``; a pair without ``=`` is a usage error."""
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r} is not of the form key=value", param_hint=what)
        out[name.strip()] = value
    return out


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """TOML reads ``a.b.c = 1`` as nested tables; kvlog's names are dotted strings."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{path} is not valid TOML: {exc}") from None


def read_properties(path: Path) -> dict[str, str]:
    """Java ``.properties``: ``key=value``, ``key: value`` or ``key value``; ``#``/``!``
    comments; a trailing backslash continues the line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from None
    out: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#!":
            continue
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        # The key ends at the first '=', ':' or whitespace; then whitespace and at most
        # one '=' or ':' separate it from the value (Java's rules, escapes aside).
        end = next((i for i, ch in enumerate(line) if ch in "=:" or ch.isspace()), len(line))
        name, value = line[:end], line[end:].lstrip()
        if value[:1] in ("=", ":"):
            value = value[1:]
        out[name.strip()] = value.strip()
    return out


def load_client_config(path: Path | None) -> dict[str, Any]:
    """The dotted client settings of a ``--command-config`` file (empty without one)."""
    if path is None:
        return {}
    values = flatten(read_toml(path)) if path.suffix == ".toml" else read_properties(path)
    for name in _PATH_SETTINGS:
        value = values.get(name)
        if isinstance(value, str) and value and not os.path.isabs(value):
            beside = path.parent / value
            if beside.exists():
                values[name] = str(beside)
    return values


def check_endpoint(value: str, what: str) -> str:
    """A bootstrap list as given: kvlog's endpoints, or ``kafka://`` servers (Kafka mode:
    the commands then talk to a Kafka cluster)."""
    from kvlog.errors import InvalidConfigError
    from kvlog.ipc.kafka_client import is_kafka_bootstrap
    from kvlog.ipc.wire import normalize_endpoint

    try:
        if is_kafka_bootstrap(value):
            from kvlog.ipc.kafka_client.settings import split_bootstrap

            split_bootstrap(value)
            return value
        for part in value.split(","):
            if part.strip():
                normalize_endpoint(part)
    except InvalidConfigError as exc:
        raise click.BadParameter(exc.message, param_hint=what) from None
    return value


# -- client options ----------------------------------------------------------------------------


def client_config(
    bootstrap_server: str | None, command_config: Path | None, **overrides: Any
) -> dict[str, Any]:
    """Dotted client settings: the file, then ``--bootstrap-server``, then ``overrides``
    (dotted or snake_case names; None values skipped)."""
    config = load_client_config(command_config)
    if bootstrap_server is not None:
        config["bootstrap.servers"] = check_endpoint(bootstrap_server, "--bootstrap-server")
    else:
        config.setdefault("bootstrap.servers", DEFAULT_BOOTSTRAP)
    for name, value in overrides.items():
        if value is not None:
            config[name.replace("_", ".")] = value
    return config


# -- signals -----------------------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_signals(*, interrupt: bool = False) -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT while the block runs (the old handlers come back
    after). With ``interrupt``, a signal also raises KeyboardInterrupt in the main thread,
    to break out of a blocking call (every time: a second Ctrl-C breaks out of the clean-up
    too)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        stop.set()
        if interrupt:
            raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- bytes for humans and JSON -----------------------------------------------------------------


def text_or_none(data: bytes | None) -> str | None:
    """UTF-8 text of ``data`` if it is valid UTF-8, else None."""
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def json_bytes(name: str, data: bytes | None) -> dict[str, Any]:
    """``{name: text}`` for UTF-8 (or null), else ``{name: None, name_base64: ...}``."""
    text = text_or_none(data)
    if data is None or text is not None:
        return {name: text}
    return {name: None, f"{name}_base64": base64.b64encode(data).decode()}


def short_repr(data: bytes | None, limit: int) -> str:
    if data is None:
        return "null"
    text = repr(data)
    return text if limit <= 0 or len(text) <= limit else text[: limit - 3] + "..."


def make_console(*, stderr: bool = False) -> Any:
    """A rich Console; piped output gets wide lines instead of 80-column truncation."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else 200
    return Console(highlight=False, width=width, stderr=stderr)


def plain_table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], *, right: Container[str] = ()
) -> Any:
    """A borderless rich table (kvlog's listings): these columns, right-justified where
    named in ``right``, and these rows."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left")
    for row in rows:
        table.add_row(*row)
    return table


def print_listing(
    items: Sequence[Any],
    *,
    as_json: bool,
    empty: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
) -> None:
    """A listing command's output: ``items`` as JSON, the ``empty`` line when there are
    none, or a table of ``rows``."""
    if as_json:
        click.echo(json.dumps(items, indent=2))
    elif not items:
        click.echo(empty)
    else:
        make_console().print(plain_table(columns, rows))


def err(message: str) -> None:
    click.echo(message, err=True)
