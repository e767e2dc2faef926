"""The metrics' plain-Python parts: LocalHistogram.push gives what observe() would
(it writes into prometheus_client's histogram values, so a library change shows here),
Tally and GaugeSet, and the lag the supervisor derives from the processes' files."""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Gauge, Histogram

from kvlog.workers.metrics import (
    LATENCY_BUCKETS,
    NAN,
    NEW_SERIES_PER_UPDATE,
    GaugeSet,
    LocalHistogram,
    Tally,
)
from kvlog.workers.metrics_coordinator import rebalances_since
from kvlog.workers.metrics_http import BrokerCollector, parse_metrics_listen, resolve_auto


def _samples(registry: CollectorRegistry, name: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in registry.collect()
        if family.name == name
        for s in family.samples
        if not s.name.endswith("_created")
    ]


@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=100, allow_nan=False), st.integers(1, 50)),
        max_size=40,
    ),
    st.integers(min_value=1, max_value=4),
)
def test_local_histogram_push_matches_observe(
    observations: list[tuple[float, int]], pushes: int
) -> None:
    registry = CollectorRegistry()
    direct = Histogram("direct_seconds", "d", ["node"], buckets=LATENCY_BUCKETS, registry=registry)
    bulk = Histogram("bulk_seconds", "d", ["node"], buckets=LATENCY_BUCKETS, registry=registry)
    local = LocalHistogram(LATENCY_BUCKETS)
    direct.labels("0")  # both series exist even with nothing observed
    bulk.labels("0")
    for i, (value, times) in enumerate(observations):
        for _ in range(times):
            direct.labels("0").observe(value)
        local.observe(value, times)
        if i % pushes == 0:
            local.push(bulk.labels("0"))
    local.push(bulk.labels("0"))
    want = _samples(registry, "direct_seconds")
    got = _samples(registry, "bulk_seconds")
    assert len(want) == len(got)
    for (wn, wl, wv), (gn, gl, gv) in zip(want, got, strict=True):
        assert wn.replace("direct", "bulk") == gn and wl == gl
        assert math.isclose(wv, gv, rel_tol=1e-9, abs_tol=1e-9)


def test_tally_and_gauge_set() -> None:
    from prometheus_client import Counter

    registry = CollectorRegistry()
    counter = Counter("c", "d", ["node", "topic"], registry=registry)
    tally = Tally()
    tally.add("a", 3)
    tally.add("a", 2)
    tally.add("b")
    tally.push(counter, "0")
    assert registry.get_sample_value("c_total", {"node": "0", "topic": "a"}) == 5
    assert registry.get_sample_value("c_total", {"node": "0", "topic": "b"}) == 1
    tally.push(counter, "0")  # nothing new: unchanged
    assert registry.get_sample_value("c_total", {"node": "0", "topic": "a"}) == 5

    gauge = Gauge("g", "d", ["p"], registry=registry)
    gauges = GaugeSet(gauge)
    gauges.update({("0",): 7.0, ("1",): 8.0})
    gauges.update({("1",): 9.0})
    assert math.isnan(registry.get_sample_value("g", {"p": "0"}) or 0.0)  # retired: NaN
    assert registry.get_sample_value("g", {"p": "1"}) == 9.0
    gauges.update({("0",): 5.0, ("1",): 9.0})  # a retired series comes back (its cached child)
    assert registry.get_sample_value("g", {"p": "0"}) == 5.0
    assert registry.get_sample_value("g", {"p": "1"}) == 9.0
    gauge.labels("1").set(1.0)  # the cached child is the one labels() returns
    gauges.update({("0",): 5.0, ("1",): 2.0})
    assert registry.get_sample_value("g", {"p": "1"}) == 2.0
    assert NAN != NAN


def test_gauge_set_creates_a_bounded_number_of_new_series_per_update() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("many", "d", ["p"], registry=registry)
    gauges = GaugeSet(gauge)
    values = {(str(p),): float(p) for p in range(NEW_SERIES_PER_UPDATE * 2 + 10)}
    gauges.update(values)
    assert len(gauges.children) == NEW_SERIES_PER_UPDATE  # the loop never stalls on many
    gauges.update(values)
    gauges.update(values)
    assert len(gauges.children) == len(values)
    assert all(registry.get_sample_value("many", {"p": p}) == v for (p,), v in values.items())
    gauges.update({("0",): 7.0})  # the others went away: NaN
    assert registry.get_sample_value("many", {"p": "0"}) == 7.0
    assert math.isnan(registry.get_sample_value("many", {"p": "1"}) or 0.0)


def test_rebalances_count_generation_steps_and_new_groups_from_zero() -> None:
    # The first sample: loaded groups show, their earlier rebalances are not counted.
    assert rebalances_since(None, {"a": 4, "b": 0}) == {"a": 0, "b": 0}
    # Later: steps of known groups; a new group counts from generation 0 (its first
    # rebalance completed before the sample that first saw it).
    assert rebalances_since({"a": 4, "b": 0}, {"a": 6, "b": 0, "c": 1, "d": 0}) == {
        "a": 2,
        "c": 1,
        "d": 0,
    }


def test_listen_setting() -> None:
    assert parse_metrics_listen("m", "none") is None
    assert parse_metrics_listen("m", "auto") == "auto"
    assert parse_metrics_listen("m", "0.0.0.0:9645") == "0.0.0.0:9645"
    assert resolve_auto("auto", "tcp://127.0.0.1:7092") == "127.0.0.1:9645"
    assert resolve_auto("auto", "tcp://127.0.0.1:0") == "127.0.0.1:0"
    assert resolve_auto("127.0.0.1:1234", "tcp://127.0.0.1:0") == "127.0.0.1:1234"


def test_collector_derives_lag_and_drops_nan(tmp_path: Path, monkeypatch: object) -> None:
    """The supervisor's collector over files two processes wrote: lag = the highest high
    watermark (the leader's) minus the committed offset; NaN (retired) series are left out."""
    from prometheus_client import multiprocess  # noqa: F401  (the files' reader)
    from prometheus_client.core import GaugeMetricFamily

    class Fake:
        def __init__(self, *_: object, **__: object) -> None:
            pass

        def collect(self) -> list[GaugeMetricFamily]:
            hw = GaugeMetricFamily(
                "kvlog_high_watermark", "h", labels=["topic", "partition", "node"]
            )
            hw.add_metric(["t", "0", "0"], 100)
            hw.add_metric(["t", "0", "1"], 90)  # a follower behind
            hw.add_metric(["gone", "0", "0"], NAN)
            committed = GaugeMetricFamily(
                "kvlog_group_committed_offset", "c", labels=["group", "topic", "partition"]
            )
            committed.add_metric(["g", "t", "0"], 60)
            committed.add_metric(["g", "gone", "0"], 5)
            return [hw, committed]

    import prometheus_client.multiprocess as mp

    monkeypatch.setattr(mp, "MultiProcessCollector", Fake)  # type: ignore[attr-defined]
    collector = BrokerCollector(tmp_path, lambda: [("node", 0, True, 2)])
    families = {f.name: f for f in collector.collect()}
    assert [s.value for s in families["kvlog_high_watermark"].samples] == [100, 90]
    assert [(s.labels, s.value) for s in families["kvlog_group_lag"].samples] == [
        ({"group": "g", "topic": "t", "partition": "0"}, 40.0)
    ]
    assert families["kvlog_group_lag_sum"].samples[0].value == 40.0
    assert families["kvlog_process_restarts"].samples[0].value == 2.0
