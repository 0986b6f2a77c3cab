"""Benchmark: the cost of the Ray path: one job through the plain single-engine path and through engine replicas.

The same rollout job (the ``happy`` prompts x baseline, trained and activation variants x enough rollouts for
``--records`` records, per-record seeds) runs through :func:`rollouts.run_rollouts` on an engine in this process
("plain") and on :class:`rollouts.ray_pool.ReplicaPool` replicas (``--replicas 1`` by default; ``--replicas 1 2``
adds a row). Rounds are interleaved (the order alternates each round) after one warm-up round of each, and each
mode's per-round records/s is paired with the plain path's of the same round: the ratio is the geometric mean of the
per-round ratios with its 95% interval. Records include JSONL writes and fsyncs in both paths.

Both engines are alive at once (the plain one in this process, each replica in its actor), so on one GPU give each
a share: ``--gpu-memory-utilization`` (default 0.4 here).

Usage::

    python -m bench rollouts-ray --backend vllm --records 2048 --rounds 5          # one GPU
    python -m bench rollouts-ray --backend hf --model random:qwen3-tiny --records 96 --replicas 1 2   # CPU
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.stats import paired_interval
from rollouts import RolloutSettings, default_target_layer, load_dataset, read_records, record_key, run_rollouts
from rollouts.ray_pool import ReplicaPool
from rollouts.replica import check_replicas
from vectors import VectorRegistry

__all__ = ["main"]


def _model_args(a: argparse.Namespace, model: str) -> argparse.Namespace:
    """The rollouts command's flags for one engine of the benchmark (its ``load_model`` builds plain and replicas)."""
    from sidesteer.commands.rollouts import build_parser

    argv = ["--model", model, "--dtype", a.dtype, "--gpu-memory-utilization", str(a.gpu_memory_utilization),
            "--max-model-len", "1024", "--tensor-parallel-size", str(a.tensor_parallel_size)]  # fmt: skip
    return build_parser().parse_args(argv + (["--use-vllm"] if a.backend == "vllm" else []))


def _resolve_model(name: str, work: Path) -> str:
    """``random:<arch>``: a random-weight checkpoint of :data:`sidesteer.random_model.ARCHS` (default tokenizer)."""
    if not name.startswith("random:"):
        return name
    from engine.default_model import resolve_model_path
    from sidesteer.random_model import build_random_model

    return build_random_model(name.split(":", 1)[1], resolve_model_path("default"), str(work), "float32", weights=True)


def _job(hidden: int, num_layers: int, model_id: str, records: int, work: Path) -> tuple[Any, VectorRegistry, int]:
    """The happy prompts, a registry of two random vectors of the model's size, and the rollouts for ``records``."""
    from sidesteer.random_model import unit

    dataset = load_dataset("happy")
    registry = VectorRegistry(work / "registry")
    layer = default_target_layer(num_layers)
    for seed, kind in enumerate(("trained", "activation")):
        registry.add(f"happy.{kind}", 4.0 * unit(hidden, seed), suggested_layer=layer, model_id=model_id)
    return dataset, registry, math.ceil(records / (3 * len(dataset.prompts)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench rollouts-ray", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backend", choices=["vllm", "hf"], default="vllm")
    p.add_argument("--model", default="default", help="'default', a folder, a hub id, or random:<arch> (e.g. qwen3-tiny)")
    p.add_argument("--records", type=int, default=1024, help="records per round and mode (rounded up to whole rollouts)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of every mode, after one warm-up round")
    p.add_argument("--replicas", nargs="+", type=int, default=[1], help="replica counts to time (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.4, help="per engine; plain and replicas coexist")
    p.add_argument("--ray-address", default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU only: torch threads of every engine (default: the "
                   "cores, shared out over a pool's replicas); 1 avoids oversubscription on a loaded machine")  # fmt: skip
    a = p.parse_args(argv)
    import torch

    from sidesteer.commands.rollouts import load_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        args = _model_args(a, _resolve_model(a.model, work))
        plain = load_model(args)
        dataset, registry, rollouts = _job(plain.hidden_size, plain.num_layers, plain.model_id, a.records, work)
        settings = RolloutSettings(rollouts=rollouts, max_new_tokens=a.max_new_tokens, temperature=1.0,
                                   batch_size=a.batch_size)  # fmt: skip
        ray = check_replicas(max(a.replicas))
        on_gpu = torch.cuda.is_available()
        cpus = os.cpu_count() or 1
        if a.threads and not on_gpu:  # the plain engine gets what each replica gets (Ray sets OMP_NUM_THREADS)
            torch.set_num_threads(a.threads)

        def replica_cpus(n: int) -> int | None:
            return None if on_gpu else a.threads or max(1, cpus // n)

        if a.ray_address is None:  # on CPU every pool's replicas share the cores: room for all pools at once
            ray.init(num_cpus=None if on_gpu else sum(n * replica_cpus(n) for n in a.replicas), include_dashboard=False)
        else:
            ray.init(address=a.ray_address)
        pools = {f"ray, {n} replica{'s' * (n > 1)}": ReplicaPool(functools.partial(load_model, args), n,
                 gpus=a.tensor_parallel_size, num_cpus=replica_cpus(n)) for n in a.replicas}  # fmt: skip
        modes: dict[str, tuple[Any, Any]] = {"plain": (plain, None), **{k: (pool.model, pool) for k, pool in pools.items()}}
        rates: dict[str, list[float]] = {name: [] for name in modes}
        same = True
        first_plain: dict[Any, str] = {}
        for round_ in range(a.rounds + 1):
            order = list(modes) if round_ % 2 == 0 else list(reversed(modes))
            outs: dict[str, Path] = {}
            for name in order:
                model, runner = modes[name]
                outs[name] = work / f"r{round_}-{len(outs)}"
                s = run_rollouts(model, [dataset], registry, settings, outs[name], progress=False, runner=runner)
                if round_:  # round 0 warms up: compiles, loads every spec once
                    rates[name].append(s.records_written / s.seconds)
            records = {
                n: {record_key(r): r["text"] for r in read_records(o / "happy" / "rollouts.jsonl")} for n, o in outs.items()
            }
            same = same and all(r == records["plain"] for r in records.values())
            first_plain = first_plain or records["plain"]
            # records that differ from this round's plain run, and the plain engine's own run-to-run differences
            # (on a GPU in bf16 a sampled token can flip with the batch shapes the scheduler happened to form)
            differ = {n: sum(r.get(k) != t for k, t in records["plain"].items()) for n, r in records.items() if n != "plain"}
            differ["plain vs its first run"] = sum(first_plain.get(k) != t for k, t in records["plain"].items())
            print(f"round {round_}{' (warm-up)' if not round_ else ''}: " + ", ".join(
                f"{n} {rates[n][-1]:.2f} rec/s" if round_ else n for n in order) + f"; records differing: {differ}")  # fmt: skip
        for pool in pools.values():
            pool.close()
        ray.shutdown()
        plain.close()
    n_records = 3 * len(dataset.prompts) * rollouts
    print(f"\n{a.backend} on {a.model}: {n_records} records x {a.max_new_tokens} tokens, batch {a.batch_size}, "
          f"{a.rounds} interleaved rounds; records identical across modes: {same}")  # fmt: skip
    print("| mode | median records/s | ratio to plain (95% interval) |\n|---|---:|---:|")
    for name, values in rates.items():
        ratio, low, high = paired_interval([v / w for v, w in zip(values, rates["plain"], strict=True)])
        print(f"| {name} | {statistics.median(values):.2f} | {ratio:.3f} ({low:.3f}-{high:.3f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
