"""ipc/futures.py: a BatchFuture completes once; waiters, callbacks and record handles
see the result whether they came before or after completion."""

from __future__ import annotations

import threading

import pytest

from kvlog.errors import KafkaTimeoutError, NotEnoughReplicasError
from kvlog.ipc import futures
from kvlog.ipc.futures import BatchSendResult, FutureRecordMetadata

pytestmark = pytest.mark.timeout(30)

# Every test runs on the C future and on its pure-Python twin.
_IMPLEMENTATIONS = [futures.PyBatchFuture] + (
    [futures.native.BatchFuture] if futures.native is not None else []
)


@pytest.fixture(params=_IMPLEMENTATIONS, ids=lambda cls: cls.__name__, name="BatchFuture")
def batch_future(request: pytest.FixtureRequest) -> type:
    return request.param


def test_waiters_before_completion_all_wake(BatchFuture: type) -> None:
    future = BatchFuture()
    woke: list[bool] = []
    waiters = [threading.Thread(target=lambda: woke.append(future.wait(10))) for _ in range(4)]
    for t in waiters:
        t.start()
    assert not future.wait(0.05)  # not done yet: times out
    future.set_result(42)
    for t in waiters:
        t.join(10)
    assert woke == [True] * 4
    assert future.done() and future.base_offset == 42
    assert future.wait(0)  # after completion: at once


def test_callbacks_run_once_before_or_after_completion(BatchFuture: type) -> None:
    future = BatchFuture()
    seen: list[str] = []
    future.add_callback(lambda f: seen.append(f"early {f.base_offset}"))
    future.set_result(7)
    future.add_callback(lambda f: seen.append(f"late {f.base_offset}"))
    assert seen == ["early 7", "late 7"]


def test_a_raising_callback_does_not_stop_the_others(BatchFuture: type) -> None:
    future = BatchFuture()
    seen: list[int] = []
    future.add_callback(lambda f: 1 / 0)
    future.add_callback(lambda f: seen.append(f.base_offset))
    future.set_result(3)
    assert seen == [3]


def test_record_handles_give_offsets_and_errors(BatchFuture: type) -> None:
    ok, bad = BatchFuture(), BatchFuture()
    record = FutureRecordMetadata(ok, 2, "t", 1, 1000, 3, 5)
    failing = FutureRecordMetadata(bad, 0, "t", 0, 1000, -1, 5)
    with pytest.raises(KafkaTimeoutError):
        record.get(timeout=0.01)
    ok.set_result(10)
    bad.set_exception(NotEnoughReplicasError("only 1 in sync"))
    meta = record.get(timeout=1)
    assert (meta.topic, meta.partition, meta.offset, meta.serialized_key_size) == ("t", 1, 12, 3)
    assert failing.failed() and not failing.succeeded()
    with pytest.raises(NotEnoughReplicasError):
        failing.get(timeout=1)


def test_batch_send_result_puts_records_back_in_caller_order(BatchFuture: type) -> None:
    a, b = BatchFuture(), BatchFuture()
    result = BatchSendResult("t", 99, 4, [(0, [0, 2], a, 5), (1, [3, 1], b, 0)])
    assert not result.done()
    a.set_result(100)
    b.set_result(7)
    got = [(m.partition, m.offset) for m in result.get(timeout=1)]
    assert got == [(0, 105), (1, 8), (0, 106), (1, 7)]
