"""A follower that catches up from a compacted leader gets a correct log.

Followers append the leader's batches at the leader's base offsets (``append_at``, as
``workers/follower_core.py`` does), whatever gaps compaction left between them, and rebuild
idempotent-producer state from batch headers (after a truncation). Here a leader's log of
both formats, with idempotent producers, is compacted; a fresh follower copies it batch by
batch: its log must read exactly as the leader's, end at the same offset, and the producer
state its headers give must be the state the uncompacted batches gave.
"""

from __future__ import annotations

import random

from logtest_util import check_partition

from kvlog import batch as batch_format
from kvlog import kafka_batch
from kvlog.cleaner import Cleaner, TopicInfo
from kvlog.codecs import Codec
from kvlog.memory_store import MemoryLogDir
from kvlog.producer_state import after_append
from kvlog.types import TopicPartition

TP = TopicPartition("table", 0)


def _producer_state(headers: object) -> dict[int, tuple[int, int, int]]:
    entries = {}
    for base, _size, header in headers:
        if header.producer_id >= 0:
            entries[header.producer_id] = after_append(
                entries.get(header.producer_id), header, base
            )
    return {pid: (e.epoch, e.last_seq, e.batches[-1].base_offset) for pid, e in entries.items()}


def test_a_follower_copying_a_compacted_leader_reads_the_same_log() -> None:
    rng = random.Random(15)
    leader = MemoryLogDir()
    leader.create_partition(TP)
    sequences = {1: 0, 2: 0}
    for n in range(60):
        count = rng.randint(1, 10)
        keys = [b"k%d" % rng.randrange(12) for _ in range(count)]
        values = [None if rng.random() < 0.1 else b"v%d" % n for _ in range(count)]
        pid = rng.choice([1, 2])
        producer = dict(producer_id=pid, producer_epoch=0, base_sequence=sequences[pid])
        sequences[pid] += count
        common = dict(first_timestamp=n, max_timestamp=n, codec=rng.choice(list(Codec)))
        if n % 2:
            batch = kafka_batch.encode(None, 0, keys, values, **common, **producer)
        else:
            batch = batch_format.encode(0, keys, values, **common, **producer)
        leader.write(lambda w, b=batch: w.append(TP, [b], leader_epoch=3))
    with leader.reader() as r:
        appended = {base: header for base, _size, header in r.headers(TP)}
    info = TopicInfo("id", {"cleanup.policy": "compact"})
    [result] = Cleaner(leader, lambda _t: info, clock=lambda: 0).run({TP.topic})
    assert result.last.batches_removed and result.last.batches_rewritten

    follower = MemoryLogDir()
    follower.create_partition(TP)
    with leader.reader() as r:
        state = r.offsets(TP)
        copied = r.read(TP, 0, 1 << 40)
    for base, batch in copied:  # the follower's fetch loop, one batch at a time
        follower.write(lambda w, b=base, v=batch: w.append_at(TP, b, v))
    follower.write(lambda w: w.set_high_watermark(TP, state.high_watermark))

    with follower.reader() as r:
        assert r.offsets(TP)[:3] == state[:3]
        assert r.read(TP, 0, 1 << 40) == copied
        # Producer state from the compacted headers: each producer's last surviving batch
        # gives the sequences it was appended with (they follow its last offset delta,
        # which compaction keeps, not its record count, which it changes).
        after = _producer_state(r.headers(TP))
    assert set(after) == {1, 2}
    for _pid, (epoch, last_seq, base) in after.items():
        assert epoch == 0 and last_seq == appended[base].last_sequence
    with follower.reader() as r:
        rewritten = [h for b, _s, h in r.headers(TP) if h.record_count < appended[b].record_count]
    assert rewritten
    check_partition(follower, TP)
