"""The options and settings every client command (topics, produce, consume, groups, acls)
shares: where the broker is, the client settings file, and the log level.

Where the broker is, first found first: ``--bootstrap-server``, the environment's
``KVLOG_BOOTSTRAP_SERVERS``, the settings file's ``bootstrap.servers``, then the default
(127.0.0.1:7092, kvlog's ZeroMQ port). The settings file is ``--command-config FILE`` or,
without it, the environment's ``KVLOG_COMMAND_CONFIG``, so neither needs repeating on
every command.

One settings file may serve every tool, as Kafka users keep one ``client.properties``: a
setting that belongs to another kind of client (``acks`` when consuming,
``auto.offset.reset`` when producing) is dropped with one warning; a name no client knows
is still an error naming the closest valid one.

``--log-level`` sets what the client libraries log to stderr (WARNING by default: a lost
broker, a skipped backlog, a reset offset).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kvlog.ipc.config import ADMIN_SETTINGS, CONSUMER_SETTINGS, PRODUCER_SETTINGS

from .common import DEFAULT_BOOTSTRAP, check_endpoint, load_client_config

log = logging.getLogger("kvlog.tools")

BOOTSTRAP_ENV = "KVLOG_BOOTSTRAP_SERVERS"
COMMAND_CONFIG_ENV = "KVLOG_COMMAND_CONFIG"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_TABLES = {"admin": ADMIN_SETTINGS, "producer": PRODUCER_SETTINGS, "consumer": CONSUMER_SETTINGS}


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (click's test runner
    swaps it per command)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


_HANDLER = _Stderr()
_HANDLER.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))


def _set_log_level(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """kvlog's loggers print at ``value`` and above to stderr (the root logger, and what
    the application or a test harness put there, is left alone)."""
    level = logging.getLevelName(value.upper())
    kvlog_log = logging.getLogger("kvlog")
    _HANDLER.setLevel(level)
    if kvlog_log.getEffectiveLevel() > level:
        kvlog_log.setLevel(level)  # else records below the root's level are never made
    if _HANDLER not in kvlog_log.handlers:
        kvlog_log.addHandler(_HANDLER)
    return value


def client_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--bootstrap-server`` and ``--command-config`` (passed as ``bootstrap_server``
    and ``command_config``), and ``--log-level`` (applied here, not passed)."""
    f = click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default="WARNING",
        show_default=True,
        expose_value=False,
        callback=_set_log_level,
        help="What the client library logs to stderr.",
    )(f)
    f = click.option(
        "--command-config",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        envvar=COMMAND_CONFIG_ENV,
        show_envvar=True,
        help="Client settings file (dotted names; TOML or .properties), e.g. "
        "security.protocol=curve, curve.server.key, curve.secret.key. Settings for other "
        "kinds of client are ignored with a warning.",
    )(f)
    f = click.option(
        "--bootstrap-server",
        default=None,
        metavar="HOST:PORT",
        envvar=BOOTSTRAP_ENV,
        show_envvar=True,
        help=f"Broker to connect to (default: the settings file's bootstrap.servers, else "
        f"{DEFAULT_BOOTSTRAP}).",
    )(f)
    return f


def client_config(
    kind: str,
    bootstrap_server: str | None,
    command_config: Path | None,
    **overrides: Any,
) -> dict[str, Any]:
    """Dotted settings for a client of ``kind`` (admin, producer or consumer): the file's
    (less those of other kinds of client), then the bootstrap server, then ``overrides``
    (dotted or snake_case names; None values skipped)."""
    config = own_settings(kind, load_client_config(command_config), command_config)
    if bootstrap_server is not None:
        config["bootstrap.servers"] = check_endpoint(bootstrap_server, "--bootstrap-server")
    else:
        config.setdefault("bootstrap.servers", DEFAULT_BOOTSTRAP)
    for name, value in overrides.items():
        if value is not None:
            config[name.replace("_", ".")] = value
    return config


def own_settings(kind: str, values: dict[str, Any], source: Path | None) -> dict[str, Any]:
    """``values`` without the settings only other kinds of client have (said once)."""
    table = _TABLES[kind]
    foreign = [
        name
        for name in values
        if table.lookup(name) is None
        and any(other.lookup(name) is not None for k, other in _TABLES.items() if k != kind)
    ]
    if foreign:
        log.warning(
            "%s: ignoring %s (not %s settings)",
            source or "client settings",
            ", ".join(sorted(foreign)),
            kind,
        )
    return {name: value for name, value in values.items() if name not in foreign}


def admin_client(bootstrap_server: str | None, command_config: Path | None) -> Any:
    from kvlog.ipc.admin import Admin

    return Admin(client_config("admin", bootstrap_server, command_config))
