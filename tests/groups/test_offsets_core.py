"""OffsetsCore: committed offsets, fenced by the group core, answered in one Result."""

from __future__ import annotations

from coord_harness import Harness
from test_coordinator import Member, rebalance

from kvlog.errors import ErrorCode
from kvlog.metadata_store import CommittedOffset
from kvlog.types import TopicPartition as TP
from kvlog.workers.group_events import (
    CommitEntry,
    FetchedOffset,
    OffsetCommit,
    OffsetFetch,
    OffsetFetchAnswer,
    PartitionCommitted,
)

EC = ErrorCode


def test_a_too_long_metadata_is_refused_alone() -> None:
    h = Harness()
    entries = [CommitEntry(TP("t", 0), 5, "ok"), CommitEntry(TP("t", 1), 6, "x" * 4097)]
    result = h.offsets.commit("c", OffsetCommit("g", entries), h.now)
    [reply] = result.replies
    assert reply.error is None
    ok, refused = reply.body.partitions
    assert ok == PartitionCommitted(TP("t", 0))
    assert refused.tp == TP("t", 1) and refused.error.code is EC.OFFSET_METADATA_TOO_LARGE
    assert refused.error.message == "offset metadata longer than 4096 bytes"
    assert h.committed("g") == {TP("t", 0): 5}
    assert h.commit_reply("g", "", -1, {TP("t", 1): 1})["partitions"][0] == {
        "topic": "t",
        "partition": 1,
        "error": 0,
    }


def test_fetch_answers_every_asked_partition_with_what_was_committed_and_when() -> None:
    h = Harness()
    h.offsets.commit("c", OffsetCommit("g", [CommitEntry(TP("t", 2), 7, "m")]), h.now)
    later = h.now + 5
    asked = [TP("t", 3), TP("t", 2)]
    [reply] = h.offsets.fetch("f", OffsetFetch("g", asked), later).replies
    assert reply.body == OffsetFetchAnswer(
        [FetchedOffset(TP("t", 3), None), FetchedOffset(TP("t", 2), CommittedOffset(7, "m", h.now))]
    ), "the commit's timestamp is the now_ms it was committed at"
    [reply] = h.offsets.fetch("f2", OffsetFetch("other"), later).replies
    assert reply.body.partitions == [], "any group id works"


def test_a_members_commit_renews_its_session() -> None:
    h = Harness()
    a = Member(h, "a", session_timeout_ms=1000)
    rebalance([a])
    for _ in range(5):
        h.advance(600)
        assert a.commit({TP("t", 0): 1}) == 0, "only commits, no heartbeats"
    assert a.member_id in h.group().members


def test_fencing_errors_are_request_level_replies() -> None:
    h = Harness()
    for group, generation, member, code in [
        ("", -1, "", EC.INVALID_GROUP_ID),
        ("g", 3, "someone", EC.UNKNOWN_MEMBER_ID),
    ]:
        event = OffsetCommit(group, [CommitEntry(TP("t", 0), 1)], generation, member)
        [reply] = h.offsets.commit("c", event, h.now).replies
        assert reply.body is None and reply.error.code is code
