"""The accumulator's send gate (ipc/accumulator.py ``SendGate``), which a transactional
producer closes outside a transaction: while closed every ``send()`` asks the hooks (which
refuse it), while open none does, and no registration or metadata change reopens a
closed gate. Both implementations, the C one and the pure-Python one."""

from __future__ import annotations

from typing import Any

import pytest

from kvlog.errors import InvalidTxnStateError
from kvlog.ipc.accumulator import ACCELERATED, GatedPyRecordAccumulator, NativeRecordAccumulator
from kvlog.types import TopicPartition

IMPLEMENTATIONS = [GatedPyRecordAccumulator] + ([NativeRecordAccumulator] if ACCELERATED else [])


class Hooks:
    """Counts the sends that reach Python; refuses them while ``refusing``."""

    def __init__(self) -> None:
        self.asked = 0
        self.refusing = False
        self.version = 3

    def topic_partitions(self, topic: str) -> tuple[list[TopicPartition], int]:
        self.asked += 1
        if self.refusing:
            raise InvalidTxnStateError("outside a transaction")
        return [TopicPartition(topic, p) for p in range(2)], self.version

    def choose_sticky(self, topic: str, count: int, current: int) -> int:
        return 0

    def wake(self) -> None:
        pass


def make(cls: type, hooks: Hooks) -> Any:
    return cls(
        batch_size=1 << 20,
        linger_ms=60_000,
        buffer_memory=1 << 24,
        max_block_ms=1000,
        delivery_timeout_ms=120_000,
        hooks=hooks,
    )


@pytest.mark.parametrize("cls", IMPLEMENTATIONS)
def test_an_open_gate_keeps_send_off_the_hooks_and_a_closed_one_refuses(cls: type) -> None:
    hooks = Hooks()
    acc = make(cls, hooks)
    for _ in range(100):
        acc.send("t", b"v", b"k")
    assert hooks.asked == 1  # registered once, then the fast path

    acc.gate(False)
    hooks.refusing = True
    for _ in range(3):
        with pytest.raises(InvalidTxnStateError):
            acc.send("t", b"v", b"k")
    assert hooks.asked == 4  # every send asked, none appended
    assert sum(b.record_count for b in acc.incomplete()) == 100

    acc.set_version(5)  # metadata moving on does not reopen it
    with pytest.raises(InvalidTxnStateError):
        acc.send("t", b"v")
    hooks.refusing = False
    hooks.version = 5
    acc.send("t", b"v")  # allowed by the hooks: registered, but the gate stays closed
    asked = hooks.asked
    acc.send("t", b"v")
    assert hooks.asked == asked + 1

    acc.gate(True)
    asked = hooks.asked
    for _ in range(50):
        acc.send("t", b"v", b"k")
    assert hooks.asked == asked  # open again: the registration at version 5 stands
    assert sum(b.record_count for b in acc.incomplete()) == 152
