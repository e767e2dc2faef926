"""The checker catches what it claims to: each invariant broken on purpose, in memory."""

from __future__ import annotations

from pathlib import Path

import pytest
from checker import (
    Ack,
    Failure,
    Ledger,
    ReplicaLog,
    analyse,
    decode_value,
    encode_value,
    keys_covering,
    read_replicas,
    replicas_settled,
)

from kvlog import batch as batch_format
from kvlog.lmdb_store import LogDir
from kvlog.partitioner import partition_for_key
from kvlog.types import TopicPartition

pytestmark = pytest.mark.timeout(30)


def _batch(values: list[bytes]) -> bytes:
    # A fixed timestamp: replicas built a millisecond apart must still be byte-identical.
    return batch_format.build_batch((b"k", v, None, 1_700_000_000_000) for v in values)


def _replica(node_id: int, batches: list[list[bytes]], hw: int | None = None) -> ReplicaLog:
    out, offset = [], 0
    for values in batches:
        out.append((offset, _batch(values)))
        offset += len(values)
    return ReplicaLog(node_id, 0, offset if hw is None else hw, offset, out)


def _world(batches: list[list[bytes]]) -> tuple[dict, dict]:
    """Acks for every value at its offset in partition 0, and three identical replicas."""
    acked, offset = {}, 0
    for values in batches:
        for v in values:
            decoded = decode_value(v)
            assert decoded is not None
            acked[decoded[0]] = Ack(0, offset, 0.0)
            offset += 1
    return acked, {0: {n: _replica(n, batches) for n in (0, 1, 2)}}


V = [encode_value("p0", "k1", s, s) for s in range(6)]


def test_a_clean_run_passes() -> None:
    acked, replicas = _world([V[:3], V[3:]])
    seen = {(0, o): V[o] for o in range(6)}
    v = analyse(acked, {}, replicas, {0: 0}, seen)
    assert v.ok, v.summary()
    assert (v.acknowledged, v.consumer_seen) == (6, 6)


def test_a_lost_acknowledged_record_is_caught() -> None:
    acked, _ = _world([V[:3], V[3:]])
    replicas = {0: {n: _replica(n, [V[:3]]) for n in (0, 1, 2)}}
    v = analyse(acked, {}, replicas, {0: 0})
    assert v.lost == 3 and v.acked_above_hw == 3 and not v.ok


def test_a_record_at_another_offset_is_caught() -> None:
    acked, _ = _world([V[:3]])
    replicas = {0: {n: _replica(n, [[V[1], V[0], V[2]]]) for n in (0, 1, 2)}}
    v = analyse(acked, {}, replicas, {0: 0})
    assert v.misplaced == 2 and v.reordered >= 1 and not v.ok


def test_a_duplicate_is_caught_even_of_a_failed_record() -> None:
    acked, _ = _world([V[:3]])
    replicas = {0: {n: _replica(n, [V[:3], [V[2]]]) for n in (0, 1, 2)}}
    v = analyse(acked, {}, replicas, {0: 0})
    assert v.duplicated == 1 and not v.ok

    failed_id = decode_value(V[3])[0]
    failed = {failed_id: Failure(0, "TimeoutError", 0.0)}
    once = {0: {n: _replica(n, [V[:4]]) for n in (0, 1, 2)}}
    v = analyse(acked, failed, once, {0: 0})
    assert v.ok and v.failed_stored == 1, v.summary()
    twice = {0: {n: _replica(n, [V[:4], [V[3]]]) for n in (0, 1, 2)}}
    assert analyse(acked, failed, twice, {0: 0}).duplicated == 1


def test_reordering_is_caught() -> None:
    acked = {decode_value(V[0])[0]: Ack(0, 1, 0.0), decode_value(V[1])[0]: Ack(0, 0, 0.0)}
    replicas = {0: {n: _replica(n, [[V[1], V[0]]]) for n in (0, 1, 2)}}
    v = analyse(acked, {}, replicas, {0: 0})
    assert v.reordered == 2 and not v.ok  # in the log, and in the acknowledgements


def test_diverging_replicas_are_caught_below_the_high_watermark_only() -> None:
    acked, replicas = _world([V[:3]])
    other = encode_value("p1", "k2", 0, 0)
    replicas[0][2] = _replica(2, [[V[0], V[1], other]])
    v = analyse(acked, {}, replicas, {0: 0})
    assert not v.replicas_identical and not v.ok

    # A suffix above every replica's high watermark may differ (it is truncated later).
    acked, _ = _world([V[:3]])
    replicas = {0: {n: _replica(n, [V[:3], [V[3]]], hw=3) for n in (0, 1)}}
    replicas[0][2] = _replica(2, [V[:3], [other]], hw=3)
    v = analyse(acked, {}, replicas, {0: 0})
    assert v.replicas_identical, v.summary()


def test_consumer_gaps_and_impossible_reads_are_caught() -> None:
    acked, replicas = _world([V[:3]])
    v = analyse(acked, {}, replicas, {0: 0}, {(0, 0): V[0], (0, 1): V[1]})
    assert v.consumer_seen == 2 and not v.ok
    v = analyse(acked, {}, replicas, {0: 0}, {(0, o): V[o] for o in range(3)} | {(0, 3): V[4]})
    assert v.consumer_inconsistent == 1 and not v.ok


def test_phantom_values_are_caught() -> None:
    acked, _ = _world([V[:2]])
    replicas = {0: {n: _replica(n, [V[:2], [b"garbage", V[2]]]) for n in (0, 1, 2)}}
    v = analyse(acked, {}, replicas, {0: 0})
    assert v.phantom == 2 and not v.ok  # undecodable, and decodable but never sent


def test_ledger_and_helpers() -> None:
    ledger = Ledger()
    ledger.on_ack(("p0", "k1", 0), 2, 7)
    ledger.on_fail(("p0", "k1", 1), 2, TimeoutError("no answer after 3000 ms"))
    ledger.on_fail(("p0", "k1", 2), 2, TimeoutError("no answer after 3100 ms"))
    assert ledger.resolved == 3
    assert ledger.error_kinds() == {"TimeoutError": 2}
    assert len(ledger.error_examples()) == 1  # one per message shape
    keys = keys_covering(6, per_partition=2)
    assert sorted({partition_for_key(k.encode(), 6) for k in keys}) == list(range(6))
    assert decode_value(b"p0|k1|2|9") == (("p0", "k1", 2), 9)
    assert decode_value(b"nope") is None


def test_read_replicas_from_log_dirs(tmp_path: Path) -> None:
    tp = TopicPartition("t", 0)
    for n in (0, 1):
        with LogDir(tmp_path / str(n)) as store:
            store.create_partition(tp)
            batches = [_batch(V[:2]), _batch(V[2:3])]
            leader = n == 0  # only the leader's high watermark moves here
            store.write(
                lambda w, b=batches, h=leader: w.append(
                    tp, b, leader_epoch=0, advance_high_watermark=h
                )
            )
    replicas = read_replicas({0: tmp_path / "0", 1: tmp_path / "1"}, "t", 1)
    assert [r.log_end_offset for r in replicas[0].values()] == [3, 3]
    assert [len(r.records()) for r in replicas[0].values()] == [3, 3]
    assert replicas_settled(replicas, 2) == ["partition 0: node 0: hw 3 leo 3, node 1: hw 0 leo 3"]
