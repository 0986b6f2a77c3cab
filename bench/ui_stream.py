"""UI streaming overhead: the app's Compare timed directly on the engine, through its API and in a browser.

Usage (from the repository root; not part of the product):
    python -m bench ui [--tokens 64] [--rounds 5] [--backend hf] [--model default] [--vector pirate]
                       [--paths direct,client,browser] [--registry DIR] [--out-json FILE] [--out-md FILE] [--write-docs]

The app runs as users run it, ``python app.py --backend B --model M --port P`` in its own process (a temporary, read-
only user registry over the shipped vectors unless ``--registry``). This process loads the same engine the same way
(``app.cli.create_engine``: the app's torch threads) and the same vector at its suggested layer and scale. Each round
visits the paths in a fresh random order, after one untimed warm-up call of each:

- ``direct``: ``engine.generate_stream`` with both panes in one batch, as the app's Compare calls it (greedy, the
  shared seed, unsteered + steered); no web server.
- ``client``: the app's ``/compare`` endpoint through ``gradio_client`` (``submit``, then iterate the job's outputs).
- ``browser``: Generate on the Compare tab in headless Chromium, timed in the page (:mod:`bench.ui_browser`).

Per call: time to first text of each pane (from the call, the submit or the click), total time (the stream's end;
the job finished; both stats lines ended), the 1-minute load average before and after, and the CPU seconds over the
timed part of this process, the app's process and the browser's processes (``/proc``; on a shared 2-core host the
UI's CPU time comes out of the model's). Every path's texts and token counts must equal the direct path's of the same
round. The UI's overhead per token is (path total - direct total) / decode steps, paired within a round; the table
gives medians and min-max over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PATHS", "DOCS_BEGIN", "DOCS_END", "main", "markdown", "run_benchmark", "summarize", "write_docs"]

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("direct", "client", "browser")
PATH_LABELS = {
    "direct": "engine `generate_stream`, no UI",
    "client": "app `/compare` via gradio_client",
    "browser": "app in Chromium (DOM)",
}
PROMPT = "Tell me about your weekend."  # the Compare tab's default prompt
CPU_GROUPS = ("bench", "app", "browser")  # process groups whose CPU time each call records (cpu_snapshot)
DOCS = ROOT / "docs" / "BENCHMARKS.md"
DOCS_HEADING = "## UI streaming overhead (CPU)"
DOCS_AFTER = "## CPU compare pair"  # the section is created right after this one
DOCS_BEGIN = "<!-- python -m bench ui --write-docs: begin -->"
DOCS_END = "<!-- python -m bench ui --write-docs: end -->"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """``python app.py`` in its own process on a free port; its log goes to ``log``."""

    def __init__(self, backend: str, model: str, registry: Path, log: Path, timeout_s: float = 900.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        command = [sys.executable, "app.py", "--backend", backend, "--model", model, "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--registry", str(registry), "--read-only-registry"]
        env = {**os.environ, "GRADIO_TEMP_DIR": str(log.parent / "gradio")}  # otherwise as a user's shell starts it
        started = time.perf_counter()
        with log.open("w") as out:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode} before serving; its log:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5):
                    break
            except OSError:
                pass  # not serving yet
            if time.perf_counter() - started > timeout_s:
                self.close()
                raise RuntimeError(f"the app did not serve {self.url} within {timeout_s:.0f} s; its log:\n{self.tail()}")
            time.sleep(0.5)
        self.start_s = time.perf_counter() - started

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class DirectPath:
    """The engine in this process, streaming the compare pair as the app's Compare does (no web server)."""

    def __init__(self, backend: str, model: str, registry: Path, vector: str, tokens: int, seed: int) -> None:
        from app.cli import create_engine  # the app's engine and torch threads
        from app.deploy import open_registry
        from engine import GenerationConfig
        from vectors import LayerSteeringSpec, SpecMetadata, SteeringError, SteeringSpec

        self.engine = create_engine(backend, model)
        entry = open_registry(registry, read_only=True).get(vector)
        if entry.suggested_layer is None or entry.suggested_scale is None:
            raise SteeringError(f"--vector: {vector!r} has no suggested layer and scale; pick a vector that has both")
        self.layer, self.scale = entry.suggested_layer, float(entry.suggested_scale)
        metadata = SpecMetadata(model_id=self.engine.model_id, hidden_size=self.engine.hidden_size)
        spec = SteeringSpec({self.layer: LayerSteeringSpec(vector=entry.vector, scale=self.scale)}, metadata)
        self.spec = self.engine.validate_spec(spec)
        self.config = GenerationConfig(max_new_tokens=tokens, temperature=0.0, top_p=1.0, seed=seed, seeds=[seed, seed])
        self.prompt = [{"role": "user", "content": PROMPT}]

    def compare(self, meter: CpuMeter) -> dict[str, Any]:
        texts, tokens = ["", ""], [0, 0]
        ttft: list[float | None] = [None, None]
        meter.start()
        start = time.perf_counter()
        stream = self.engine.generate_stream([self.prompt, self.prompt], self.config, steering=[None, self.spec])
        for event in stream:
            texts[event.index] += event.delta
            tokens[event.index] = len(event.token_ids)
            if ttft[event.index] is None and texts[event.index]:
                ttft[event.index] = time.perf_counter() - start
        total = time.perf_counter() - start
        meter.stop()
        return {"ttft_s": ttft, "total_s": total, "texts": texts, "tokens": tokens}


class ClientPath:
    """The app's ``/compare`` endpoint through ``gradio_client``, iterating the streamed outputs."""

    def __init__(self, url: str, vector: str, layer: int, scale: float, tokens: int, seed: int) -> None:
        from gradio_client import Client

        self.client = Client(url, verbose=False)
        self.request = {
            "prompt": PROMPT,
            "system_prompt": "",
            "vector": vector,
            "layer": layer,
            "scale": scale,
            "max_new_tokens": tokens,
            "temperature": 0.0,
            "top_p": 1.0,
            "seed": seed,
            "raw_completion": False,
            "steering_mode": "quick",
            "skip_first_tokens": 0,
            "chat_mode": False,
        }

    def compare(self, meter: CpuMeter) -> dict[str, Any]:
        from bench.ui_browser import tokens_in

        ttft: list[float | None] = [None, None]
        last: Sequence[Any] = ()
        meter.start()
        start = time.perf_counter()
        job = self.client.submit(**self.request, api_name="/compare")
        for output in job:
            for index in (0, 1):
                if ttft[index] is None and output[index]:
                    ttft[index] = time.perf_counter() - start
            last = output
        total = time.perf_counter() - start
        meter.stop()
        job.result()  # raises the app's error, if any
        return {"ttft_s": ttft, "total_s": total, "texts": list(last[:2]), "tokens": [tokens_in(s) for s in last[2:4]]}


def _proc_table() -> dict[int, tuple[int, float]]:
    """``pid -> (parent pid, CPU seconds)`` of every process, from ``/proc`` (empty where there is none).

    A process's CPU seconds include its reaped children's (``cutime``, ``cstime``), so a Chromium renderer that ends
    between two snapshots still counts, under its parent.
    """
    table: dict[int, tuple[int, float]] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": comm may hold spaces
        except (OSError, IndexError):
            continue  # ended while we looked
        table[int(entry.parent.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / tick)
    return table


def cpu_snapshot(app_pid: int | None) -> dict[str, float]:
    """CPU seconds so far of this process (its own threads: the direct engine, gradio_client), of the app server
    process and of the rest of this process's descendants (Playwright's driver and Chromium)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)

    def subtree(pid: int) -> list[int]:
        found, todo = [], [pid]
        while todo:
            found.append(todo.pop())
            todo += children.get(found[-1], [])
        return found

    me = os.getpid()
    app = set(subtree(app_pid)) if app_pid in table else set()
    browser = [pid for pid in subtree(me) if pid != me and pid not in app]
    mine = os.times()
    return {
        "bench": mine.user + mine.system,
        "app": sum(table[pid][1] for pid in app),
        "browser": sum(table[pid][1] for pid in browser),
    }


class CpuMeter:
    """CPU seconds of each process group (:func:`cpu_snapshot`) between a path's :meth:`start` and :meth:`stop`, which
    it calls around exactly the part it times (the browser path: from the click, not the page load)."""

    def __init__(self, app_pid: int | None) -> None:
        self.app_pid = app_pid
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self.before = cpu_snapshot(self.app_pid)

    def stop(self) -> None:
        after = cpu_snapshot(self.app_pid)
        self.used = {group: after[group] - self.before[group] for group in CPU_GROUPS}


def timed(path: str, compare: Callable[[CpuMeter], dict[str, Any]], round_index: int, app_pid: int | None) -> dict[str, Any]:
    """One timed call with the 1-minute load average before and after it and the CPU seconds of each process group."""
    meter = CpuMeter(app_pid)
    load_before = os.getloadavg()[0]
    result = compare(meter)
    load_after = os.getloadavg()[0]
    return {
        "round": round_index,
        "path": path,
        "load_before": load_before,
        "load_after": load_after,
        "cpu_s": meter.used,
        **result,
    }


def run_benchmark(
    paths: Sequence[str],
    *,
    backend: str = "hf",
    model: str = "default",
    vector: str = "pirate",
    registry: Path | None = None,
    rounds: int = 5,
    tokens: int = 64,
    seed: int = 0,
    order_seed: int = 0,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> dict[str, Any]:
    """Start the app and this process's engine, warm each path up once, then time ``rounds`` interleaved rounds.

    Returns:
        The raw records: settings, machine, load averages at start and end, and one record per timed call with
        ``same_as_direct`` (texts and token counts equal the direct path's of the same round).
    """
    rng = random.Random(order_seed)
    loads_start = os.getloadavg()
    calls: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        folder = Path(tmp)
        user_registry = registry or folder / "registry"
        user_registry.mkdir(exist_ok=True)
        server = AppServer(backend, model, user_registry, folder / "app.log")
        runners: dict[str, Any] = {}
        try:
            log(f"app serving at {server.url} after {server.start_s:.1f} s")
            direct = DirectPath(backend, model, user_registry, vector, tokens, seed)
            import torch

            threads = torch.get_num_threads()
            runners["direct"] = direct
            if "client" in paths:
                runners["client"] = ClientPath(server.url, vector, direct.layer, direct.scale, tokens, seed)
            if "browser" in paths:
                from bench.ui_browser import BrowserPath

                runners["browser"] = BrowserPath(server.url, vector, direct.layer, direct.scale, tokens)
            for name in runners:
                runners[name].compare(CpuMeter(None))  # untimed warm-up: first-call allocations, the page's first load
            for round_index in range(rounds):
                order = list(runners)
                rng.shuffle(order)
                here: dict[str, dict[str, Any]] = {}
                for name in order:
                    here[name] = timed(name, runners[name].compare, round_index, server.proc.pid)
                    log(
                        f"round {round_index} {name}: total {here[name]['total_s']:.2f} s, "
                        f"ttft {here[name]['ttft_s']}, load {here[name]['load_before']:.2f}"
                    )
                want = here["direct"]
                for name in order:
                    here[name]["same_as_direct"] = (here[name]["texts"], here[name]["tokens"]) == (want["texts"], want["tokens"])
                    calls.append(here[name])
        except Exception:
            log(f"app log (last lines):\n{server.tail()}")
            raise
        finally:
            for runner in runners.values():
                if hasattr(runner, "close"):
                    runner.close()
            server.close()
    return {
        "backend": backend,
        "model": model,
        "vector": vector,
        "layer": direct.layer,
        "scale": direct.scale,
        "tokens": tokens,
        "seed": seed,
        "rounds": rounds,
        "paths": [p for p in PATHS if p in runners],
        "torch_threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
        "app_start_s": server.start_s,
        "loads_start": list(loads_start),
        "loads_end": list(os.getloadavg()),
        "calls": calls,
    }


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _median_range(values: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def summarize(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per path: medians and ranges over rounds, and the per-token overhead paired with the direct path.

    A round's decode steps are the direct path's longer pane (both panes decode in one batch). Wall clock: the extra
    time of the whole call per decode step and relative to the direct call. CPU: medians of each process group's CPU
    seconds, and the extra CPU seconds of all groups together per decode step and relative to the direct call's.
    """
    direct = {c["round"]: c for c in raw["calls"] if c["path"] == "direct"}
    rows = []
    for path in raw["paths"]:
        mine = [c for c in raw["calls"] if c["path"] == path]
        row: dict[str, Any] = {
            "path": path,
            "ttft_baseline": _median_range([c["ttft_s"][0] for c in mine]),
            "ttft_steered": _median_range([c["ttft_s"][1] for c in mine]),
            "total": _median_range([c["total_s"] for c in mine]),
            "tokens": sorted({tuple(c["tokens"]) for c in mine}),
            "same": sum(bool(c["same_as_direct"]) for c in mine),
            "calls": len(mine),
            "load": statistics.median(c["load_before"] for c in mine),
            "per_token_ms": None,
            "overhead_pct": None,
            "cpu": {group: statistics.median(c["cpu_s"][group] for c in mine) for group in CPU_GROUPS},
            "cpu_per_token_ms": None,
            "cpu_pct": None,
        }
        paired = [(c, direct[c["round"]]) for c in mine if c["round"] in direct]
        if path != "direct" and paired:
            row["per_token_ms"] = _median_range([1000 * (c["total_s"] - d["total_s"]) / max(d["tokens"]) for c, d in paired])
            row["overhead_pct"] = _median_range([100 * (c["total_s"] / d["total_s"] - 1) for c, d in paired])
            cpu = [(sum(c["cpu_s"].values()), sum(d["cpu_s"].values()), max(d["tokens"])) for c, d in paired]
            row["cpu_per_token_ms"] = _median_range([1000 * (ui - plain) / steps for ui, plain, steps in cpu])
            row["cpu_pct"] = _median_range([100 * (ui / plain - 1) for ui, plain, _ in cpu])
        rows.append(row)
    return rows


def _cell(stat: tuple[float, float, float] | None, fmt: str, unit: str = "") -> str:
    if stat is None:
        return "-"
    mid, low, high = stat
    return f"{mid:{fmt}}{unit} ({low:{fmt}} to {high:{fmt}})"


def markdown(raw: dict[str, Any]) -> str:
    """The result table (Markdown), with the run's settings, machine, load and command in its caption."""
    start, end = (", ".join(f"{x:.2f}" for x in raw[key]) for key in ("loads_start", "loads_end"))
    loads = [c[key] for c in raw["calls"] for key in ("load_before", "load_after")]
    head = (
        f'{raw["tokens"]} new tokens per pane, greedy (seed {raw["seed"]}), prompt "{PROMPT}", vector `{raw["vector"]}` at layer '
        f"{raw['layer']}, scale {raw['scale']:g}; model `{raw['model']}`, backend `{raw['backend']}`, "
        f"{raw['torch_threads']} torch thread(s) in the app and in the direct engine, OMP_WAIT_POLICY="
        f"{raw['omp_wait_policy']}; {raw['rounds']} interleaved rounds after one warm-up call per path; "
        f"{raw['cpus']} CPUs ({raw['cpu']}). Load average (1, 5, 15 min) {start} at start, {end} at end; "
        f"1-minute load around the timed calls {min(loads):.2f}-{max(loads):.2f}. "
        f"Command: `{raw.get('command', 'python -m bench ui')}`.\n\n"
        "| path | TTFT baseline s | TTFT steered s | total s | tokens (baseline, steered) | overhead per token ms | "
        "overhead vs direct | CPU s: bench / app / browser | extra CPU per token ms | extra CPU vs direct | "
        "same output as direct | load |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in summarize(raw):
        tokens = "; ".join(f"{a}, {b}" for a, b in r["tokens"])
        cpu = " / ".join(f"{r['cpu'][group]:.2f}" for group in CPU_GROUPS)
        lines.append(
            f"| {PATH_LABELS[r['path']]} | {_cell(r['ttft_baseline'], '.3f')} | {_cell(r['ttft_steered'], '.3f')} | "
            f"{_cell(r['total'], '.2f')} | {tokens} | {_cell(r['per_token_ms'], '+.1f')} | "
            f"{_cell(r['overhead_pct'], '+.1f', '%')} | {cpu} | {_cell(r['cpu_per_token_ms'], '+.1f')} | "
            f"{_cell(r['cpu_pct'], '+.1f', '%')} | {r['same']}/{r['calls']} | {r['load']:.2f} |"
        )
    foot = (
        "\nMedians over rounds (min to max); overheads are paired with the direct call of the same round and divided "
        "by its decode steps (the longer pane's tokens). CPU s: this benchmark process "
        "(the direct engine, gradio_client) / the app server process / Playwright's driver and Chromium, medians.\n"
    )
    return head + "\n".join(lines) + "\n" + foot


def write_docs(table: str, docs: Path = DOCS) -> None:
    """Put ``table`` between this benchmark's markers in ``docs``; the section and markers are created the first time
    (right after the "CPU compare pair" section, else at the end). Text outside the markers is left as it is."""
    text = docs.read_text()
    block = f"{DOCS_BEGIN}\n{table.rstrip()}\n{DOCS_END}"
    if DOCS_BEGIN in text and DOCS_END in text:
        before, rest = text.split(DOCS_BEGIN, 1)
        text = before + block + rest.split(DOCS_END, 1)[1]
    else:
        section = f"{DOCS_HEADING}\n\n{block}\n\n"
        after = text.find(DOCS_AFTER)
        following = re.compile(r"^## ", re.M).search(text, after + len(DOCS_AFTER)) if after >= 0 else None
        text = text[: following.start()] + section + text[following.start() :] if following else text.rstrip() + "\n\n" + section
    docs.write_text(text)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ui", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per pane")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", default="hf", help="the app's --backend, one of engine.auto_backend.BACKENDS (default hf)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--vector", default="pirate", help="a registry vector with a suggested layer and scale")
    parser.add_argument("--registry", type=Path, help="the app's user registry folder (default: a new empty one)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)} (direct always runs)")
    parser.add_argument("--seed", type=int, default=0, help="the round order's random seed")
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--out-md", type=Path)
    parser.add_argument("--write-docs", action="store_true", help=f"put the table into {DOCS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        parser.error(f"--paths: unknown {unknown}; choose from {', '.join(PATHS)}")
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds} is not a positive number of rounds; pass e.g. --rounds 5")
    if args.tokens < 1:
        parser.error(f"--tokens: {args.tokens} is not a positive number of tokens; pass e.g. --tokens 64")
    from engine.auto_backend import BACKENDS

    if args.backend not in BACKENDS:
        parser.error(f"--backend: {args.backend!r} is not one of the app's backends ({', '.join(BACKENDS)})")
    if args.registry is not None and not args.registry.is_dir():
        parser.error(f"--registry: {args.registry} is not a folder; pass an existing registry folder or leave it out")
    started = time.time()
    raw = run_benchmark(
        ["direct", *paths],
        backend=args.backend,
        model=args.model,
        vector=args.vector,
        registry=args.registry,
        rounds=args.rounds,
        tokens=args.tokens,
        order_seed=args.seed,
    )
    raw["command"] = " ".join(["python -m bench ui", *argv])
    raw["wall_s"] = time.time() - started
    table = markdown(raw)
    print(table)
    if args.out_json:
        args.out_json.write_text(json.dumps(raw, indent=1) + "\n")
    if args.out_md:
        args.out_md.write_text(table)
    if args.write_docs:
        write_docs(table)
    return 0
