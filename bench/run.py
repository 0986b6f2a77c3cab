"""Throughput and latency of steered generation against the unsteered vLLM ceiling (issue 5).

One process, one workload (random prompt token ids, fixed output length: EOS is ignored), two vLLM engines alive
side by side on the same device with identical settings (:mod:`bench.engines`): the *ceiling*, a plain ``vllm.LLM``
driven by vLLM's own ``LLM.generate``, and the *steered engine*, :class:`engine.VLLMSteerModel`; with
``--aa-control`` a second plain engine timed like a configuration, whose spread is the noise floor of the method.

A configuration's score is the median over rounds of its throughput divided by the ceiling's throughput *in the same
round* (a paired ratio); the spread is the min..max of those per-round ratios; a 95% confidence interval comes with
the geometric mean of the paired ratios (:mod:`bench.stats`). Wall-clock throughput of a small model on a fast GPU is
host-bound and varies by +-10-20% per call, so the run also sums, per configuration, the GPU time of every kernel the
workers ran during one call (CUPTI, through ``torch.profiler``; CUDA-graph replays included): steering's cost on the
device, resolved well below 1%. To place a gap between engines, one more call per configuration times the worker's
per-step calls on the host (in the worker / outside it in the engine core / in the driver only), and two diagnostics
isolate one part each: ``idle_llm_generate`` (the steered engine under vLLM's own driver) and ``--no-hooks`` (no
hooked layer).

The transformers backend runs the same prompts and lengths on a subset (``--hf-prompts``); its throughput is
tokens per second of that subset (batching more would only help it up to memory), marked as extrapolated.

Usage:
    python -m bench --model random:qwen3-0.6b --dtype bfloat16 --prompts 1024 --input-len 64 \\
        --output-len 128 --rounds 5 --json docs/bench/h100-qwen3-0.6b.json
    python -m bench --model default --prompts 32 --input-len 32 --output-len 32 --rounds 5   # CPU
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import torch

from bench import report
from bench.args import parse_args
from bench.engines import start_engines
from bench.rounds import Run
from bench.workload import configurations, random_prompts, select

__all__ = ["main"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark with command-line flags ``argv``; returns the result (also written to ``--json``)."""
    a, extra_engine_args = parse_args(argv, __doc__.split("\n\n")[0])
    on_cuda = torch.cuda.is_available()
    engines = start_engines(a, extra_engine_args, on_cuda)
    steer = engines.steer
    num_layers, hidden = steer.num_layers, steer.hidden_size
    prompts = random_prompts(steer.tokenizer, engines.path, a.prompts, a.input_len)
    all_confs = configurations(num_layers, hidden, a.prompts)
    confs, driver_diag, driver_diag_steered = select(all_confs, a.only, a.no_hooks)
    result: dict[str, Any] = {}  # the header after the warm-up, then each part as it finishes

    def save() -> None:
        """Rewrite the JSON (after every round and part: a run stopped by a time limit keeps what it finished)."""
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(result, indent=1))

    run = Run(a, engines, prompts, confs, all_confs["one_layer"][0], driver_diag, driver_diag_steered, result, save)
    run.warm_up()
    result.update(report.header(a, engines, on_cuda))
    run.throughput_rounds()
    run.step_time()
    if a.host_profile_rounds:
        run.host_profile()
    kt_rounds = (2 if on_cuda else 0) if a.kernel_time_rounds is None else a.kernel_time_rounds
    if kt_rounds:
        run.kernel_time(kt_rounds)
    if a.latency_rounds and not a.no_hooks:  # the compare pair steers a layer: not possible without hooks
        run.latency(num_layers, hidden)

    ceiling = result["summary"]["unsteered"]["tok_s_median"]
    engines.close()  # before transformers needs the memory
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    extra = run.transformers(num_layers, hidden, ceiling) if a.hf_prompts else {}

    report.print_table(result["summary"], extra)
    if "latency" in result:
        report.print_latency(result["latency"])
    save()
    return result
