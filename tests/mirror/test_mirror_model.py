"""The mirror's pure decisions (workers/mirror_model.py): offset maps against a dict model,
group translation, renames and partition routes, the header, the config table; and
retention holds (kvlog/retention.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvlog.errors import InvalidConfigError
from kvlog.metadata_store import CommittedOffset
from kvlog.retention import RETENTION_HOLD, BatchInfo, retention_cutoff, retention_holds
from kvlog.types import TopicPartition
from kvlog.workers.mirror_model import (
    GROUP_PREFIX,
    MirrorSpec,
    OffsetMap,
    Rename,
    group_updates,
    header_value,
    plan_targets,
    read_header,
    spec_from_config,
    target_partition,
    translate_group,
)


@st.composite
def runs(draw: Any) -> list[tuple[list[int], int]]:
    """Batches as the mirror writes them: source offsets ascending (gaps allowed), each
    batch at the next target offset."""
    out = []
    src = draw(st.integers(0, 50))
    tgt = draw(st.integers(0, 50))
    for _ in range(draw(st.integers(0, 12))):
        count = draw(st.integers(1, 6))
        offsets = []
        for _ in range(count):
            src += draw(st.sampled_from([1, 1, 1, 2, 5]))
            offsets.append(src)
        out.append((offsets, tgt))
        tgt += count
    return out


@given(runs(), st.lists(st.integers(0, 200), max_size=30))
def test_offset_map_translates_exactly_as_a_dict_would(
    batches: list[tuple[list[int], int]], probes: list[int]
) -> None:
    offset_map = OffsetMap()
    model: dict[int, int] = {}
    for offsets, base in batches:
        offset_map.add(offsets, base)
        model.update({o: base + i for i, o in enumerate(offsets)})
    again = OffsetMap.from_list(offset_map.to_list())
    for probe in probes:
        if not model or probe < min(model) or probe > max(model) + 1:
            expected = None
        elif probe == max(model) + 1:
            expected = model[max(model)] + 1
        else:
            expected = model[min(o for o in model if o >= probe)]
        assert offset_map.translate(probe) == expected == again.translate(probe)
    if model:
        assert offset_map.next_source == max(model) + 1


def test_contiguous_batches_make_one_segment_and_replays_are_ignored() -> None:
    offset_map = OffsetMap()
    offset_map.add(range(0, 100), 0)
    offset_map.add(range(100, 250), 100)
    offset_map.add(range(50, 60), 50)  # read back from the target after a restart
    assert offset_map.to_list() == [[0, 0, 250]]
    assert offset_map.translate(125) == 125 and offset_map.translate(250) == 250
    assert offset_map.translate(251) is None  # the mirror has not got there


def test_group_translation_takes_the_lower_offset_where_feeds_share_a_target() -> None:
    a, b = TopicPartition("s", 0), TopicPartition("s", 2)
    maps = {a: OffsetMap.from_list([[0, 0, 10]]), b: OffsetMap.from_list([[0, 10, 10]])}
    routes = {a: TopicPartition("t", 0), b: TopicPartition("t", 0)}
    assert translate_group({a: 4, b: 3}, maps, routes) == {TopicPartition("t", 0): 4}
    assert translate_group({a: 11}, maps, routes) == {}  # ahead of the mirror: later
    assert group_updates({TopicPartition("t", 0): 4}, {TopicPartition("t", 0): 9}) == {}
    assert group_updates({TopicPartition("t", 0): 4}, {}) == {TopicPartition("t", 0): 4}


def test_renames_routes_and_refusals() -> None:
    spec = MirrorSpec(
        name="site42",
        target="kafka://central:9092",
        topics=r"sensors\..*",
        groups="billing",
        renames=[Rename.parse(r"sensors\.(.*)=site42.sensors.\1")],
    )
    assert plan_targets(spec, ["sensors.temp", "other", "__internal"]) == {
        "sensors.temp": "site42.sensors.temp"
    }
    assert spec.translates("billing") and not spec.translates(GROUP_PREFIX + "billing")
    assert [target_partition(p, 3) for p in range(3)] == [0, 1, 2]
    assert [target_partition(p, 2) for p in range(4)] == [0, 1, 0, 1]
    merging = MirrorSpec(
        name="m", target="kafka://c:9092", topics=".*", renames=[Rename.parse(".*=all")]
    )
    with pytest.raises(InvalidConfigError, match="both go to 'all'"):
        plan_targets(merging, ["a", "b"])
    with pytest.raises(InvalidConfigError, match="PATTERN=REPLACEMENT"):
        Rename.parse("no-equals-sign")
    with pytest.raises(InvalidConfigError, match="mirror name"):
        MirrorSpec(name="bad name", target="kafka://c:9092", topics=".*")


def test_the_header_is_read_back_the_last_one_counting() -> None:
    mine = ("kvlog.mirror", header_value(2, 12345))
    upstream = ("kvlog.mirror", header_value(0, 7))
    assert read_header([("trace", b"x"), upstream, mine]) == (2, 12345)
    assert read_header([("trace", b"x")]) is None and read_header(None) is None


def test_spec_from_config_names_unknown_keys() -> None:
    spec = spec_from_config(
        {"name": "c", "to": "kafka://h:9092", "topics": "a.*", "rename": "a(.*)=b\\1"},
        source="tcp://127.0.0.1:7092",
        state_dir="/tmp/x",
    )
    assert spec.target_topic("a1") == "b1" and spec.source == "tcp://127.0.0.1:7092"
    with pytest.raises(InvalidConfigError, match="did you mean 'topics'"):
        spec_from_config({"name": "c", "to": "kafka://h:9092", "topic": "a"})
    with pytest.raises(InvalidConfigError, match="'to' is required"):
        spec_from_config({"name": "c", "topics": "a"})


def test_retention_holds_keep_batches_at_or_past_the_hold() -> None:
    tp, other = TopicPartition("t", 0), TopicPartition("t", 1)
    commits = [
        ("kvlog-mirror.a", tp, CommittedOffset(120, RETENTION_HOLD)),
        ("kvlog-mirror.b", tp, CommittedOffset(80, RETENTION_HOLD)),
        ("billing", tp, CommittedOffset(10, "")),  # an ordinary group holds nothing
        ("kvlog-mirror.c", other, CommittedOffset(5, "")),  # --allow-gaps: progress only
    ]
    holds = retention_holds(commits)
    assert holds == {tp: 80}
    batches = [BatchInfo(b, b + 50, 100, 0) for b in range(0, 200, 50)]
    free = retention_cutoff(
        batches, total_bytes=400, high_watermark=200, retention_ms=1, retention_bytes=-1, now_ms=10
    )
    held = retention_cutoff(
        batches,
        total_bytes=400,
        high_watermark=min(holds[tp], 200),
        retention_ms=1,
        retention_bytes=-1,
        now_ms=10,
    )
    assert free == 200 and held == 50  # the batch holding offset 80 stays
