"""The benchmark's statistics: paired per-round ratios to the ceiling, their geometric mean and 95% interval.

Every round times the ceiling (``unsteered``) and every configuration once, so a configuration's per-round ratio to
the ceiling of the same round is a paired sample; the rounds are the independent samples.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

__all__ = [
    "engine_ratio",
    "engine_round_ratios",
    "median_timeline_ms",
    "paired_interval",
    "paired_ratios",
    "summarize",
]

# Two-sided 95% quantiles of Student's t, by degrees of freedom (1..30); 1.96 beyond.
T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def paired_interval(ratios: list[float]) -> tuple[float, float, float]:
    """Geometric mean of per-round paired ratios and its 95% confidence interval (t interval on the logs).

    Every round's ratio shares that round's ceiling call, so the rounds are the independent samples; a method
    resolves a difference of d points only where the interval's half-width is well under d. Returns NaN bounds for
    fewer than two rounds."""
    if not ratios or min(ratios) <= 0:
        raise ValueError(f"paired ratios must be positive, got {ratios}")
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), math.nan, math.nan
    t = T95[len(logs) - 2] if len(logs) - 1 <= len(T95) else 1.96
    half = t * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def paired_ratios(samples: dict[str, list[float]], name: str) -> list[float]:
    """Per-round throughput of ``name`` over the ceiling's (``unsteered``) in the same round."""
    return [t / b for t, b in zip(samples[name], samples["unsteered"], strict=True)]


def engine_ratio(result: dict[str, Any]) -> tuple[float, float, float, int]:
    """Steered engine vs plain engine(s), all configurations pooled: per round, the geometric mean of every
    steered-engine call over the geometric mean of the plain engines' calls (the ceiling and the A/A control), then
    :func:`paired_interval` over rounds. Where every steered configuration runs alike (the GPU kernels say they do),
    this averages the per-call noise of 8-9 calls per round and resolves an engine-level difference that single rows
    cannot."""
    ratios = engine_round_ratios(result)
    return (*paired_interval(ratios), len(ratios))


def engine_round_ratios(result: dict[str, Any]) -> list[float]:
    """Per round: geometric mean of the steered engine's calls over that of the plain engines' calls."""
    samples = result["samples_tok_s"]
    plain = [k for k in samples if k.startswith("unsteered")]
    steered = [k for k in samples if k not in plain]
    if not steered:
        raise ValueError("engine_ratio: the result has no steered-engine configuration")

    def geo(names: list[str], r: int) -> float:
        return math.exp(statistics.fmean(math.log(samples[k][r]) for k in names))

    return [geo(steered, r) / geo(plain, r) for r in range(len(samples["unsteered"]))]


def summarize(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median throughput and paired per-round ratios to the ceiling (median, min, max; geometric mean with its 95%
    confidence interval)."""
    out = {}
    for name, tps in samples.items():
        ratios = paired_ratios(samples, name)
        geo, lo, hi = paired_interval(ratios)
        out[name] = {
            "tok_s_median": statistics.median(tps),
            "tok_s_min": min(tps),
            "tok_s_max": max(tps),
            "pct_of_ceiling_median": 100 * statistics.median(ratios),
            "pct_of_ceiling_min": 100 * min(ratios),
            "pct_of_ceiling_max": 100 * max(ratios),
            "pct_of_ceiling_geomean": 100 * geo,
            "pct_of_ceiling_ci95_lo": 100 * lo,
            "pct_of_ceiling_ci95_hi": 100 * hi,
            "rounds": len(tps),
        }
    return out


def median_timeline_ms(timelines: list[dict[str, float]]) -> dict[str, float]:
    """Median of each field of several calls' device timelines, times in ms (``busy_us`` -> ``busy``), counts as is."""
    return {
        f.removesuffix("_us"): statistics.median(t[f] for t in timelines) / (1000 if f.endswith("_us") else 1)
        for f in timelines[0]
    }
