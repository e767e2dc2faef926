"""``kvlog top``: a live terminal view of a broker's metrics endpoint.

Scrapes the endpoint (``--url``, else the one ``kvlog serve`` wrote into the data dir's
status file, else http://127.0.0.1:9645/metrics) every ``--interval`` seconds and
redraws: per-topic records and bytes per second in and out, lag per consumer group (and
its partitions), per node the fsync p99, the produce latency p99 (queue + commit + reply)
and request rates over the last interval, and the cluster's partition and process counts.
The numbers are docs/METRICS.md's; tools/top_model.py computes the view.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kvlog.workers.config import SERVER_SETTINGS
from kvlog.workers.data_dir import STATUS_FILE
from kvlog.workers.metrics_http import DEFAULT_METRICS_LISTEN

from .top_model import Scrape, View, view

MAX_GROUP_PARTITIONS = 8  # partitions listed under a group, most behind first


def _url_for(data_dir: Path) -> str:
    try:
        status = json.loads((data_dir / "run" / STATUS_FILE).read_text())
        if status.get("metrics"):
            return str(status["metrics"])
    except (OSError, ValueError):
        pass
    return f"http://{DEFAULT_METRICS_LISTEN}/metrics"


def _rate(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.2f} {prefix}{unit}/s"
    return f"{value:.0f} {unit}/s".replace(" /s", "/s")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


def render(v: View, url: str, error: str | None = None) -> Group:
    c = v.cluster
    head = Text(
        f"kvlog top  {url}  partitions {c['partitions']:.0f}  "
        f"under-replicated {c['under_replicated']:.0f}  offline {c['offline']:.0f}  "
        f"processes {c['processes_up']:.0f}/{c['processes']:.0f}  "
        f"restarts {c['restarts']:.0f}  leader elections {c['leader_elections']:.0f}",
        style="bold",
    )
    topics = Table(title="topics", expand=True)
    for column in ("topic", "records in", "bytes in", "records out", "bytes out", "total in"):
        topics.add_column(column, justify="left" if column == "topic" else "right")
    for t in v.topics:
        topics.add_row(
            t.topic,
            _rate(t.records_in),
            _rate(t.bytes_in, "B"),
            _rate(t.records_out),
            _rate(t.bytes_out, "B"),
            f"{t.total_in:,.0f}",
        )
    groups = Table(title="consumer groups", expand=True)
    for column in ("group", "state", "members", "lag", "partitions (lag)"):
        groups.add_column(column, justify="right" if column in ("members", "lag") else "left")
    for g in v.groups:
        behind = sorted(g.partitions, key=lambda p: -p[2])[:MAX_GROUP_PARTITIONS]
        groups.add_row(
            g.group,
            g.state,
            str(g.members),
            f"{g.lag:,.0f}",
            " ".join(f"{t}-{p}:{lag:,.0f}" for t, p, lag in behind),
        )
    nodes = Table(title="nodes (last interval)", expand=True)
    for column in ("node", "fsync p99", "produce p99", "produce req", "fetch req"):
        nodes.add_column(column, justify="left" if column == "node" else "right")
    for n in v.nodes:
        nodes.add_row(
            n.node,
            _ms(n.fsync_p99_s),
            _ms(n.produce_p99_s),
            _rate(n.produce_rate),
            _rate(n.fetch_rate),
        )
    parts: list[object] = [head, topics, groups, nodes]
    if error:
        parts.insert(1, Text(error, style="red"))
    return Group(*parts)


@click.command()
@click.option("--url", default=None, help="Metrics endpoint URL (default: the data dir's).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=SERVER_SETTINGS.default("data_dir"),
    show_default=True,
    help="A running broker's data dir: its status file names the endpoint.",
)
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True)
@click.option(
    "--iterations", type=click.IntRange(min=0), default=0, help="Stop after N views (0: never)."
)
def top(url: str | None, data_dir: Path, interval: float, iterations: int) -> None:
    """A live view of a broker's metrics: topic rates, group lag, fsync p99.

    Reads the Prometheus endpoint `kvlog serve` serves (--metrics-listen); Ctrl-C quits.
    """
    url = url or _url_for(data_dir)
    console = Console()
    previous: Scrape | None = None
    shown = 0
    empty = View(
        [],
        [],
        [],
        dict.fromkeys(
            (
                "partitions",
                "under_replicated",
                "offline",
                "processes_up",
                "processes",
                "restarts",
                "leader_elections",
            ),
            0.0,
        ),
    )
    with Live(render(empty, url), console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                started = time.monotonic()
                try:
                    text = urllib.request.urlopen(url, timeout=max(interval, 2.0)).read()
                    current = Scrape.parse(text.decode(), time.monotonic())
                    live.update(render(view(current, previous), url), refresh=True)
                    previous = current
                except (OSError, urllib.error.URLError, ValueError) as exc:
                    live.update(render(empty, url, f"cannot read {url}: {exc}"), refresh=True)
                shown += 1
                if iterations and shown >= iterations:
                    return
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
        except KeyboardInterrupt:
            return
