"""One measured call: wall time with the GC paused, the workers' timing RPCs around a call, the engines' generate
calls that the rounds time, and the streaming latency of a compare pair."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

from engine import GenerationConfig
from vectors import SteeringSpec

__all__ = [
    "between",
    "kernel_time",
    "num_tokens",
    "plain_generate",
    "plain_outputs",
    "plain_stream_latency",
    "steered_llm_generate",
    "steered_stream_latency",
    "timed",
]


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
    """GPU kernel time of one call, summed over the engine's workers (see :mod:`bench.kernel_timer`)."""
    tokens, per_worker = between(rpc, "kernel_time", fn, (None,))  # every kernel: per-kernel deltas show where time goes
    return {
        "kernel_ms": sum(w["kernel_us"] for w in per_worker) / 1000,
        "launches": sum(w["launches"] for w in per_worker),
        "tokens": tokens,
        "top": per_worker[0]["top"],  # rank 0's kernels, most expensive first
        **({"timeline": per_worker[0]["timeline"]} if "timeline" in per_worker[0] else {}),  # rank 0's busy / idle time
    }


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
    from engine.vllm_slots import SLOT_ARG

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
