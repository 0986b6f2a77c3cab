"""The benchmark's paired confidence interval (scripts/bench_table.paired_interval)."""

from __future__ import annotations

import math
import statistics

import pytest

from scripts.bench_table import interval_text, paired_interval


def test_interval_of_identical_ratios_is_a_point():
    assert paired_interval([0.98, 0.98, 0.98]) == pytest.approx((0.98, 0.98, 0.98))


def test_interval_is_the_t_interval_on_logs():
    ratios = [1.1, 0.9, 1.0]
    logs = [math.log(r) for r in ratios]
    half = 4.303 * statistics.stdev(logs) / math.sqrt(3)  # t(0.975, df=2)
    geo, lo, hi = paired_interval(ratios)
    assert geo == pytest.approx(math.exp(statistics.fmean(logs)))
    assert (lo, hi) == pytest.approx((math.exp(statistics.fmean(logs) - half), math.exp(statistics.fmean(logs) + half)))
    assert lo < geo < hi


def test_interval_narrows_with_more_rounds_of_the_same_spread():
    few = paired_interval([0.95, 1.05] * 2)
    many = paired_interval([0.95, 1.05] * 20)
    assert many[2] - many[1] < (few[2] - few[1]) / 3


def test_one_round_has_no_interval_and_bad_ratios_are_refused():
    geo, lo, hi = paired_interval([0.97])
    assert geo == pytest.approx(0.97) and math.isnan(lo) and math.isnan(hi)
    assert interval_text([0.97]) == "97.0"
    assert interval_text([0.96, 0.98, 0.97]) == "97.0 [94.5, 99.5]"
    for bad in ([], [1.0, 0.0], [1.0, -0.5]):
        with pytest.raises(ValueError, match="paired ratios must be positive"):
            paired_interval(bad)
