"""What ``kvlog top`` shows, computed from two scrapes of the metrics endpoint.

Pure functions over the Prometheus text a broker serves (docs/METRICS.md): a
:class:`Scrape` indexes one answer; :func:`view` turns the previous and the current
scrape into rows: per-topic rates, per-group lag, per-node fsync and produce latency
p99 over the interval, and the cluster's counts. Rates and quantiles need two scrapes;
the first view shows totals only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    """One scrape: ``samples[name][labels] = value`` (labels as sorted pairs)."""

    at: float
    samples: dict[str, dict[Labels, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, at: float) -> Scrape:
        from prometheus_client.parser import text_string_to_metric_families

        scrape = cls(at)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                scrape.samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return scrape

    def get(self, name: str) -> dict[Labels, float]:
        return self.samples.get(name, {})

    def by(self, name: str, *keys: str) -> dict[tuple[str, ...], float]:
        """``name``'s samples summed over every label but ``keys``."""
        out: dict[tuple[str, ...], float] = {}
        for labels, value in self.get(name).items():
            as_dict = dict(labels)
            key = tuple(as_dict.get(k, "") for k in keys)
            out[key] = out.get(key, 0.0) + value
        return out


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over (upper bound, cumulative count) pairs: linear
    within the bucket that holds the q-th observation; None with no observation."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def _bucket_deltas(
    cur: Scrape, prev: Scrape | None, name: str, key: str
) -> dict[str, list[tuple[float, float]]]:
    """Per ``key`` label value: (le, cumulative count) over the interval."""
    before = prev.get(f"{name}_bucket") if prev else {}
    out: dict[str, dict[float, float]] = {}
    for labels, value in cur.get(f"{name}_bucket").items():
        as_dict = dict(labels)
        le = float(as_dict["le"])
        delta = value - before.get(labels, 0.0)
        per = out.setdefault(as_dict.get(key, ""), {})
        per[le] = per.get(le, 0.0) + delta
    return {k: sorted(v.items()) for k, v in out.items()}


@dataclass
class TopicRow:
    topic: str
    records_in: float | None  # per second; None on the first view
    bytes_in: float | None
    records_out: float | None
    bytes_out: float | None
    total_in: float


@dataclass
class GroupRow:
    group: str
    state: str
    members: int
    lag: float
    partitions: list[tuple[str, str, float]]  # (topic, partition, lag)


@dataclass
class NodeRow:
    node: str
    fsync_p99_s: float | None
    produce_p99_s: float | None  # queue + commit + reply p99s, an upper bound
    produce_rate: float | None
    fetch_rate: float | None


@dataclass
class View:
    topics: list[TopicRow]
    groups: list[GroupRow]
    nodes: list[NodeRow]
    cluster: dict[str, float]


def _rate(cur: float, prev: float | None, seconds: float) -> float | None:
    if prev is None or seconds <= 0:
        return None
    return max(0.0, cur - prev) / seconds


def view(cur: Scrape, prev: Scrape | None) -> View:
    seconds = cur.at - prev.at if prev else 0.0
    series = {
        name: (
            cur.by(f"kvlog_topic_{name}_total", "topic"),
            prev.by(f"kvlog_topic_{name}_total", "topic") if prev else None,
        )
        for name in ("records_in", "bytes_in", "records_out", "bytes_out")
    }
    topics = sorted({k[0] for now, _ in series.values() for k in now})
    topic_rows = []
    for topic in topics:
        rates = {}
        for name, (now, before) in series.items():
            rates[name] = _rate(
                now.get((topic,), 0.0),
                None if before is None else before.get((topic,), 0.0),
                seconds,
            )
        topic_rows.append(
            TopicRow(topic, **rates, total_in=series["records_in"][0].get((topic,), 0.0))
        )
    states = {g: s for (g, s), v in cur.by("kvlog_group_state", "group", "state").items() if v}
    members = cur.by("kvlog_group_members", "group")
    lags = cur.by("kvlog_group_lag", "group", "topic", "partition")
    groups = sorted({g for (g,) in members} | {k[0] for k in lags})
    group_rows = [
        GroupRow(
            group,
            states.get(group, "?"),
            int(members.get((group,), 0)),
            sum(v for k, v in lags.items() if k[0] == group),
            sorted((k[1], k[2], v) for k, v in lags.items() if k[0] == group),
        )
        for group in groups
    ]
    fsync = _bucket_deltas(cur, prev, "kvlog_fsync_seconds", "node")
    produce = [
        _bucket_deltas(cur, prev, f"kvlog_produce_{part}_seconds", "node")
        for part in ("queue", "commit", "reply")
    ]
    produced = cur.by("kvlog_produce_requests_total", "node")
    fetched = cur.by("kvlog_fetch_requests_total", "node")
    produced_before = prev.by("kvlog_produce_requests_total", "node") if prev else None
    fetched_before = prev.by("kvlog_fetch_requests_total", "node") if prev else None
    node_rows = []
    for node in sorted(set(fsync) | {k[0] for k in produced}, key=lambda n: (len(n), n)):
        parts = [quantile(0.99, p.get(node, [])) for p in produce]
        node_rows.append(
            NodeRow(
                node,
                quantile(0.99, fsync.get(node, [])),
                None if any(p is None for p in parts) else sum(p for p in parts if p is not None),
                _rate(
                    produced.get((node,), 0.0),
                    None if produced_before is None else produced_before.get((node,), 0.0),
                    seconds,
                ),
                _rate(
                    fetched.get((node,), 0.0),
                    None if fetched_before is None else fetched_before.get((node,), 0.0),
                    seconds,
                ),
            )
        )
    up = cur.by("kvlog_process_up", "role", "node")
    cluster = {
        "partitions": sum(cur.get("kvlog_partitions").values()),
        "under_replicated": sum(cur.get("kvlog_under_replicated_partitions").values()),
        "offline": sum(cur.get("kvlog_offline_partitions").values()),
        "processes_up": sum(up.values()),
        "processes": float(len(up)),
        "restarts": sum(cur.get("kvlog_process_restarts_total").values()),
        "leader_elections": sum(cur.get("kvlog_leader_elections_total").values()),
    }
    return View(topic_rows, group_rows, node_rows, cluster)
