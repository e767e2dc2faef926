"""The fault tests' transactional workload (issue 17), on real processes and the public
client API, for :mod:`txn_scenario` and checked by :mod:`txn_checker`:

- :class:`TxnProducerWorker` threads, one per ``transactional.id``: transactions writing a
  few records to several partitions of two topics; some aborted on purpose, some left to
  a new instance that fences the old one (a zombie).
- :class:`FeederWorker`: an idempotent producer writing the input topic.
- :class:`TransformWorker`: an exactly-once consume-transform-produce loop: a
  read_committed member of a consumer group reads the input topic, writes one output
  record per input record, and commits the group's offsets with the transaction
  (``send_offsets_to_transaction``).

Every transaction, what its records became (acknowledged offset or failure) and what the
client believed in the end goes into the :class:`TxnHistory`:

- ``committed``: ``commit_transaction()`` returned;
- ``aborted``: ``abort_transaction()`` returned (on purpose, or after an error), or a
  zombie's commit was refused after its successor's ``init_transactions()`` returned;
- ``unknown``: neither returned (fenced, a call failed, the instance was replaced): the
  transaction may have committed or not, but never partly.

A value names its record: ``tx|<txn>|<index>|<count>|<extra>`` where ``<txn>`` is
``<transactional.id>.<instance>.<n>`` (unique in a run) and, for the transform's output,
``<extra>`` is the input's ``<partition>:<offset>:<value>``.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import kvlog
from kvlog.errors import KvlogError
from kvlog.types import TopicPartition

COMMITTED, ABORTED, UNKNOWN, OPEN = "committed", "aborted", "unknown", "open"

CLIENT_CONFIG: dict[str, Any] = {
    "request_timeout_ms": 3000,
    "retry_backoff_ms": 50,
    # A call retries what is retriable for this long: a killed coordinator is back in a
    # second or two, and the run is short.
    "max_block_ms": 15_000,
    "delivery_timeout_ms": 30_000,
    "linger_ms": 2,
}


def encode_txn_value(txn: str, index: int, count: int, extra: str = "") -> bytes:
    return f"tx|{txn}|{index}|{count}|{extra}".encode()


def decode_txn_value(value: bytes | None) -> tuple[str, int, int, str] | None:
    """``(txn, index, count, extra)``, or None for a value the workload never wrote."""
    if value is None:
        return None
    try:
        tag, txn, index, count, extra = bytes(value).decode().split("|", 4)
        if tag != "tx":
            return None
        return txn, int(index), int(count), extra
    except (UnicodeDecodeError, ValueError):
        return None


def encode_input(seq: int) -> bytes:
    return f"in-{seq}".encode()


@dataclass
class Txn:
    """One transaction as its client lived it. Written by one worker thread and its
    producer's I/O thread, under :class:`TxnHistory`'s lock."""

    name: str
    tid: str
    kind: str  # "write" | "transform"
    intent: str  # "commit" | "abort"
    begun_at: float
    records: list[tuple[str, int, bytes]] = field(default_factory=list)  # in send order
    acked: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> (partition, offset)
    failed: dict[int, str] = field(default_factory=dict)  # record index -> error
    belief: str = OPEN
    end_started_at: float = -1.0  # commit/abort called
    ended_at: float = -1.0
    offsets: dict[int, int] = field(default_factory=dict)  # input partition -> next offset
    timeline: list[tuple[float, str]] = field(default_factory=list)

    def describe(self, t0: float) -> str:
        steps = "; ".join(f"t={at - t0:.2f} s {text}" for at, text in self.timeline)
        return (
            f"{self.kind} txn {self.name} ({len(self.records)} records, intent {self.intent}, "
            f"client believed {self.belief}): {steps}"
        )


class TxnHistory:
    """Every transaction of the run. Thread-safe."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self._lock = threading.Lock()
        self.txns: dict[str, Txn] = {}
        self.instances: list[tuple[float, str]] = []  # (when, "tid instance n: init ...")
        self.errors: Counter[str] = Counter()

    def begin(self, name: str, tid: str, kind: str, intent: str) -> Txn:
        now = time.monotonic()
        txn = Txn(name, tid, kind, intent, now, timeline=[(now, "begun")])
        with self._lock:
            self.txns[name] = txn
        return txn

    def add_record(self, txn: Txn, topic: str, partition: int, value: bytes) -> int:
        with self._lock:
            txn.records.append((topic, partition, value))
            return len(txn.records) - 1

    def on_delivery(self, txn: Txn, index: int, future: Any) -> None:
        error = future.exception(0)
        with self._lock:
            if error is None:
                txn.acked[index] = (future.value.partition, future.value.offset)
            else:
                txn.failed[index] = f"{type(error).__name__}: {error}"

    def note(self, txn: Txn, text: str) -> None:
        with self._lock:
            txn.timeline.append((time.monotonic(), text))

    def ending(self, txn: Txn, how: str) -> None:
        with self._lock:
            if txn.end_started_at < 0:
                txn.end_started_at = time.monotonic()
            txn.timeline.append((time.monotonic(), f"{how} called"))

    def error(self, txn: Txn, what: str, exc: BaseException) -> None:
        with self._lock:
            self.errors[f"{what}: {type(exc).__name__}"] += 1
            txn.timeline.append((time.monotonic(), f"{what} raised {type(exc).__name__}: {exc}"))

    def settle(self, txn: Txn, belief: str) -> None:
        with self._lock:
            txn.belief = belief
            txn.ended_at = time.monotonic()
            txn.timeline.append((txn.ended_at, f"client believes {belief}"))

    def instance(self, text: str) -> None:
        with self._lock:
            self.instances.append((time.monotonic(), text))

    def snapshot(self) -> list[Txn]:
        with self._lock:
            return list(self.txns.values())

    def beliefs(self) -> Counter[str]:
        with self._lock:
            return Counter(f"{t.kind} {t.belief}" for t in self.txns.values())

    def ending_at(self, moment: float) -> list[Txn]:
        """Transactions whose commit/abort was under way at ``moment`` (a monotonic time)."""
        with self._lock:
            return [
                t
                for t in self.txns.values()
                if 0 <= t.end_started_at <= moment and (t.ended_at < 0 or t.ended_at >= moment)
            ]


class _TxnClient(threading.Thread):
    """A worker owning one transactional producer at a time (a new instance, with the same
    transactional.id, after the old one is fenced or left in doubt)."""

    def __init__(self, tid: str, bootstrap: str, history: TxnHistory, txn_timeout_ms: int) -> None:
        super().__init__(name=f"fault-{tid}", daemon=True)
        self.tid = tid
        self.bootstrap = bootstrap
        self.history = history
        self.txn_timeout_ms = txn_timeout_ms
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.producer: kvlog.Producer | None = None
        self.instance_no = 0
        self.count = 0  # transactions begun by this instance
        self.client_config = dict(CLIENT_CONFIG)

    def run(self) -> None:
        try:
            self._run()
            # A new instance resolves a transaction left in doubt (else it stays open,
            # holding the LSO, until transaction.timeout.ms).
            self._ensure_producer(time.monotonic() + 20)
        except BaseException as exc:  # reported by the test, never swallowed
            self.error = exc
        finally:
            self._drop_producer()

    def _run(self) -> None:
        raise NotImplementedError

    def _ensure_producer(self, deadline: float) -> kvlog.Producer | None:
        """The current instance, or a new one (init_transactions retried until
        ``deadline``: it also resolves the previous instance's transaction)."""
        while self.producer is None and time.monotonic() < deadline:
            self.instance_no += 1
            self.count = 0
            producer = kvlog.Producer(
                bootstrap_servers=self.bootstrap,
                transactional_id=self.tid,
                transaction_timeout_ms=self.txn_timeout_ms,
                client_id=f"{self.tid}-{self.instance_no}",
                **self.client_config,
            )
            try:
                producer.init_transactions()
                self.history.instance(f"{self.tid} instance {self.instance_no}: initialised")
                self.producer = producer
            except KvlogError as exc:
                self.history.instance(
                    f"{self.tid} instance {self.instance_no}: init_transactions raised "
                    f"{type(exc).__name__}: {exc}"
                )
                producer.close(timeout=1)
                time.sleep(0.2)
        return self.producer

    def _drop_producer(self) -> None:
        if self.producer is not None:
            try:
                self.producer.close(timeout=2)
            except KvlogError:
                pass
            self.producer = None

    def _next_name(self) -> str:
        self.count += 1
        return f"{self.tid}.{self.instance_no}.{self.count}"

    def _end(self, txn: Txn, commit: bool) -> bool:
        """commit/abort ``txn``; on an error, abort it; if that fails too, its fate is
        unknown and this instance is dropped. True if it committed."""
        assert self.producer is not None
        how = "commit_transaction()" if commit else "abort_transaction()"
        self.history.ending(txn, how)
        try:
            if commit:
                self.producer.commit_transaction()
            else:
                self.producer.abort_transaction()
            self.history.settle(txn, COMMITTED if commit else ABORTED)
            return commit
        except KvlogError as exc:
            self.history.error(txn, how, exc)
        self._abort_after_error(txn)
        return False

    def _abort_after_error(self, txn: Txn) -> None:
        assert self.producer is not None
        self.history.ending(txn, "abort_transaction()")
        try:
            self.producer.abort_transaction()
            self.history.settle(txn, ABORTED)
        except KvlogError as exc:
            self.history.error(txn, "abort_transaction()", exc)
            self.history.settle(txn, UNKNOWN)
            self._drop_producer()


class TxnProducerWorker(_TxnClient):
    """Transactions of 2-4 partitions (of every topic in ``topics``), 1-3 records each;
    ``abort_ratio`` of them aborted on purpose (after every record is written), and
    ``zombie_ratio`` left by an instance that a new one replaces (:meth:`_zombie`)."""

    def __init__(
        self,
        tid: str,
        bootstrap: str,
        history: TxnHistory,
        topics: dict[str, int],
        *,
        seed: int,
        abort_ratio: float = 0.2,
        zombie_ratio: float = 0.05,
        txn_timeout_ms: int = 10_000,
        max_block_ms: int | None = None,
    ) -> None:
        super().__init__(tid, bootstrap, history, txn_timeout_ms)
        if max_block_ms is not None:
            # Impatient: its calls give up while a killed coordinator restarts, so its
            # commits fail, and some are decided all the same (the client's abort is
            # then refused: the transaction is in doubt until a new instance resolves it).
            self.client_config["max_block_ms"] = max_block_ms
        self.rng = random.Random(seed)
        self.tps = [(t, p) for t, n in sorted(topics.items()) for p in range(n)]
        self.abort_ratio = abort_ratio
        self.zombie_ratio = zombie_ratio
        self.zombies = 0

    def _run(self) -> None:
        while not self.stop_event.is_set():
            producer = self._ensure_producer(time.monotonic() + 30)
            if producer is None:
                continue
            draw = self.rng.random()
            intent = (
                "abort"
                if draw < self.abort_ratio
                else "zombie"
                if draw < self.abort_ratio + self.zombie_ratio
                else "commit"
            )
            txn = self.history.begin(self._next_name(), self.tid, "write", intent)
            picks = self.rng.sample(self.tps, self.rng.randint(2, 4))
            plan = [tp for tp in picks for _ in range(self.rng.randint(1, 3))]
            self.rng.shuffle(plan)
            try:
                producer.begin_transaction()
                for i, (topic, partition) in enumerate(plan):
                    value = encode_txn_value(txn.name, i, len(plan))
                    index = self.history.add_record(txn, topic, partition, value)
                    future = producer.send(topic, value, partition=partition)
                    future.add_done_callback(
                        lambda f, txn=txn, index=index: self.history.on_delivery(txn, index, f)
                    )
                if intent != "commit":
                    # Written first, so read_uncommitted readers must see them.
                    producer.flush()
            except KvlogError as exc:
                self.history.error(txn, "send/flush", exc)
                self._abort_after_error(txn)
                self.stop_event.wait(0.1)  # no busy loop while the cluster is down
                continue
            if intent == "zombie":
                self._zombie(txn, [tp for tp in self.tps if tp not in picks])
            else:
                self._end(txn, intent == "commit")
            self.stop_event.wait(self.rng.uniform(0.0, 0.05))

    def _zombie(self, txn: Txn, unused: list[tuple[str, int]]) -> None:
        """A new instance takes over while ``txn`` is open (as after a producer's crash
        and restart): its init_transactions() fences this instance and aborts ``txn``.
        The fenced one then writes to a partition of ``txn`` and to a new one, and tries
        to commit: the client must be refused, so ``txn`` counts as aborted (had the
        commit been accepted, the checker finds it committed but invisible)."""
        zombie = self.producer
        assert zombie is not None
        self.producer = None
        if self._ensure_producer(time.monotonic() + 30) is None:
            self.producer = zombie
            self._end(txn, False)
            return
        self.zombies += 1
        self.history.note(txn, f"replaced by instance {self.instance_no}")
        late = [txn.records[0][:2], self.rng.choice(unused)] if unused else [txn.records[0][:2]]
        try:
            for topic, partition in late:
                index = self.history.add_record(txn, topic, partition, b"")
                value = encode_txn_value(txn.name, index, -1, "late")
                txn.records[index] = (topic, partition, value)
                future = zombie.send(topic, value, partition=partition)
                future.add_done_callback(
                    lambda f, index=index: self.history.on_delivery(txn, index, f)
                )
            zombie.flush(timeout=3)
        except KvlogError as exc:
            self.history.error(txn, "late send/flush", exc)
        self.history.ending(txn, "commit_transaction() (fenced instance)")
        try:
            zombie.commit_transaction()
            self.history.settle(txn, COMMITTED)
        except KvlogError as exc:
            self.history.error(txn, "commit_transaction()", exc)
            self.history.settle(txn, ABORTED)
        finally:
            zombie.close(timeout=1)


class FeederWorker(threading.Thread):
    """An idempotent acks=all producer writing ``in-<n>`` to the input topic."""

    def __init__(self, bootstrap: str, topic: str, rate: float) -> None:
        super().__init__(name="fault-feeder", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.rate = rate
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self.acked: dict[bytes, tuple[int, int]] = {}  # value -> (partition, offset)
        self.failed: dict[bytes, str] = {}
        self.sent = 0
        self.unflushed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        producer = kvlog.Producer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, **CLIENT_CONFIG
        )
        futures = []
        try:
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                for _ in range(5):
                    value = encode_input(self.sent)
                    self.sent += 1
                    try:
                        future = producer.send(self.topic, value, key=value)
                    except KvlogError as exc:
                        self._done(value, None, exc)
                        continue
                    future.add_done_callback(lambda f, value=value: self._done(value, f, None))
                    futures.append(future)
                next_at += 5 / self.rate
                self.stop_event.wait(max(0.0, next_at - time.monotonic()))
            try:
                producer.flush(timeout=60)
            except KvlogError:
                pass
            self.unflushed = sum(1 for f in futures if not f.done())
        finally:
            producer.close(timeout=5)

    def _done(self, value: bytes, future: Any, error: BaseException | None) -> None:
        error = error if future is None else future.exception(0)
        with self._lock:
            if error is None:
                self.acked[value] = (future.value.partition, future.value.offset)
            else:
                self.failed[value] = f"{type(error).__name__}: {error}"


class TransformWorker(_TxnClient):
    """The exactly-once loop: the only member of ``group`` (static membership, so a
    restarted coordinator hands its partitions straight back). After any failed
    transaction it rewinds to the group's committed offsets, as Kafka's EOS loop does.

    One member only: with several, a rebalance lets a partition's old owner commit after
    its new one started from the same offsets unless TxnOffsetCommit fences the stale
    generation (KIP-447), which this workload does not exercise yet."""

    def __init__(
        self,
        tid: str,
        bootstrap: str,
        history: TxnHistory,
        source: str,
        sink: str,
        group: str,
        *,
        max_records: int = 100,
        txn_timeout_ms: int = 10_000,
    ) -> None:
        super().__init__(tid, bootstrap, history, txn_timeout_ms)
        self.source = source
        self.sink = sink
        self.group = group
        self.max_records = max_records
        self.poll_errors: Counter[str] = Counter()
        self.transformed = 0
        self.state = "not started"  # the consumer's assignment and positions, for reports
        self._state_at = 0.0

    def _run(self) -> None:
        consumer = kvlog.Consumer(
            self.source,
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            group_instance_id=f"{self.group}-worker",
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
            request_timeout_ms=3000,
            fetch_max_wait_ms=200,
        )
        try:
            while not self.stop_event.is_set():
                if self._ensure_producer(time.monotonic() + 30) is None:
                    continue
                try:
                    polled = consumer.poll(200, max_records=self.max_records)
                except KvlogError as exc:
                    self.poll_errors[type(exc).__name__] += 1
                    self.stop_event.wait(0.05)
                    continue
                self._note_state(consumer, bool(polled))
                if polled and not self._transform(consumer, polled):
                    self._rewind(consumer)
        finally:
            try:
                consumer.close(autocommit=False)
            except KvlogError:
                pass

    def _note_state(self, consumer: kvlog.Consumer, polled: bool) -> None:
        now = time.monotonic()
        if polled or now - self._state_at < 1.0:
            return
        self._state_at = now
        positions = {f"{tp.partition}": consumer.position(tp) for tp in consumer.assignment()}
        self.state = (
            f"t={now - self.history.t0:.2f} s: polled nothing; assignment/positions "
            f"{positions}, {self.transformed} transformed"
        )

    def _transform(self, consumer: kvlog.Consumer, polled: dict[TopicPartition, list[Any]]) -> bool:
        producer = self.producer
        assert producer is not None
        inputs = [r for tp in sorted(polled) for r in polled[tp]]
        txn = self.history.begin(self._next_name(), self.tid, "transform", "commit")
        try:
            producer.begin_transaction()
            for i, r in enumerate(inputs):
                extra = f"{r.partition}:{r.offset}:{bytes(r.value).decode()}"
                value = encode_txn_value(txn.name, i, len(inputs), extra)
                future = producer.send(self.sink, value, key=r.key)
                index = self.history.add_record(txn, self.sink, -1, value)
                future.add_done_callback(
                    lambda f, txn=txn, index=index: self.history.on_delivery(txn, index, f)
                )
            offsets = {tp: records[-1].offset + 1 for tp, records in polled.items()}
            txn.offsets = {tp.partition: o for tp, o in offsets.items()}
            producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
        except KvlogError as exc:
            self.history.error(txn, "send/send_offsets", exc)
            self._abort_after_error(txn)
            return False
        if self._end(txn, True):
            self.transformed += len(inputs)
            return True
        return False

    def _rewind(self, consumer: kvlog.Consumer) -> None:
        """Back to the group's committed offsets (what the last committed transaction
        left), so that an aborted transaction's inputs are transformed again."""
        self._ensure_producer(time.monotonic() + 30)  # resolves a transaction in doubt
        while not self.stop_event.is_set():
            try:
                for tp in consumer.assignment():
                    committed = consumer.committed(tp)
                    if committed is None:
                        consumer.seek_to_beginning(tp)
                    else:
                        consumer.seek(tp, committed)
                return
            except KvlogError as exc:
                self.poll_errors[f"rewind: {type(exc).__name__}"] += 1
                self.stop_event.wait(0.2)


__all__ = [
    "ABORTED",
    "COMMITTED",
    "OPEN",
    "UNKNOWN",
    "FeederWorker",
    "TransformWorker",
    "Txn",
    "TxnHistory",
    "TxnProducerWorker",
    "decode_txn_value",
    "encode_input",
    "encode_txn_value",
]
