"""The Markdown tables of docs/BENCHMARKS.md, rendered from the JSON files the benchmark writes.

Usage:
    python -m bench table docs/bench/h200x2-gpu1-qwen3-0.6b-bf16-rounds.json [more.json ...]
    python -m bench table --pool run1.json run2.json     # one table of the rounds of several runs
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from bench.stats import engine_ratio, engine_round_ratios, paired_interval, paired_ratios

__all__ = ["interval_text", "main", "pooled_table"]


def interval_text(ratios: list[float]) -> str:
    """'geometric mean [lo, hi]' in % for paired ratios (fractions); no interval for one round."""
    geo, lo, hi = paired_interval(ratios)
    return f"{100 * geo:.1f}" + ("" if math.isnan(lo) else f" [{100 * lo:.1f}, {100 * hi:.1f}]")


def throughput_table(result: dict[str, Any]) -> str:
    lines = [
        "| configuration | tok/s median | tok/s min..max | % of ceiling (median paired ratio) | paired ratio min..max "
        "| geometric mean [95% CI] | rounds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    samples = result["samples_tok_s"]
    for name, s in result["summary"].items():
        ratios = paired_ratios(samples, name)
        spread = "—" if name == "unsteered" else f"{s['pct_of_ceiling_min']:.1f}..{s['pct_of_ceiling_max']:.1f}"
        lines.append(
            f"| {name} | {s['tok_s_median']:.0f} | {s['tok_s_min']:.0f}..{s['tok_s_max']:.0f} | "
            f"{s['pct_of_ceiling_median']:.1f} | {spread} | {'—' if name == 'unsteered' else interval_text(ratios)} | {s['rounds']} |"
        )
    for name, s in (result.get("transformers") or {}).items():
        if isinstance(s, dict):
            lines.append(f"| {name} ({s['note']}) | {s['tok_s']:.0f} | — | {s['pct_of_ceiling']:.1f} | — | — | — |")
    return "\n".join(lines)


def engine_line(result: dict[str, Any]) -> str:
    g, lo, hi, n = engine_ratio(result)
    band = "" if math.isnan(lo) else f" [95% CI {100 * lo:.1f}, {100 * hi:.1f}]"
    return f"Steered engine vs plain engine(s), all configurations pooled per round ({n} rounds): {100 * g:.1f}%{band}"


def kernel_table(result: dict[str, Any]) -> str:
    kt = result.get("gpu_kernel_time")
    if not kt:
        return ""
    lines = [
        "| configuration | GPU kernel time per call (ms) | kernel launches | % of ceiling (unsteered time / time) | own kernels vs ceiling's (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, k in kt.items():
        own = f"{k['only_here_ms']:.1f} vs {k['only_in_ceiling_ms']:.1f}" if "only_here_ms" in k else "—"
        lines.append(f"| {name} | {k['kernel_ms_median']:.1f} | {k['launches']} | {k['pct_of_ceiling']:.2f} | {own} |")
    timed = {name: k["timeline_ms"] for name, k in kt.items() if "timeline_ms" in k}
    if timed:
        lines += [
            "",
            "| configuration | device busy ms (union of kernels) | span ms | idle in short gaps ms (count) | idle in long gaps ms (count) |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, t in timed.items():
            lines.append(
                f"| {name} | {t['busy']:.1f} | {t['span']:.1f} | {t['idle_short']:.1f} ({t['gaps_short']:.0f}) | "
                f"{t['idle_long']:.1f} ({t['gaps_long']:.0f}) |"
            )
    return "\n".join(lines)


def step_table(result: dict[str, Any]) -> str:
    st = result.get("worker_step_time")
    if not st:
        return ""
    calls = len(next(iter(st.values()))["samples"])
    lines = [
        f"Host time per call, median of {calls} call(s) per configuration:",
        "",
        "| configuration | call ms | in the worker ms (per step) | of it sidesteer's index update ms (per step) "
        "| outside the worker ms (per step) | driver only ms | steps | scheduled tokens | batch mean / max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, x in st.items():
        update = (
            f"{x['steer_update_ms']:.2f} ({1000 * x['steer_update_ms'] / x['steps']:.0f} us)"
            if "steer_update_ms" in x and x["steps"]
            else "—"
        )
        lines.append(
            f"| {name} | {x['call_ms']:.1f} | {x['in_worker_ms']:.1f} ({x['in_worker_ms_per_step']:.2f}) | {update} | "
            f"{x['outside_ms']:.1f} ({x['outside_ms_per_step']:.2f}) | {x['driver_ms']:.1f} | {x['steps']:.0f} | "
            + (
                f"{x['scheduled_tokens']:.0f} | {x['mean_batch_reqs']:.0f} / {x['max_batch_reqs']:.0f} |"
                if "scheduled_tokens" in x
                else "— | — |"
            )
        )
    return "\n".join(lines)


def latency_line(result: dict[str, Any]) -> str:
    lat = result.get("latency")
    if not lat:
        return ""
    base_mean = sum(x[0] for x in lat["unsteered_pair"]["samples"]) / len(lat["unsteered_pair"]["samples"])
    parts = []
    for name, v in lat.items():
        mean = sum(x[0] for x in v["samples"]) / len(v["samples"])  # older files have no ttft_ms_mean
        parts.append(
            f"{name}: TTFT median {v['ttft_ms_median']:.1f} ms ({v['ttft_pct_of_unsteered']:.0f}%), mean {1000 * mean:.1f} ms "
            f"({100 * mean / base_mean:.0f}%), ITL {v['itl_ms_median']:.2f} ms ({v['itl_pct_of_unsteered']:.0f}%)"
        )
    return f"Compare-pair latency (median of {len(next(iter(lat.values()))['samples'])}): " + "; ".join(parts)


def pooled_table(results: list[dict[str, Any]]) -> str:
    """Paired ratios of every round of several runs of the same workload, pooled per configuration."""
    ratios: dict[str, list[float]] = {}
    for result in results:
        samples = result["samples_tok_s"]
        for name in samples:
            ratios.setdefault(name, []).extend(100 * r for r in paired_ratios(samples, name))
    lines = [
        "| configuration | rounds | % of ceiling (median paired ratio) | quartiles | min..max | geometric mean [95% CI] |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in ratios.items():
        r = sorted(r)
        q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0], r[0], r[0]]
        ci = "—" if name == "unsteered" else interval_text([x / 100 for x in r])
        lines.append(
            f"| {name} | {len(r)} | {statistics.median(r):.1f} | {q[0]:.1f}..{q[2]:.1f} | {r[0]:.1f}..{r[-1]:.1f} | {ci} |"
        )
    engine = [x for result in results for x in engine_round_ratios(result)]
    lines.append(
        f"| **steered engine vs plain engines, all configurations pooled per round** | {len(engine)} | | | | **{interval_text(engine)}** |"
    )
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    def load(path: str) -> dict[str, Any]:
        result = json.loads(Path(path).read_text())
        if "samples_tok_s" not in result:
            raise SystemExit(f"{path}: not a benchmark result (no samples_tok_s); parity files are plain JSON")
        return result

    if paths and paths[0] == "--pool":
        print(pooled_table([load(p) for p in paths[1:]]))
        return
    for path in paths:
        result = load(path)
        print(f"### {Path(path).name}\n")
        print(
            f"{result['machine']['device']}, vLLM {result['machine']['vllm']}, torch {result['machine']['torch']}, {result['date']}\n"
        )
        print(f"`{result['command']}`\n")
        print(throughput_table(result) + "\n")
        for block in (engine_line(result), step_table(result), kernel_table(result), latency_line(result)):
            if block:
                print(block + "\n")
