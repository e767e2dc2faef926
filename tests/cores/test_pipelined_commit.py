"""The pipelined group commit: LeaderCore's take_commit / commit_landed driven the way the
node shell drives them, over a real :class:`~workers.committer.Committer` thread and a
store whose commit phase (the fsync) the test holds open, releases, or fails.

What must hold: nothing is acknowledged before its commit landed; a failed commit fails
exactly its own requests (none staged during it); the requests staged during a commit
form the next one; offsets follow the successful commits in order; the store holds
exactly what was acknowledged."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvlog import batch as batch_format
from kvlog.errors import ErrorCode, StorageError
from kvlog.memory_store import MemoryLogDir
from kvlog.types import TopicPartition
from kvlog.workers.committer import CommittedStore, Committer
from kvlog.workers.core_result import Result
from kvlog.workers.leader_core import LeaderCore
from kvlog.workers.node_model import HostedPartition, Produce, ProduceResponse

TP = TopicPartition("t", 0)
NOW = 1_700_000_000_000
WAIT_S = 10


class GatedStore(MemoryLogDir):
    """A memory store whose pipelined commits (those given ``written``) stop after
    their body ran until the test opens the gate, then commit or fail as told (a
    failed one publishes nothing, as an aborted LMDB transaction)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Semaphore(0)
        self.outcomes: list[bool] = []  # True: commit; False: fail (consumed in order)
        self.in_commit = threading.Event()

    def write(self, fn: Any, written: Any = None) -> Any:
        if written is None:
            return super().write(fn)

        def body(w: Any) -> Any:
            value = fn(w)
            written()
            self.in_commit.set()
            assert self.gate.acquire(timeout=WAIT_S), "the test never released the commit"
            self.in_commit.clear()
            if not self.outcomes.pop(0):
                raise StorageError("test: the fsync failed")
            return value

        return super().write(body)


def one_batch(value: bytes) -> bytes:
    return batch_format.build_batch([(None, value)])


class Pipeline:
    """The shell's part: one commit in flight, landed on request."""

    def __init__(self) -> None:
        self.store = GatedStore()
        self.committer = Committer(self.store, "test-committer")
        self.core = LeaderCore(0, CommittedStore(self.store, self.committer))
        self.core.apply_assignment([HostedPartition(TP, "id", 0, 1, [0], {}, [0])])
        self.job: Any = None

    def produce(self, token: Any, value: bytes) -> Result:
        return self.core.produce(Produce(token, 1, [(TP, one_batch(value))]))

    def begin(self) -> bool:
        assert self.job is None
        self.job = self.core.take_commit()
        if self.job is None:
            return False
        write = self.committer.begin(self.job.write)
        assert write.ran.wait(WAIT_S), "the committer thread runs the body"
        assert not write.done.is_set(), "not landed before the test releases its fsync"
        return True

    def release(self, ok: bool) -> Result:
        self.store.outcomes.append(ok)
        self.store.gate.release()
        write = self.committer.take_landed(wait=True)
        assert write is not None
        job, self.job = self.job, None
        return self.core.commit_landed(job, write.value, write.error, NOW)

    def stored(self) -> list[bytes]:
        with self.store.reader() as r:
            end = r.offsets(TP).log_end_offset
            return [bytes(b) for _, b in r.read(TP, 0, 1 << 30)] if end else []

    def close(self) -> None:
        if self.job is not None:
            self.release(True)
        self.committer.close()


def test_a_failed_commit_fails_its_requests_and_none_staged_during_it() -> None:
    p = Pipeline()
    try:
        assert not p.produce("a", b"a")
        assert p.begin()
        p.store.in_commit.wait(WAIT_S)
        assert not p.produce("b", b"b"), "staged during the commit: not answered"
        assert p.committer.take_landed() is None, "not landed while its fsync runs"
        landed = p.release(ok=False)
        [reply] = landed.replies
        assert reply.token == "a"
        assert reply.body.partitions[0].error.code is ErrorCode.STORAGE_ERROR
        assert p.stored() == []
        assert p.begin(), "b forms the next commit"
        landed = p.release(ok=True)
        [reply] = landed.replies
        assert reply.token == "b" and isinstance(reply.body, ProduceResponse)
        assert reply.body.partitions[0].error is None
        assert reply.body.partitions[0].base_offset == 0, "a took no offset"
        assert len(p.stored()) == 1
    finally:
        p.close()


def test_another_write_waits_for_the_commit_in_flight_to_land() -> None:
    p = Pipeline()
    try:
        p.produce("a", b"a")
        p.begin()
        with pytest.raises(RuntimeError, match="land it first"):
            p.committer.write(lambda w: None)
        p.release(ok=True)
        assert p.committer.write(lambda w: w.offsets(TP).log_end_offset) == 1
    finally:
        p.close()


class PipelinedCommits(RuleBasedStateMachine):
    """Random produce / begin / land(ok | fail) interleavings against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.p = Pipeline()
        self.serial = 0
        self.staged: list[str] = []  # produced, not in a commit yet
        self.in_flight: list[str] = []  # in the commit in flight
        self.answered: dict[str, bool] = {}  # token -> acknowledged ok
        self.acked_values: list[bytes] = []  # what must be stored, in order

    @rule()
    def produce(self) -> None:
        self.serial += 1
        token = f"r{self.serial}"
        assert not self.p.produce(token, token.encode())
        self.staged.append(token)

    @precondition(lambda self: self.p.job is None)
    @rule()
    def begin(self) -> None:
        started = self.p.begin()
        assert started == bool(self.staged)
        self.in_flight, self.staged = self.staged, []

    @precondition(lambda self: self.p.job is not None)
    @rule(ok=st.booleans())
    def land(self, ok: bool) -> None:
        result = self.p.release(ok)
        tokens = [r.token for r in result.replies]
        assert tokens == self.in_flight, "a commit answers exactly its requests, in order"
        for reply in result.replies:
            error = reply.body.partitions[0].error
            assert (error is None) == ok
            self.answered[reply.token] = ok
            if ok:
                assert reply.body.partitions[0].base_offset == len(self.acked_values)
                self.acked_values.append(reply.token.encode())
        self.in_flight = []

    @invariant()
    def nothing_answered_twice_or_early(self) -> None:
        assert not set(self.answered) & set(self.staged + self.in_flight)

    @invariant()
    def the_store_holds_what_was_acknowledged(self) -> None:
        if self.p.job is not None:
            return  # the commit in flight is not visible yet (and must not be read here)
        stored = [batch_format.decode(b, 0)[0].value for b in self.p.stored()]
        assert stored == self.acked_values

    def teardown(self) -> None:
        self.p.close()


TestPipelinedCommits = PipelinedCommits.TestCase
TestPipelinedCommits.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
