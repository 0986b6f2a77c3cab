"""The benchmark's command line: every flag, checked before any engine starts."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.cpu_pin import parse_cpulist
from sidesteer.random_model import ARCHS

__all__ = ["parse_args"]


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="default", help="folder, 'default', or 'random:ARCH' (" + ", ".join(ARCHS) + ")")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder for random models (default: the default model's)")
    p.add_argument("--prompts", type=int, default=1024)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="per engine (two engines share the device)")
    p.add_argument("--max-slots", type=int, default=64)
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per engine (every engine alike)")
    p.add_argument(
        "--ops", default="add,projection_cap,ablation", help="op layout of the steered engine (e.g. 'add' for add-only hooks)"
    )
    p.add_argument(
        "--cudagraph-max",
        type=int,
        default=None,
        help="largest CUDA-graph batch for both engines (vLLM default: min(2 * max_num_seqs, 512))",
    )
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra vLLM engine argument for every engine, VALUE as JSON or a bare string (repeatable)")  # fmt: skip
    p.add_argument("--kernel-time-rounds", type=int, default=None,
                   help="calls per configuration timed by GPU kernel time after the throughput rounds (default 2 on CUDA, 0 elsewhere)")  # fmt: skip
    p.add_argument("--step-time-rounds", type=int, default=1,
                   help="calls per configuration timed inside the worker (host time in the worker vs outside it vs the driver)")  # fmt: skip
    p.add_argument("--step-time-in-rounds", action="store_true",
                   help="also split the host time of every timed call of the throughput rounds (median over the rounds)")  # fmt: skip
    p.add_argument("--host-profile-rounds", type=int, default=0,
                   help="calls per configuration with cProfile on the worker's RPC thread (the engine core's busy loop with one GPU; slows those calls)")  # fmt: skip
    p.add_argument("--hf-prompts", type=int, default=64, help="transformers subset size (0 = skip)")
    p.add_argument("--latency-rounds", type=int, default=20)
    p.add_argument("--warmup-prompts", type=int, default=0, help="warm up on this many prompts (0 = all)")
    p.add_argument("--aa-control", action="store_true",
                   help="also time a second plain engine as a configuration (A/A control: its spread is the method's noise floor)")  # fmt: skip
    p.add_argument(
        "--prewarm-prompts",
        type=int,
        default=16,
        help="untimed call of this many prompts on the same engine before each timed call (0 = none)",
    )
    p.add_argument("--no-hooks", action="store_true",
                   help="steered engine without hooked layers (wrappers, slot index and driver only): runs idle and idle_llm_generate")  # fmt: skip
    p.add_argument("--pin-cpus", default=None, metavar="auto|CPULIST",
                   help="pin the driver and each engine's processes to their own physical cores ('auto': the GPU's NUMA node)")  # fmt: skip
    p.add_argument("--order-seed", type=int, default=0, help="seed of the per-round random order of configurations")
    p.add_argument("--only", default=None, help="comma-separated configurations to run (default: all)")
    p.add_argument("--work-dir", default="/tmp/sidesteer-bench")
    p.add_argument("--json", default=None, help="write results here (rewritten after every round)")
    return p


def parse_args(argv: list[str] | None, description: str) -> tuple[argparse.Namespace, dict[str, Any]]:
    """``(flags, extra engine arguments)``; a malformed ``--engine-arg`` or ``--pin-cpus`` exits here, before any
    engine starts."""
    a = parser(description).parse_args(argv)
    extra: dict[str, Any] = {}
    for item in a.engine_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--engine-arg: {item!r} is not KEY=VALUE; pass e.g. --engine-arg async_scheduling=true")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value  # a bare string
    if a.pin_cpus and a.pin_cpus != "auto":
        try:
            parse_cpulist(a.pin_cpus)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    return a, extra
