"""Report shaping shared by ``kvlog topics`` / ``kvlog groups`` (tools/) and the web
console (workers/console/view.py): a topic's partition table, a group's members and
per-partition lag, and a reset-offsets plan, built from what kvlog's clients answer.

A committed offset outside its partition's log [log start, log end] (past the end: the
topic was deleted and created again or the log truncated; before the start: retention
removed records the group had not read) has no lag: its row carries a ``problem`` saying
so, and both the CLI and the console show it as "out of range", never as a lag.

Stateless functions; the clients they are given are the caller's (an Admin is
thread-safe; a Consumer is used on the caller's thread or under the caller's lock).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kvlog.errors import GroupIdNotFoundError
from kvlog.types import TopicPartition

#: (log start, log end) of each partition; None where the broker did not say.
Ranges = dict[TopicPartition, tuple[int | None, int | None]]

RESET_STRATEGIES = ("earliest", "latest", "offset", "timestamp", "shift")


def log_ranges(consumer: Any, tps: list[TopicPartition]) -> Ranges:
    """(log start, log end) of each partition, from a group-less Consumer."""
    if not tps:
        return {}
    starts = consumer.beginning_offsets(tps)
    ends = consumer.end_offsets(tps)
    return {tp: (starts.get(tp), ends.get(tp)) for tp in tps}


def partition_rows(desc: Any) -> list[dict[str, Any]]:
    """A topic's partition table from ``Admin.describe_topic``: leader, epoch, replicas,
    in-sync replicas."""
    return [
        {
            "partition": p.partition,
            "leader": p.leader,
            "leader_epoch": p.leader_epoch,
            "replicas": list(p.replicas),
            "isr": list(p.isr),
        }
        for p in desc.partitions
    ]


def describe_or_empty(admin: Any, group_id: str) -> dict[str, Any]:
    """describe_groups, with an unknown group read as an empty one."""
    try:
        return admin.describe_groups([group_id])[0]
    except GroupIdNotFoundError:
        return {"group_id": group_id, "state": "Dead", "members": []}


def out_of_range(committed: int | None, start: int | None, end: int | None) -> str | None:
    """What is wrong with a committed offset outside the log, or None."""
    if committed is None or start is None or end is None:
        return None
    if committed > end:
        return (
            f"committed offset {committed} is past the log end offset {end} (the topic was "
            "deleted and created again, or the log was truncated): the group's consumers "
            "reset it with auto.offset.reset when they next read"
        )
    if committed < start:
        return (
            f"committed offset {committed} is before the log start offset {start}: retention "
            f"removed {start - committed} record(s) the group had not read; its consumers "
            "reset it with auto.offset.reset when they next read"
        )
    return None


def group_report(
    admin: Any, ranges: Callable[[list[TopicPartition]], Ranges], group_id: str
) -> dict[str, Any]:
    """Description, members and, per partition, the committed offset, the log end offset
    and the lag (None, with a ``problem``, for a committed offset outside the log).
    ``ranges``: the partitions' (log start, log end), e.g. :func:`log_ranges`."""
    desc = describe_or_empty(admin, group_id)
    committed = admin.list_group_offsets(group_id)
    owners: dict[TopicPartition, dict[str, Any]] = {}
    for m in desc.get("members", []):
        for topic, partition in m.get("assignment", []):
            owners[TopicPartition(topic, partition)] = m
    tps = sorted(set(committed) | set(owners))
    found = ranges(tps)
    rows = []
    for tp in tps:
        offset = committed.get(tp)
        start, end = found.get(tp, (None, None))
        member = owners.get(tp)
        problem = out_of_range(offset, start, end)
        rows.append(
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "committed_offset": offset,
                "log_end_offset": end,
                "lag": None if offset is None or end is None or problem else end - offset,
                "member_id": member.get("member_id") if member else None,
                "client_id": member.get("client_id") if member else None,
                **({"problem": problem} if problem else {}),
            }
        )
    return {
        "group_id": group_id,
        "state": desc.get("state"),
        "generation": desc.get("generation"),
        "protocol": desc.get("protocol"),
        "leader": desc.get("leader"),
        "members": [
            {
                "member_id": m.get("member_id"),
                "client_id": m.get("client_id"),
                "instance_id": m.get("instance_id"),
                "assignment": [f"{t}-{p}" for t, p in m.get("assignment", [])],
            }
            for m in desc.get("members", [])
        ],
        "partitions": rows,
    }


def check_reset(strategy: str, value: int | None) -> None:
    """A known strategy, with the value it needs (ValueError)."""
    if strategy not in RESET_STRATEGIES:
        raise ValueError(f"unknown reset strategy {strategy!r}")
    if strategy not in ("earliest", "latest") and value is None:
        raise ValueError(f"reset to {strategy} needs a value")


def plan_reset(
    strategy: str,
    value: int | None,
    ranges: Mapping[TopicPartition, tuple[int, int]],
    committed: Mapping[TopicPartition, int],
    offsets_for_times: Callable[[dict[TopicPartition, int]], Mapping[TopicPartition, Any]],
) -> dict[TopicPartition, int]:
    """The new committed offset of each partition of ``ranges`` (its (log start, log
    end)), clamped to that range as Kafka's tool does. ``strategy``: one of
    :data:`RESET_STRATEGIES`; ``value``: the offset, the timestamp (ms) or the shift (from
    the committed offset, or the log start where the group has none)."""
    check_reset(strategy, value)
    found: Mapping[TopicPartition, Any] = {}
    if strategy == "timestamp":
        assert value is not None
        found = offsets_for_times(dict.fromkeys(ranges, value))
    plan = {}
    for tp, (start, end) in ranges.items():
        if strategy == "earliest":
            target = start
        elif strategy == "latest":
            target = end
        elif strategy == "offset":
            target = int(value or 0)
        elif strategy == "timestamp":
            hit = found.get(tp)
            target = end if hit is None else hit.offset
        else:
            target = committed.get(tp, start) + int(value or 0)
        plan[tp] = min(max(target, start), end)
    return plan


__all__ = [
    "RESET_STRATEGIES",
    "Ranges",
    "check_reset",
    "describe_or_empty",
    "group_report",
    "log_ranges",
    "out_of_range",
    "partition_rows",
    "plan_reset",
]
