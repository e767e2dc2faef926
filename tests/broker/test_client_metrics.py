"""ipc/client_metrics.py: totals since the start, rates and averages over the window,
with time passed in (no sleeps)."""

from __future__ import annotations

import pytest

from kvlog.ipc.client_metrics import WINDOW_S, Meter, Stat


def test_a_meter_counts_everything_and_rates_the_window() -> None:
    meter = Meter(now=1000.0)
    assert meter.rate(1000.5) == 0.0
    meter.record(10, 1000.2)  # a young client's rate is not divided by 0.2 s
    assert meter.rate(1000.2) == pytest.approx(10.0)
    for second in range(1, 10):
        meter.record(10, 1000.0 + second)
    assert meter.total == 100
    assert meter.rate(1010.0) == pytest.approx(100 / 10)
    later = 1000.0 + 10 + WINDOW_S + 2  # everything recorded has left the window
    assert meter.rate(later) == 0.0
    assert meter.total == 100


def test_a_stat_averages_and_maxes_the_window() -> None:
    stat = Stat(now=0.0)
    assert (stat.avg(0.0), stat.max(0.0)) == (0.0, 0.0)
    for value in (1.0, 3.0, 8.0):
        stat.record(value, 5.0)
    stat.record(2.0, 6.5)
    assert stat.avg(7.0) == pytest.approx(3.5)
    assert stat.max(7.0) == 8.0
    assert stat.max(5.0 + WINDOW_S + 1.5) == 2.0, "the older second left the window"
