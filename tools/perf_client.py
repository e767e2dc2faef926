"""``kvlog perf produce|consume|e2e``: client throughput and latency against a broker.

Without ``--bootstrap-server`` each command starts an embedded :class:`kvlog.Broker` on a
temporary data dir (one log dir per replica of ``--replication-factor``) and removes it
afterwards. Keys and values are random bytes from a pool of 1,024 of each, built before
the clock starts. MB/s counts key + value bytes (10^6 bytes per MB).

- ``produce``: one producer sends ``--records`` records as fast as ``send()`` goes and
  flushes; the time runs from the first send to the end of the flush. Latency is send ->
  acknowledgement per record (every k-th record, k = records // 100,000 or 1, so at least
  100,000 are timed), from the producer's batch futures. ``--send-batch N`` uses the fast
  path instead, ``Producer.send_batch`` with N records per call (every record timed: the
  call's start to its batch's acknowledgement).
- ``consume``: fills the topic first (untimed; batches of ``--batch-size``, default 1 MiB)
  unless ``--no-fill``, then one consumer reads ``--records`` records from the start of
  every partition. Latency is the
  duration of the ``poll()`` calls that returned records.
- ``--preload N`` (produce, consume): stores N records first (untimed, like the fill), so
  the run appends to (or reads after) a log that already holds them. Consume then reads
  the ``--records`` records filled after the preload, not the preloaded ones.
- ``--log-dirs N``: the embedded broker gets N log dirs (N node processes; default: the
  replication factor), e.g. 3 log dirs with replication factor 1 for three writers.
- ``e2e``: produces ``--rate`` records/s for ``--seconds`` with the send time (CLOCK_MONOTONIC,
  ns) in each value's first 8 bytes; a consumer in another process (so neither shares a
  GIL with the other) records produce -> consume latency per record, and the producer
  records send -> acknowledgement of the same records (``ack_p50_ms`` ... ``ack_max_ms``:
  the produce half). ``--linger-ms`` defaults to 0 here.

``--json`` prints one object with at least ``records_per_s``, ``mb_per_s``, ``p50_ms``,
``p99_ms``, ``p999_ms`` and ``max_ms`` (HdrHistogram, microsecond resolution), and
``latency`` naming what the percentiles measure, and ``percentiles``: [percentile, ms]
pairs of the whole distribution (for plots). A progress bar shows on a terminal only,
never with ``--json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from kvlog.ipc.config import PRODUCER_SETTINGS

from .common import Command, client_config, make_console

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


# -- produce -----------------------------------------------------------------------------------


def run_produce(options: Options, tick: Tick) -> Result:
    from kvlog.ipc.producer import Producer

    n = options.records
    keys, values = payloads(options)
    topic = options.topic
    stride = max(1, n // MAX_SAMPLES)
    # Per sample: a send time and the index of its batch, in arrays: per-record objects
    # that the garbage collector tracks (tuples, say) would slow the producer itself.
    sent_at = array("d")
    batch_of = array("l")
    batches: dict[Any, int] = {}
    acked_at: dict[Any, float] = {}
    clock = time.perf_counter

    def on_ack(batch: Any) -> None:
        acked_at[batch] = clock()

    with Producer(options.producer_config()) as producer:
        producer.send(topic, value=b"warm-up").get(timeout=30)  # metadata and producer id
        send = producer.send
        mask = POOL - 1
        started_wall = time.time()
        started = clock()
        for first in range(0, n, CHUNK):
            for i in range(first, min(n, first + CHUNK)):
                future = send(topic, values[i & mask], keys[i & mask])
                if not i % stride:
                    # One real future per batch (FutureRecordMetadata._batch): time its
                    # acknowledgement once, not with a callback per record.
                    batch = future._batch
                    index = batches.get(batch)
                    if index is None:
                        index = batches[batch] = len(batches)
                        batch.add_callback(on_ack)
                    sent_at.append(clock())
                    batch_of.append(index)
            tick(min(CHUNK, n - first))
        producer.flush()
        seconds = clock() - started
    failed = [b.error for b in batches if b.error is not None]
    if failed:
        raise click.ClickException(f"{len(failed)} batch(es) failed; the first: {failed[0]}")
    ack_by_index = [acked_at[b] for b in batches]  # dicts keep insertion order
    latency = Counter(
        int((ack_by_index[k] - t) * 1e6) for t, k in zip(sent_at, batch_of, strict=True)
    )
    return Result(
        "produce",
        n,
        seconds,
        n * (options.key_size + options.record_size),
        "send -> acknowledgement, per record" + (f" (1 in {stride} sampled)" if stride > 1 else ""),
        latency,
        {"api": "send"},
        started_wall,
    )


def run_produce_batches(options: Options, tick: Tick) -> Result:
    """``--send-batch N``: ``Producer.send_batch`` with N records per call. Every record's
    latency is its call's start -> the acknowledgement of the batch that holds it."""
    from kvlog.ipc.producer import Producer

    n = options.records
    chunk = options.send_batch
    keys, values = chunk_payloads(options, chunk)
    topic = options.topic
    clock = time.perf_counter
    calls: list[tuple[float, Any]] = []  # (call start, BatchSendResult): one per chunk
    acked_at: dict[Any, float] = {}

    def on_ack(batch: Any) -> None:
        acked_at[batch] = clock()

    with Producer(options.producer_config()) as producer:
        producer.send(topic, value=b"warm-up").get(timeout=30)  # metadata and producer id
        send_batch = producer.send_batch
        started_wall = time.time()
        started = clock()
        done = 0
        while done < n:
            size = min(chunk, n - done)
            ks = keys[:size] if keys is not None else None
            t = clock()
            result = send_batch(topic, values[:size], ks)
            for batch in result._batches:
                future = batch.future
                if future not in acked_at:
                    acked_at[future] = 0.0
                    future.add_callback(on_ack)
            calls.append((t, result))
            done += size
            tick(size)
        producer.flush()
        seconds = clock() - started
    latency: Counter[int] = Counter()
    for t, result in calls:
        for index, records in Counter(result._batch_of).items():
            future = result._batches[index].future
            if future.error is not None:
                raise click.ClickException(f"a batch failed: {future.error}")
            latency[int((acked_at[future] - t) * 1e6)] += records
    return Result(
        "produce",
        n,
        seconds,
        n * (options.key_size + options.record_size),
        f"send_batch call -> acknowledgement, per record ({chunk} records per call)",
        latency,
        {"api": "send_batch", "send_batch_records": chunk},
        started_wall,
    )


def chunk_payloads(options: Options, chunk: int) -> tuple[list[bytes] | None, list[bytes]]:
    """``chunk`` values and keys (None: unkeyed) for send_batch: the first ``chunk`` of a
    long-enough cycle of the random pool, rotated per call would cost time per record."""
    keys, values = payloads(options)
    reps = -(-chunk // POOL)
    vs = (values * reps)[:chunk]
    ks = None if not options.key_size else (keys * reps)[:chunk]
    return ks, vs  # type: ignore[return-value]


# -- consume -----------------------------------------------------------------------------------


def fill(options: Options, tick: Tick, records: int | None = None) -> None:
    """Store ``records`` (default ``--records``) records in the topic, as fast as possible
    (not timed), through ``send_batch``."""
    from kvlog.ipc.producer import Producer

    total = options.records if records is None else records
    chunk = FILL_CHUNK
    keys, values = chunk_payloads(options, chunk)
    config = options.producer_config(acks="1")
    # Large batches unless --batch-size / --linger-ms say otherwise: the stored batches
    # are what the consumer then reads.
    if options.batch_size is None:
        config["batch.size"] = FILL_BATCH_SIZE
    if options.linger_ms is None:
        config["linger.ms"] = 20
    with Producer(config) as producer:
        send_batch = producer.send_batch
        topic = options.topic
        done = 0
        while done < total:
            size = min(chunk, total - done)
            send_batch(topic, values[:size], keys[:size] if keys is not None else None)
            done += size
            tick(size)
        producer.flush()


def preload(options: Options, bars: bool) -> dict[TopicPartitionLike, int]:
    """``--preload N``: store N records (untimed); returns each partition's end offset."""
    if options.preload:
        with progress_bar("preload (untimed)", options.preload, bars) as tick:
            fill(options, tick, options.preload)
        # Write back what the preload left dirty now, not during the timed run (a 10M
        # preload is ~1.2 GB of LMDB pages; their writeback would compete for the CPU).
        os.sync()
    return end_offsets(options)


def end_offsets(options: Options) -> dict[TopicPartitionLike, int]:
    from kvlog.ipc.consumer import Consumer
    from kvlog.types import TopicPartition

    with Consumer(options.consumer_config()) as consumer:
        tps = [
            TopicPartition(options.topic, p)
            for p in sorted(consumer.partitions_for_topic(options.topic))
        ]
        return dict(consumer.end_offsets(tps))


def run_consume(
    options: Options,
    tick: Tick,
    max_poll_records: int,
    start: dict[TopicPartitionLike, int] | None = None,
    columns: bool = False,
) -> Result:
    """One consumer reads ``--records`` records from ``start`` (default: the beginning),
    with ``poll()`` or, with ``columns``, ``poll_batch()``."""
    from kvlog.ipc.consumer import Consumer
    from kvlog.types import TopicPartition

    n = options.records
    durations: Counter[int] = Counter()
    received = 0
    config = options.consumer_config(**{"max.poll.records": max_poll_records})
    with Consumer(config) as consumer:
        tps = [
            TopicPartition(options.topic, p)
            for p in sorted(consumer.partitions_for_topic(options.topic))
        ]
        consumer.assign(tps)
        clock = time.perf_counter
        started = clock()
        consumer.seek_to_beginning()
        for tp, offset in (start or {}).items():
            if offset:
                consumer.seek(tp, offset)
        idle_since = started
        poll = consumer.poll_batch if columns else consumer.poll
        while received < n:
            t = clock()
            batch = poll(timeout_ms=1000, max_records=min(max_poll_records, n - received))
            now = clock()
            if not batch:
                if now - idle_since > 10:
                    raise click.ClickException(
                        f"only {received} of {n} records arrived (nothing for 10 s); is the topic "
                        "that full? (without --no-fill it is filled first)"
                    )
                continue
            idle_since = now
            durations[int((now - t) * 1e6)] += 1
            got = sum(len(records) for records in batch.values())
            received += got
            tick(got)
        seconds = clock() - started
    # MB/s assumes --key-size + --record-size bytes per record (true for what fill() wrote).
    payload = received * (options.key_size + options.record_size)
    what = "poll_batch() call duration" if columns else "poll() call duration"
    result = Result("consume", received, seconds, payload, what, durations)
    result.extra["api"] = "poll_batch" if columns else "poll"
    return result


# -- e2e ---------------------------------------------------------------------------------------


def _e2e_consumer_main(spec: dict[str, Any]) -> None:
    """The e2e consumer process: reads ``expected`` records, reports latencies as JSON."""
    from kvlog.ipc.consumer import Consumer
    from kvlog.types import TopicPartition

    latency: Counter[int] = Counter()
    received = 0
    with Consumer(spec["config"]) as consumer:
        topic = spec["topic"]
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_end()
        for tp in tps:
            consumer.position(tp)
        print(json.dumps({"ready": True}), flush=True)
        now_ns = time.monotonic_ns
        unpack = _STAMP.unpack_from
        idle_limit = spec["idle_s"]
        last = time.monotonic()
        while received < spec["expected"]:
            batch = consumer.poll(timeout_ms=200)
            if not batch:
                if time.monotonic() - last > idle_limit:
                    break
                continue
            now = now_ns()
            last = time.monotonic()
            for records in batch.values():
                for r in records:
                    latency[(now - unpack(r.value)[0]) // 1000] += 1
                received += len(records)
    print(json.dumps({"received": received, "latency_us": list(latency.items())}), flush=True)


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


def run_e2e(options: Options, tick: Tick, rate: int, seconds: float) -> Result:
    from kvlog.ipc.producer import Producer

    total = max(1, int(rate * seconds))
    spec = {
        "topic": options.topic,
        "expected": total,
        "idle_s": 15.0,
        "config": options.consumer_config(
            **{"fetch.max.wait.ms": 500, "client.id": "kvlog-perf-e2e"}
        ),
    }
    pad = os.urandom(max(0, options.record_size - _STAMP.size))
    keys, _ = payloads(options)
    with Producer(options.producer_config()) as producer:
        # Metadata and a producer id first, before the consumer starts at the log end.
        producer.send(options.topic, value=_STAMP.pack(time.monotonic_ns()) + pad).get(30)
        with ChildConsumer(
            "kvlog.tools.perf_client", "--e2e-consumer", spec, "the e2e consumer process"
        ) as child:
            send = producer.send
            topic = options.topic
            pack = _STAMP.pack
            now_ns = time.monotonic_ns
            interval_ns = int(1e9 / rate)
            acked: Counter[int] = Counter()  # send -> acknowledgement, us (the I/O thread)

            def on_ack(_meta: Any, sent: int) -> None:
                acked[(now_ns() - sent) // 1000] += 1

            mask = POOL - 1
            started_ns = now_ns()
            for i in range(total):
                wait = started_ns + i * interval_ns - now_ns()
                if wait > 0:
                    time.sleep(wait / 1e9)
                sent = now_ns()
                send(topic, pack(sent) + pad, keys[i & mask]).add_callback(on_ack, sent)
                if not i & 1023:
                    tick(min(1024, total - i))
            producer.flush()
            elapsed = (now_ns() - started_ns) / 1e9
            report = child.report(timeout_s=60)
    latency = Counter({int(v): int(c) for v, c in report["latency_us"]})
    received = report["received"]
    lost = total - received
    return Result(
        "e2e",
        total,
        elapsed,
        total * (options.key_size + max(options.record_size, _STAMP.size)),
        "produce -> consume, per record",
        latency,
        {
            "target_rate": rate,
            "received": received,
            "missing": max(0, lost),
            # The produce half of the latency: send -> acknowledgement of the same records.
            **{f"ack_{k}": v for k, v in percentiles_ms(acked).items()},
        },
    )


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


def _run(options: Options, body: Callable[[Options, bool], Result]) -> None:
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


@click.command("produce", cls=Command)
@common_options
@send_batch_option
@preload_option
@with_client_options
def perf_produce(**kwargs: Any) -> None:
    """Producer throughput and send -> ack latency."""
    options = Options(**kwargs)

    def body(o: Options, bars: bool) -> Result:
        stored = sum(preload(o, bars).values())
        with progress_bar("produce", o.records, bars) as tick:
            if o.client != "kvlog":
                from . import perf_kafka_clients

                result = perf_kafka_clients.run_produce(o, tick)
            elif o.send_batch:
                result = run_produce_batches(o, tick)
            else:
                result = run_produce(o, tick)
        result.extra["stored_before"] = stored
        return result

    _run(options, body)


@click.command("consume", cls=Command)
@common_options
@click.option("--no-fill", is_flag=True, help="Read what the topic holds; do not produce first.")
@click.option("--max-poll-records", type=click.IntRange(min=1), default=10_000, show_default=True)
@preload_option
@click.option(
    "--poll-batch",
    "columns",
    is_flag=True,
    help="Read with Consumer.poll_batch() (columns) instead of poll() (a record each).",
)
@with_client_options
def perf_consume(no_fill: bool, max_poll_records: int, columns: bool, **kwargs: Any) -> None:
    """Consumer throughput: one consumer reads --records records from the start (after
    --preload's records)."""
    options = Options(**kwargs)
    if options.client != "kvlog" and (options.preload or columns):
        raise click.UsageError("--preload and --poll-batch are kvlog's client's options")

    def body(o: Options, bars: bool) -> Result:
        if o.client != "kvlog":
            from . import perf_kafka_clients

            if not no_fill:
                with progress_bar("fill (untimed)", o.records, bars) as tick:
                    perf_kafka_clients.fill(o, tick)
            partitions = ensure_topic(o)
            with progress_bar("consume", o.records, bars) as tick:
                return perf_kafka_clients.run_consume(o, tick, max_poll_records, partitions)
        start = preload(o, bars) if o.preload else None
        if not no_fill:
            with progress_bar("fill (untimed)", o.records, bars) as tick:
                fill(o, tick)
        with progress_bar("consume", o.records, bars) as tick:
            result = run_consume(o, tick, max_poll_records, start, columns)
        result.extra["stored_before"] = sum(start.values()) if start else 0
        return result

    _run(options, body)


@click.command("e2e", cls=Command)
@common_options
@click.option(
    "--rate", type=click.IntRange(min=1), default=2000, show_default=True, help="Records/s."
)
@click.option("--seconds", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
def perf_e2e(rate: int, seconds: float, **kwargs: Any) -> None:
    """Produce -> consume latency at a fixed rate (--records is ignored: rate x seconds)."""
    options = Options(**kwargs)
    if options.linger_ms is None:
        options.linger_ms = 0

    def body(o: Options, bars: bool) -> Result:
        with progress_bar("e2e", max(1, int(rate * seconds)), bars) as tick:
            return run_e2e(o, tick, rate, seconds)

    _run(options, body)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--e2e-consumer":
        _e2e_consumer_main(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: kvlog perf e2e (this module runs its consumer process)")
