"""The exactly-once invariant of the transactional fault runs (issue 17).

:func:`analyse_txns` is pure: it takes the :mod:`txn_workload` history (every
transaction and what its client believed), what a ``read_committed`` and a
``read_uncommitted`` reader got from every partition once the cluster settled, the input
topic's log, and the consumer group's committed offsets. It checks:

- atomic: a transaction the client believed committed is visible to read_committed
  whole (every record, on every partition); one it believed aborted is not visible at
  all; one whose fate it could not know (fenced, a call failed) is whole or absent;
- read_uncommitted sees every acknowledged record at its acknowledged offset (aborted
  transactions' too: the markers hide records, they never remove them);
- no record is visible twice, none that nobody sent;
- in order: a transaction's records on a partition come in send order, and no record of
  another transaction of the same transactional.id lies between them;
- exactly once: every record of the input topic (and every acknowledged one is there)
  is in exactly one committed output record, which carries its value; the group's
  committed offsets are the input's end offsets.

A broken invariant is counted and described (with the transaction's timeline), never
raised: the test asserts :attr:`TxnVerdict.ok`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from txn_workload import ABORTED, COMMITTED, OPEN, UNKNOWN, Txn, decode_txn_value

MAX_EXAMPLES = 8
View = dict[tuple[str, int], list[tuple[int, bytes | None]]]  # (topic, partition) -> log


@dataclass
class TxnVerdict:
    beliefs: Counter[str] = field(default_factory=Counter)
    committed_lost: int = 0  # believed committed, nothing visible
    partial: int = 0  # partly visible (any belief)
    aborted_visible: int = 0  # believed aborted, something visible
    open_at_end: int = 0  # the client never ended it
    uncommitted_missing: int = 0  # acknowledged, not at its offset for read_uncommitted
    duplicated: int = 0
    phantom: int = 0
    disordered: int = 0  # out of send order, or interleaved with its producer's others
    inputs: int = 0
    input_lost: int = 0  # acknowledged into the input topic, not in its log
    untransformed: int = 0  # an input record in no committed output
    transformed_twice: int = 0  # extra committed outputs of one input record
    output_mismatch: int = 0  # an output naming an input that is not what the log holds
    offsets_wrong: int = 0  # group offset != input end offset
    aborted_in_uncommitted: int = 0  # aborted records read_uncommitted saw (as it must)
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def note(self, kind: str, text: str) -> None:
        if len(self.problems[kind]) < MAX_EXAMPLES:
            self.problems[kind].append(text)

    @property
    def ok(self) -> bool:
        return not (
            self.committed_lost
            or self.partial
            or self.aborted_visible
            or self.open_at_end
            or self.uncommitted_missing
            or self.duplicated
            or self.phantom
            or self.disordered
            or self.input_lost
            or self.untransformed
            or self.transformed_twice
            or self.output_mismatch
            or self.offsets_wrong
        )

    def summary(self) -> str:
        lines = [
            f"transactions by client belief: {dict(sorted(self.beliefs.items()))}",
            f"committed lost {self.committed_lost}, partly visible {self.partial}, aborted "
            f"visible {self.aborted_visible}, open at the end {self.open_at_end}",
            f"read_uncommitted saw {self.aborted_in_uncommitted} aborted records; "
            f"acknowledged but missing for it {self.uncommitted_missing}, "
            f"duplicated {self.duplicated}, phantom {self.phantom}, out of order "
            f"{self.disordered}",
            f"inputs {self.inputs}: lost {self.input_lost}, not transformed "
            f"{self.untransformed}, transformed twice {self.transformed_twice}, mismatched "
            f"{self.output_mismatch}; group offsets wrong on {self.offsets_wrong} partitions",
        ]
        for kind, texts in sorted(self.problems.items()):
            lines.append(f"{kind}:")
            lines.extend(f"  {t}" for t in texts)
        return "\n".join(lines)


def analyse_txns(
    txns: list[Txn],
    committed: View,
    uncommitted: View,
    *,
    input_log: dict[int, list[tuple[int, bytes | None]]],
    input_acked: dict[bytes, tuple[int, int]],
    input_ends: dict[int, int],
    group_offsets: dict[int, int | None],
    output_topic: str,
    t0: float = 0.0,
) -> TxnVerdict:
    """Check the invariants (module docstring). ``input_log``: partition -> every record
    of the input topic; ``input_acked``: value -> (partition, offset) acknowledged."""
    v = TxnVerdict(beliefs=Counter(f"{t.kind} {t.belief}" for t in txns))
    by_name = {t.name: t for t in txns}
    visible = _check_committed_view(v, by_name, committed)
    _check_uncommitted_view(v, txns, uncommitted)

    for t in txns:
        seen = len(visible.get(t.name, ()))
        n = len(t.records)
        if t.belief == OPEN:
            v.open_at_end += 1
            v.note("open at the end", t.describe(t0))
        if t.belief == ABORTED and seen:
            v.aborted_visible += 1
            v.note("aborted, visible", f"{seen}/{n} visible; {t.describe(t0)}")
        elif t.belief == COMMITTED and n and seen == 0:
            v.committed_lost += 1
            v.note("committed, not visible", t.describe(t0))
        elif 0 < seen < n:
            v.partial += 1
            missing = sorted(set(range(n)) - visible[t.name])
            v.note("partly visible", f"{seen}/{n} visible (missing #{missing}); {t.describe(t0)}")
        elif t.belief not in (COMMITTED, ABORTED, UNKNOWN, OPEN):
            raise ValueError(f"unknown belief {t.belief!r}")

    _check_exactly_once(
        v,
        {p: records for (topic, p), records in committed.items() if topic == output_topic},
        output_topic,
        input_log,
        input_acked,
        input_ends,
        group_offsets,
    )
    return v


def _check_committed_view(
    v: TxnVerdict, by_name: dict[str, Txn], committed: View
) -> dict[str, set[int]]:
    """Duplicates, phantoms and order; returns txn -> the record indexes visible."""
    visible: dict[str, set[int]] = defaultdict(set)
    for (topic, p), records in sorted(committed.items()):
        current: dict[str, tuple[str, int, int]] = {}  # tid -> (txn, index, offset)
        closed: set[str] = set()  # txns whose run on this partition another txn ended
        for offset, value in records:
            decoded = decode_txn_value(value)
            txn = by_name.get(decoded[0]) if decoded is not None else None
            if decoded is None or txn is None:
                v.phantom += 1
                v.note("phantom", f"{topic}/{p} offset {offset}: {value!r}")
                continue
            name, index = decoded[0], decoded[1]
            if index in visible[name]:
                v.duplicated += 1
                v.note("duplicated", f"{name} #{index} again at {topic}/{p} offset {offset}")
                continue
            visible[name].add(index)
            last = current.get(txn.tid)
            where = f"{topic}/{p} offset {offset}"
            if last is not None and last[0] == name and index < last[1]:
                v.disordered += 1
                v.note(
                    "out of send order",
                    f"{name} #{index} at {where} after #{last[1]} at offset {last[2]}",
                )
            elif last is not None and last[0] != name and name in closed:
                v.disordered += 1
                v.note(
                    "interleaved",
                    f"{name} #{index} at {where} after {last[0]} #{last[1]} at offset "
                    f"{last[2]}, which came after {name}'s earlier records",
                )
            if last is not None and last[0] != name:
                closed.add(last[0])
            current[txn.tid] = (name, index, offset)
    return visible


def _check_uncommitted_view(v: TxnVerdict, txns: list[Txn], uncommitted: View) -> None:
    at = {key: dict(records) for key, records in uncommitted.items()}
    for t in txns:
        for index, (partition, offset) in sorted(t.acked.items()):
            topic, _, value = t.records[index]
            found = at.get((topic, partition), {}).get(offset)
            if found == value and t.belief == ABORTED:
                v.aborted_in_uncommitted += 1
            if found != value:
                v.uncommitted_missing += 1
                v.note(
                    "acknowledged, not there for read_uncommitted",
                    f"{t.name} #{index} acknowledged at {topic}/{partition} offset {offset}; "
                    f"read_uncommitted has {found!r} there (client believed {t.belief})",
                )


def _check_exactly_once(
    v: TxnVerdict,
    output_log: dict[int, list[tuple[int, bytes | None]]],
    output_topic: str,
    input_log: dict[int, list[tuple[int, bytes | None]]],
    input_acked: dict[bytes, tuple[int, int]],
    input_ends: dict[int, int],
    group_offsets: dict[int, int | None],
) -> None:
    inputs = {(p, o): value for p, records in input_log.items() for o, value in records}
    v.inputs = len(inputs)
    for value, (p, o) in sorted(input_acked.items()):
        if inputs.get((p, o)) != value:
            v.input_lost += 1
            v.note(
                "input lost",
                f"{value!r} acknowledged at {p}/{o}; the log has {inputs.get((p, o))!r}",
            )
    outputs: dict[tuple[int, int], list[str]] = defaultdict(list)
    partitions = sorted({p for p, _ in inputs} | set(input_ends))
    for op, records in sorted(output_log.items()):
        for offset, value in records:
            decoded = decode_txn_value(value)
            if decoded is None:
                continue  # a phantom: counted with the committed view
            name, index, _, extra = decoded
            try:
                p, o, in_value = extra.split(":", 2)
                key = (int(p), int(o))
            except ValueError:
                v.output_mismatch += 1
                v.note("output mismatch", f"{output_topic}/{op} offset {offset}: {value!r}")
                continue
            outputs[key].append(f"{name} #{index} at {output_topic}/{op} offset {offset}")
            if inputs.get(key) != in_value.encode():
                v.output_mismatch += 1
                v.note(
                    "output mismatch",
                    f"{name} #{index} transformed input {key} as {in_value!r}; the input "
                    f"log has {inputs.get(key)!r}",
                )
    for key, value in sorted(inputs.items()):
        copies = outputs.get(key, [])
        if not copies:
            v.untransformed += 1
            v.note("input not transformed", f"input {key[0]}/{key[1]} {value!r}")
        elif len(copies) > 1:
            v.transformed_twice += len(copies) - 1
            v.note("input transformed twice", f"input {key[0]}/{key[1]} {value!r}: {copies}")
    for p in partitions:
        end = input_ends.get(p, 0)
        got = group_offsets.get(p)
        if got != end and not (got is None and end == 0):
            v.offsets_wrong += 1
            v.note("group offsets", f"input partition {p}: committed {got}, end offset {end}")
