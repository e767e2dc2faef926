"""``kvlog perf sizing``: N producers and M consumers for T seconds at a target rate.

What a user runs to size a machine: ``--producers`` processes share ``--rate`` records/s
(``send()`` per record, each record stamped with the system-wide monotonic clock), while
``--consumers`` processes read the topic's partitions (partition ``p`` goes to consumer
``p % M``) from the log end. Printed: the produced and consumed rates, end-to-end latency
(send -> ``poll()`` returns it) p50 / p99 / p99.9 / max, and, with ``--plot FILE``, a PNG
of latency over time (p50, p99 and max per window) with the consumed rate under it, so a
stall (an fsync that took long, a compaction, a GC pause) shows where it happened instead
of vanishing into a percentile. The plot needs matplotlib (``pip install kvlog[plot]``).

Options and the embedded broker are those of ``kvlog perf e2e`` (linger.ms 0 unless set).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click

from .common import Command
from .perf_common import (
    _STAMP,
    POOL,
    Options,
    Result,
    Tick,
    _run,
    common_options,
    payloads,
    percentiles_ms,
    progress_bar,
)

IDLE_S = 3.0  # a consumer stops once idle this long after the last send is due
MAX_SERIES = 200_000  # (send time, latency) samples kept per consumer for the plot


def _producer_main(spec: dict[str, Any]) -> None:
    """A producer process: ``rate`` records/s for ``seconds`` from ``start_ns``."""
    from kvlog.ipc.producer import Producer

    options = Options(**spec["options"])
    pad = os.urandom(max(0, options.record_size - _STAMP.size))
    keys, _ = payloads(options)
    failed = 0  # sampled: one record in 256 carries an errback

    def on_error(_exc: Any) -> None:
        nonlocal failed
        failed += 1

    rate, total = spec["rate"], spec["records"]
    with Producer(options.producer_config()) as producer:
        print(json.dumps({"ready": True}), flush=True)
        start = spec["start_ns"]
        interval_ns = int(1e9 / rate)
        now_ns, pack, send, topic = time.monotonic_ns, _STAMP.pack, producer.send, options.topic
        mask = POOL - 1
        for i in range(total):
            wait = start + i * interval_ns - now_ns()
            if wait > 0:
                time.sleep(wait / 1e9)
            future = send(topic, pack(now_ns()) + pad, keys[i & mask])
            if not i & 255:
                future.add_errback(on_error)
        producer.flush()
    print(json.dumps({"sent": total, "failed": failed, "end_ns": time.monotonic_ns()}), flush=True)


def _consumer_main(spec: dict[str, Any]) -> None:
    """A consumer process: its share of the partitions, from the log end."""
    from kvlog.ipc.consumer import Consumer
    from kvlog.types import TopicPartition

    latency: Counter[int] = Counter()
    series: list[tuple[int, int]] = []  # (send ns, latency us), every stride-th record
    stride, seen, received = spec["stride"], 0, 0
    with Consumer(spec["config"]) as consumer:
        topic = spec["topic"]
        tps = [
            TopicPartition(topic, p)
            for p in sorted(consumer.partitions_for_topic(topic))
            if p % spec["consumers"] == spec["index"]
        ]
        consumer.assign(tps)
        consumer.seek_to_end()
        for tp in tps:
            consumer.position(tp)
        print(json.dumps({"ready": True}), flush=True)
        now_ns, unpack = time.monotonic_ns, _STAMP.unpack_from
        deadline = spec["end_ns"]
        last = time.monotonic()
        while True:
            batch = consumer.poll(timeout_ms=200)
            if not batch:
                if time.monotonic_ns() > deadline and time.monotonic() - last > spec["idle_s"]:
                    break
                continue
            now = now_ns()
            last = time.monotonic()
            for records in batch.values():
                for r in records:
                    sent = unpack(r.value)[0]
                    us = (now - sent) // 1000
                    latency[us] += 1
                    seen += 1
                    if seen % stride == 0:
                        series.append((sent, us))
            received = seen
            if received >= spec["expected"]:
                break
    print(
        json.dumps({"received": received, "latency_us": list(latency.items()), "series": series}),
        flush=True,
    )


def _spawn(flag: str, spec: dict[str, Any]) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-m", "kvlog.tools.perf_sizing", flag, json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    if not child.stdout.readline():
        child.kill()
        child.wait()
        raise click.ClickException(f"a {flag[2:]} process failed to start (see above)")
    return child


def _report(child: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    out, _ = child.communicate(timeout=timeout_s)
    lines = [line for line in out.splitlines() if line.strip()]
    if child.returncode != 0 or not lines:
        raise click.ClickException(f"a perf process failed (exit code {child.returncode})")
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def run_sizing(
    options: Options, tick: Tick, producers: int, consumers: int, rate: int, seconds: float
) -> tuple[Result, list[tuple[int, int]], int]:
    total = max(producers, int(rate * seconds))
    per_producer = total // producers
    total = per_producer * producers
    lead_ns = 2_000_000_000  # every process ready before the first send
    children: list[subprocess.Popen[str]] = []
    stride = max(1, total // consumers // MAX_SERIES)
    try:
        start_ns = time.monotonic_ns() + lead_ns + int(0.5e9 * (producers + consumers))
        end_ns = start_ns + int(seconds * 1e9)
        for index in range(consumers):
            config = options.consumer_config(
                **{"fetch.max.wait.ms": 500, "client.id": f"kvlog-perf-sizing-{index}"}
            )
            spec = {
                "topic": options.topic,
                "config": config,
                "index": index,
                "consumers": consumers,
                "expected": total,
                "end_ns": end_ns,
                "idle_s": IDLE_S,
                "stride": stride,
            }
            children.append(_spawn("--consumer", spec))
        fields = {k: v for k, v in vars(options).items() if k in Options.__dataclass_fields__}
        fields["command_config"] = str(options.command_config) if options.command_config else None
        producer_spec = {
            "options": fields,
            "rate": rate / producers,
            "records": per_producer,
            "start_ns": start_ns,
        }
        producer_children = [_spawn("--producer", producer_spec) for _ in range(producers)]
        children.extend(producer_children)
        sent = failed = 0
        last_end = start_ns
        for child in producer_children:
            report = _report(child, seconds + 120)
            sent += report["sent"]
            failed += report["failed"]
            last_end = max(last_end, report["end_ns"])
            tick(report["sent"])
        latency: Counter[int] = Counter()
        series: list[tuple[int, int]] = []
        received = 0
        for child in children[:consumers]:
            report = _report(child, IDLE_S + 120)
            received += report["received"]
            latency.update({int(v): int(c) for v, c in report["latency_us"]})
            series.extend((int(s), int(u)) for s, u in report["series"])
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                child.wait()
    elapsed = (last_end - start_ns) / 1e9
    series.sort()
    result = Result(
        "sizing",
        total,
        elapsed,
        total * (options.key_size + max(options.record_size, _STAMP.size)),
        "produce -> consume, per record",
        latency,
        {
            "producers": producers,
            "consumers": consumers,
            "target_rate": rate,
            "received": received,
            "missing": max(0, total - received),
            "failed_sends_sampled": failed,
            "start_ns": start_ns,
            "series_stride": stride,
        },
    )
    return result, series, start_ns


def plot_latency(
    series: list[tuple[int, int]],
    start_ns: int,
    window_s: float,
    path: Path,
    title: str,
    stride: int = 1,
) -> None:
    """Latency over time: p50, p99 and max per window (log scale), and the rate below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows: dict[int, list[int]] = {}
    for sent, us in series:
        windows.setdefault(int((sent - start_ns) / 1e9 / window_s), []).append(us)
    xs, p50, p99, top, counts = [], [], [], [], []
    for w in sorted(windows):
        values = sorted(windows[w])
        n = len(values)
        xs.append(w * window_s)
        p50.append(values[n // 2] / 1000)
        p99.append(values[min(n - 1, int(n * 0.99))] / 1000)
        top.append(values[-1] / 1000)
        counts.append(n * stride / window_s)
    fig, (ax, ax_rate) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot(xs, top, label="max", color="tab:red", linewidth=0.8)
    ax.plot(xs, p99, label="p99", color="tab:orange")
    ax.plot(xs, p50, label="p50", color="tab:blue")
    ax.set_yscale("log")
    ax.set_ylabel("produce -> consume latency (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    ax_rate.plot(xs, counts, color="tab:green")
    ax_rate.set_ylabel("records/s (by send time)")
    ax_rate.set_xlabel("seconds since the first send")
    ax_rate.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@click.command("sizing", cls=Command)
@common_options
@click.option("--producers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--consumers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--rate",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Records/s, all producers together.",
)
@click.option("--seconds", type=click.FloatRange(min=0.5), default=30.0, show_default=True)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write latency over time as a PNG (needs matplotlib: pip install kvlog[plot]).",
)
@click.option(
    "--window", type=click.FloatRange(min=0.01), default=0.5, show_default=True, help="Seconds."
)
def perf_sizing(
    producers: int,
    consumers: int,
    rate: int,
    seconds: float,
    plot_path: Path | None,
    window: float,
    **kwargs: Any,
) -> None:
    """N producers and M consumers for T seconds at a target rate: throughput, end-to-end
    latency percentiles, and latency over time (--plot) to see stalls."""
    options = Options(**kwargs)
    if options.linger_ms is None:
        options.linger_ms = 0
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            raise click.ClickException(
                "--plot needs matplotlib: pip install 'kvlog[plot]' (or matplotlib)"
            ) from exc
    out: dict[str, Any] = {}

    def body(o: Options, bars: bool) -> Result:
        with progress_bar("sizing", max(1, int(rate * seconds)), bars) as tick:
            result, series, start_ns = run_sizing(o, tick, producers, consumers, rate, seconds)
        if plot_path is not None:
            title = (
                f"kvlog perf sizing: {producers} producer(s), {consumers} consumer(s), "
                f"{rate:,} records/s, {o.partitions} partition(s), acks={o.acks}"
            )
            stride = result.extra["series_stride"]
            plot_latency(series, start_ns, window, plot_path, title, stride)
            result.extra["plot"] = str(plot_path)
        out["result"] = result
        return result

    _run(options, body)
    result = out.get("result")
    if result is not None and not options.as_json:
        extra = result.extra
        click.echo(
            f"received {extra['received']:,} of {result.records:,} "
            f"(target {rate:,} records/s over {producers} producer(s), "
            f"{consumers} consumer(s))" + (f"; plot: {extra['plot']}" if "plot" in extra else "")
        )


__all__ = ["percentiles_ms", "perf_sizing", "plot_latency", "run_sizing"]

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--producer":
        _producer_main(json.loads(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--consumer":
        _consumer_main(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: kvlog perf sizing (this module runs its producer and consumer processes)")
