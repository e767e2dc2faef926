"""kvlog top's numbers from two scrapes: rates over the interval, lag per group,
Prometheus-style quantiles from histogram buckets."""

from __future__ import annotations

import math

from kvlog.tools.top_model import Scrape, quantile, view

FIRST = """
# TYPE kvlog_topic_records_in counter
kvlog_topic_records_in_total{topic="orders"} 1000
# TYPE kvlog_topic_bytes_in counter
kvlog_topic_bytes_in_total{topic="orders"} 100000
# TYPE kvlog_fsync_seconds histogram
kvlog_fsync_seconds_bucket{le="0.001",node="0"} 10
kvlog_fsync_seconds_bucket{le="0.01",node="0"} 10
kvlog_fsync_seconds_bucket{le="+Inf",node="0"} 10
kvlog_fsync_seconds_count{node="0"} 10
kvlog_fsync_seconds_sum{node="0"} 0.005
# TYPE kvlog_group_lag gauge
kvlog_group_lag{group="billing",topic="orders",partition="0"} 30
kvlog_group_lag{group="billing",topic="orders",partition="1"} 12
# TYPE kvlog_group_members gauge
kvlog_group_members{group="billing"} 2
# TYPE kvlog_group_state gauge
kvlog_group_state{group="billing",state="Stable"} 1
kvlog_group_state{group="billing",state="Empty"} 0
"""

SECOND = (
    FIRST.replace(
        'kvlog_topic_records_in_total{topic="orders"} 1000',
        'kvlog_topic_records_in_total{topic="orders"} 3000',
    )
    .replace(
        'kvlog_fsync_seconds_bucket{le="0.01",node="0"} 10',
        'kvlog_fsync_seconds_bucket{le="0.01",node="0"} 110',
    )
    .replace(
        'kvlog_fsync_seconds_bucket{le="+Inf",node="0"} 10',
        'kvlog_fsync_seconds_bucket{le="+Inf",node="0"} 110',
    )
)


def test_rates_lag_and_fsync_p99() -> None:
    first = Scrape.parse(FIRST, at=10.0)
    second = Scrape.parse(SECOND, at=12.0)
    assert view(first, None).topics[0].records_in is None  # one scrape: no rate yet
    v = view(second, first)
    (orders,) = v.topics
    assert orders.records_in == 1000.0  # 2000 records in 2 s
    assert orders.bytes_in == 0.0
    assert orders.total_in == 3000
    (billing,) = v.groups
    assert (billing.state, billing.members, billing.lag) == ("Stable", 2, 42)
    (node,) = v.nodes
    # the interval's 100 commits all took 1..10 ms: p99 inside that bucket
    assert node.fsync_p99_s is not None and 0.001 < node.fsync_p99_s <= 0.01


def test_quantile() -> None:
    assert quantile(0.99, []) is None
    assert quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None
    assert quantile(0.5, [(1.0, 50.0), (2.0, 100.0), (math.inf, 100.0)]) == 1.0
    assert quantile(0.75, [(1.0, 50.0), (2.0, 100.0), (math.inf, 100.0)]) == 1.5
    assert quantile(0.99, [(1.0, 0.0), (math.inf, 10.0)]) == 1.0  # in +Inf: the last bound
