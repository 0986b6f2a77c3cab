"""The one entry point of the benchmarks, from the repository root.

Usage:
    python -m bench [FLAGS]                       # steered vs unsteered vLLM throughput/latency (bench.run; -h: flags)
    python -m bench table FILE.json [...]          # the Markdown tables of result files (bench.table)
    python -m bench table --pool A.json B.json     # one table of the rounds of several runs
    python -m bench rollouts [--backend vllm|hf]   # rollouts: one batch vs one call per variant (bench.rollout_batching)
    python -m bench rollouts-ray [--backend ...]   # rollouts: plain engine vs Ray replicas (bench.ray_overhead)
    python -m bench cpu [--rounds N] [--vllm]      # CPU compare pair: every candidate interleaved (bench.cpu_pair)
    python -m bench ui [--rounds N] [--write-docs] # the app's Compare: engine vs API vs browser (bench.ui_stream)
    bench/gpu_bench.sh install|0.6b|...|parity DIR  # the GPU machine's runs (wraps python -m bench)
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:1] == ["table"]:
        from bench import table

        table.main(argv[1:])
        return 0
    if argv[:1] == ["rollouts"]:
        from bench import rollout_batching

        return rollout_batching.main(argv[1:])
    if argv[:1] == ["rollouts-ray"]:
        from bench import ray_overhead

        return ray_overhead.main(argv[1:])
    if argv[:1] == ["cpu"]:
        from bench import cpu_pair

        return cpu_pair.main(argv[1:])
    if argv[:1] == ["ui"]:
        from bench import ui_stream

        return ui_stream.main(argv[1:])
    from bench import run

    run.main(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
