"""Throughput and latency of steered generation against the unsteered vLLM ceiling (issue 5).

One process, one workload (random prompt token ids, fixed output length: EOS is ignored), two vLLM engines alive
side by side on the same device with identical settings:

- the *ceiling*: plain ``vllm.LLM`` with no steering installed (no hooks, no slot tables, no runner wrappers; its
  only worker extension is :mod:`engine.kernel_timer`), driven by vLLM's own ``LLM.generate``;
- the *steered engine*: :class:`engine.VLLMSteerModel` (hooks and slot tables on every layer);
- with ``--aa-control``, a second plain engine timed like a configuration: an A/A control whose spread is the noise
  floor of the method on that machine.

Each round times every configuration once, in a fresh random order, each timed call preceded by a short untimed call
on the same engine and configuration (the first call after switching engines is slower) and with the driver's
garbage collector paused. A configuration's score is the median over rounds of its throughput divided by the
ceiling's throughput *in the same round* (a paired ratio); the spread is the min..max of those per-round ratios.

Wall-clock throughput of a small model on a fast GPU is host-bound and varies by +-10-20% per call, so the script
also sums, per configuration, the GPU time of every kernel the workers ran during one call (CUPTI, through
``torch.profiler``; CUDA-graph replays included): steering's cost on the device, resolved well below 1%.

Scores come with a 95% confidence interval (geometric mean of the paired ratios, t interval on their logs). To place a
gap between engines, one more call per configuration times the worker's per-step calls on the host (in the worker /
outside it in the engine core / in the driver only), and three diagnostics isolate one part each:
``idle_llm_generate`` (the steered engine under vLLM's own driver), ``--no-hooks`` (no hooked layer) and
``--steered-engine-last`` (start order).

The transformers backend runs the same prompts and lengths on a subset (``--hf-prompts``); its throughput is
tokens per second of that subset (batching more would only help it up to memory), marked as extrapolated.

Usage:
    python scripts/benchmark.py --model random:qwen3-0.6b --dtype bfloat16 --prompts 1024 --input-len 64 \
        --output-len 128 --rounds 5 --json docs/bench/h100-qwen3-0.6b.json
    python scripts/benchmark.py --model default --prompts 32 --input-len 32 --output-len 32 --rounds 5   # CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import GenerationConfig
from sidesteer.random_model import ARCHS, build_random_model, unit
from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SteeringSpec

# The two helper scripts beside this one: package imports when imported as ``scripts.benchmark`` (the tests, or
# ``python -m scripts.benchmark``); plain imports when run as ``python scripts/benchmark.py``, where Python puts this
# folder first on sys.path.
if __package__:
    from scripts.bench_table import paired_interval, paired_ratios
    from scripts.cpu_pin import parse_cpulist, pin_all
else:
    from bench_table import paired_interval, paired_ratios
    from cpu_pin import parse_cpulist, pin_all

DRIVER_DIAG = "idle_llm_generate"  # see main(): the steered engine under vLLM's own driver
DRIVER_DIAG_STEERED = "one_layer_llm_generate"  # the same with one_layer's steered requests (see steered_llm_generate)


def resolve_model(name: str, tokenizer_dir: str | None, work_dir: str, dtype: str) -> tuple[str, bool]:
    """``(path, dummy_weights)`` for ``--model``: a folder, ``default``, or ``random:ARCH``."""
    if name.startswith("random:"):
        from engine.default_model import resolve_model_path

        tok = tokenizer_dir or resolve_model_path("default")
        return build_random_model(name.split(":", 1)[1], tok, work_dir, "bfloat16" if dtype == "auto" else dtype), True
    return name, False


# -- steering configurations ---------------------------------------------------------------------------------------
def spec_one_layer(num_layers: int, hidden: int, scale: float = 4.0, seed: int = 1) -> SteeringSpec:
    return SteeringSpec.single(num_layers // 2, unit(hidden, seed), scale)


def spec_every_layer(num_layers: int, hidden: int) -> SteeringSpec:
    layers = {
        layer: LayerSteeringSpec(
            vector=unit(hidden, 100 + layer),
            scale=2.0,
            projection_cap=ProjectionCapSpec(unit(hidden, 200 + layer), min=-1.0, max=1.0),
            ablation=AblationSpec(unit(hidden, 300 + layer), scale=0.0),
        )
        for layer in range(num_layers)
    }
    return SteeringSpec(layers=layers)


def configurations(num_layers: int, hidden: int, n: int) -> dict[str, list[SteeringSpec | None]]:
    """Per-prompt steering for each steered-engine configuration (None = unsteered request)."""
    one = spec_one_layer(num_layers, hidden)
    every = spec_every_layer(num_layers, hidden)
    out: dict[str, list[SteeringSpec | None]] = {
        "idle": [None] * n,
        "one_layer": [one] * n,
        "every_layer_add_cap_ablate": [every] * n,
        "compare_half": [None if i % 2 == 0 else one for i in range(n)],
    }
    for k in (2, 8, 32):
        specs = [spec_one_layer(num_layers, hidden, seed=10 + j) for j in range(k)]
        out[f"distinct_specs_{k}"] = [specs[i % k] for i in range(n)]
    sweep = [one.scaled(s) for s in np.linspace(-5.0, 5.0, 51)]
    out["sweep_51_scales"] = [sweep[i % 51] for i in range(n)]
    return out


# -- measurement ---------------------------------------------------------------------------------------------------
def timed(fn: Callable[[], int]) -> tuple[float, int]:
    """``(seconds, generated tokens)`` of one call, with the driver's garbage collector collected first and paused
    during the call (a generation-2 collection over a 1024-request batch is a pause of tens of milliseconds that
    would land on whichever configuration happens to trigger it)."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        tokens = fn()
        return time.perf_counter() - t0, tokens
    finally:
        gc.enable()


KERNEL_TIMER = "engine.kernel_timer.KernelTimerExtension"


def between(
    rpc: Callable[..., list[Any]], timer: str, fn: Callable[[], Any], end_args: tuple[Any, ...] = ()
) -> tuple[Any, list[Any]]:
    """``(fn(), per-worker results)`` of one call between the workers' ``steer_{timer}_begin`` and ``_end`` RPCs (the end
    always runs, so a failed call never leaves a worker measuring)."""
    rpc(f"steer_{timer}_begin")
    try:
        out = fn()
    finally:
        per_worker = rpc(f"steer_{timer}_end", args=end_args)
    return out, per_worker


def kernel_time(rpc: Callable[..., list[Any]], fn: Callable[[], int]) -> dict[str, Any]:
    """GPU kernel time of one call, summed over the engine's workers (see :mod:`engine.kernel_timer`)."""
    tokens, per_worker = between(rpc, "kernel_time", fn, (None,))  # every kernel: per-kernel deltas show where time goes
    return {
        "kernel_ms": sum(w["kernel_us"] for w in per_worker) / 1000,
        "launches": sum(w["launches"] for w in per_worker),
        "tokens": tokens,
        "top": per_worker[0]["top"],  # rank 0's kernels, most expensive first
        **({"timeline": per_worker[0]["timeline"]} if "timeline" in per_worker[0] else {}),  # rank 0's busy / idle time
    }


def median_timeline_ms(timelines: list[dict[str, float]]) -> dict[str, float]:
    """Median of each field of several calls' device timelines, times in ms (``busy_us`` -> ``busy``), counts as is."""
    return {
        f.removesuffix("_us"): statistics.median(t[f] for t in timelines) / (1000 if f.endswith("_us") else 1)
        for f in timelines[0]
    }


def plain_engine(args: dict[str, Any]) -> Any:
    from vllm import LLM

    return LLM(**args)


def kv_blocks(llm: Any) -> int | None:
    """KV-cache blocks the engine got (equal sizes keep the engines' scheduling alike; fewer blocks than the workload
    needs means queueing or preemption, which slows a call and makes it noisy)."""
    return getattr(llm.llm_engine.vllm_config.cache_config, "num_gpu_blocks", None)


def plain_generate(llm: Any, prompts: list[list[int]], params: list[Any], salt: str | None = None) -> int:
    """Generated tokens of one ``LLM.generate`` call over the benchmark's prompts, one ``SamplingParams`` per prompt.

    ``params`` are the very objects sidesteer's driver builds for unsteered requests (``VLLMSteerModel._params``):
    the ceiling and the steered engine then differ in nothing but the engine. An earlier ceiling also set
    ``min_tokens=output_len``, on which vLLM 0.26's ``check_stop`` returns at once, skipping the per-token stop checks
    that the steered requests paid (found in the engine core's cProfile; ~22 ms of a ~3.5 s 0.6B call).
    """
    return num_tokens(plain_outputs(llm, prompts, params, salt))


def plain_outputs(llm: Any, prompts: list[list[int]], params: list[Any], salt: str | None = None) -> list[Any]:
    """``LLM.generate``'s outputs for :func:`plain_generate` (``salt``: every prompt's ``cache_salt``)."""
    extra = {"cache_salt": salt} if salt else {}
    return llm.generate([{"prompt_token_ids": p, **extra} for p in prompts], params, use_tqdm=False)


def num_tokens(outputs: list[Any]) -> int:
    return sum(len(o.outputs[0].token_ids) for o in outputs)


def steered_llm_generate(steer: Any, spec: SteeringSpec, prompts: list[list[int]], params: list[Any]) -> list[Any]:
    """Steered requests through vLLM's own ``LLM.generate`` on the steered engine (run on its loop thread).

    The requests are byte for byte what sidesteer's driver submits for ``spec`` (its slot in ``extra_args``, its
    ``cache_salt``); only the driver differs. Against ``one_layer`` it isolates sidesteer's driver on steered
    traffic, against ``idle_llm_generate`` what steered requests cost the engine.
    """
    from engine.vllm_backend import cache_salt
    from engine.vllm_worker import SLOT_ARG

    slot = steer.upload(spec)  # validated and loaded by the driver's own path (a no-op when already loaded)
    for p in params:
        p.extra_args = {SLOT_ARG: slot}
    # On the loop thread: nothing is admitted meanwhile, so no other spec can take the slot during the call.
    return steer._call(lambda: plain_outputs(steer.llm, prompts, params, cache_salt(spec.fingerprint())))


def plain_stream_latency(llm: Any, prompts: list[list[int]], output_len: int) -> tuple[float, float]:
    """TTFT and median inter-token latency (seconds) of a batch streamed through the plain engine."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    params = SamplingParams(
        max_tokens=output_len, temperature=0.0, ignore_eos=True, detokenize=False, output_kind=RequestOutputKind.DELTA
    )
    t0 = time.perf_counter()
    ids = [f"lat-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
    for rid, p in zip(ids, prompts, strict=True):
        engine.add_request(rid, {"prompt_token_ids": p}, params)
    stamps: dict[str, list[float]] = {rid: [] for rid in ids}
    done = 0
    while done < len(ids):
        for out in engine.step():
            if out.request_id in stamps and out.outputs and out.outputs[0].token_ids:
                stamps[out.request_id].append(time.perf_counter())
            done += int(out.finished)
    return latency_stats(t0, list(stamps.values()))


def steered_stream_latency(
    model: Any, prompts: list[list[int]], output_len: int, steering: list[SteeringSpec | None]
) -> tuple[float, float]:
    """TTFT and median inter-token latency through ``VLLMSteerModel``'s streaming path, at the token level (no
    detokenization, like the ceiling's loop: text decoding is the app's cost with or without steering)."""
    config = GenerationConfig(max_new_tokens=output_len, ignore_eos=True)
    ids, specs = [list(p) for p in prompts], model.resolve_steering(len(prompts), steering)
    stamps: list[list[float]] = [[] for _ in prompts]
    t0 = time.perf_counter()
    for index, _tokens, _finished, _reason in model._events(model._submit(ids, config, specs, stream=True)):
        stamps[index].append(time.perf_counter())
    return latency_stats(t0, stamps)


def latency_stats(t0: float, stamps: list[list[float]]) -> tuple[float, float]:
    ttft = max(s[0] for s in stamps) - t0  # the pair's TTFT: both panes have their first token
    gaps = [b - a for s in stamps for a, b in zip(s, s[1:], strict=False)]
    return ttft, statistics.median(gaps) if gaps else float("nan")


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="folder, 'default', or 'random:ARCH' (" + ", ".join(ARCHS) + ")")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder for random models (default: the default model's)")
    p.add_argument("--prompts", type=int, default=1024)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--prefix-caching",
        action="store_true",
        help="enable prefix caching (off by default: random prompts share nothing anyway)",
    )
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="per engine (two engines share the device)")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-slots", type=int, default=64)
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per engine (every engine alike)")
    p.add_argument(
        "--ops", default="add,projection_cap,ablation", help="op layout of the steered engine (e.g. 'add' for add-only hooks)"
    )
    p.add_argument(
        "--capture",
        action="store_true",
        help="install the activation-capture op in the steered engine (off by default, as in VLLMSteeringConfig)",
    )
    p.add_argument("--max-num-seqs", type=int, default=None, help="vLLM max_num_seqs for both engines (default: vLLM's)")
    p.add_argument(
        "--cudagraph-max",
        type=int,
        default=None,
        help="largest CUDA-graph batch for both engines (vLLM default: min(2 * max_num_seqs, 512))",
    )
    p.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra vLLM engine argument for every engine, VALUE as JSON or a bare string (repeatable)",
    )
    p.add_argument(
        "--kernel-time-rounds",
        type=int,
        default=None,
        help="calls per configuration timed by GPU kernel time after the throughput rounds (default 2 on CUDA, 0 elsewhere)",
    )
    p.add_argument(
        "--step-time-rounds",
        type=int,
        default=1,
        help="calls per configuration timed inside the worker (host time in the worker vs outside it vs the driver)",
    )
    p.add_argument(
        "--step-time-in-rounds",
        action="store_true",
        help="also split the host time of every timed call of the throughput rounds (median over the rounds)",
    )
    p.add_argument(
        "--host-profile-rounds",
        type=int,
        default=0,
        help="calls per configuration with cProfile on the worker's RPC thread (the engine core's busy loop with one GPU; slows those calls)",
    )
    p.add_argument("--hf-prompts", type=int, default=64, help="transformers subset size (0 = skip)")
    p.add_argument("--hf-rounds", type=int, default=1)
    p.add_argument("--latency-rounds", type=int, default=20)
    p.add_argument("--warmup-prompts", type=int, default=0, help="warm up on this many prompts (0 = all)")
    p.add_argument(
        "--aa-control",
        action="store_true",
        help="also time a second plain engine as a configuration (A/A control: its spread is the method's noise floor)",
    )
    p.add_argument(
        "--prewarm-prompts",
        type=int,
        default=16,
        help="untimed call of this many prompts on the same engine before each timed call (0 = none)",
    )
    p.add_argument(
        "--no-hooks",
        action="store_true",
        help="steered engine without hooked layers (wrappers, slot index and driver only): runs idle and idle_llm_generate",
    )
    p.add_argument(
        "--steered-engine-last",
        action="store_true",
        help="start the plain engine(s) first and the steered engine last (default: steered first)",
    )
    p.add_argument(
        "--pin-cpus",
        default=None,
        metavar="auto|CPULIST",
        help="pin the driver and each engine's processes to their own physical cores ('auto': the GPU's NUMA node)",
    )
    p.add_argument("--order-seed", type=int, default=0, help="seed of the per-round random order of configurations")
    p.add_argument("--only", default=None, help="comma-separated configurations to run (default: all)")
    p.add_argument("--work-dir", default="/tmp/sidesteer-bench")
    p.add_argument("--json", default=None, help="write results here (rewritten after every round)")
    a = p.parse_args(argv)
    extra_engine_args: dict[str, Any] = {}  # checked before anything starts
    for item in a.engine_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--engine-arg: {item!r} is not KEY=VALUE; pass e.g. --engine-arg async_scheduling=true")
        try:
            extra_engine_args[key] = json.loads(value)
        except json.JSONDecodeError:
            extra_engine_args[key] = value  # a bare string

    if a.pin_cpus and a.pin_cpus != "auto":
        try:
            parse_cpulist(a.pin_cpus)  # checked before anything starts
        except ValueError as exc:
            raise SystemExit(str(exc)) from None

    from engine import VLLMSteeringConfig, VLLMSteerModel

    on_cuda = torch.cuda.is_available()
    path, dummy = resolve_model(a.model, a.tokenizer, a.work_dir, a.dtype)
    max_len = a.max_model_len or (a.input_len + a.output_len + 16)
    util = a.gpu_memory_utilization or (0.4 if on_cuda else 0.15)
    engine_kwargs: dict[str, Any] = {"load_format": "dummy"} if dummy else {}
    if a.cudagraph_max is not None:
        engine_kwargs["compilation_config"] = {"max_cudagraph_capture_size": a.cudagraph_max}
    engine_kwargs.update(extra_engine_args)
    kt_rounds = (2 if on_cuda else 0) if a.kernel_time_rounds is None else a.kernel_time_rounds
    cfg = VLLMSteeringConfig(
        model_name=path,
        dtype=a.dtype,
        max_model_len=max_len,
        gpu_memory_utilization=util,
        enable_prefix_caching=a.prefix_caching,
        max_slots=a.max_slots,
        ops=tuple(a.ops.split(",")),
        capture=a.capture,
        max_num_seqs=a.max_num_seqs,
        tensor_parallel_size=a.tensor_parallel_size,
        engine_kwargs=engine_kwargs,
    )
    # --no-hooks: the steered engine with its worker wrappers, slot index and driver but no hooked layer, to tell the
    # hooks' host or device cost from the rest (only the unsteered configurations can run on it).
    steer = VLLMSteerModel(cfg, bootstrap_layers=() if a.no_hooks else None, start=False)
    plain_args = steer._engine_args()
    plain_args.pop("additional_config")  # no steering layout: no hooks, no slot tables (see kernel_timer on wrappers)
    plain_args["worker_extension_cls"] = KERNEL_TIMER  # kernel timing only (imports nothing of the steering)

    def start_steered_engine() -> float:
        t = time.perf_counter()
        steer.restart()
        return time.perf_counter() - t

    start_steered = None if a.steered_engine_last else start_steered_engine()
    t = time.perf_counter()
    plain = plain_engine(plain_args)
    start_plain = time.perf_counter() - t
    # A/A control: a second, identical plain engine measured like a configuration. Its paired ratio to the ceiling
    # can only differ from 100% by noise, so its spread is the resolution of this run's method.
    plain_b = plain_engine(plain_args) if a.aa_control else None
    if a.steered_engine_last:  # the start order as a variable: does the first engine started run differently?
        start_steered = start_steered_engine()

    num_layers, hidden = steer.num_layers, steer.hidden_size
    model_vocab = int(json.loads((Path(path) / "config.json").read_text()).get("vocab_size", 1 << 30))
    vocab = min(len(steer.tokenizer), int(getattr(steer.tokenizer, "vocab_size", 1 << 30)), model_vocab)
    rng = np.random.default_rng(0)
    prompts = rng.integers(100, vocab - 1, size=(a.prompts, a.input_len)).tolist()
    gen = GenerationConfig(max_new_tokens=a.output_len, ignore_eos=True)
    confs = configurations(num_layers, hidden, a.prompts)
    one_layer = confs["one_layer"][0]  # one_layer_llm_generate's spec, taken before --only may drop one_layer
    keep = set(a.only.split(",")) if a.only else None
    if a.no_hooks:
        keep = {"idle", DRIVER_DIAG} & (keep or {"idle", DRIVER_DIAG})
    if keep is not None:
        confs = {k: v for k, v in confs.items() if k in keep}
    # Diagnostic: the steered engine, nothing steered, driven like the ceiling (vLLM's own LLM.generate with the
    # ceiling's request parameters, on the driver's loop thread). Against the ceiling it isolates the engine side
    # (hooks, slot index, worker wrappers); against `idle` it isolates sidesteer's driver.
    driver_diag = keep is None or DRIVER_DIAG in keep
    driver_diag_steered = not a.no_hooks and (keep is None or DRIVER_DIAG_STEERED in keep)

    plains = {"unsteered": plain} if plain_b is None else {"unsteered": plain, "unsteered_aa_control": plain_b}
    # After every engine started (their processes exist), before any timed work.
    pinning = pin_all(a.pin_cpus, {**plains, "steered": steer.llm}) if a.pin_cpus else None
    if pinning:
        print(f"pinned: {pinning['sets']}", flush=True)

    def calls(batch: list[list[int]]) -> dict[str, Callable[[], int]]:
        """One call per configuration over ``batch`` (the plain engines are looked up at call time, so dropping
        ``plains`` later frees them)."""

        def plain_params() -> list[Any]:  # fresh per call: vLLM may keep (skip_clone) what it is given
            return [steer._params(gen, i) for i in range(len(batch))]

        out: dict[str, Callable[[], int]] = {
            name: (lambda name=name: plain_generate(plains[name], batch, plain_params())) for name in plains
        }
        for name, specs in confs.items():
            out[name] = lambda specs=specs: sum(
                g.num_tokens for g in steer.generate_token_ids(batch, gen, steering=specs[: len(batch)], decode_text=False)
            )  # token ids only, as the ceiling (detokenize=False)
        if driver_diag:
            out[DRIVER_DIAG] = lambda: steer._call(lambda: plain_generate(steer.llm, batch, plain_params()))
        if driver_diag_steered:
            out[DRIVER_DIAG_STEERED] = lambda: num_tokens(steered_llm_generate(steer, one_layer, batch, plain_params()))
        return out

    runs = calls(prompts)
    prewarm = calls(prompts[: a.prewarm_prompts])
    shuffle = random.Random(a.order_seed)
    # Warm-up: one pass of each configuration (first-use slot uploads, allocator, caches); --warmup-prompts > 0
    # warms on a subset to save device time.
    sub = prompts[: a.warmup_prompts or a.prompts]
    for name, fn in calls(sub).items():
        n = fn()
        if n != len(sub) * a.output_len:
            raise RuntimeError(f"{name}: generated {n} tokens, expected {len(sub) * a.output_len} (fixed lengths are required)")

    import vllm

    result: dict[str, Any] = {
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
            "path": path,
            "dummy_weights": dummy,
            "dtype": a.dtype,
            "prompts": a.prompts,
            "input_len": a.input_len,
            "output_len": a.output_len,
            "prefix_caching": a.prefix_caching,
            "gpu_memory_utilization_per_engine": util,
            "max_slots": a.max_slots,
            "max_num_seqs": a.max_num_seqs,
            "tensor_parallel_size": a.tensor_parallel_size,
            "cudagraph_max": a.cudagraph_max,
            "engine_args": a.engine_arg,
        },
        "steered_engine": {
            "runner": steer.worker_info.get("runner"),
            "hooked_layers": len(steer.worker_info.get("layers", [])),
            "ops": steer.worker_info.get("ops"),
            "capture_op": a.capture,
            "graph_max_tokens": steer.worker_info.get("graph_max_tokens"),
            "kv_cache_blocks": kv_blocks(steer.llm),
            "start_s": start_steered,
            "started": "last" if a.steered_engine_last else "first",
        },
        "plain_engine": {"start_s": start_plain, "kv_cache_blocks": kv_blocks(plain)},
        "cpu_pinning": pinning,
        "method": (
            "two engines alive side by side (three with --aa-control); rounds time every configuration once, in a fresh "
            "random order per round, each timed call preceded by an untimed --prewarm-prompts call on the same engine "
            "and configuration, with the driver's GC collected and paused; % of ceiling = median over rounds of "
            "(config tok/s / unsteered tok/s of the same round); spread = min..max of those ratios; geometric mean of "
            "those ratios with a 95% t interval on their logs; host time per call split in the worker / outside it / "
            "driver only (worker step timer); GPU kernel time per configuration from CUPTI in the workers"
        ),
    }

    def save() -> None:
        """Rewrite the JSON (after every round and part: a run stopped by a time limit keeps what it finished)."""
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(result, indent=1))

    def steer_rpc(method: str, args: tuple[Any, ...] = ()) -> list[Any]:
        return steer._call(lambda: steer.engine.collective_rpc(method, args=args))

    def engine_rpc(name: str) -> Callable[..., list[Any]]:
        return plains[name].collective_rpc if name in plains else steer_rpc

    def step_timed(name: str) -> tuple[float, int]:
        """``timed(runs[name])`` inside the worker step timer, its host-time split kept in ``steps``."""
        (secs, n), per_worker = between(engine_rpc(name), "step_time", lambda: timed(runs[name]))
        worker = per_worker[0]  # rank 0 (the driver worker) paces every step
        steps[name].append({**worker, "call_ms": 1000 * secs, "driver_ms": 1000 * secs - worker["span_ms"]})
        return secs, n

    samples: dict[str, list[float]] = {name: [] for name in runs}
    steps: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}

    def summarize_steps() -> None:
        """Medians of the step-timed calls so far into ``result`` (saved with every round: a run cut short keeps them)."""
        fields = (
            "call_ms",
            "in_worker_ms",
            "outside_ms",
            "driver_ms",
            "in_worker_ms_per_step",
            "outside_ms_per_step",
            "steps",
            "scheduled_tokens",
            "mean_batch_reqs",
            "max_batch_reqs",
            "steer_update_ms",
        )
        result["worker_step_time"] = {
            name: {**{f: statistics.median(x[f] for x in xs) for f in fields if f in xs[0]}, "samples": xs}
            for name, xs in steps.items()
            if xs
        }

    names = list(runs)
    for r in range(a.rounds):
        # A fresh random order every round: with a rotated order, each configuration always follows the same one, and
        # the first call on an engine after calls on the other engine is slower (idle always followed the ceiling
        # and always came out lowest). A short untimed call on the same engine and configuration right before each
        # timed call takes that switching cost out of every measurement alike.
        order = list(names)
        shuffle.shuffle(order)
        for name in order:
            if a.prewarm_prompts:
                prewarm[name]()
            # --step-time-in-rounds: every timed call also splits its host time (two RPCs around it, outside the
            # timing), so the split is averaged over the same rounds as the throughput instead of one extra call.
            secs, n = step_timed(name) if a.step_time_in_rounds else timed(runs[name])
            samples[name].append(n / secs)
        result["samples_tok_s"] = samples
        result["summary"] = summarize(samples)
        if a.step_time_in_rounds:
            summarize_steps()
        save()
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k}={samples[k][-1]:.0f}" for k in names), flush=True)

    # Host time per step inside the worker vs outside it (engine core) vs the driver, per configuration: places a
    # wall-clock gap between engines on one side. One call per configuration per round, after the throughput rounds
    # (plus every timed call with --step-time-in-rounds).
    for _ in range(a.step_time_rounds):
        for name in names:
            if a.prewarm_prompts:
                prewarm[name]()
            step_timed(name)
    if any(steps.values()):
        summarize_steps()
        print(
            "\nhost time per call (median): in the worker (sidesteer's index update) / outside it (engine core) / driver-only, ms"
        )
        for name, x in result["worker_step_time"].items():
            update = f" [{x['steer_update_ms']:.1f}]" if "steer_update_ms" in x else ""
            print(
                f"{name:32s} call {x['call_ms']:8.1f}  worker {x['in_worker_ms']:8.1f}{update} ({x['in_worker_ms_per_step']:.2f}/step)  "
                f"outside {x['outside_ms']:8.1f} ({x['outside_ms_per_step']:.2f}/step)  driver {x['driver_ms']:7.1f}  steps {x['steps']:.0f}  "
                f"tokens {x['scheduled_tokens']:.0f}  batch mean {x['mean_batch_reqs']:.0f} max {x['max_batch_reqs']:.0f}"
            )
        save()

    # Where the host time goes, per configuration (cProfile on the worker's RPC thread: with one GPU, the engine
    # core's busy loop; untimed calls).
    if a.host_profile_rounds:
        profiles: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
        for _ in range(a.host_profile_rounds):
            for name in names:
                _, per_worker = between(engine_rpc(name), "host_profile", runs[name], (25,))
                profiles[name].append(per_worker[0])
        result["engine_core_profile"] = profiles
        print("\nhost profile of the worker's RPC thread (cProfile, first call; own time, top 12):")
        for name, ps in profiles.items():
            print(f"{name}: total {ps[0]['total_s']:.2f} s")
            for r in ps[0]["by_own"][:12]:
                print(f"    {r['own_s']:7.3f} s own {r['cum_s']:7.3f} s cum {r['calls']:9d} calls  {r['function'][:110]}")
        save()

    # GPU kernel time per configuration: immune to host noise, so it resolves what the hooks cost the GPU.
    if kt_rounds:
        ktimes: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}

        for _ in range(kt_rounds):
            for name in names:
                ktimes[name].append(kernel_time(engine_rpc(name), runs[name]))
        base_ms = statistics.median(k["kernel_ms"] for k in ktimes["unsteered"])
        result["gpu_kernel_time"] = {
            name: {
                "kernel_ms_median": statistics.median(k["kernel_ms"] for k in ks),
                "kernel_ms": [k["kernel_ms"] for k in ks],
                "launches": ks[0]["launches"],
                "pct_of_ceiling": 100 * base_ms / statistics.median(k["kernel_ms"] for k in ks),
                "kernels": ks[0]["top"],
                **({"timeline_ms": median_timeline_ms([k["timeline"] for k in ks])} if "timeline" in ks[0] else {}),
            }
            for name, ks in ktimes.items()
        }
        base_k = {k["name"]: k["us"] for k in result["gpu_kernel_time"]["unsteered"]["kernels"]}
        for k in result["gpu_kernel_time"].values():
            here = {x["name"]: x["us"] for x in k["kernels"]}
            # Kernels that exist on one side only: the steering hook fused into the next layer's add+RMSNorm
            # replaces vLLM's own fused add+RMSNorm kernel. Their difference is the hook's cost, free of the
            # clock swings that move every GEMM by the same few percent.
            k["only_here_ms"] = sum(us for n, us in here.items() if n not in base_k) / 1000
            k["only_in_ceiling_ms"] = sum(us for n, us in base_k.items() if n not in here) / 1000
        print("\nGPU kernel time per call (sum over workers; % of ceiling = unsteered time / configuration time):")
        for name, k in result["gpu_kernel_time"].items():
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
        save()

    # Latency of one compare pair (2 requests, same prompt): steered pair vs the ceiling's unsteered pair.
    if a.latency_rounds and not a.no_hooks:  # the compare pair steers a layer: not possible without hooks
        pair = [prompts[0], prompts[0]]
        one = spec_one_layer(num_layers, hidden)
        lat: dict[str, list[tuple[float, float]]] = {"unsteered_pair": [], "compare_pair": [], "idle_pair": []}
        for _ in range(a.latency_rounds):
            lat["unsteered_pair"].append(plain_stream_latency(plain, pair, a.output_len))
            lat["compare_pair"].append(steered_stream_latency(steer, pair, a.output_len, [None, one]))
            lat["idle_pair"].append(steered_stream_latency(steer, pair, a.output_len, [None, None]))
        result["latency"] = {
            k: {
                "ttft_ms_median": 1000 * statistics.median(x[0] for x in v),
                # TTFT is bimodal (the engine core sometimes starts a step before the pair's second request has
                # arrived, which costs one step): the mean over many rounds is steadier than the median.
                "ttft_ms_mean": 1000 * statistics.fmean(x[0] for x in v),
                "itl_ms_median": 1000 * statistics.median(x[1] for x in v),
                "samples": v,
            }
            for k, v in lat.items()
        }
        base = result["latency"]["unsteered_pair"]
        for v in result["latency"].values():
            v["ttft_pct_of_unsteered"] = 100 * v["ttft_ms_median"] / base["ttft_ms_median"]
            v["ttft_mean_pct_of_unsteered"] = 100 * v["ttft_ms_mean"] / base["ttft_ms_mean"]
            v["itl_pct_of_unsteered"] = 100 * v["itl_ms_median"] / base["itl_ms_median"]

    ceiling = result["summary"]["unsteered"]["tok_s_median"]
    steer.close()
    for llm in plains.values():
        llm.llm_engine.engine_core.shutdown()  # engine-core processes end now, not at interpreter exit
    plain = plain_b = None  # drop the ceiling engines before transformers needs the memory (calls look them up in plains)
    plains.clear()
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()

    extra: dict[str, dict[str, Any]] = {}
    if a.hf_prompts:
        hf = hf_model(path, dummy, a.dtype)
        sub = prompts[: a.hf_prompts]
        hf_confs = {"hf_unsteered": [None] * len(sub), "hf_one_layer": [spec_one_layer(num_layers, hidden)] * len(sub)}
        for name, specs in hf_confs.items():
            hf.generate_token_ids(sub[:2], GenerationConfig(max_new_tokens=2, ignore_eos=True), steering=specs[:2])  # warm-up
            tps = []
            for _ in range(a.hf_rounds):
                secs, n = timed(lambda specs=specs: sum(g.num_tokens for g in hf.generate_token_ids(sub, gen, steering=specs)))
                tps.append(n / secs)
            extra[name] = {
                "tok_s": statistics.median(tps),
                "pct_of_ceiling": 100 * statistics.median(tps) / ceiling,
                "note": f"{len(sub)} prompts, one batch",
            }
        result["transformers"] = {
            **extra,
            "note": f"measured on the first {len(sub)} prompts in one batch; tok/s compared with the ceiling's tok/s on all {a.prompts} prompts",
        }

    print_table(result["summary"], extra)
    if "latency" in result:
        print(
            "\ncompare pair latency (2 requests): "
            + ", ".join(
                f"{k}: TTFT median {v['ttft_ms_median']:.1f} ms ({v['ttft_pct_of_unsteered']:.0f}%), mean {v['ttft_ms_mean']:.1f} ms "
                f"({v['ttft_mean_pct_of_unsteered']:.0f}%), ITL {v['itl_ms_median']:.2f} ms"
                for k, v in result["latency"].items()
            )
        )
    save()
    return result


def hf_model(path: str, dummy: bool, dtype: str) -> Any:
    """The transformers backend on the same checkpoint (random init from the config for dummy-weight models)."""
    from engine import HFSteerModel

    if not dummy:
        return HFSteerModel(path, dtype=dtype)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    torch_dtype = getattr(torch, "bfloat16" if dtype == "auto" else dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch_dtype).eval()
    return HFSteerModel.from_model(model, AutoTokenizer.from_pretrained(path), model_id=path)


if __name__ == "__main__":
    main()
