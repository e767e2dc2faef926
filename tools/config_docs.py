"""``kvlog config docs``: every kvlog setting as Markdown, rendered from the config tables.

``docs/CONFIG.md`` is this command's output; a test fails when it is stale. Regenerate it
with ``kvlog config docs > docs/CONFIG.md`` (in a checkout: ``PYTHONPATH=. python -m
kvlog.tools.cli config docs > docs/CONFIG.md``).
"""

from __future__ import annotations

from typing import NamedTuple

import click

from kvlog.config_def import ConfigDef

from .common import Group

REGENERATE = "PYTHONPATH=. python -m kvlog.tools.cli config docs > docs/CONFIG.md"


class Section(NamedTuple):
    title: str
    intro: str
    table: ConfigDef
    used_by: bool = False


def sections() -> dict[str, Section]:
    from kvlog.ipc.config import ADMIN_SETTINGS, CONSUMER_SETTINGS, PRODUCER_SETTINGS
    from kvlog.topic_config import TOPIC_CONFIG
    from kvlog.workers.config import BROKER_CONFIG, SERVER_SETTINGS

    return {
        "server": Section(
            "Server settings",
            "`kvlog serve` flags (`--data-dir`, `--log-dir`, ...) and keys of its `--config` "
            "TOML file; `kvlog.Broker(...)` takes them as keyword arguments. Flags override "
            "the file; relative paths in the file are relative to the file.",
            SERVER_SETTINGS,
        ),
        "broker": Section(
            "Broker configs",
            "Kafka's dotted names, in the `--config` TOML file of `kvlog serve` or the "
            '`config` dict of `kvlog.Broker` (snake_case spellings work too). "Used by" '
            "names the processes that read a key; `server` is every server process "
            "(coordinator, node and broker).",
            BROKER_CONFIG,
            used_by=True,
        ),
        "topic": Section(
            "Topic configs",
            "Per topic: `create_topic(..., config={...})`, `alter_topic_config`, or "
            "`kvlog topics create|alter --config KEY=VALUE`. Values may be given as strings "
            '(`"86400000"`, `"true"`). A topic stores only its overrides.',
            TOPIC_CONFIG,
        ),
        "producer": Section(
            "Producer configs",
            "`kvlog.Producer({dotted: value})` or `kvlog.Producer(snake_case=value)`.",
            PRODUCER_SETTINGS,
        ),
        "consumer": Section(
            "Consumer configs",
            "`kvlog.Consumer({dotted: value})` or `kvlog.Consumer(snake_case=value)`; "
            "`kvlog.ConsumerPool` passes them on to its consumers.",
            CONSUMER_SETTINGS,
        ),
        "admin": Section(
            "Admin configs",
            "`kvlog.Admin(...)`, and the `--command-config` file of the `kvlog` client commands.",
            ADMIN_SETTINGS,
        ),
    }


def render(names: tuple[str, ...] = ()) -> str:
    """The Markdown of the given sections (all when none), as docs/CONFIG.md holds it."""
    chosen = sections()
    parts = [
        "# kvlog configuration\n\n"
        "Every setting, generated from kvlog's config tables by `kvlog config docs`; do not "
        f"edit by hand (regenerate: `{REGENERATE}`).\n"
    ]
    for name in names or tuple(chosen):
        section = chosen[name]
        parts.append(
            f"## {section.title}\n\n{section.intro}\n\n"
            + section.table.markdown(used_by=section.used_by)
        )
    return "\n".join(parts)


@click.group(cls=Group)
def config() -> None:
    """kvlog's settings: broker, topic and client configs."""


@config.command()
@click.option(
    "--section",
    "names",
    multiple=True,
    type=click.Choice(["server", "broker", "topic", "producer", "consumer", "admin"]),
    help="Only this table (repeatable). [default: all]",
)
def docs(names: tuple[str, ...]) -> None:
    """Print every setting (name, type, default, valid values, doc) as Markdown.

    docs/CONFIG.md is this output: `kvlog config docs > docs/CONFIG.md`.
    """
    click.echo(render(names), nl=False)
