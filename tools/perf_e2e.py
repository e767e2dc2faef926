"""``kvlog perf e2e``: produce -> consume latency at a fixed rate, the consumer in its own
process (this module is also that process: ``python -m kvlog.tools.perf_e2e
--e2e-consumer SPEC``). See tools/perf_client.py's docstring for the measurement."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from typing import Any

import click

from .common import Command
from .perf_common import (
    _STAMP,
    POOL,
    ChildConsumer,
    Options,
    Result,
    Tick,
    _run,
    common_options,
    payloads,
    percentiles_ms,
    progress_bar,
)

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
            "kvlog.tools.perf_e2e", "--e2e-consumer", spec, "the e2e consumer process"
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
