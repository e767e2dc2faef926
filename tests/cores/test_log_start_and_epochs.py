"""What the node's Kafka-only requests decide, event by event on a MemoryLogDir:
DeleteRecords (LeaderCore: the log start moves, in one durable write; followers follow
it), OffsetForLeaderEpoch (FetchCore, from the epoch cache) and the leader epochs
ListOffsets returns and checks (KIP-320's fencing)."""

from __future__ import annotations

from typing import Any

from node_harness import offsets
from test_follower_core import ENDPOINTS, answer, data, follower
from test_leader_core import NOW, T0, T1, Store, assign, batch, node, part

from kvlog import epochs
from kvlog.errors import ErrorCode
from kvlog.types import TopicPartition
from kvlog.workers.node_core import NodeCore
from kvlog.workers.node_model import (
    DeleteRecords,
    EpochQuery,
    FetchedPartition,
    HostedPartition,
    ListOffsets,
    OffsetForLeaderEpoch,
    Produce,
)


def produce(core: NodeCore, *values: bytes, tp: TopicPartition = T0) -> None:
    for i, value in enumerate(values):
        core.produce(Produce(f"p{i}", 1, [(tp, batch(value))]), NOW)
    core.flush(NOW)


def codes(parts: list[Any]) -> list[int]:
    return [0 if p.error is None else int(p.error.code) for p in parts]


# -- DeleteRecords ---------------------------------------------------------------------------


def test_delete_records_moves_the_log_start_in_one_write() -> None:
    store = Store()
    core = node(store)
    assign(core, part(T0, [0]), part(T1, [0]))
    produce(core, b"a", b"b", b"c", b"d")  # offsets 0..3, one batch each
    before = store.writes
    [reply] = core.delete_records(DeleteRecords("d", [(T0, 2), (T1, 0)]), NOW).replies
    assert store.writes == before + 1, "one durable transaction for the request"
    assert reply.token == "d" and reply.error is None
    assert [(p.tp, p.error, p.low_watermark) for p in reply.body.partitions] == [
        (T0, None, 2),
        (T1, None, 0),
    ]
    state = offsets(store, T0)
    assert (state.log_start_offset, state.log_end_offset) == (2, 4)
    with store.reader() as r:
        assert [base for base, _ in r.read(T0, 2, 1 << 20)] == [2, 3], "whole batches dropped"


def test_delete_records_to_the_high_watermark_and_its_errors() -> None:
    core = node()
    assign(
        core,
        part(T0, [0]),
        HostedPartition(TopicPartition("led", 0), "id", 1, 1, [1, 0], {}, [1, 0]),
    )
    produce(core, b"a", b"b", b"c")
    other = TopicPartition("led", 0)
    request = DeleteRecords(
        "d", [(T0, 9), (T0, -2), (other, 0), (TopicPartition("nope", 0), 0), (T0, -1)]
    )
    [reply] = core.delete_records(request, NOW).replies
    parts = reply.body.partitions
    assert codes(parts) == [
        ErrorCode.OFFSET_OUT_OF_RANGE,  # past the high watermark
        ErrorCode.OFFSET_OUT_OF_RANGE,  # neither -1 nor an offset
        ErrorCode.NOT_LEADER_OR_FOLLOWER,
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        0,
    ]
    assert parts[-1].low_watermark == 3, "-1 is the high watermark"
    [again] = core.delete_records(DeleteRecords("e", [(T0, 1)]), NOW).replies
    assert again.body.partitions[0].low_watermark == 3, "the log start never goes back"


def test_a_failed_delete_records_write_takes_the_log_dir_offline() -> None:
    store = Store()
    core = node(store)
    assign(core, part(T0, [0]))
    produce(core, b"a")
    store.fail = True
    result = core.delete_records(DeleteRecords("d", [(T0, 1)]), NOW)
    [reply] = result.replies
    assert codes(reply.body.partitions) == [ErrorCode.STORAGE_ERROR]
    assert core.health.offline
    assert [s.op for s in result.sends] == ["node_heartbeat"], "the coordinator hears at once"
    assert result.sends[0].fields["offline"] is True


def test_a_follower_follows_the_leaders_log_start_up_to_its_high_watermark() -> None:
    f, core = follower({T0: 0})
    [send] = f.sends(0, ENDPOINTS)
    f.on_answer(answer(send.token, [data(T0, 0, [b"1", b"2", b"3", b"4"], 3, 2)]), 1)
    [send] = f.sends(1, ENDPOINTS)
    moved = FetchedPartition(T0, None, 2, 3, 4)  # the leader's log now starts at 3
    f.on_answer(answer(send.token, [moved]), 2)
    state = offsets(core.store, T0)
    assert state.high_watermark == 2
    assert state.log_start_offset == 2, "capped at what this replica knows is committed"
    [send] = f.sends(2, ENDPOINTS)
    f.on_answer(answer(send.token, [FetchedPartition(T0, None, 4, 3, 4)]), 3)
    state = offsets(core.store, T0)
    assert (state.log_start_offset, state.high_watermark) == (3, 4)


# -- OffsetForLeaderEpoch and ListOffsets' epochs ------------------------------------------


def epoch_part(epoch: int) -> HostedPartition:
    return HostedPartition(T0, "id", 0, epoch, [0], {}, [0])


def test_offset_for_leader_epoch_answers_from_the_epoch_cache() -> None:
    core = node()
    assign(core, epoch_part(1))
    produce(core, b"a", b"b")  # epoch 1: offsets 0..1
    assign(core, epoch_part(4))
    produce(core, b"c")  # epoch 4: offset 2
    with core.store.reader() as r:
        assert epochs.entries(r, T0) == [(1, 0), (4, 2)]
    queries = [
        EpochQuery(T0, 1),
        EpochQuery(T0, 3),  # no such epoch: the largest below it, ending where 4 starts
        EpochQuery(T0, 4),
        EpochQuery(T0, 9),  # newer than any: the latest, to the log end
        EpochQuery(T0, 0),  # older than any cached
        EpochQuery(T0, -1),
        EpochQuery(T0, 4, current_leader_epoch=3),
        EpochQuery(T0, 4, current_leader_epoch=5),
        EpochQuery(T1, 1),
    ]
    [reply] = core.offset_for_leader_epoch(OffsetForLeaderEpoch("e", queries)).replies
    parts = reply.body.partitions
    assert [(p.leader_epoch, p.end_offset) for p in parts[:6]] == [
        (1, 2),
        (1, 2),
        (4, 3),
        (4, 3),
        (-1, 0),
        (-1, -1),
    ]
    assert codes(parts[6:]) == [
        ErrorCode.FENCED_LEADER_EPOCH,
        ErrorCode.UNKNOWN_LEADER_EPOCH,
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
    ]


def test_list_offsets_carries_the_epoch_of_the_offset_and_fences_stale_clients() -> None:
    core = node()
    assign(core, epoch_part(1))
    produce(core, b"a", b"b")
    assign(core, epoch_part(4))
    produce(core, b"c")
    core.delete_records(DeleteRecords("d", [(T0, 1)]), NOW)
    request = ListOffsets(
        "l",
        [(T0, -2), (T0, -1), (T0, 0), (T1, -1), (T0, -1), (T0, -1)],
    )
    request.current_leader_epochs = {T1: 1}
    [reply] = core.list_offsets(request).replies
    parts = reply.body.partitions
    assert [(p.offset, p.leader_epoch) for p in parts[:3]] == [(1, 1), (3, 4), (1, 1)]
    assert codes(parts[3:4]) == [ErrorCode.UNKNOWN_TOPIC_OR_PARTITION]
    for epoch, code in [(3, ErrorCode.FENCED_LEADER_EPOCH), (5, ErrorCode.UNKNOWN_LEADER_EPOCH)]:
        fenced = ListOffsets("f", [(T0, -1)], {T0: epoch})
        [reply] = core.list_offsets(fenced).replies
        assert codes(reply.body.partitions) == [code]
    [ok] = core.list_offsets(ListOffsets("ok", [(T0, -1)], {T0: 4})).replies
    assert ok.body.partitions[0].error is None
