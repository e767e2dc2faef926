"""``kvlog perf pipeline``: produce and consume at the same time.

One producer (this process; ``send()`` per record, or ``Producer.send_batch`` with
``--send-batch N``) writes ``--records`` records as fast as it can while one consumer in
another process (its own GIL) reads them from the log end as they arrive. Reported:

- ``records_per_s``: the pipeline's rate, records over the time from the producer's
  first send to the consumer's last record (the figure the scenario is about);
- ``produce_records_per_s``: the producer's own rate (first send to end of flush);
- ``consume_records_per_s``: the consumer's rate from its first record to its last.

Options and the embedded broker are those of ``kvlog perf produce``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from .common import Command
from .perf_client import run_produce, run_produce_batches
from .perf_common import (
    ChildConsumer,
    Options,
    Result,
    Tick,
    _run,
    common_options,
    progress_bar,
    send_batch_option,
)

IDLE_S = 15.0


def _consumer_main(spec: dict[str, Any]) -> None:
    """The consumer process: counts ``expected`` records from the log end."""
    from kvlog.ipc.consumer import Consumer
    from kvlog.types import TopicPartition

    clock = time.time  # comparable across processes (perf_counter is not)
    received = 0
    first = last = 0.0
    with Consumer(spec["config"]) as consumer:
        topic = spec["topic"]
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_end()
        for tp in tps:
            consumer.position(tp)
        print(json.dumps({"ready": True}), flush=True)
        idle_since = time.monotonic()
        warm_up = 1  # the producer's warm-up record comes first: not counted
        while received < spec["expected"]:
            # The consume clock starts at the poll that returns the first record: with
            # large batches one poll may return every record.
            polled = clock()
            batch = consumer.poll(timeout_ms=200)
            if not batch:
                if time.monotonic() - idle_since > IDLE_S:
                    break
                continue
            idle_since = time.monotonic()
            last = clock()
            got = sum(len(records) for records in batch.values())
            if warm_up:
                got -= warm_up
                warm_up = 0
                if not got:
                    continue
            if not received:
                first = polled
            received += got
    print(json.dumps({"received": received, "first": first, "last": last}), flush=True)


def run_pipeline(options: Options, tick: Tick, max_poll_records: int) -> Result:
    spec = {
        "topic": options.topic,
        "expected": options.records,
        "config": options.consumer_config(
            **{"max.poll.records": max_poll_records, "client.id": "kvlog-perf-pipeline"}
        ),
    }
    with ChildConsumer(
        "kvlog.tools.perf_pipeline", "--consumer", spec, "the pipeline's consumer process"
    ) as child:
        produced = (
            run_produce_batches(options, tick) if options.send_batch else run_produce(options, tick)
        )
        report = child.report(timeout_s=IDLE_S + 120)
    received = report["received"]
    n = options.records
    if received < n:
        raise click.ClickException(f"the consumer got {received} of {n} records")
    produce_s = produced.seconds
    consume_s = report["last"] - report["first"]
    produced.test = "pipeline"
    produced.seconds = report["last"] - produced.started_wall
    produced.extra.update(
        {
            "produce_records_per_s": round(n / produce_s, 1),
            "consume_records_per_s": round(received / consume_s, 1) if consume_s else None,
            "received": received,
        }
    )
    return produced


@click.command("pipeline", cls=Command)
@common_options
@send_batch_option
@click.option("--max-poll-records", type=click.IntRange(min=1), default=10_000, show_default=True)
def perf_pipeline(max_poll_records: int, **kwargs: Any) -> None:
    """Produce and consume together: one producer, one consumer process."""
    options = Options(**kwargs)

    def body(o: Options, bars: bool) -> Result:
        with progress_bar("produce + consume", o.records, bars) as tick:
            return run_pipeline(o, tick, max_poll_records)

    _run(options, body)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--consumer":
        _consumer_main(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: kvlog perf pipeline (this module runs its consumer process)")
