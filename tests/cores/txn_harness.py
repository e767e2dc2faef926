"""The transaction coordinator core on a MemoryLogDir, with fake leader nodes and a
hand-driven clock (not a test module).

``TxnHarness`` drives :class:`~kvlog.workers.txn_core.TransactionCoordinator` the way the
coordinator's shell does: each request gets a token, every reply (now, or later for a
parked request) is collected per token, the core's ``write_txn_markers`` sends wait in a
network until a test delivers them to the fake leaders (which write the markers at the
leader epoch they hold, and answer per marker), loses them (the link times them out) or
loses only the answer. ``tick`` is called only when the deadline the core gave has come.
A restart is a new core over the same store (sends in flight die with the old one).

Every durable write of the ``transactions`` table is observed (``history``): per write,
the rows it changed, so tests see every state the coordinator stored, in order, even the
ones a single event passes through.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from kvlog.errors import KvlogError, RequestTimedOutError
from kvlog.memory_store import MemoryLogDir
from kvlog.types import TopicPartition
from kvlog.workers.controller_state import next_producer_id
from kvlog.workers.core_result import Reply, Result, Send
from kvlog.workers.group_core import GroupConfig, GroupCoordinator, seeded_member_ids
from kvlog.workers.offsets_core import OffsetsCore
from kvlog.workers.txn_core import TransactionCoordinator, TxnConfig
from kvlog.workers.txn_events import MarkersAnswer
from kvlog.workers.txn_markers import GONE, Leader
from kvlog.workers.txn_model import TRANSACTIONS_TABLE, TxnMetadata

START_MS = 1_000_000
TOPICS = {"t": 3, "u": 2}
NODES = (0, 1)


@dataclass
class Marker:
    producer_id: int
    producer_epoch: int
    committed: bool
    seq: int  # order among markers and the coordinator's writes (``TxnHarness.seq``)


@dataclass
class InFlight:
    key: int
    send: Send
    incarnation: int


@dataclass
class TxnHarness:
    config: TxnConfig = field(default_factory=lambda: TxnConfig(max_timeout_ms=60_000))
    store: MemoryLogDir = field(default_factory=MemoryLogDir)
    now: int = START_MS
    deadline_ms: int | None = None
    incarnation: int = 0
    replies: dict[Any, Reply] = field(default_factory=dict)
    network: dict[int, InFlight] = field(default_factory=dict)
    # partition -> (leader node or -1, leader epoch); absent topic: gone
    leaders: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    markers: dict[TopicPartition, list[Marker]] = field(default_factory=dict)
    # every write of the transactions table, in order: (seq, when, rows changed; None:
    # deleted)
    history: list[tuple[int, int, dict[str, TxnMetadata | None]]] = field(default_factory=list)
    seq: int = 0

    def __post_init__(self) -> None:
        self.tokens = itertools.count(1)
        self.keys = itertools.count(1)
        for topic, count in TOPICS.items():
            for p in range(count):
                self.leaders[TopicPartition(topic, p)] = (p % len(NODES), 0)
        self._rows = self._read_rows()
        self.start()

    # -- the core --------------------------------------------------------------------------

    def _read_rows(self) -> dict[str, TxnMetadata]:
        with self.store.reader() as r:
            return {
                k.decode(): TxnMetadata.decode(k.decode(), raw)
                for k, raw in r.items(TRANSACTIONS_TABLE)
            }

    def _observe(self) -> None:
        rows = self._read_rows()
        changed: dict[str, TxnMetadata | None] = {
            tid: meta for tid, meta in rows.items() if self._rows.get(tid) != meta
        }
        changed.update({tid: None for tid in self._rows if tid not in rows})
        if changed:
            self.seq += 1
            self.history.append((self.seq, self.now, changed))
        self._rows = rows

    def _write(self, fn: Any) -> Any:
        result = MemoryLogDir.write(self.store, fn)
        self._observe()
        return result

    def partition_count(self, topic: str) -> int | None:
        return TOPICS.get(topic) if any(tp.topic == topic for tp in self.leaders) else None

    def leader(self, tp: TopicPartition) -> Leader | None:
        found = self.leaders.get(tp)
        if found is None:
            return GONE
        node, epoch = found
        return None if node < 0 else Leader(node, epoch, f"tcp://node-{node}")

    def start(self) -> None:
        self.incarnation += 1
        self.network.clear()  # sends of the old process die with it
        self.store.write = self._write  # type: ignore[method-assign]
        groups = GroupCoordinator(
            self.store, GroupConfig(), TOPICS.get, seeded_member_ids(b"txn-harness")
        )
        self.core = TransactionCoordinator(
            self.store,
            self.config,
            leaders=self.leader,
            partition_count=self.partition_count,
            allocate_producer_id=next_producer_id,
            offsets=OffsetsCore(self.store, groups),
        )
        self.deadline_ms = None
        self.carry(self.core.load(self.now), timer=True)

    def carry(self, result: Result, *, timer: bool = False) -> Result:
        for reply in result.replies:
            assert reply.token not in self.replies, f"token {reply.token} answered twice"
            self.replies[reply.token] = reply
        for send in result.sends:
            assert send.op == "write_txn_markers", send
            key = next(self.keys)
            self.network[key] = InFlight(key, send, self.incarnation)
        if timer or self.deadline_ms is None:
            self.deadline_ms = result.deadline_ms
        elif result.deadline_ms is not None:
            self.deadline_ms = min(self.deadline_ms, result.deadline_ms)
        core_next = self.core.next_deadline_ms()
        if core_next is not None:
            assert self.deadline_ms is not None and self.deadline_ms <= core_next, (
                f"the shell's timer {self.deadline_ms} would fire after the core's {core_next}"
            )
        return result

    def request(self, event: Any) -> int:
        token = next(self.tokens)
        self.carry(self.core.handle(token, event, self.now))
        return token

    def answer(self, token: int) -> Reply | None:
        return self.replies.get(token)

    def error(self, token: int) -> KvlogError | None:
        reply = self.replies[token]
        return reply.error

    def advance(self, ms: int) -> None:
        self.now += ms
        if self.deadline_ms is not None and self.deadline_ms <= self.now:
            self.carry(self.core.tick(self.now), timer=True)

    def moved(self) -> None:
        """The controller's metadata moved (a leader changed)."""
        self.carry(self.core.metadata_moved(self.now))

    # -- the fake leaders ------------------------------------------------------------------

    def deliver(self, key: int, *, lose_answer: bool = False, fail: bool = False) -> None:
        """A leader node gets the send: it writes each marker meant for the leadership it
        holds and answers per marker (``fail``: it refuses them all, e.g. too few in-sync
        replicas; ``lose_answer``: the answer never comes and the link times out)."""
        flight = self.network.pop(key)
        send = flight.send
        results = []
        for m in send.fields["markers"]:
            tp = TopicPartition(m["topic"], m["partition"])
            node, epoch = self.leaders.get(tp, (-1, -1))
            if fail:
                results.append({"error": 19})  # NOT_ENOUGH_REPLICAS
            elif node != send.to.node_id or epoch != m["leader_epoch"]:
                results.append({"error": 74 if epoch > m["leader_epoch"] else 6})
            else:
                self.seq += 1
                self.markers.setdefault(tp, []).append(
                    Marker(m["producer_id"], m["producer_epoch"], m["committed"], self.seq)
                )
                results.append({"error": 0, "base_offset": 0})
        if lose_answer:
            self.carry(
                self.core.handle(
                    None, MarkersAnswer(send.token, None, RequestTimedOutError("lost")), self.now
                )
            )
            return
        self.carry(
            self.core.handle(None, MarkersAnswer(send.token, {"results": results}), self.now)
        )

    def lose(self, key: int) -> None:
        """The send never arrives: the link times it out."""
        flight = self.network.pop(key)
        answer = MarkersAnswer(flight.send.token, None, RequestTimedOutError("no reply"))
        self.carry(self.core.handle(None, answer, self.now))

    def deliver_all(self) -> None:
        for key in list(self.network):
            if key in self.network:
                self.deliver(key)

    def settle(self, rounds: int = 50) -> None:
        """Deliver everything and let time run until no marker is pending."""
        for _ in range(rounds):
            self.deliver_all()
            if not self.core.channel.pending and not self.network:
                return
            self.advance(self.config.retry_backoff_ms)
        raise AssertionError(f"markers still pending: {self.core.channel.pending}")
