"""Render the Markdown tables of docs/BENCHMARKS.md from the JSON files ``scripts/benchmark.py`` writes.

Usage:
    python scripts/bench_table.py docs/bench/h200x2-gpu1-qwen3-0.6b-bf16-rounds.json [more.json ...]
    python scripts/bench_table.py --pool run1.json run2.json     # one table of the rounds of several runs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def throughput_table(result: dict[str, Any]) -> str:
    lines = [
        "| configuration | tok/s median | tok/s min..max | % of ceiling (median paired ratio) | paired ratio min..max | rounds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in result["summary"].items():
        spread = "—" if name == "unsteered" else f"{s['pct_of_ceiling_min']:.1f}..{s['pct_of_ceiling_max']:.1f}"
        lines.append(
            f"| {name} | {s['tok_s_median']:.0f} | {s['tok_s_min']:.0f}..{s['tok_s_max']:.0f} | "
            f"{s['pct_of_ceiling_median']:.1f} | {spread} | {s['rounds']} |"
        )
    for name, s in (result.get("transformers") or {}).items():
        if isinstance(s, dict):
            lines.append(f"| {name} ({s['note']}) | {s['tok_s']:.0f} | — | {s['pct_of_ceiling']:.1f} | — | — |")
    return "\n".join(lines)


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
    import statistics

    ratios: dict[str, list[float]] = {}
    for result in results:
        samples = result["samples_tok_s"]
        for name, tps in samples.items():
            ratios.setdefault(name, []).extend(100 * t / b for t, b in zip(tps, samples["unsteered"], strict=True))
    lines = [
        "| configuration | rounds | % of ceiling (median paired ratio) | quartiles | min..max |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in ratios.items():
        r = sorted(r)
        q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0], r[0], r[0]]
        lines.append(f"| {name} | {len(r)} | {statistics.median(r):.1f} | {q[0]:.1f}..{q[2]:.1f} | {r[0]:.1f}..{r[-1]:.1f} |")
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    if paths and paths[0] == "--pool":
        print(pooled_table([json.loads(Path(p).read_text()) for p in paths[1:]]))
        return
    for path in paths:
        result = json.loads(Path(path).read_text())
        print(f"### {Path(path).name}\n")
        print(f"{result['machine']['device']}, vLLM {result['machine']['vllm']}, torch {result['machine']['torch']}, {result['date']}\n")
        print(f"`{result['command']}`\n")
        print(throughput_table(result) + "\n")
        for block in (kernel_table(result), latency_line(result)):
            if block:
                print(block + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
