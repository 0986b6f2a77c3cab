"""What a benchmark run reports: the JSON result's header (machine, workload, engines, method) and the console
tables printed as each part finishes. The Markdown tables of docs/BENCHMARKS.md come from :mod:`bench.table`."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.engines import Engines, kv_blocks

__all__ = ["header", "print_host_profile", "print_kernel_time", "print_latency", "print_step_time", "print_table"]

METHOD = (
    "two engines alive side by side (three with --aa-control); rounds time every configuration once, in a fresh "
    "random order per round, each timed call preceded by an untimed --prewarm-prompts call on the same engine "
    "and configuration, with the driver's GC collected and paused; % of ceiling = median over rounds of "
    "(config tok/s / unsteered tok/s of the same round); spread = min..max of those ratios; geometric mean of "
    "those ratios with a 95% t interval on their logs; host time per call split in the worker / outside it / "
    "driver only (worker step timer); GPU kernel time per configuration from CUPTI in the workers"
)


def header(a: argparse.Namespace, engines: Engines, on_cuda: bool) -> dict[str, Any]:
    """The result's fields known before any timed call."""
    import vllm

    steer, info = engines.steer, engines.steer.worker_info
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "device": torch.cuda.get_device_name(0) if on_cuda else platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "vllm": vllm.__version__,
        },
        "workload": {
            "model": a.model,
            "path": engines.path,
            "dummy_weights": engines.dummy,
            "dtype": a.dtype,
            "prompts": a.prompts,
            "input_len": a.input_len,
            "output_len": a.output_len,
            "prefix_caching": False,
            "gpu_memory_utilization_per_engine": engines.util,
            "max_slots": a.max_slots,
            "max_num_seqs": None,  # vLLM's default (set one with --engine-arg max_num_seqs=N)
            "tensor_parallel_size": a.tensor_parallel_size,
            "cudagraph_max": a.cudagraph_max,
            "engine_args": a.engine_arg,
        },
        "steered_engine": {
            "runner": info.get("runner"),
            "hooked_layers": len(info.get("layers", [])),
            "ops": info.get("ops"),
            "capture_op": False,
            "graph_max_tokens": info.get("graph_max_tokens"),
            "kv_cache_blocks": kv_blocks(steer.llm),
            "start_s": engines.start_steered_s,
            "started": "first",
        },
        "plain_engine": {"start_s": engines.start_plain_s, "kv_cache_blocks": kv_blocks(engines.plains["unsteered"])},
        "cpu_pinning": engines.pinning,
        "method": METHOD,
    }


def print_table(summary: dict[str, dict[str, float]], extra: dict[str, dict[str, Any]]) -> None:
    print(
        f"\n{'configuration':32s} {'tok/s (median)':>15s} {'tok/s spread':>22s} {'% ceiling':>10s} {'paired spread %':>18s} "
        f"{'geo. mean [95% CI]':>24s}"
    )
    for name, s in summary.items():
        spread = f"{s['tok_s_min']:.0f}..{s['tok_s_max']:.0f}"
        pspread = f"{s['pct_of_ceiling_min']:.1f}..{s['pct_of_ceiling_max']:.1f}"
        ci = f"{s['pct_of_ceiling_geomean']:.1f} [{s['pct_of_ceiling_ci95_lo']:.1f}, {s['pct_of_ceiling_ci95_hi']:.1f}]"
        print(f"{name:32s} {s['tok_s_median']:15.0f} {spread:>22s} {s['pct_of_ceiling_median']:9.1f}% {pspread:>18s} {ci:>24s}")
    for name, s in extra.items():
        print(f"{name:32s} {s['tok_s']:15.1f} {'(' + s['note'] + ')':>22s} {s['pct_of_ceiling']:9.2f}%")


def print_step_time(step_time: dict[str, dict[str, Any]]) -> None:
    print("\nhost time per call (median): in the worker (sidesteer's index update) / outside it (engine core) / driver-only, ms")
    for name, x in step_time.items():
        update = f" [{x['steer_update_ms']:.1f}]" if "steer_update_ms" in x else ""
        print(
            f"{name:32s} call {x['call_ms']:8.1f}  worker {x['in_worker_ms']:8.1f}{update} ({x['in_worker_ms_per_step']:.2f}/step)  "
            f"outside {x['outside_ms']:8.1f} ({x['outside_ms_per_step']:.2f}/step)  driver {x['driver_ms']:7.1f}  steps {x['steps']:.0f}  "
            f"tokens {x['scheduled_tokens']:.0f}  batch mean {x['mean_batch_reqs']:.0f} max {x['max_batch_reqs']:.0f}"
        )


def print_host_profile(profiles: dict[str, list[dict[str, Any]]]) -> None:
    print("\nhost profile of the worker's RPC thread (cProfile, first call; own time, top 12):")
    for name, ps in profiles.items():
        print(f"{name}: total {ps[0]['total_s']:.2f} s")
        for r in ps[0]["by_own"][:12]:
            print(f"    {r['own_s']:7.3f} s own {r['cum_s']:7.3f} s cum {r['calls']:9d} calls  {r['function'][:110]}")


def print_kernel_time(kt: dict[str, dict[str, Any]]) -> None:
    print("\nGPU kernel time per call (sum over workers; % of ceiling = unsteered time / configuration time):")
    for name, k in kt.items():
        print(
            f"{name:32s} {k['kernel_ms_median']:10.1f} ms  launches {k['launches']:8d}  {k['pct_of_ceiling']:6.2f}%  "
            f"own kernels {k['only_here_ms']:.1f} ms vs ceiling's {k['only_in_ceiling_ms']:.1f} ms  {k['kernel_ms']}"
        )
        if "timeline_ms" in k:  # rank 0's device timeline: busy (union of kernels), idle between kernels / waiting
            t = k["timeline_ms"]
            print(
                f"{'':32s} busy {t['busy']:.1f} of {t['span']:.1f} ms; idle {t['idle_short']:.1f} ms in {t['gaps_short']:.0f} "
                f"short gaps, {t['idle_long']:.1f} ms in {t['gaps_long']:.0f} long gaps"
            )


def print_latency(latency: dict[str, dict[str, Any]]) -> None:
    print(
        "\ncompare pair latency (2 requests): "
        + ", ".join(
            f"{k}: TTFT median {v['ttft_ms_median']:.1f} ms ({v['ttft_pct_of_unsteered']:.0f}%), mean {v['ttft_ms_mean']:.1f} ms "
            f"({v['ttft_mean_pct_of_unsteered']:.0f}%), ITL {v['itl_ms_median']:.2f} ms"
            for k, v in latency.items()
        )
    )
