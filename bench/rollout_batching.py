"""Benchmark: rollouts as one batch of per-request steered completions vs one generate call per variant.

Both modes generate the same completions (same prompts, specs and per-record seeds; ``ignore_eos`` so every
completion has exactly ``--max-new-tokens`` tokens). A third row times :func:`rollouts.run_rollouts`
end to end (batched, with JSONL writes and fsyncs).

Usage::

    python -m bench rollouts --backend vllm        # 3 prompts x 9 variants x 4 rollouts x 32 tokens
    python -m bench rollouts --backend hf --rollouts 2
"""

from __future__ import annotations

import argparse
import tempfile
import time

from engine import GenerationConfig
from rollouts import (
    DEFAULT_REGISTRY,
    RolloutSettings,
    build_variants,
    load_dataset,
    load_vectors,
    record_seed,
    run_rollouts,
)
from vectors import VectorRegistry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench rollouts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backend", choices=["vllm", "hf"], default="vllm")
    p.add_argument("--dataset", default="happy")
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--rollouts", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--trained-scales", nargs="*", type=float, default=[0.5, 1.0, 2.0, 4.0])
    p.add_argument("--activation-scales", nargs="*", type=float, default=[-2.0, -1.0, 1.0, 2.0])
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)

    if args.backend == "vllm":
        from engine import VLLMSteeringConfig, VLLMSteerModel

        model = VLLMSteerModel(VLLMSteeringConfig(dtype=args.dtype, max_model_len=1024, max_slots=16))
    else:
        from engine import HFSteerModel

        model = HFSteerModel("default", dtype=args.dtype)
    dataset = load_dataset(args.dataset)
    dataset.prompts = dataset.prompts[: args.prompts]
    registry = VectorRegistry(DEFAULT_REGISTRY)
    settings = RolloutSettings(rollouts=args.rollouts, max_new_tokens=args.max_new_tokens, temperature=1.0,
                               trained_scales=args.trained_scales, activation_scales=args.activation_scales)  # fmt: skip
    variants = build_variants(model, load_vectors(registry, dataset.name, settings.kinds()), settings.scales())
    # one work item per record, as run_rollouts orders them: rollout, prompt, variant
    items = [
        (p, v, record_seed(0, dataset.name, p.id, r)) for r in range(args.rollouts) for p in dataset.prompts for v in variants
    ]

    def generate(chunk) -> int:
        config = GenerationConfig(
            max_new_tokens=args.max_new_tokens, temperature=1.0, ignore_eos=True, seeds=[s for _, _, s in chunk]
        )
        return sum(
            g.num_tokens for g in model.generate([p.prompt for p, _, _ in chunk], config, steering=[v.spec for _, v, _ in chunk])
        )

    generate(items[: len(variants)])  # warm-up: compile, load every spec once
    rows = []
    start = time.perf_counter()
    tokens = sum(generate([it for it in items if it[1] is v]) for v in variants)
    rows.append(("variant by variant", len(variants), tokens, time.perf_counter() - start))
    start = time.perf_counter()
    tokens = generate(items)
    rows.append(("one batch, per-request steering", 1, tokens, time.perf_counter() - start))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = run_rollouts(model, [dataset], registry, settings, out, progress=False)
        rows.append(("run_rollouts (batched, + JSONL/fsync)", summary.batches, summary.tokens, time.perf_counter() - start))

    print(f"\n{model.backend} on {model.model_id}: {len(dataset.prompts)} prompts x {len(variants)} variants x "
          f"{args.rollouts} rollouts = {len(items)} completions x {args.max_new_tokens} tokens, temperature 1.0")  # fmt: skip
    print("| mode | engine calls | tokens | seconds | tokens/s | speed-up |\n|---|---:|---:|---:|---:|---:|")
    base = rows[0][2] / rows[0][3]
    for name, calls, tokens, seconds in rows:
        print(f"| {name} | {calls} | {tokens} | {seconds:.2f} | {tokens / seconds:.1f} | {tokens / seconds / base:.2f}x |")
    model.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
