"""The fault tests' workload and invariant checker (issue 5).

Workload, on real processes and the public client API:

- :class:`ProducerWorker` threads, each with its own idempotent ``acks=all`` Producer,
  write keyed records whose value names them: ``producer|key|seq|gseq`` (``seq`` counts
  per key, ``gseq`` per producer, both in send order). Every acknowledgement
  (RecordMetadata) and every failure (with its error) goes into the :class:`Ledger`.
- :class:`ConsumerWorker` threads, members of one consumer group, record every record
  they are given (:class:`Seen`), at least once.

Check, once the run is over and the cluster has settled (:func:`analyse`, pure: it takes
what was sent, what every replica's log dir holds, and what the consumers saw):

- lost: an acknowledged record is not at its acknowledged offset in the leader's log;
- duplicated: a (producer, key, seq) is stored more than once (acknowledged or not);
- reordered: a producer's records in a partition are not in send order (which implies
  per-key acknowledged order), or acknowledged offsets of a key go backwards;
- replicas identical: every replica holds the same batch bytes below the partitions'
  smallest high watermark, and every acknowledged offset is below it;
- consumers: every acknowledged record was seen; what they saw at an offset is what the
  log holds there (nothing read above the high watermark and later truncated).

Records that failed may be stored or not, but never twice.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import kvlog
from kvlog import batch as batch_format
from kvlog.errors import KvlogError
from kvlog.lmdb_store import LogDir
from kvlog.partitioner import partition_for_key
from kvlog.types import TopicPartition

RecordId = tuple[str, str, int]  # (producer, key, per-key sequence)
MAX_EXAMPLES = 8  # problems listed per category in a report


def encode_value(producer: str, key: str, seq: int, gseq: int) -> bytes:
    return f"{producer}|{key}|{seq}|{gseq}".encode()


def decode_value(value: bytes | None) -> tuple[RecordId, int] | None:
    """``((producer, key, seq), gseq)``, or None for a value the workload never wrote."""
    if value is None:
        return None
    try:
        producer, key, seq, gseq = bytes(value).decode().split("|")
        return (producer, key, int(seq)), int(gseq)
    except (UnicodeDecodeError, ValueError):
        return None


def keys_covering(partitions: int, per_partition: int = 3) -> list[str]:
    """Keys such that murmur2 puts ``per_partition`` of them in every partition."""
    by_partition: dict[int, list[str]] = defaultdict(list)
    n = 0
    while any(len(by_partition[p]) < per_partition for p in range(partitions)):
        key = f"k{n}"
        n += 1
        p = partition_for_key(key.encode(), partitions)
        if len(by_partition[p]) < per_partition:
            by_partition[p].append(key)
    return sorted((k for ks in by_partition.values() for k in ks), key=lambda k: int(k[1:]))


# -- what was sent ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    partition: int
    offset: int
    at: float  # time.monotonic() of the acknowledgement


@dataclass(frozen=True)
class Failure:
    partition: int
    error: str
    at: float


class Ledger:
    """Every record the producers sent and what became of it. Thread-safe (producer
    I/O threads call in)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent = 0
        self.acked: dict[RecordId, Ack] = {}
        self.failed: dict[RecordId, Failure] = {}
        self.send_errors: Counter[str] = Counter()  # send() itself raised

    def on_sent(self) -> None:
        with self._lock:
            self.sent += 1

    def on_ack(self, rid: RecordId, partition: int, offset: int) -> None:
        with self._lock:
            self.acked[rid] = Ack(partition, offset, time.monotonic())

    def on_fail(self, rid: RecordId, partition: int, error: BaseException) -> None:
        with self._lock:
            self.failed[rid] = Failure(
                partition, f"{type(error).__name__}: {error}", time.monotonic()
            )

    @property
    def resolved(self) -> int:
        with self._lock:
            return len(self.acked) + len(self.failed)

    def acks_between(self, start: float, end: float) -> int:
        with self._lock:
            return sum(1 for a in self.acked.values() if start <= a.at < end)

    def error_examples(self, t0: float = 0.0, limit: int = MAX_EXAMPLES) -> list[str]:
        """One failure per distinct message (numbers blanked), oldest first, with its
        time since ``t0`` (a time.monotonic())."""
        out: dict[str, str] = {}
        with self._lock:
            for rid, f in sorted(self.failed.items(), key=lambda kv: kv[1].at):
                shape = re.sub(r"\d+", "#", f.error)
                if shape not in out and len(out) < limit:
                    when = f"t={f.at - t0:.2f} s " if t0 else ""
                    out[shape] = f"{when}{rid} partition {f.partition}: {f.error}"
        return list(out.values())

    def error_kinds(self) -> Counter[str]:
        with self._lock:
            return Counter(f.error.split(":", 1)[0] for f in self.failed.values())


class ProducerWorker(threading.Thread):
    """One idempotent acks=all producer writing keyed records at a steady pace."""

    def __init__(
        self,
        name: str,
        bootstrap: str,
        topic: str,
        keys: list[str],
        ledger: Ledger,
        *,
        seed: int,
        rate: float = 300.0,
        max_outstanding: int = 2000,
        producer_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name=f"fault-{name}", daemon=True)
        self.producer_name = name
        self.bootstrap = bootstrap
        self.topic = topic
        self.keys = keys
        self.ledger = ledger
        self.rng = random.Random(seed)
        self.rate = rate
        self.max_outstanding = max_outstanding
        self.config = {
            "acks": "all",
            "enable_idempotence": True,
            "request_timeout_ms": 3000,
            "delivery_timeout_ms": 120_000,
            "linger_ms": 5,
            "retry_backoff_ms": 50,
            **(producer_config or {}),
        }
        self.stop_event = threading.Event()
        self.sent = 0
        self.unflushed = 0  # records still unresolved after the final flush
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test, never swallowed
            self.error = exc

    def _run(self) -> None:
        producer = kvlog.Producer(
            bootstrap_servers=self.bootstrap, client_id=self.producer_name, **self.config
        )
        seqs: dict[str, int] = defaultdict(int)
        burst = 10
        pause = burst / self.rate
        futures: list[Any] = []
        try:
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                if self.sent - self._resolved(futures) > self.max_outstanding:
                    time.sleep(0.01)
                    continue
                for _ in range(burst):
                    key = self.rng.choice(self.keys)
                    seq = seqs[key]
                    seqs[key] += 1
                    rid = (self.producer_name, key, seq)
                    value = encode_value(self.producer_name, key, seq, self.sent)
                    self.sent += 1
                    self.ledger.on_sent()
                    try:
                        future = producer.send(self.topic, key=key.encode(), value=value)
                    except KvlogError as exc:
                        self.ledger.on_fail(rid, -1, exc)
                        self.ledger.send_errors[type(exc).__name__] += 1
                        continue
                    future.add_done_callback(lambda f, rid=rid: self._done(rid, f))
                    futures.append(future)
                next_at += pause
                delay = next_at - time.monotonic()
                if delay > 0:
                    self.stop_event.wait(delay)
                else:
                    next_at = time.monotonic()
            try:
                producer.flush(timeout=self.config["delivery_timeout_ms"] / 1000 + 30)
            except KvlogError:
                pass
            self.unflushed = sum(1 for f in futures if not f.done())
        finally:
            producer.close(timeout=5)

    def _resolved(self, futures: list[Any]) -> int:
        # Drop resolved futures from the head so the list stays short.
        while futures and futures[0].done():
            futures.pop(0)
        return self.sent - len(futures)

    def _done(self, rid: RecordId, future: Any) -> None:
        error = future.exception(0)
        if error is None:
            md = future.value
            self.ledger.on_ack(rid, md.partition, md.offset)
        else:
            self.ledger.on_fail(rid, future.partition, error)


# -- what the consumers saw ------------------------------------------------------------------


class Seen:
    """Every (partition, offset, value) the group's consumers were given. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.at: dict[tuple[int, int], bytes | None] = {}
        self.conflicts: list[str] = []  # one offset read back with two different values
        self.deliveries = 0

    def record(self, partition: int, offset: int, value: bytes | None, who: str) -> None:
        with self._lock:
            self.deliveries += 1
            old = self.at.setdefault((partition, offset), value)
            if old != value and len(self.conflicts) < MAX_EXAMPLES:
                self.conflicts.append(
                    f"partition {partition} offset {offset}: read {old!r}, then {value!r} ({who})"
                )

    def values(self) -> set[bytes]:
        with self._lock:
            return {v for v in self.at.values() if v is not None}


class ConsumerWorker(threading.Thread):
    """One member of the checker's consumer group, polling until told to stop."""

    def __init__(
        self,
        name: str,
        bootstrap: str,
        topic: str,
        group_id: str,
        seen: Seen,
        consumer_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name=f"fault-{name}", daemon=True)
        self.consumer_name = name
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.seen = seen
        self.config = {
            "auto_offset_reset": "earliest",
            "enable_auto_commit": True,
            "auto_commit_interval_ms": 500,
            "session_timeout_ms": 3000,
            "heartbeat_interval_ms": 300,
            "request_timeout_ms": 3000,
            "fetch_max_wait_ms": 200,
            **(consumer_config or {}),
        }
        self.stop_event = threading.Event()
        self.errors: Counter[str] = Counter()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            consumer = kvlog.Consumer(
                bootstrap_servers=self.bootstrap,
                group_id=self.group_id,
                client_id=self.consumer_name,
                **self.config,
            )
        except BaseException as exc:
            self.error = exc
            return
        try:
            consumer.subscribe([self.topic])
            while not self.stop_event.is_set():
                try:
                    polled = consumer.poll(timeout_ms=200)
                except KvlogError as exc:  # commit failures, timeouts: the group goes on
                    self.errors[type(exc).__name__] += 1
                    self.stop_event.wait(0.05)
                    continue
                for tp, records in polled.items():
                    for r in records:
                        self.seen.record(tp.partition, r.offset, r.value, self.consumer_name)
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                consumer.close()
            except KvlogError as exc:
                self.errors[f"close: {type(exc).__name__}"] += 1


# -- what the replicas hold ------------------------------------------------------------------


@dataclass
class ReplicaLog:
    """One replica of one partition, read from its node's log dir."""

    node_id: int
    log_start_offset: int
    high_watermark: int
    log_end_offset: int
    batches: list[tuple[int, bytes]] = field(default_factory=list)

    def records(self) -> list[tuple[int, bytes | None]]:
        out = []
        for base, raw in self.batches:
            out.extend((r.offset, r.value) for r in batch_format.decode(raw, base))
        return out


def read_replicas(
    log_dirs: dict[int, str | Path], topic: str, partitions: int, *, with_batches: bool = True
) -> dict[int, dict[int, ReplicaLog]]:
    """``{partition: {node_id: ReplicaLog}}`` from each node's LMDB environment, opened
    read-only (fine while the nodes run: LMDB readers never block the writer)."""
    out: dict[int, dict[int, ReplicaLog]] = defaultdict(dict)
    for node_id, path in sorted(log_dirs.items()):
        with LogDir(path, readonly=True) as store, store.reader() as r:
            for p in range(partitions):
                tp = TopicPartition(topic, p)
                try:
                    state = r.offsets(tp)
                except KvlogError:
                    continue  # this node does not hold the partition
                replica = ReplicaLog(
                    node_id, state.log_start_offset, state.high_watermark, state.log_end_offset
                )
                if with_batches and state.log_end_offset > state.log_start_offset:
                    replica.batches = r.read(tp, state.log_start_offset, 1 << 62)
                out[p][node_id] = replica
    return dict(out)


def replicas_settled(replicas: dict[int, dict[int, ReplicaLog]], rf: int) -> list[str]:
    """Why the replicas have not converged yet (empty when every partition has ``rf``
    replicas with one log end offset and a high watermark at it)."""
    why = []
    for p, by_node in sorted(replicas.items()):
        if len(by_node) < rf:
            why.append(f"partition {p}: only nodes {sorted(by_node)} hold it")
            continue
        ends = {r.log_end_offset for r in by_node.values()}
        hws = {r.high_watermark for r in by_node.values()}
        if len(ends) > 1 or hws != ends:
            desc = ", ".join(
                f"node {n}: hw {r.high_watermark} leo {r.log_end_offset}"
                for n, r in sorted(by_node.items())
            )
            why.append(f"partition {p}: {desc}")
    return why


# -- the verdict -----------------------------------------------------------------------------


@dataclass
class Verdict:
    acknowledged: int = 0
    failed: int = 0
    failed_stored: int = 0  # failed records that are nonetheless in the log (allowed)
    lost: int = 0
    misplaced: int = 0  # acknowledged at one offset, stored at another
    acked_above_hw: int = 0
    duplicated: int = 0  # extra copies
    reordered: int = 0
    phantom: int = 0  # values in the log nobody sent
    replicas_identical: bool = True
    consumers_checked: bool = False
    consumer_seen: int = 0  # acknowledged records the group saw
    consumer_inconsistent: int = 0
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def note(self, kind: str, text: str) -> None:
        if len(self.problems[kind]) < MAX_EXAMPLES:
            self.problems[kind].append(text)

    @property
    def consumer_coverage(self) -> float:
        return self.consumer_seen / self.acknowledged if self.acknowledged else 1.0

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.misplaced == 0
            and self.acked_above_hw == 0
            and self.duplicated == 0
            and self.reordered == 0
            and self.phantom == 0
            and self.replicas_identical
            and (self.consumer_seen == self.acknowledged or not self.consumers_checked)
            and self.consumer_inconsistent == 0
        )

    def summary(self) -> str:
        lines = [
            f"acknowledged {self.acknowledged}, failed {self.failed} "
            f"({self.failed_stored} of them stored anyway)",
            f"lost {self.lost}, misplaced {self.misplaced}, acked above hw "
            f"{self.acked_above_hw}, duplicated {self.duplicated}, reordered "
            f"{self.reordered}, phantom {self.phantom}",
            f"replicas identical: {'yes' if self.replicas_identical else 'NO'}",
            f"consumers saw {self.consumer_seen}/{self.acknowledged} acknowledged records "
            f"({100 * self.consumer_coverage:.2f}%), inconsistent reads "
            f"{self.consumer_inconsistent}",
        ]
        for kind, texts in sorted(self.problems.items()):
            lines.append(f"{kind}:")
            lines.extend(f"  {t}" for t in texts)
        return "\n".join(lines)


def analyse(
    acked: dict[RecordId, Ack],
    failed: dict[RecordId, Failure],
    replicas: dict[int, dict[int, ReplicaLog]],
    leaders: dict[int, int],
    seen: dict[tuple[int, int], bytes | None] | None = None,
) -> Verdict:
    """Check the invariants (module docstring). ``leaders``: partition -> node id whose
    log is taken as the partition's log; ``seen``: what the consumers read."""
    v = Verdict(acknowledged=len(acked), failed=len(failed))
    by_partition: dict[int, dict[int, bytes | None]] = {}
    stored_at: dict[RecordId, list[tuple[int, int]]] = defaultdict(list)

    for p, by_node in sorted(replicas.items()):
        leader = leaders.get(p, -1)
        if leader not in by_node:
            leader = min(by_node)
            v.note("leaders", f"partition {p}: no live leader; checking node {leader}'s log")
        log = by_node[leader]
        records = log.records()
        by_partition[p] = dict(records)
        last_gseq: dict[str, tuple[int, int]] = {}
        for offset, value in records:
            decoded = decode_value(value)
            if decoded is None:
                v.phantom += 1
                v.note("phantom", f"partition {p} offset {offset}: {value!r}")
                continue
            rid, gseq = decoded
            stored_at[rid].append((p, offset))
            if len(stored_at[rid]) > 1:
                continue  # a duplicate: counted below, not as a reordering too
            producer = rid[0]
            prev = last_gseq.get(producer)
            if prev is not None and gseq < prev[0]:
                v.reordered += 1
                v.note(
                    "reordered",
                    f"partition {p}: {producer} record #{gseq} at offset {offset} after "
                    f"#{prev[0]} at offset {prev[1]}",
                )
                continue
            last_gseq[producer] = (gseq, offset)
        _check_replicas_identical(v, p, by_node)

    for rid, places in stored_at.items():
        if len(places) > 1:
            v.duplicated += len(places) - 1
            v.note("duplicated", f"{rid} stored at {places}")
        if rid in failed:
            v.failed_stored += 1
        elif rid not in acked:
            v.phantom += 1
            v.note("phantom", f"{rid} stored at {places} but never sent")

    min_hw = {p: min(r.high_watermark for r in by_node.values()) for p, by_node in replicas.items()}
    per_key: dict[tuple[str, str], list[tuple[int, Ack]]] = defaultdict(list)
    for rid, ack in acked.items():
        per_key[rid[:2]].append((rid[2], ack))
        value_at = by_partition.get(ack.partition, {}).get(ack.offset)
        rid_at = decode_value(value_at)
        if rid_at is None or rid_at[0] != rid:
            places = stored_at.get(rid)
            if places:
                v.misplaced += 1
                v.note(
                    "misplaced",
                    f"{rid} acknowledged at partition {ack.partition} offset {ack.offset}, "
                    f"stored at {places}",
                )
            else:
                v.lost += 1
                v.note(
                    "lost",
                    f"{rid} acknowledged at partition {ack.partition} offset {ack.offset}; "
                    f"the log has {value_at!r} there",
                )
        if ack.offset >= min_hw.get(ack.partition, -1):
            v.acked_above_hw += 1
            v.note(
                "acked above the smallest high watermark",
                f"{rid} at partition {ack.partition} offset {ack.offset} "
                f"(min hw {min_hw.get(ack.partition)})",
            )
    for (producer, key), acks in per_key.items():
        acks.sort(key=lambda a: a[0])
        for (s1, a1), (s2, a2) in pairwise(acks):
            if (a2.partition, a2.offset) <= (a1.partition, a1.offset):
                v.reordered += 1
                v.note(
                    "acknowledged out of order",
                    f"{producer} key {key}: seq {s1} at {a1.partition}/{a1.offset}, "
                    f"seq {s2} at {a2.partition}/{a2.offset}",
                )

    if seen is not None:
        v.consumers_checked = True
        seen_ids = set()
        for (p, offset), value in seen.items():
            stored = by_partition.get(p, {}).get(offset, b"<absent>")
            if stored != value:
                v.consumer_inconsistent += 1
                v.note(
                    "consumer read what the log does not hold",
                    f"partition {p} offset {offset}: read {value!r}, log has {stored!r}",
                )
            decoded = decode_value(value)
            if decoded is not None:
                seen_ids.add(decoded[0])
        unseen = [rid for rid in acked if rid not in seen_ids]
        v.consumer_seen = len(acked) - len(unseen)
        for rid in sorted(unseen)[:MAX_EXAMPLES]:
            ack = acked[rid]
            v.note("not seen by consumers", f"{rid} at {ack.partition}/{ack.offset}")
    return v


def _check_replicas_identical(v: Verdict, p: int, by_node: dict[int, ReplicaLog]) -> None:
    """Same batches (bytes) below the smallest high watermark on every replica."""
    limit = min(r.high_watermark for r in by_node.values())
    below = {n: [(b, raw) for b, raw in r.batches if b < limit] for n, r in by_node.items()}
    nodes = sorted(below)
    reference = below[nodes[0]]
    for n in nodes[1:]:
        other = below[n]
        if other == reference:
            continue
        v.replicas_identical = False
        where = next(
            (i for i, (a, b) in enumerate(zip(reference, other, strict=False)) if a != b),
            min(len(reference), len(other)),
        )
        ref_base = reference[where][0] if where < len(reference) else None
        other_base = other[where][0] if where < len(other) else None
        v.note(
            "replicas differ",
            f"partition {p} below hw {limit}: node {nodes[0]} and node {n} differ at batch "
            f"#{where} (bases {ref_base} / {other_base}; {len(reference)} vs {len(other)} "
            "batches)",
        )


def leaders_from_metadata(reply: dict[str, Any], topic: str) -> dict[int, int]:
    for t in reply.get("topics", []):
        if t.get("name") == topic:
            return {p["partition"]: p["leader"] for p in t.get("partitions", [])}
    return {}


def unseen_count(acked: Iterable[RecordId], seen: Seen) -> int:
    """Acknowledged records no consumer has been given yet."""
    ids = {d[0] for d in map(decode_value, seen.values()) if d is not None}
    return sum(1 for rid in acked if rid not in ids)
