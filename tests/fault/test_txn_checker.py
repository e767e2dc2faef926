"""The exactly-once checker catches what it claims to: each invariant broken on purpose in
a synthetic history, and a clean history passes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from txn_checker import TxnVerdict, View, analyse_txns
from txn_workload import (
    ABORTED,
    COMMITTED,
    OPEN,
    UNKNOWN,
    Txn,
    decode_txn_value,
    encode_input,
    encode_txn_value,
)

pytestmark = pytest.mark.timeout(30)

OUT = "out"


@dataclass
class World:
    """Transactions written into the logs as a correct cluster would: every record in
    read_uncommitted at its acknowledged offset; committed ones (and ``unknown`` ones
    that did commit) in read_committed too. The transform's inputs and group offsets."""

    txns: list[Txn] = field(default_factory=list)
    committed: View = field(default_factory=dict)
    uncommitted: View = field(default_factory=dict)
    input_log: dict[int, list[tuple[int, bytes | None]]] = field(default_factory=dict)
    input_acked: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    group_offsets: dict[int, int | None] = field(default_factory=dict)

    def txn(
        self,
        name: str,
        belief: str,
        where: list[tuple[str, int]],
        *,
        visible: bool | None = None,
        extras: list[str] | None = None,
        tid: str | None = None,
    ) -> Txn:
        t = Txn(name, tid or name.split(".")[0], "write", "commit", 0.0, belief=belief)
        t.timeline.append((0.0, f"client believes {belief}"))
        shown = belief == COMMITTED if visible is None else visible
        for i, (topic, p) in enumerate(where):
            extra = extras[i] if extras else ""
            value = encode_txn_value(name, i, len(where), extra)
            t.records.append((topic, p, value))
            log = self.uncommitted.setdefault((topic, p), [])
            offset = len(log)
            log.append((offset, value))
            t.acked[i] = (p, offset)
            if shown:
                self.committed.setdefault((topic, p), []).append((offset, value))
        self.txns.append(t)
        return t

    def inputs(self, partition: int, count: int) -> list[tuple[int, bytes]]:
        log = [(o, encode_input(partition * 1000 + o)) for o in range(count)]
        self.input_log[partition] = list(log)
        self.input_acked.update({v: (partition, o) for o, v in log})
        return log

    def transform(self, name: str, inputs: list[tuple[int, int, bytes]], commit: bool) -> Txn:
        extras = [f"{p}:{o}:{v.decode()}" for p, o, v in inputs]
        t = self.txn(
            name, COMMITTED if commit else ABORTED, [(OUT, 0)] * len(inputs), extras=extras
        )
        t.kind = "transform"
        if commit:
            for p, o, _ in inputs:
                self.group_offsets[p] = max(self.group_offsets.get(p) or 0, o + 1)
        return t

    def check(self) -> TxnVerdict:
        return analyse_txns(
            self.txns,
            self.committed,
            self.uncommitted,
            input_log=self.input_log,
            input_acked=self.input_acked,
            input_ends={p: len(log) for p, log in self.input_log.items()},
            group_offsets=self.group_offsets,
            output_topic=OUT,
        )


def _clean() -> World:
    w = World()
    w.txn("a.1.1", COMMITTED, [("x", 0), ("y", 1), ("x", 0), ("x", 1)])
    w.txn("a.1.2", ABORTED, [("x", 0), ("y", 0)])
    w.txn("b.1.1", UNKNOWN, [("x", 1), ("y", 1)], visible=True)  # it did commit
    w.txn("b.2.1", UNKNOWN, [("x", 1), ("y", 0)], visible=False)  # it did not
    w.txn("a.1.3", COMMITTED, [("x", 0)])
    ins = [(0, o, v) for o, v in w.inputs(0, 4)] + [(1, o, v) for o, v in w.inputs(1, 2)]
    w.transform("t.1.1", ins[:3], True)
    w.transform("t.1.2", ins[3:], False)  # aborted: transformed again below
    w.transform("t.1.3", ins[3:], True)
    return w


def _drop(view: View, value: bytes) -> None:
    for records in view.values():
        records[:] = [r for r in records if r[1] != value]


def test_values_round_trip() -> None:
    value = encode_txn_value("p0.2.7", 3, 5, "1:42:in-42")
    assert decode_txn_value(value) == ("p0.2.7", 3, 5, "1:42:in-42")
    assert decode_txn_value(b"p0|k1|0|0") is None and decode_txn_value(None) is None


def test_a_clean_history_passes() -> None:
    v = _clean().check()
    assert v.ok, v.summary()
    assert v.inputs == 6
    assert v.beliefs["write committed"] == 2 and v.beliefs["transform aborted"] == 1
    assert v.aborted_in_uncommitted == 2 + 3  # a.1.2's records and t.1.2's


def test_a_committed_transaction_partly_visible_is_caught() -> None:
    w = _clean()
    _drop(w.committed, w.txns[0].records[1][2])  # its record on y/1 is gone
    v = w.check()
    assert not v.ok and v.partial == 1, v.summary()
    assert "a.1.1" in v.problems["partly visible"][0]


def test_a_committed_transaction_not_visible_is_lost() -> None:
    w = _clean()
    for *_, value in w.txns[4].records:
        _drop(w.committed, value)
    v = w.check()
    assert not v.ok and v.committed_lost == 1 and v.partial == 0, v.summary()


def test_an_unknown_transaction_must_be_whole_or_absent() -> None:
    w = _clean()
    _drop(w.committed, w.txns[2].records[0][2])
    v = w.check()
    assert not v.ok and v.partial == 1, v.summary()


def test_a_visible_aborted_record_is_caught() -> None:
    w = _clean()
    aborted = w.txns[1]
    topic, p, value = aborted.records[1]
    w.committed.setdefault((topic, p), []).append((aborted.acked[1][1], value))
    v = w.check()
    assert not v.ok and v.aborted_visible == 1, v.summary()
    assert "a.1.2" in v.problems["aborted, visible"][0]


def test_a_duplicate_is_caught() -> None:
    w = _clean()
    log = w.committed[("x", 0)]
    log.append((99, log[0][1]))
    v = w.check()
    assert not v.ok and v.duplicated == 1, v.summary()


def test_read_uncommitted_must_see_aborted_records() -> None:
    w = _clean()
    _drop(w.uncommitted, w.txns[1].records[0][2])
    v = w.check()
    assert not v.ok and v.uncommitted_missing == 1, v.summary()


def test_a_phantom_is_caught() -> None:
    w = _clean()
    w.committed[("x", 0)].append((98, encode_txn_value("nobody.1.1", 0, 1)))
    w.committed[("x", 0)].append((99, b"garbage"))
    v = w.check()
    assert not v.ok and v.phantom == 2, v.summary()


def test_records_out_of_send_order_are_caught() -> None:
    w = _clean()
    log = w.committed[("x", 0)]
    log[0], log[1] = (log[0][0], log[1][1]), (log[1][0], log[0][1])  # a.1.1 #2 before #0
    v = w.check()
    assert not v.ok and v.disordered == 1, v.summary()


def test_a_transaction_interleaved_with_its_producers_next_is_caught() -> None:
    w = World()
    w.txn("a.1.1", COMMITTED, [("x", 0), ("x", 0)])
    w.txn("a.1.2", COMMITTED, [("x", 0)])
    w.txn("c.1.1", COMMITTED, [("x", 0)])  # another producer: may come anywhere
    assert w.check().ok
    log = w.committed[("x", 0)]
    log[1], log[2] = (log[1][0], log[2][1]), (log[2][0], log[1][1])  # a.1.2 inside a.1.1
    v = w.check()
    assert not v.ok and v.disordered == 1, v.summary()
    assert "interleaved" in v.problems


def test_another_producers_records_may_interleave() -> None:
    w = World()
    w.txn("a.1.1", COMMITTED, [("x", 0), ("x", 0)])
    w.txn("c.1.1", COMMITTED, [("x", 0)])
    log = w.committed[("x", 0)]
    log[1], log[2] = (log[1][0], log[2][1]), (log[2][0], log[1][1])
    assert w.check().ok


def test_an_input_not_transformed_is_caught() -> None:
    w = _clean()
    w.input_log[1].append((2, encode_input(1002)))
    w.group_offsets[1] = 3  # the group moved on: the record was skipped
    v = w.check()
    assert not v.ok and v.untransformed == 1 and v.offsets_wrong == 0, v.summary()


def test_an_input_transformed_twice_is_caught() -> None:
    w = _clean()
    w.transform("t.1.4", [(0, 1, w.input_log[0][1][1])], True)
    v = w.check()
    assert not v.ok and v.transformed_twice == 1, v.summary()


def test_group_offsets_short_of_the_end_are_caught() -> None:
    w = _clean()
    w.group_offsets[0] = 2
    v = w.check()
    assert not v.ok and v.offsets_wrong == 1, v.summary()


def test_a_lost_input_and_a_wrong_output_are_caught() -> None:
    w = _clean()
    w.input_acked[b"in-7"] = (1, 5)  # acknowledged, not in the log
    v = w.check()
    assert not v.ok and v.input_lost == 1, v.summary()
    w = _clean()
    w.input_log[0][0] = (0, b"in-other")  # the output names a value the log lacks
    v = w.check()
    assert not v.ok and v.output_mismatch == 1, v.summary()


def test_a_transaction_never_ended_is_caught() -> None:
    w = _clean()
    w.txn("a.1.4", OPEN, [("y", 1)], visible=False)
    v = w.check()
    assert not v.ok and v.open_at_end == 1, v.summary()
