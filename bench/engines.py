"""The engines a benchmark run compares, started side by side on the same device with identical settings.

- the *ceiling*: plain ``vllm.LLM`` with no steering installed (no hooks, no slot tables, no runner wrappers); its
  only worker extension is :class:`bench.kernel_timer.KernelTimerExtension`, the timing RPCs;
- the *steered engine*: :class:`engine.VLLMSteerModel` (hooks and slot tables on every layer) whose worker
  extension is :class:`bench.worker_ext.BenchSteeringExtension` (steering plus the same timing RPCs), passed through
  ``VLLMSteeringConfig.engine_kwargs``;
- with ``--aa-control``, a second plain engine timed like a configuration (an A/A control).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.cpu_pin import pin_all
from sidesteer.random_model import build_random_model

__all__ = ["PLAIN", "STEERED", "Engines", "hf_model", "kv_blocks", "resolve_model", "start_engines"]

# Worker extensions by qualname, never imported here: importing the steered one applies sidesteer's runner patches,
# which belong in the steered engine's workers only (a driver that imported it would hand them to forked engines).
STEERED = "bench.worker_ext.BenchSteeringExtension"
PLAIN = "bench.kernel_timer.KernelTimerExtension"  # imports nothing of sidesteer: a plain vLLM baseline


def resolve_model(name: str, tokenizer_dir: str | None, work_dir: str, dtype: str) -> tuple[str, bool]:
    """``(path, dummy_weights)`` for ``--model``: a folder, ``default``, or ``random:ARCH``."""
    if name.startswith("random:"):
        from engine.default_model import resolve_model_path

        tok = tokenizer_dir or resolve_model_path("default")
        return build_random_model(name.split(":", 1)[1], tok, work_dir, "bfloat16" if dtype == "auto" else dtype), True
    return name, False


def kv_blocks(llm: Any) -> int | None:
    """KV-cache blocks the engine got (equal sizes keep the engines' scheduling alike; fewer blocks than the workload
    needs means queueing or preemption, which slows a call and makes it noisy)."""
    return getattr(llm.llm_engine.vllm_config.cache_config, "num_gpu_blocks", None)


@dataclass
class Engines:
    """The steered engine and the plain engine(s) (``unsteered``, and ``unsteered_aa_control`` with --aa-control)."""

    steer: Any  # engine.VLLMSteerModel
    plains: dict[str, Any]  # name -> vllm.LLM
    path: str
    dummy: bool
    util: float
    start_steered_s: float
    start_plain_s: float
    pinning: dict[str, Any] | None = None

    def rpc(self, name: str) -> Callable[..., list[Any]]:
        """``collective_rpc`` of the engine that runs configuration ``name`` (the steered one's on its loop thread)."""
        if name in self.plains:
            return self.plains[name].collective_rpc
        steer = self.steer

        def steer_rpc(method: str, args: tuple[Any, ...] = ()) -> list[Any]:
            return steer._call(lambda: steer.engine.collective_rpc(method, args=args))

        return steer_rpc

    def close(self) -> None:
        """Stop every engine now (engine-core processes end here, not at interpreter exit) and free their memory."""
        self.steer.close()
        for llm in self.plains.values():
            llm.llm_engine.engine_core.shutdown()
        self.plains.clear()


def start_engines(a: argparse.Namespace, extra_engine_args: dict[str, Any], on_cuda: bool) -> Engines:
    """Start the steered engine first, then the plain engine(s); pin their processes with ``--pin-cpus``."""
    from vllm import LLM

    from engine import VLLMSteeringConfig, VLLMSteerModel

    path, dummy = resolve_model(a.model, a.tokenizer, a.work_dir, a.dtype)
    util = a.gpu_memory_utilization or (0.4 if on_cuda else 0.15)
    engine_kwargs: dict[str, Any] = {"worker_extension_cls": STEERED}
    if dummy:
        engine_kwargs["load_format"] = "dummy"
    if a.cudagraph_max is not None:
        engine_kwargs["compilation_config"] = {"max_cudagraph_capture_size": a.cudagraph_max}
    engine_kwargs.update(extra_engine_args)
    cfg = VLLMSteeringConfig(
        model_name=path,
        dtype=a.dtype,
        max_model_len=a.input_len + a.output_len + 16,
        gpu_memory_utilization=util,
        enable_prefix_caching=False,  # random prompts share nothing anyway
        max_slots=a.max_slots,
        ops=tuple(a.ops.split(",")),
        tensor_parallel_size=a.tensor_parallel_size,
        engine_kwargs=engine_kwargs,
    )
    # --no-hooks: the steered engine with its worker wrappers, slot index and driver but no hooked layer, to tell the
    # hooks' host or device cost from the rest (only the unsteered configurations can run on it).
    steer = VLLMSteerModel(cfg, bootstrap_layers=() if a.no_hooks else None, start=False)
    plain_args = steer._engine_args()
    plain_args.pop("additional_config")  # no steering layout: no hooks, no slot tables
    plain_args["worker_extension_cls"] = PLAIN  # the timing RPCs only (imports nothing of sidesteer)

    t = time.perf_counter()
    steer.restart()
    start_steered = time.perf_counter() - t
    t = time.perf_counter()
    plains = {"unsteered": LLM(**plain_args)}
    start_plain = time.perf_counter() - t
    if a.aa_control:
        # A/A control: a second, identical plain engine measured like a configuration. Its paired ratio to the
        # ceiling can only differ from 100% by noise, so its spread is the resolution of this run's method.
        plains["unsteered_aa_control"] = LLM(**plain_args)
    engines = Engines(steer, plains, path, dummy, util, start_steered, start_plain)
    if a.pin_cpus:  # after every engine started (their processes exist), before any timed work
        engines.pinning = pin_all(a.pin_cpus, {**plains, "steered": steer.llm})
        print(f"pinned: {engines.pinning['sets']}", flush=True)
    return engines


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
