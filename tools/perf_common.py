"""Shared by the ``kvlog perf`` client scenarios (tools/perf_client.py, perf_e2e.py,
perf_pipeline.py, perf_sizing.py, perf_kafka_clients.py): options, results, the embedded
broker, progress bars, the report and the command-line options they all take."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from kvlog.ipc.config import PRODUCER_SETTINGS

from .common import client_config, make_console

POOL = 1024  # distinct keys and values (a power of two: index with i & (POOL - 1))
CHUNK = 16_384  # records between progress updates
MAX_SAMPLES = 100_000
FILL_BATCH_SIZE = 1 << 20
FILL_CHUNK = 10_000  # records per send_batch call when filling
_STAMP = struct.Struct(">q")
# The distribution printed under "percentiles" (HdrHistogram, as in its percentile tables).
PERCENTILES = (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0)
ACKS = ("0", "1", "all", "-1")
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


@dataclass
class Options:
    bootstrap_server: str | None
    command_config: Path | None
    topic: str
    partitions: int
    replication_factor: int
    records: int
    record_size: int
    key_size: int
    acks: str
    compression: str
    batch_size: int | None
    linger_ms: int | None
    log_dirs: int | None
    as_json: bool
    send_batch: int = 0
    preload: int = 0
    client: str = "kvlog"
    kafka_bootstrap: str | None = None
    client_setting: tuple[str, ...] = ()
    transactional: int = 0  # produce: records per transaction (0: not transactional)

    @property
    def client_settings(self) -> dict[str, Any]:
        """``--client-setting KEY=VALUE`` pairs (integers where they look like one)."""
        settings: dict[str, Any] = {}
        for pair in self.client_setting:
            key, _, value = pair.partition("=")
            settings[key] = int(value) if value.lstrip("-").isdigit() else value
        return settings

    def producer_config(self, **extra: Any) -> dict[str, Any]:
        config = client_config(self.bootstrap_server, self.command_config)
        config.update({"acks": self.acks, "compression.type": self.compression})
        if self.batch_size is not None:
            config["batch.size"] = self.batch_size
        if self.linger_ms is not None:
            config["linger.ms"] = self.linger_ms
        config.update(extra)
        return config

    def consumer_config(self, **extra: Any) -> dict[str, Any]:
        config = client_config(self.bootstrap_server, self.command_config)
        config.update(extra)
        return config


@dataclass
class Result:
    """What one run measured; ``as_dict`` is the ``--json`` object."""

    test: str
    records: int
    seconds: float
    payload_bytes: int
    latency: str
    latency_us: Counter[int] = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)
    started_wall: float = 0.0  # time.time() when the clock started (for other processes)

    def as_dict(self, options: Options, bootstrap: str, embedded: bool) -> dict[str, Any]:
        from hdrh.histogram import HdrHistogram

        hist = HdrHistogram(1, 3_600_000_000, 3)
        for value, count in self.latency_us.items():
            hist.record_value(max(1, value), count)
        samples = hist.get_total_count()

        def ms(percentile: float) -> float | None:
            return round(hist.get_value_at_percentile(percentile) / 1000, 3) if samples else None

        config = asdict(options)
        config.pop("as_json")
        config.pop("bootstrap_server")
        config["command_config"] = str(options.command_config) if options.command_config else None
        return {
            "test": self.test,
            "records": self.records,
            "seconds": round(self.seconds, 6),
            "records_per_s": round(self.records / self.seconds, 1) if self.seconds else None,
            "mb_per_s": round(self.payload_bytes / self.seconds / 1e6, 3) if self.seconds else None,
            "latency": self.latency,
            **({"latency_note": QUEUEING_NOTE} if self.test == "produce" else {}),
            "latency_samples": samples,
            "p50_ms": ms(50),
            "p99_ms": ms(99),
            "p999_ms": ms(99.9),
            "max_ms": round(hist.get_max_value() / 1000, 3) if samples else None,
            "mean_ms": round(hist.get_mean_value() / 1000, 3) if samples else None,
            "percentiles": [[p, ms(p)] for p in PERCENTILES] if samples else [],
            **self.extra,
            "bootstrap": bootstrap,
            "embedded_broker": embedded,
            "config": config,
        }


@dataclass
class PairedResult:
    """``kvlog perf produce --transactional N --paired-rounds R``: per round an idempotent
    run and a transactional one; ``as_dict`` is the ``--json`` object."""

    pairs: list[tuple[Result, Result]]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]

    def as_dict(self, options: Options, bootstrap: str, embedded: bool) -> dict[str, Any]:
        rounds = []
        for idempotent, transactional in self.pairs:
            i = idempotent.as_dict(options, bootstrap, embedded)
            t = transactional.as_dict(options, bootstrap, embedded)
            rounds.append(
                {
                    "idempotent_records_per_s": i["records_per_s"],
                    "transactional_records_per_s": t["records_per_s"],
                    "ratio": round(t["records_per_s"] / i["records_per_s"], 4),
                    "commit_p50_ms": t["commit_p50_ms"],
                    "commit_max_ms": t["commit_max_ms"],
                }
            )
        ratios = sorted(r["ratio"] for r in rounds)
        config = asdict(options)
        config.pop("as_json")
        config.pop("bootstrap_server")
        config["command_config"] = str(options.command_config) if options.command_config else None
        return {
            "test": "produce-paired",
            "records_per_transaction": options.transactional,
            "rounds": rounds,
            "ratio_median": round(statistics.median(ratios), 4),
            "ratio_min": ratios[0],
            "ratio_max": ratios[-1],
            "commit_p50_ms": round(statistics.median(r["commit_p50_ms"] for r in rounds), 3),
            "load_before": [round(x, 2) for x in self.load_before],
            "load_after": [round(x, 2) for x in self.load_after],
            "bootstrap": bootstrap,
            "embedded_broker": embedded,
            "config": config,
        }


def percentiles_ms(latency_us: Counter[int]) -> dict[str, float | None]:
    """p50 / p99 / p99.9 / max in ms of a latency histogram in microseconds."""
    from hdrh.histogram import HdrHistogram

    hist = HdrHistogram(1, 3_600_000_000, 3)
    for value, count in latency_us.items():
        hist.record_value(max(1, value), count)
    if not hist.get_total_count():
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    return {
        "p50_ms": round(hist.get_value_at_percentile(50) / 1000, 3),
        "p99_ms": round(hist.get_value_at_percentile(99) / 1000, 3),
        "p999_ms": round(hist.get_value_at_percentile(99.9) / 1000, 3),
        "max_ms": round(hist.get_max_value() / 1000, 3),
    }


# -- the broker and the topic ------------------------------------------------------------------


@contextlib.contextmanager
def broker_for(options: Options) -> Iterator[tuple[str, bool]]:
    """(bootstrap, embedded): the given broker, or an embedded one on a temporary dir."""
    if options.bootstrap_server is not None:
        yield options.bootstrap_server, False
        return
    from kvlog.workers.supervisor import Broker

    root = Path(tempfile.mkdtemp(prefix="kvlog-perf-"))
    try:
        count = max(options.log_dirs or 0, options.replication_factor)
        log_dirs = [root / "logs" / str(i) for i in range(count)]
        with Broker(root, "tcp://127.0.0.1:0", log_dirs=log_dirs) as broker:
            options.bootstrap_server = broker.bootstrap
            options.kafka_bootstrap = options.kafka_bootstrap or broker.kafka_bootstrap
            try:
                yield broker.bootstrap, True
            finally:
                options.bootstrap_server = None
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ensure_topic(options: Options) -> int:
    """Create the topic if missing; returns its partition count."""
    from kvlog.errors import TopicAlreadyExistsError
    from kvlog.ipc.admin import Admin

    with Admin(client_config(options.bootstrap_server, options.command_config)) as admin:
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topic(options.topic, options.partitions, options.replication_factor)
        return len(admin.describe_topic(options.topic).partitions)


def payloads(options: Options) -> tuple[list[bytes | None], list[bytes]]:
    keys = [os.urandom(options.key_size) if options.key_size else None for _ in range(POOL)]
    values = [os.urandom(options.record_size) for _ in range(POOL)]
    return keys, values


# -- progress ----------------------------------------------------------------------------------

Tick = Callable[[int], None]
TopicPartitionLike = Any  # kvlog.types.TopicPartition, imported lazily


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool) -> Iterator[Tick]:
    if not enabled:
        yield lambda _n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=make_console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


class ChildConsumer:
    """A perf run's consumer in its own process (``python -m MODULE FLAG SPEC``): it
    prints a line once it is ready and its JSON report as its last line. Used as a
    context manager around the produce side; an exception there kills it."""

    def __init__(self, module: str, flag: str, spec: dict[str, Any], what: str) -> None:
        self.args = [sys.executable, "-m", module, flag, json.dumps(spec)]
        self.what = what
        self.child: subprocess.Popen[str] | None = None

    def __enter__(self) -> ChildConsumer:
        child = self.child = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        if not child.stdout.readline():
            child.kill()
            child.wait()
            raise click.ClickException(f"{self.what} failed to start (see above)")
        return self

    def report(self, timeout_s: float) -> dict[str, Any]:
        """Wait for the child to finish; its report."""
        assert self.child is not None
        out, _ = self.child.communicate(timeout=timeout_s)
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        if self.child.returncode != 0 or not lines:
            raise click.ClickException(f"{self.what} failed (exit code {self.child.returncode})")
        report: dict[str, Any] = lines[-1]
        return report

    def __exit__(self, *exc: object) -> None:
        if self.child is not None and self.child.returncode is None:
            self.child.kill()
            self.child.wait()


# -- presentation ------------------------------------------------------------------------------


# What a throughput run's latency is (printed under it, and in its --json as "latency_note").
QUEUEING_NOTE = (
    "note: this run sends as fast as the producer takes records, so its latency is mostly "
    "queueing (a record waits behind the ones sent before it in the producer's buffer), "
    "not the broker's answer time; kvlog perf e2e --rate N measures latency at a set rate."
)


def _report(result: dict[str, Any]) -> None:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    if result["test"] == "produce-paired":
        for k, r in enumerate(result["rounds"]):
            click.echo(
                f"round {k}: idempotent {r['idempotent_records_per_s']:,.0f} records/s, "
                f"transactional {r['transactional_records_per_s']:,.0f} records/s: "
                f"{r['ratio']:.0%} (commit p50 {r['commit_p50_ms']:.2f} ms)"
            )
        click.echo(
            f"transactional / idempotent ({result['records_per_transaction']:,} records per "
            f"transaction): median {result['ratio_median']:.0%}, range "
            f"{result['ratio_min']:.0%} - {result['ratio_max']:.0%}; commit p50 "
            f"{result['commit_p50_ms']:.2f} ms; load {result['load_before'][0]:.1f} -> "
            f"{result['load_after'][0]:.1f}"
        )
        return

    line = (
        f"{result['records']:,} records in {result['seconds']:.2f} s: "
        f"{result['records_per_s']:,.0f} records/s, {result['mb_per_s']:.2f} MB/s"
    )
    click.echo(line)
    click.echo(
        f"latency ({result['latency']}, ms): p50 {fmt(result['p50_ms'])}, p99 "
        f"{fmt(result['p99_ms'])}, p99.9 {fmt(result['p999_ms'])}, max {fmt(result['max_ms'])}"
    )
    if result["test"] == "produce":
        click.echo(QUEUEING_NOTE)
    if result.get("missing"):
        click.echo(f"{result['missing']} record(s) never reached the consumer")


def common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed(
        [
            click.option(
                "--bootstrap-server",
                default=None,
                metavar="HOST:PORT",
                help="Broker to test (default: an embedded broker on a temporary data dir).",
            ),
            click.option(
                "--command-config",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                default=None,
                help="Client settings file (dotted names; TOML or .properties).",
            ),
            click.option("--topic", default="kvlog-perf", show_default=True),
            click.option(
                "--partitions",
                type=click.IntRange(min=1),
                default=1,
                show_default=True,
                help="Partitions when the topic is created here.",
            ),
            click.option(
                "--replication-factor",
                type=click.IntRange(min=1),
                default=1,
                show_default=True,
                help="When the topic is created here (embedded: as many log dirs).",
            ),
            click.option(
                "--records", type=click.IntRange(min=1), default=1_000_000, show_default=True
            ),
            click.option(
                "--record-size",
                type=click.IntRange(min=0),
                default=100,
                show_default=True,
                help="Value size in bytes.",
            ),
            click.option(
                "--key-size",
                type=click.IntRange(min=0),
                default=16,
                show_default=True,
                help="Key size in bytes (0: no key, sticky partitioning).",
            ),
            click.option("--acks", type=click.Choice(ACKS), default="all", show_default=True),
            click.option(
                "--compression", type=click.Choice(CODECS), default="none", show_default=True
            ),
            click.option(
                "--batch-size",
                type=click.IntRange(min=1),
                default=None,
                help="Producer batch.size in bytes [default: the producer's, "
                f"{PRODUCER_SETTINGS.default('batch.size')}; consume's fill: 1 MiB].",
            ),
            click.option(
                "--linger-ms",
                type=click.IntRange(min=0),
                default=None,
                help="Producer linger.ms [default: the producer's, "
                f"{PRODUCER_SETTINGS.default('linger.ms')}; e2e: 0].",
            ),
            click.option(
                "--log-dirs",
                type=click.IntRange(min=1),
                default=None,
                help="Embedded broker: log dirs, one node process each [default: the "
                "replication factor].",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
        ]
    ):
        f = decorator(f)
    return f


send_batch_option = click.option(
    "--send-batch",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="Use Producer.send_batch with N records per call (0: send() per record).",
)
client_options = (
    click.option(
        "--client",
        type=click.Choice(("kvlog", "confluent-kafka", "kafka-python")),
        default="kvlog",
        show_default=True,
        help="Whose client runs: kvlog's (ZeroMQ) or a Kafka client on the Kafka listener.",
    ),
    click.option(
        "--kafka-bootstrap",
        default=None,
        metavar="HOST:PORT",
        help="The broker's Kafka listener, for --client with --bootstrap-server "
        "[default: the embedded broker's].",
    ),
    click.option(
        "--client-setting",
        multiple=True,
        metavar="KEY=VALUE",
        help="A Kafka client's own setting, e.g. fetch.queue.backoff.ms=5 (repeatable).",
    ),
)


def with_client_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed(client_options):
        f = decorator(f)
    return f


preload_option = click.option(
    "--preload",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Records stored before the run (untimed).",
)


def _run(options: Options, body: Callable[[Options, bool], Result | PairedResult]) -> None:
    if options.bootstrap_server is not None:
        from .common import check_endpoint

        check_endpoint(options.bootstrap_server, "--bootstrap-server")
    bars = sys.stderr.isatty() and not options.as_json
    with broker_for(options) as (bootstrap, embedded):
        ensure_topic(options)
        result = body(options, bars).as_dict(options, bootstrap, embedded)
    if options.as_json:
        click.echo(json.dumps(result))
    else:
        _report(result)
