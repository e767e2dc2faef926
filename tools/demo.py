"""``kvlog demo``: a broker, a topic, a keyed produce and a consumer-group round trip.

Starts :class:`kvlog.Broker` on ``./kvlog-data`` (its ZeroMQ and Kafka listeners on free
ports, so it never clashes with a running ``kvlog serve``; if a broker already runs on that
data dir, the demo uses it), prints both bootstrap addresses, creates the topic ``demo``
(3 partitions) if missing, produces a few keyed records, reads them back as consumer group
``demo-readers``, explains what happened and stops the broker. Records stay on disk: a
second run appends new ones, and the group resumes after the offsets it committed the
first time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from .common import Command, make_console

TOPIC = "demo"
GROUP = "demo-readers"
PARTITIONS = 3
EVENTS = (
    (b"alice", b"signed up"),
    (b"dave", b"signed up"),
    (b"alice", b"added a book to her cart"),
    (b"carol", b"signed up"),
    (b"dave", b"paid order 17"),
    (b"alice", b"paid order 18"),
)


@contextlib.contextmanager
def _broker(data_dir: Path) -> Iterator[tuple[str, str | None, bool]]:
    """(ZeroMQ bootstrap, Kafka bootstrap or None, started here): the data dir's running
    broker, else a new one."""
    from kvlog.workers.supervisor import Broker, read_status

    from .serve import read_run_file

    if read_status(data_dir):
        run = read_run_file(data_dir)
        if run.get("bootstrap"):
            yield run["bootstrap"], run.get("kafka_bootstrap"), False
            return
    # Port 0: free ports (kafka_listen "auto" follows: free Kafka ports too). No initial
    # rebalance delay: the demo's group has one member.
    with Broker(
        data_dir, "tcp://127.0.0.1:0", config={"group.initial.rebalance.delay.ms": 0}
    ) as broker:
        yield broker.bootstrap, broker.kafka_bootstrap, True


def _consume(bootstrap: str, run: str, expected: int) -> list[Any]:
    """Read as group GROUP until this run's records are in (or 20 s pass)."""
    from kvlog.ipc.consumer import Consumer

    got: list[Any] = []
    ours = 0
    with Consumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id=GROUP,
        client_id="kvlog-demo",
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1000,
    ) as consumer:
        deadline = time.monotonic() + 20
        while ours < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    got.append(r)
                    if dict(r.headers).get("run") == run.encode():
                        ours += 1
        consumer.commit()
    return got


@click.command(cls=Command)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("kvlog-data"),
    show_default=True,
    help="Where the broker keeps its data (created if missing).",
)
def demo(data_dir: Path) -> None:
    """Start a broker, produce keyed records and read them back as a consumer group."""
    from kvlog.errors import TopicAlreadyExistsError
    from kvlog.ipc.admin import Admin
    from kvlog.ipc.producer import Producer

    console = make_console()
    run = time.strftime("%H:%M:%S")
    started = time.monotonic()
    console.print(f"Starting a kvlog broker on data dir {data_dir.resolve()} ...")
    with _broker(data_dir) as (bootstrap, kafka_bootstrap, ours):
        console.print(
            f"Broker {'ready' if ours else 'already running'} "
            f"({time.monotonic() - started:.1f} s):\n"
            f"  ZeroMQ bootstrap {bootstrap}  (kvlog clients)\n"
            f"  Kafka bootstrap  {kafka_bootstrap or 'off'}  (Kafka clients)\n"
        )
        with Admin(bootstrap_servers=bootstrap) as admin:
            try:
                admin.create_topic(TOPIC, partitions=PARTITIONS)
                console.print(f"Created topic [bold]{TOPIC}[/bold] with {PARTITIONS} partitions.")
            except TopicAlreadyExistsError:
                console.print(
                    f"Topic [bold]{TOPIC}[/bold] exists already (records of earlier runs stay)."
                )

        produced = Table(title=f"Produced (acks=all, run {run})", title_justify="left")
        for column in ("key", "value", "partition", "offset"):
            produced.add_column(
                column, justify="right" if column in ("partition", "offset") else "left"
            )
        with Producer(bootstrap_servers=bootstrap, acks="all", client_id="kvlog-demo") as producer:
            futures = [
                (
                    key,
                    value,
                    producer.send(TOPIC, value=value, key=key, headers=[("run", run.encode())]),
                )
                for key, value in EVENTS
            ]
            for key, value, future in futures:
                meta = future.get(timeout=30)
                produced.add_row(
                    key.decode(), value.decode(), str(meta.partition), str(meta.offset)
                )
        console.print(produced)

        records = _consume(bootstrap, run, len(EVENTS))
        consumed = Table(title=f"Consumed by group {GROUP!r}", title_justify="left")
        older = any(dict(r.headers).get("run") != run.encode() for r in records)
        for column in ("partition", "offset", "key", "value", *([""] if older else [])):
            consumed.add_column(
                column, justify="right" if column in ("partition", "offset") else "left"
            )
        for r in sorted(records, key=lambda r: (r.partition, r.offset)):
            earlier = dict(r.headers).get("run") != run.encode()
            consumed.add_row(
                str(r.partition),
                str(r.offset),
                (r.key or b"").decode(errors="replace"),
                (r.value or b"").decode(errors="replace"),
                *(["(an earlier run)" if earlier else ""] if older else []),
            )
        console.print(consumed)
        if ours:
            console.print("Stopping the broker ...")
    mine = sum(1 for r in records if dict(r.headers).get("run") == run.encode())
    if mine != len(EVENTS):
        raise click.ClickException(
            f"only {mine} of the {len(EVENTS)} records produced came back; see the log above"
        )
    console.print(
        f"""
[bold]What just happened[/bold] ({time.monotonic() - started:.1f} s)
- A broker (supervisor, coordinator, one node, broker, sweeper: separate processes)
  stored topic {TOPIC!r} in {data_dir / "logs" / "0"} (LMDB, fsync'd on every commit).
- Each record went to partition murmur2(key) % {PARTITIONS}: the same key always lands on
  the same partition, so alice's events stay in order.
- Group {GROUP!r} read them and committed its offsets; run the demo again and it reads
  only the new records. The old ones stay on disk until retention removes them.

[bold]Try next[/bold]
  kvlog serve                                  # ZeroMQ on 127.0.0.1:7092, Kafka on 127.0.0.1:9092
  kvlog topics create orders --partitions 4
  kvlog topics list
  kvlog topics describe orders
  kvlog produce orders --key-separator :       # type key:value lines, Ctrl-D to send
  kvlog consume orders --from-beginning --print-key --print-partition --print-offset
  kvlog groups describe {GROUP}
  kvlog dump --log-dir {data_dir / "logs" / "0"} --topic {TOPIC} --records
  kvlog perf produce --records 200000"""
    )
