"""``kvlog produce`` and ``kvlog consume``: Kafka's console producer and consumer.

``kvlog produce TOPIC`` sends one record per stdin line (``--key-separator SEP``: the line
is ``key SEP value``) and flushes at EOF. ``kvlog consume TOPIC`` prints records, one per
line, in the layout of Kafka's console consumer: the fields asked for with ``--print-*``
(``CreateTime:<ms>``, ``Partition:<p>``, ``Offset:<o>``, headers), then key, then value,
separated by ``--key-separator`` (a tab by default). Values are written as the raw bytes
stored.

With ``--workers N --handler module:function``, ``kvlog consume`` runs a
:class:`kvlog.ConsumerPool` instead: N processes of group ``--group`` calling the handler
per record, dead-lettering records that keep failing, until SIGINT/SIGTERM.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from .client_cli import client_config, client_options
from .common import Command, err, parse_pairs, stop_on_signals

ACKS = ("0", "1", "all", "-1")
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def _separator(value: str | None) -> bytes | None:
    """``\\t`` and friends as typed on a shell line."""
    if value is None:
        return None
    if not value:
        raise click.BadParameter("the separator must not be empty", param_hint="--key-separator")
    if "\\" in value:  # typed escapes such as \t; other text (even non-ASCII) as is
        value = value.encode("latin-1", "backslashreplace").decode("unicode_escape")
    return value.encode()


# -- produce -----------------------------------------------------------------------------------


@click.command(cls=Command)
@click.argument("topic")
@click.option(
    "--key-separator",
    default=None,
    metavar="SEP",
    help="Each line is KEY SEP VALUE (split at the first SEP); without it lines have no key.",
)
@click.option("--acks", type=click.Choice(ACKS), default="all", show_default=True)
@click.option("--compression", type=click.Choice(CODECS), default="none", show_default=True)
@click.option(
    "--partition",
    type=click.IntRange(min=0),
    default=None,
    help="Send every record to this partition.",
)
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="KEY=VALUE",
    help="Header added to every record (repeatable).",
)
@click.option(
    "--producer-property",
    "properties",
    multiple=True,
    metavar="NAME=VALUE",
    help="Any producer setting by its dotted name, e.g. linger.ms=0 (repeatable).",
)
@client_options
def produce(
    topic: str,
    key_separator: str | None,
    acks: str,
    compression: str,
    partition: int | None,
    headers: tuple[str, ...],
    properties: tuple[str, ...],
    bootstrap_server: str | None,
    command_config: Path | None,
) -> None:
    """Send one record per stdin line to TOPIC; a summary goes to stderr."""
    from kvlog.ipc.producer import Producer

    separator = _separator(key_separator)
    header_list = [(k, v.encode()) for k, v in parse_pairs(headers, "--header").items()]
    config = client_config("producer", bootstrap_server, command_config)
    config.update(parse_pairs(properties, "--producer-property"))
    config.update({"acks": acks, "compression.type": compression})
    stdin = sys.stdin.buffer
    state = {"failed": 0, "error": ""}

    def on_error(exc: BaseException) -> None:
        state["failed"] += 1
        if not state["error"]:
            state["error"] = getattr(exc, "message", str(exc))

    sent = 0
    bad_line = 0
    started = time.monotonic()
    producer = Producer(config)
    try:
        with stop_on_signals(interrupt=True):
            try:
                for number, raw in enumerate(stdin, 1):
                    line = raw[:-1] if raw.endswith(b"\n") else raw
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    key = None
                    if separator is not None:
                        key, sep, value = line.partition(separator)
                        if not sep:
                            bad_line = number
                            break
                    else:
                        value = line
                    future = producer.send(
                        topic, value=value, key=key, headers=header_list, partition=partition
                    )
                    if acks != "0":
                        future.add_errback(on_error)
                    sent += 1
            except KeyboardInterrupt:
                err("interrupted: flushing what was read")
            producer.flush()
    finally:
        producer.close(timeout=10)
    seconds = time.monotonic() - started
    failed = state["failed"]
    err(
        f"sent {sent - failed} record(s) to {topic} in {seconds:.2f} s"
        + (f", {failed} failed: {state['error']}" if failed else "")
    )
    if bad_line:
        raise click.ClickException(
            f"line {bad_line} has no key separator {key_separator!r}; stopped there"
        )
    if failed:
        raise SystemExit(1)


# -- consume -----------------------------------------------------------------------------------


def _format_record(record: Any, sep: bytes, fields: tuple[bool, bool, bool, bool, bool]) -> bytes:
    ts, part, offset, hdrs, key = fields
    out = []
    if ts:
        kind = "LogAppendTime" if record.timestamp_type else "CreateTime"
        out.append(f"{kind}:{record.timestamp}".encode())
    if part:
        out.append(f"Partition:{record.partition}".encode())
    if offset:
        out.append(f"Offset:{record.offset}".encode())
    if hdrs:
        out.append(
            b",".join(name.encode() + b":" + value for name, value in record.headers)
            or b"NO_HEADERS"
        )
    if key:
        out.append(b"null" if record.key is None else record.key)
    out.append(b"null" if record.value is None else record.value)
    return sep.join(out) + b"\n"


def _start_offset(value: str | None) -> str | int | None:
    if value is None or value in ("earliest", "latest"):
        return value
    try:
        number = int(value)
    except ValueError:
        raise click.BadParameter(
            "must be a non-negative offset, 'earliest' or 'latest'", param_hint="--offset"
        ) from None
    if number < 0:
        raise click.BadParameter("must not be negative", param_hint="--offset")
    return number


@click.command(cls=Command)
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the earliest offset, not the end.")
@click.option(
    "--max-messages", type=click.IntRange(min=1), default=None, help="Exit after N records."
)
@click.option(
    "--partition", type=click.IntRange(min=0), default=None, help="Read only this partition."
)
@click.option(
    "--offset",
    default=None,
    help="With --partition: start at this offset (or 'earliest' / 'latest').",
)
@click.option("--group", default=None, help="Consume as a member of this consumer group.")
@click.option(
    "--timeout-ms",
    type=click.IntRange(min=0),
    default=None,
    help="Exit after this long without a record (with --group: counted from the moment the "
    "group assigned partitions).",
)
@click.option("--print-key", is_flag=True)
@click.option("--print-partition", is_flag=True)
@click.option("--print-offset", is_flag=True)
@click.option("--print-timestamp", is_flag=True)
@click.option("--print-headers", is_flag=True)
@click.option(
    "--key-separator",
    default="\\t",
    show_default=True,
    metavar="SEP",
    help="Between the printed fields.",
)
@click.option(
    "--consumer-property",
    "properties",
    multiple=True,
    metavar="NAME=VALUE",
    help="Any consumer setting by its dotted name (repeatable).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Pool mode: run N consumer processes of --group calling --handler.",
)
@click.option("--handler", default=None, metavar="MODULE:FUNCTION", help="Pool mode: the handler.")
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Pool mode: retries of a failing record before it goes to the DLQ.",
)
@click.option(
    "--dlq-topic", default=None, help="Pool mode: dead-letter topic [default: TOPIC.DLQ]."
)
@client_options
def consume(
    topic: str,
    from_beginning: bool,
    max_messages: int | None,
    partition: int | None,
    offset: str | None,
    group: str | None,
    timeout_ms: int | None,
    print_key: bool,
    print_partition: bool,
    print_offset: bool,
    print_timestamp: bool,
    print_headers: bool,
    key_separator: str,
    properties: tuple[str, ...],
    workers: int | None,
    handler: str | None,
    max_retries: int,
    dlq_topic: str | None,
    bootstrap_server: str | None,
    command_config: Path | None,
) -> None:
    """Print TOPIC's records to stdout (or run a consumer pool, see --workers).

    Starts at the end unless --from-beginning, --offset or the group's committed offset
    says otherwise (pool mode: a new group starts at the earliest offset, as a work queue
    should; --consumer-property auto.offset.reset=latest changes that). The number of
    records read goes to stderr at exit. With --timeout-ms and --max-messages, running out
    of time before N records exits 1.
    """
    config = client_config("consumer", bootstrap_server, command_config)
    config.update(parse_pairs(properties, "--consumer-property"))
    if workers is not None or handler is not None:
        if workers is None or handler is None or group is None:
            raise click.UsageError("pool mode needs --group, --workers and --handler together")
        for name, given in (
            ("--partition", partition is not None),
            ("--offset", offset is not None),
            ("--max-messages", max_messages is not None),
            ("--timeout-ms", timeout_ms is not None),
        ):
            if given:
                raise click.UsageError(f"{name} does not apply to pool mode")
        _run_pool(topic, group, workers, handler, max_retries, dlq_topic, from_beginning, config)
        return
    start = _start_offset(offset)
    if start is not None and partition is None:
        raise click.UsageError("--offset needs --partition")
    if group is not None and partition is not None:
        raise click.UsageError("--partition and --group do not mix: a group assigns partitions")
    if start is not None and from_beginning:
        raise click.UsageError("--offset and --from-beginning do not mix")
    sep = _separator(key_separator) or b"\t"
    fields = (print_timestamp, print_partition, print_offset, print_headers, print_key)
    _run_console(
        topic,
        group,
        partition,
        start,
        from_beginning,
        max_messages,
        timeout_ms,
        sep,
        fields,
        config,
    )


def _run_console(
    topic: str,
    group: str | None,
    partition: int | None,
    start: str | int | None,
    from_beginning: bool,
    max_messages: int | None,
    timeout_ms: int | None,
    sep: bytes,
    fields: tuple[bool, bool, bool, bool, bool],
    config: dict[str, Any],
) -> None:
    from kvlog.ipc.consumer import Consumer, ConsumerRebalanceListener
    from kvlog.types import TopicPartition

    class Joined(ConsumerRebalanceListener):
        """Notes when the group first assigns this consumer its partitions: --timeout-ms
        counts from there (joining a new group waits group.initial.rebalance.delay.ms)."""

        at: float | None = None

        def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
            if self.at is None:
                self.at = time.monotonic()

    config.setdefault("auto.offset.reset", "earliest" if from_beginning else "latest")
    if group is not None:
        config["group.id"] = group
    out = sys.stdout.buffer
    count = 0
    timed_out = False
    consumer = Consumer(config)
    try:
        with stop_on_signals(interrupt=True):
            try:
                joined = Joined()
                if group is not None:
                    err(f"joining group {group} ...")
                    consumer.subscribe([topic], listener=joined)
                else:
                    parts = sorted(consumer.partitions_for_topic(topic))
                    if partition is not None:
                        if partition not in parts:
                            raise click.ClickException(
                                f"topic {topic} has no partition {partition} (it has {len(parts)})"
                            )
                        parts = [partition]
                    tps = [TopicPartition(topic, p) for p in parts]
                    consumer.assign(tps)
                    if isinstance(start, int):
                        consumer.seek(tps[0], start)
                    elif start == "earliest" or (start is None and from_beginning):
                        consumer.seek_to_beginning()
                    else:
                        consumer.seek_to_end()
                last = time.monotonic() if group is None else None
                while max_messages is None or count < max_messages:
                    if last is None:
                        last = joined.at  # None until the group assigned partitions
                    wait = 1000
                    if timeout_ms is not None and last is not None:
                        left = timeout_ms - (time.monotonic() - last) * 1000
                        if left <= 0:
                            timed_out = True
                            break
                        wait = int(min(wait, left)) + 1
                    limit = None if max_messages is None else max_messages - count
                    batch = consumer.poll(timeout_ms=wait, max_records=limit)
                    if not batch:
                        continue
                    last = time.monotonic()
                    lines = [
                        _format_record(r, sep, fields)
                        for records in batch.values()
                        for r in records
                    ]
                    out.write(b"".join(lines))
                    out.flush()
                    count += len(lines)
            except KeyboardInterrupt:
                pass
    finally:
        consumer.close()
    err(f"Processed a total of {count} messages")
    if timed_out and max_messages is not None and count < max_messages:
        raise click.ClickException(
            f"timed out after {timeout_ms} ms without records, {count} of {max_messages} read"
        )


def _run_pool(
    topic: str,
    group: str,
    workers: int,
    handler: str,
    max_retries: int,
    dlq_topic: str | None,
    from_beginning: bool,
    config: dict[str, Any],
) -> None:
    from kvlog.workers.pool import ConsumerPool

    # A handler module in the working directory is importable, as with `python -m`.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if from_beginning:  # the pool's own default is earliest already (a work queue)
        config.setdefault("auto.offset.reset", "earliest")
    pool = ConsumerPool(
        handler,
        [topic],
        group,
        workers=workers,
        max_retries=max_retries,
        dlq_topic=dlq_topic,
        config=config,
    )
    started = time.monotonic()
    with stop_on_signals() as stop:
        pool.start()
        try:
            err(
                f"consumer pool: {workers} worker(s) of group {group} on {topic} running "
                f"{handler} (pids {', '.join(map(str, pool.pids))}); Ctrl-C or SIGTERM stops it"
            )
            while not stop.wait(0.5):
                pass
        finally:
            pool.stop()
    stats = pool.stats()
    click.echo(
        f"consumer pool stopped after {time.monotonic() - started:.1f} s: "
        + ", ".join(f"{name} {value}" for name, value in stats.items())
        + f", worker restarts {pool.restarts}"
    )
