"""The ``kvlog`` command line (console script ``kvlog = kvlog.tools.cli:main``).

Every subcommand lives in its own module under ``kvlog.tools`` and is imported only when
it runs, so ``kvlog --help`` stays fast and ``kvlog demo`` never loads ZeroMQ. Adding a
command is one line in ``COMMANDS`` (or ``PERF_COMMANDS`` for ``kvlog perf ...``):
``"name": "kvlog.tools.module:click_command"``.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from kvlog import __version__

# name -> "module:attribute" of a click command, imported on first use.
COMMANDS: dict[str, str] = {
    "demo": "kvlog.tools.demo:demo",
    "serve": "kvlog.tools.serve:serve",
    "status": "kvlog.tools.status:status",
    "topics": "kvlog.tools.topics:topics",
    "produce": "kvlog.tools.console:produce",
    "consume": "kvlog.tools.console:consume",
    "dump": "kvlog.tools.dump:dump",
    "groups": "kvlog.tools.groups:groups",
    "keys": "kvlog.tools.acls:keys",
    "acls": "kvlog.tools.acls:acls",
    "users": "kvlog.tools.users:users",
    "config": "kvlog.tools.config_docs:config",
    "backup": "kvlog.tools.backup:backup",
}

PERF_COMMANDS: dict[str, str] = {
    "log": "kvlog.tools.perf_log:perf_log",
    "produce": "kvlog.tools.perf_client:perf_produce",
    "consume": "kvlog.tools.perf_client:perf_consume",
    "e2e": "kvlog.tools.perf_client:perf_e2e",
    "groups": "kvlog.tools.perf_groups:perf_groups",
    "failover": "kvlog.tools.perf_failover:perf_failover",
    "pipeline": "kvlog.tools.perf_pipeline:perf_pipeline",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported when they are invoked (or listed)."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, _, attr = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module_name), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.version_option(__version__, prog_name="kvlog")
def main() -> None:
    """kvlog: a Kafka-style durable event log for one host."""
    from kvlog.allocator import tune_allocator

    tune_allocator()  # the CLI moves record batches too (perf, dump, consume)


@main.group(cls=LazyGroup, lazy=PERF_COMMANDS)
def perf() -> None:
    """Measure throughput (records/s, MB/s) of kvlog's layers."""


if __name__ == "__main__":
    main()
