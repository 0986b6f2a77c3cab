"""The measured parts of a benchmark run, in order: warm-up, throughput rounds, host time per step, host profile,
GPU kernel time, compare-pair latency, the transformers backend. Each fills its part of the result and saves it.

Each round times every configuration once, in a fresh random order, each timed call preceded by a short untimed
call on the same engine and configuration (the first call after switching engines is slower) and with the driver's
garbage collector paused.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import report
from bench.engines import Engines, hf_model
from bench.measure import (
    between,
    kernel_time,
    num_tokens,
    plain_generate,
    plain_stream_latency,
    steered_llm_generate,
    steered_stream_latency,
    timed,
)
from bench.stats import median_timeline_ms, summarize
from bench.workload import DRIVER_DIAG, DRIVER_DIAG_STEERED, spec_one_layer
from engine import GenerationConfig
from vectors import SteeringSpec

__all__ = ["Run"]

STEP_FIELDS = ("call_ms", "in_worker_ms", "outside_ms", "driver_ms", "in_worker_ms_per_step", "outside_ms_per_step",
               "steps", "scheduled_tokens", "mean_batch_reqs", "max_batch_reqs", "steer_update_ms")  # fmt: skip


@dataclass
class Run:
    """One benchmark run over started engines: its flags, prompts, configurations and the result it fills."""

    a: Any  # the parsed flags
    engines: Engines
    prompts: list[list[int]]
    confs: dict[str, list[SteeringSpec | None]]
    one_layer: SteeringSpec  # one_layer_llm_generate's spec, taken before --only may drop one_layer
    driver_diag: bool
    driver_diag_steered: bool
    result: dict[str, Any]
    save: Callable[[], None]
    steps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gen = GenerationConfig(max_new_tokens=self.a.output_len, ignore_eos=True)
        self.runs = self.calls(self.prompts)
        self.prewarm = self.calls(self.prompts[: self.a.prewarm_prompts])
        self.names = list(self.runs)
        self.steps = {name: [] for name in self.runs}

    def calls(self, batch: list[list[int]]) -> dict[str, Callable[[], int]]:
        """One call per configuration over ``batch`` (the plain engines are looked up at call time)."""
        steer, plains, gen = self.engines.steer, self.engines.plains, self.gen

        def plain_params() -> list[Any]:  # fresh per call: vLLM may keep (skip_clone) what it is given
            return [steer._params(gen, i) for i in range(len(batch))]

        out: dict[str, Callable[[], int]] = {
            name: (lambda name=name: plain_generate(plains[name], batch, plain_params())) for name in plains
        }
        for name, specs in self.confs.items():
            out[name] = lambda specs=specs: sum(
                g.num_tokens for g in steer.generate_token_ids(batch, gen, steering=specs[: len(batch)], decode_text=False)
            )  # token ids only, as the ceiling (detokenize=False)
        if self.driver_diag:
            # The steered engine, nothing steered, driven like the ceiling (vLLM's own LLM.generate with the
            # ceiling's request parameters, on the driver's loop thread). Against the ceiling it isolates the engine
            # side (hooks, slot index, worker wrappers); against `idle` it isolates sidesteer's driver.
            out[DRIVER_DIAG] = lambda: steer._call(lambda: plain_generate(steer.llm, batch, plain_params()))
        if self.driver_diag_steered:
            out[DRIVER_DIAG_STEERED] = lambda: num_tokens(steered_llm_generate(steer, self.one_layer, batch, plain_params()))
        return out

    def warm_up(self) -> None:
        """One pass of each configuration (first-use slot uploads, allocator, caches); --warmup-prompts > 0 warms on
        a subset to save device time."""
        sub = self.prompts[: self.a.warmup_prompts or self.a.prompts]
        for name, fn in self.calls(sub).items():
            n = fn()
            if n != len(sub) * self.a.output_len:
                raise RuntimeError(
                    f"{name}: generated {n} tokens, expected {len(sub) * self.a.output_len} (fixed lengths are required)"
                )

    def step_timed(self, name: str) -> tuple[float, int]:
        """``timed(runs[name])`` inside the worker step timer, its host-time split kept in ``steps``."""
        (secs, n), per_worker = between(self.engines.rpc(name), "step_time", lambda: timed(self.runs[name]))
        worker = per_worker[0]  # rank 0 (the driver worker) paces every step
        self.steps[name].append({**worker, "call_ms": 1000 * secs, "driver_ms": 1000 * secs - worker["span_ms"]})
        return secs, n

    def summarize_steps(self) -> None:
        """Medians of the step-timed calls so far into the result (saved with every round: a run cut short keeps them)."""
        self.result["worker_step_time"] = {
            name: {**{f: statistics.median(x[f] for x in xs) for f in STEP_FIELDS if f in xs[0]}, "samples": xs}
            for name, xs in self.steps.items()
            if xs
        }

    def throughput_rounds(self) -> None:
        # A fresh random order every round: with a rotated order, each configuration always follows the same one, and
        # the first call on an engine after calls on the other engine is slower (idle always followed the ceiling and
        # always came out lowest). A short untimed call on the same engine and configuration right before each timed
        # call takes that switching cost out of every measurement alike.
        a, shuffle = self.a, random.Random(self.a.order_seed)
        samples: dict[str, list[float]] = {name: [] for name in self.runs}
        for r in range(a.rounds):
            order = list(self.names)
            shuffle.shuffle(order)
            for name in order:
                if a.prewarm_prompts:
                    self.prewarm[name]()
                # --step-time-in-rounds: every timed call also splits its host time (two RPCs around it, outside the
                # timing), so the split is averaged over the same rounds as the throughput instead of one extra call.
                secs, n = self.step_timed(name) if a.step_time_in_rounds else timed(self.runs[name])
                samples[name].append(n / secs)
            self.result["samples_tok_s"] = samples
            self.result["summary"] = summarize(samples)
            if a.step_time_in_rounds:
                self.summarize_steps()
            self.save()
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k}={samples[k][-1]:.0f}" for k in self.names), flush=True)

    def step_time(self) -> None:
        """Host time per step inside the worker vs outside it (engine core) vs the driver, per configuration: places
        a wall-clock gap between engines on one side. One call per configuration per --step-time-rounds."""
        for _ in range(self.a.step_time_rounds):
            for name in self.names:
                if self.a.prewarm_prompts:
                    self.prewarm[name]()
                self.step_timed(name)
        if any(self.steps.values()):
            self.summarize_steps()
            report.print_step_time(self.result["worker_step_time"])
            self.save()

    def host_profile(self) -> None:
        """Where the host time goes, per configuration (cProfile on the worker's RPC thread: with one GPU, the engine
        core's busy loop; untimed calls)."""
        profiles: dict[str, list[dict[str, Any]]] = {name: [] for name in self.runs}
        for _ in range(self.a.host_profile_rounds):
            for name in self.names:
                _, per_worker = between(self.engines.rpc(name), "host_profile", self.runs[name], (25,))
                profiles[name].append(per_worker[0])
        self.result["engine_core_profile"] = profiles
        report.print_host_profile(profiles)
        self.save()

    def kernel_time(self, rounds: int) -> None:
        """GPU kernel time per configuration: immune to host noise, so it resolves what the hooks cost the GPU."""
        ktimes: dict[str, list[dict[str, Any]]] = {name: [] for name in self.runs}
        for _ in range(rounds):
            for name in self.names:
                ktimes[name].append(kernel_time(self.engines.rpc(name), self.runs[name]))
        base_ms = statistics.median(k["kernel_ms"] for k in ktimes["unsteered"])
        kt = self.result["gpu_kernel_time"] = {
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
        base_k = {k["name"]: k["us"] for k in kt["unsteered"]["kernels"]}
        for k in kt.values():
            here = {x["name"]: x["us"] for x in k["kernels"]}
            # Kernels that exist on one side only: the steering hook fused into the next layer's add+RMSNorm replaces
            # vLLM's own fused add+RMSNorm kernel. Their difference is the hook's cost, free of the clock swings that
            # move every GEMM by the same few percent.
            k["only_here_ms"] = sum(us for n, us in here.items() if n not in base_k) / 1000
            k["only_in_ceiling_ms"] = sum(us for n, us in base_k.items() if n not in here) / 1000
        report.print_kernel_time(kt)
        self.save()

    def latency(self, num_layers: int, hidden: int) -> None:
        """Latency of one compare pair (2 requests, same prompt): steered pair vs the ceiling's unsteered pair."""
        steer, plain, out_len = self.engines.steer, self.engines.plains["unsteered"], self.a.output_len
        pair = [self.prompts[0], self.prompts[0]]
        one = spec_one_layer(num_layers, hidden)
        lat: dict[str, list[tuple[float, float]]] = {"unsteered_pair": [], "compare_pair": [], "idle_pair": []}
        for _ in range(self.a.latency_rounds):
            lat["unsteered_pair"].append(plain_stream_latency(plain, pair, out_len))
            lat["compare_pair"].append(steered_stream_latency(steer, pair, out_len, [None, one]))
            lat["idle_pair"].append(steered_stream_latency(steer, pair, out_len, [None, None]))
        result = self.result["latency"] = {
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
        base = result["unsteered_pair"]
        for v in result.values():
            v["ttft_pct_of_unsteered"] = 100 * v["ttft_ms_median"] / base["ttft_ms_median"]
            v["ttft_mean_pct_of_unsteered"] = 100 * v["ttft_ms_mean"] / base["ttft_ms_mean"]
            v["itl_pct_of_unsteered"] = 100 * v["itl_ms_median"] / base["itl_ms_median"]

    def transformers(self, num_layers: int, hidden: int, ceiling: float) -> dict[str, dict[str, Any]]:
        """The transformers backend on the first --hf-prompts prompts in one batch (after the engines are closed)."""
        hf = hf_model(self.engines.path, self.engines.dummy, self.a.dtype)
        sub = self.prompts[: self.a.hf_prompts]
        extra: dict[str, dict[str, Any]] = {}
        hf_confs = {"hf_unsteered": [None] * len(sub), "hf_one_layer": [spec_one_layer(num_layers, hidden)] * len(sub)}
        for name, specs in hf_confs.items():
            hf.generate_token_ids(sub[:2], GenerationConfig(max_new_tokens=2, ignore_eos=True), steering=specs[:2])  # warm-up
            secs, n = timed(lambda specs=specs: sum(g.num_tokens for g in hf.generate_token_ids(sub, self.gen, steering=specs)))
            extra[name] = {
                "tok_s": n / secs,
                "pct_of_ceiling": 100 * (n / secs) / ceiling,
                "note": f"{len(sub)} prompts, one batch",
            }
        self.result["transformers"] = {
            **extra,
            "note": f"measured on the first {len(sub)} prompts in one batch; tok/s compared with the ceiling's tok/s on all {self.a.prompts} prompts",
        }
        return extra
