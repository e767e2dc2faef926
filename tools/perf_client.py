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

import os
import statistics
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import click

from .common import Command
from .perf_common import (
    CHUNK,
    FILL_BATCH_SIZE,
    FILL_CHUNK,
    MAX_SAMPLES,
    POOL,
    Options,
    PairedResult,
    Result,
    Tick,
    TopicPartitionLike,
    _run,
    common_options,
    ensure_topic,
    payloads,
    preload_option,
    progress_bar,
    send_batch_option,
    with_client_options,
)

# -- produce -----------------------------------------------------------------------------------


def _spans(n: int, every: int) -> Iterator[tuple[int, int]]:
    """[first, end) record ranges of at most CHUNK that never cross a multiple of
    ``every`` (a transaction's end; 0: no transactions)."""
    first = 0
    while first < n:
        end = min(n, first + CHUNK)
        if every:
            end = min(end, (first // every + 1) * every)
        yield first, end
        first = end


def run_produce(options: Options, tick: Tick) -> Result:
    from kvlog.ipc.producer import Producer

    n = options.records
    per_txn = options.transactional
    keys, values = payloads(options)
    topic = options.topic
    stride = max(1, n // MAX_SAMPLES)
    # Per sample: a send time and the index of its batch, in arrays: per-record objects
    # that the garbage collector tracks (tuples, say) would slow the producer itself.
    sent_at = array("d")
    batch_of = array("l")
    batches: dict[Any, int] = {}
    acked_at: dict[Any, float] = {}
    commits = array("d")  # commit_transaction() after the flush: the EndTxn round trip
    clock = time.perf_counter

    def on_ack(batch: Any) -> None:
        acked_at[batch] = clock()

    extra = {"transactional.id": f"kvlog-perf-{os.getpid()}-{time.time_ns()}"} if per_txn else {}
    with Producer(options.producer_config(**extra)) as producer:
        if per_txn:
            producer.init_transactions()
            producer.begin_transaction()
        producer.send(topic, value=b"warm-up").get(timeout=30)  # metadata and producer id
        if per_txn:
            producer.commit_transaction()
        send = producer.send
        mask = POOL - 1
        started_wall = time.time()
        started = clock()
        for first, end in _spans(n, per_txn):
            if per_txn and not first % per_txn:
                producer.begin_transaction()
            for i in range(first, end):
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
            if per_txn and (not end % per_txn or end == n):
                producer.flush()  # commit_transaction() would: timed apart from the EndTxn
                t = clock()
                producer.commit_transaction()
                commits.append(clock() - t)
            tick(end - first)
        producer.flush()
        seconds = clock() - started
    failed = [b.error for b in batches if b.error is not None]
    if failed:
        raise click.ClickException(f"{len(failed)} batch(es) failed; the first: {failed[0]}")
    ack_by_index = [acked_at[b] for b in batches]  # dicts keep insertion order
    latency = Counter(
        int((ack_by_index[k] - t) * 1e6) for t, k in zip(sent_at, batch_of, strict=True)
    )
    result = Result(
        "produce",
        n,
        seconds,
        n * (options.key_size + options.record_size),
        "send -> acknowledgement, per record" + (f" (1 in {stride} sampled)" if stride > 1 else ""),
        latency,
        {"api": "send"},
        started_wall,
    )
    if per_txn:
        ms = sorted(c * 1000 for c in commits)
        result.extra.update(
            records_per_transaction=per_txn,
            transactions=len(ms),
            commit_p50_ms=round(statistics.median(ms), 3),
            commit_max_ms=round(ms[-1], 3),
        )
    return result


def run_paired(options: Options, tick: Tick, rounds: int) -> PairedResult:
    """``--paired-rounds R``: R rounds, each an idempotent run then a transactional one
    (``--transactional``), on one broker, so the two meet the same machine load."""
    load_before = os.getloadavg()
    pairs = []
    for _ in range(rounds):
        idempotent = run_produce(replace(options, transactional=0), tick)
        transactional = run_produce(options, tick)
        pairs.append((idempotent, transactional))
    return PairedResult(pairs, load_before, os.getloadavg())


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


@click.command("produce", cls=Command)
@common_options
@send_batch_option
@preload_option
@click.option(
    "--transactional",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="A transactional producer committing every N records (0: idempotent); reports "
    "the commit_transaction() time after each flush.",
)
@click.option(
    "--paired-rounds",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="R",
    help="With --transactional: R rounds of an idempotent run then a transactional one, "
    "and their ratio (median and range).",
)
@with_client_options
def perf_produce(paired_rounds: int, **kwargs: Any) -> None:
    """Producer throughput and send -> ack latency."""
    options = Options(**kwargs)
    if options.transactional and (options.client != "kvlog" or options.send_batch):
        raise click.UsageError("--transactional is for kvlog's client's send()")
    if options.transactional and options.acks not in ("all", "-1"):
        raise click.UsageError("--transactional needs --acks all")
    if paired_rounds and not options.transactional:
        raise click.UsageError("--paired-rounds compares against --transactional N")

    def body(o: Options, bars: bool) -> Result | PairedResult:
        stored = sum(preload(o, bars).values())
        total = o.records * 2 * paired_rounds if paired_rounds else o.records
        with progress_bar("produce", total, bars) as tick:
            if o.client != "kvlog":
                from . import perf_kafka_clients

                result = perf_kafka_clients.run_produce(o, tick)
            elif o.send_batch:
                result = run_produce_batches(o, tick)
            elif paired_rounds:
                return run_paired(o, tick, paired_rounds)
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
