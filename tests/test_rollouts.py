"""Rollouts: dataset format, variants, seeds, resumable output, partitions, and batching parity on both backends."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from engine import GenerationConfig
from engine.errors import EngineDeadError
from rollouts import (
    DEFAULT_DATASET_ROOT,
    DEFAULT_REGISTRY,
    RECORD_FIELDS,
    RolloutFile,
    RolloutSettings,
    load_dataset,
    partition,
    read_records,
    record_key,
    record_seed,
    run_rollouts,
)
from scripts.generate_behavior_rollouts import main as cli_main
from vectors import SteeringError, VectorRegistry

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    {"id": "chat-a", "messages": [{"role": "user", "content": "Tell me about your day."}]},
    {"id": "raw-b", "prompt": "When I woke up this morning, I felt"},
]


class Killed(RuntimeError):
    pass


class DiesAfter:
    """A model proxy whose generate raises after ``batches`` calls (a kill between batches)."""

    def __init__(self, model, batches: int) -> None:
        self.model, self.left = model, batches

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, *args, **kwargs):
        if self.left == 0:
            raise Killed("simulated kill")
        self.left -= 1
        return self.model.generate(*args, **kwargs)


def write_dataset(root: Path, name: str, prompts=PROMPTS, as_folder: bool = True) -> Path:
    path = root / name / "prompts.jsonl" if as_folder else root / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return path


def add_vectors(registry: VectorRegistry, name: str, hidden: int = 576, layer: int = 8) -> None:
    g = torch.Generator().manual_seed(0)
    for kind in ("trained", "activation"):
        v = torch.randn(hidden, generator=g)
        registry.add(f"{name}.{kind}", 4.0 * v / v.norm(), suggested_layer=layer, model_id="HuggingFaceTB/SmolLM2-135M-Instruct")


@pytest.fixture()
def setup(tmp_path):
    data, registry = tmp_path / "datasets", VectorRegistry(tmp_path / "registry")
    write_dataset(data, "tiny")
    add_vectors(registry, "tiny")
    return data, registry, tmp_path / "out"


def cli_args(data: Path, registry: VectorRegistry, out: Path, *extra: str, datasets=("tiny",)) -> list[str]:
    return ["--datasets", *datasets, "--dataset-root", str(data), "--registry", str(registry.root), "--output-root", str(out),
            "--rollouts", "2", "--max-new-tokens", "8", "--temperature", "0", "--trained-scales", "1.0",
            "--activation-scales", "-2.0", "2.0", "--no-progress", *extra]  # fmt: skip


def by_key(records: list[dict]) -> dict:
    return {record_key(r): r for r in records}


# -- the package ------------------------------------------------------------------------------------------------
def imported_packages(path: Path) -> set[str]:
    """The top-level names a module imports anywhere (imports inside functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_rollouts_is_an_application_of_the_engine():
    """vectors <- engine <- rollouts: neither engine nor vectors imports rollouts; rollouts imports no UI."""
    files = sorted((ROOT / "rollouts").glob("*.py"))
    assert {p.name for p in files} >= {
        "__init__.py",
        "datasets.py",
        "variants.py",
        "plan.py",
        "records.py",
        "manifest.py",
        "sharding.py",
        "run.py",
    }
    uses = set().union(*(imported_packages(p) for p in files))
    assert {"engine", "vectors"} <= uses and uses.isdisjoint({"app", "gradio", "sidesteer", "bench"})
    below = [p for package in ("vectors", "engine") for p in sorted((ROOT / package).rglob("*.py"))]
    assert [str(p.relative_to(ROOT)) for p in below if "rollouts" in imported_packages(p)] == []
    assert not (ROOT / "engine" / "rollouts.py").exists()
    too_long = {p.name: n for p in files if (n := len(p.read_text().splitlines())) >= 270}
    assert too_long == {}  # one concept a file keeps each one short


def test_default_paths_are_the_checkouts_example_data():
    assert (DEFAULT_DATASET_ROOT, DEFAULT_REGISTRY) == (ROOT / "datasets", ROOT / "registry" / "smollm2")
    assert load_dataset("happy").path == ROOT / "datasets" / "happy" / "prompts.jsonl"
    assert {"happy.trained", "happy.activation"} <= set(VectorRegistry(DEFAULT_REGISTRY).names())


def test_a_rollouts_package_of_yours_stops_the_command(tmp_path):
    """``rollouts`` is a generic top-level name: one of yours first on sys.path must not run in sidesteer's place."""
    (tmp_path / "rollouts").mkdir()
    (tmp_path / "rollouts" / "__init__.py").write_text("raise RuntimeError('the user package ran')\n")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(ROOT)}
    code = "from sidesteer.cli import main; main(['rollouts', '--help'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"ImportError: sidesteer: 'rollouts' resolves to {tmp_path / 'rollouts' / '__init__.py'}, not to sidesteer's own "
        f"{ROOT / 'rollouts'}; a module or package of yours named 'rollouts' comes first on sys.path. Rename it, or run "
        "from a directory that does not hold it"
    )


# -- pure parts ---------------------------------------------------------------------------------------------------
def test_partition_is_exact():
    names = [f"d{i}" for i in range(7)]
    for stride in (1, 2, 3, 7, 9):
        parts = [partition(names, stride, offset) for offset in range(stride)]
        flat = [n for part in parts for n in part]
        assert sorted(flat) == sorted(names) and len(flat) == len(names)
    assert partition(names, 3, 1) == ["d1", "d4"]


@pytest.mark.parametrize("stride,offset,match", [(0, 0, "dataset_stride"), (2, 2, "dataset_offset"), (2, -1, "dataset_offset")])
def test_partition_rejects_bad_values(stride, offset, match):
    with pytest.raises(SteeringError, match=match):
        partition(["a"], stride, offset)


def test_record_seed_is_stable_and_ignores_variant():
    assert record_seed(0, "happy", "p1", 3) == record_seed(0, "happy", "p1", 3)
    seeds = {record_seed(0, "happy", "p1", r) for r in range(100)}
    assert len(seeds) == 100 and all(0 <= s < 2**31 for s in seeds)
    assert record_seed(1, "happy", "p1", 0) != record_seed(0, "happy", "p1", 0)


def test_dataset_loads_folder_and_file(tmp_path):
    write_dataset(tmp_path, "a")
    write_dataset(tmp_path, "b", as_folder=False)
    a, b = load_dataset("a", tmp_path), load_dataset("b", tmp_path)
    assert (a.name, b.name) == ("a", "b")
    assert a.prompts[0].prompt == PROMPTS[0]["messages"] and a.prompts[1].prompt == PROMPTS[1]["prompt"]
    assert load_dataset(str(tmp_path / "a"), "/nonexistent").name == "a"


@pytest.mark.parametrize(
    "lines,match",
    [
        ([{"id": "x", "prompt": "a"}, {"id": "x", "prompt": "b"}], "duplicate id 'x'"),
        ([{"id": "x", "prompt": "a", "messages": [{"role": "user", "content": "b"}]}], "exactly one of"),
        ([{"prompt": "a"}], "'id'"),
        ([{"id": "x", "messages": [{"role": "user"}]}], "'messages' must be"),
        ([], "no prompts"),
    ],
)
def test_dataset_rejects_bad_records(tmp_path, lines, match):
    write_dataset(tmp_path, "bad", lines)
    with pytest.raises(SteeringError, match=match):
        load_dataset("bad", tmp_path)


def test_unknown_dataset_lists_available(tmp_path):
    write_dataset(tmp_path, "known")
    with pytest.raises(SteeringError, match=r"unknown dataset 'nope'.*available.*known"):
        load_dataset("nope", tmp_path)


def test_rollout_file_drops_torn_tail(tmp_path):
    path = tmp_path / "r.jsonl"
    rec = {"dataset": "d", "prompt_id": "p", "variant": "baseline", "scale": None, "rollout": 0}
    path.write_text(json.dumps(rec) + "\n" + '{"dataset": "d", "prom')
    with pytest.warns(UserWarning, match="torn last line"):
        f = RolloutFile(path)
    assert len(f) == 1 and path.read_text() == json.dumps(rec) + "\n"
    f.append([{**rec, "rollout": 1}])
    assert [r["rollout"] for r in read_records(path)] == [0, 1]


def test_generation_config_seeds():
    assert GenerationConfig(seeds=[5, 9]).seed_for(1) == 9
    assert GenerationConfig(seed=3).seed_for(1) == 4
    with pytest.raises(SteeringError, match="seeds"):
        GenerationConfig(seeds=[-1])
    with pytest.raises(SteeringError, match="seeds"):
        GenerationConfig(seeds="12")


# -- transformers backend -----------------------------------------------------------------------------------------
def check_seeds_independent_of_batch(model) -> None:
    """A prompt sampled with seed s gives the same tokens alone or second in a batch."""
    config = GenerationConfig(max_new_tokens=8, temperature=1.0, seeds=[11, 22])
    pair = model.generate(["Once upon a time", "The weather today"], config)
    alone = model.generate(["The weather today"], GenerationConfig(max_new_tokens=8, temperature=1.0, seeds=[22]))
    assert alone[0].token_ids == pair[1].token_ids
    with pytest.raises(SteeringError, match="2 seeds for 1 prompts"):
        model.generate(["x"], config)


@pytest.mark.slow
def test_seeds_make_sampling_independent_of_batch(hf_default):
    check_seeds_independent_of_batch(hf_default)


@pytest.mark.slow
def test_cli_writes_expected_files_and_records(hf_default, setup):
    data, registry, out = setup
    assert cli_main(cli_args(data, registry, out), model=hf_default) == 0
    records = read_records(out / "tiny" / "rollouts.jsonl")
    assert len(records) == 4 * 2 * 2  # (baseline + 1 trained + 2 activation) x 2 prompts x 2 rollouts
    assert all(tuple(r) == RECORD_FIELDS for r in records)
    assert len(by_key(records)) == len(records)
    assert Counter((r["variant"], r["scale"]) for r in records) == {
        ("baseline", None): 4,
        ("trained", 1.0): 4,
        ("activation", -2.0): 4,
        ("activation", 2.0): 4,
    }
    for r in records:
        assert r["seed"] == record_seed(0, "tiny", r["prompt_id"], r["rollout"])
        assert 1 <= r["num_tokens"] <= 8 and r["finish_reason"] in ("stop", "length")
        if r["variant"] == "baseline":
            assert r["vector"] is None and r["layer"] is None and r["spec_fingerprint"] is None
        else:
            assert r["vector"] == f"tiny.{r['variant']}" and r["layer"] == 8 and len(r["spec_fingerprint"]) == 64
    steered = {r["text"] for r in records if r["prompt_id"] == "raw-b" and r["rollout"] == 0}
    assert len(steered) > 1  # the scales change the text
    manifest = json.loads((out / "tiny" / "manifest.json").read_text())
    assert manifest["model"] == hf_default.model_id and manifest["backend"] == "transformers"
    assert manifest["versions"]["torch"] and "git_commit" in manifest
    assert set(manifest["variants"]) == {"baseline", "trained@1", "activation@-2", "activation@2"}
    assert manifest["runs"][-1]["status"] == "complete" and manifest["runs"][-1]["written"] == 16
    assert manifest["runs"][-1]["args"]["rollouts"] == 2
    # a rerun has nothing left to do
    assert cli_main(cli_args(data, registry, out), model=hf_default) == 0
    assert len(read_records(out / "tiny" / "rollouts.jsonl")) == 16


@pytest.mark.slow
def test_kill_and_resume_loses_and_duplicates_nothing(hf_default, setup):
    data, registry, out = setup
    with pytest.raises(Killed):
        cli_main(cli_args(data, registry, out, "--batch-size", "5"), model=DiesAfter(hf_default, 2))
    path = out / "tiny" / "rollouts.jsonl"
    assert len(read_records(path)) == 10
    assert json.loads((out / "tiny" / "manifest.json").read_text())["runs"][-1]["status"] == "interrupted"
    with open(path, "a") as f:  # a kill in the middle of a write
        f.write('{"dataset": "tiny", "prompt_id": "chat-a", "variant": "basel')
    with pytest.warns(UserWarning, match="torn last line"):
        assert cli_main(cli_args(data, registry, out, "--batch-size", "5"), model=hf_default) == 0
    resumed = read_records(path)
    assert len(resumed) == 16 and len(by_key(resumed)) == 16
    assert cli_main(cli_args(data, registry, tmp := out.parent / "clean"), model=hf_default) == 0
    clean = by_key(read_records(tmp / "tiny" / "rollouts.jsonl"))
    assert {k: r["text"] for k, r in by_key(resumed).items()} == {k: r["text"] for k, r in clean.items()}


class DiesUnderBatch:
    """A model proxy whose ``call``-th generate fails as if the engine died under the batch; ``status()`` then says
    ``status`` (the vLLM backend: "restarting" while it rebuilds, "dead" with auto_restart off)."""

    def __init__(self, model, call: int, status: str = "restarting") -> None:
        self.model, self.call, self.after = model, call, status
        self.calls, self.state = 0, "ready"

    def __getattr__(self, name):
        return getattr(self.model, name)

    def status(self) -> str:
        return self.state

    def generate(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.call:
            self.state = self.after
            raise EngineDeadError(
                "engine: the vLLM engine died during the call (RuntimeError('killed')); a new one is starting: retry the call"
            )
        self.state = "ready"
        return self.model.generate(*args, **kwargs)


@pytest.mark.slow
def test_batch_the_engine_died_under_is_sent_again(hf_default, setup):
    data, registry, out = setup
    dataset = load_dataset("tiny", data)
    settings = RolloutSettings(rollouts=2, max_new_tokens=8, temperature=0.0, trained_scales=[1.0], batch_size=3)
    reference = run_rollouts(hf_default, [dataset], registry, settings, out / "reference", progress=False)
    proxy = DiesUnderBatch(hf_default, call=2)
    summary = run_rollouts(proxy, [dataset], registry, settings, out / "retried", progress=False)
    assert (reference.batches, summary.batches, summary.engine_retries, proxy.calls) == (3, 3, 1, 4)
    assert read_records(out / "retried" / "tiny" / "rollouts.jsonl") == read_records(
        out / "reference" / "tiny" / "rollouts.jsonl"
    )
    assert json.loads((out / "retried" / "tiny" / "manifest.json").read_text())["runs"][-1]["status"] == "complete"
    # An engine that stays dead is not retried: the error ends the run (a rerun resumes it).
    dead = DiesUnderBatch(hf_default, call=2, status="dead")
    with pytest.raises(EngineDeadError, match="engine: the vLLM engine died"):
        run_rollouts(dead, [dataset], registry, settings, out / "dead", progress=False)
    assert dead.calls == 2 and len(read_records(out / "dead" / "tiny" / "rollouts.jsonl")) == 3
    with pytest.raises(SteeringError, match="engine_retries: -1 must be an integer >= 0"):
        RolloutSettings(engine_retries=-1)


@pytest.mark.slow
def test_batched_equals_one_by_one_greedy_hf(hf_default, setup):
    data, registry, out = setup
    dataset = load_dataset("tiny", data)
    settings = dict(rollouts=1, max_new_tokens=8, temperature=0.0, trained_scales=[1.0], activation_scales=[-2.0, 2.0])
    run_rollouts(hf_default, [dataset], registry, RolloutSettings(**settings, batch_size=256), out / "batched", progress=False)
    run_rollouts(hf_default, [dataset], registry, RolloutSettings(**settings, batch_size=1), out / "single", progress=False)
    batched = by_key(read_records(out / "batched" / "tiny" / "rollouts.jsonl"))
    single = by_key(read_records(out / "single" / "tiny" / "rollouts.jsonl"))
    assert len(batched) == 8
    assert {k: r["text"] for k, r in batched.items()} == {k: r["text"] for k, r in single.items()}


@pytest.mark.slow
def test_stride_offset_partition_outputs(hf_default, tmp_path):
    data, registry = tmp_path / "datasets", VectorRegistry(tmp_path / "registry")
    names = ["d0", "d1", "d2"]
    for name in names:
        write_dataset(data, name, PROMPTS[:1])
        add_vectors(registry, name)
    out = tmp_path / "out"
    base = ["--datasets", *names, "--dataset-root", str(data), "--registry", str(registry.root), "--output-root", str(out),
            "--max-new-tokens", "2", "--temperature", "0", "--no-progress", "--dataset-stride", "2"]  # fmt: skip
    assert cli_main([*base, "--dataset-offset", "1"], model=hf_default) == 0
    assert sorted(p.name for p in out.iterdir()) == ["d1"]
    assert cli_main([*base, "--dataset-offset", "0"], model=hf_default) == 0
    assert sorted(p.name for p in out.iterdir()) == names
    # baseline, trained@1.0 and activation@1.0: the seed's default scales
    assert all(len(read_records(out / n / "rollouts.jsonl")) == 3 for n in names)


@pytest.mark.slow
def test_clear_errors(hf_default, setup, capsys):
    data, registry, out = setup
    assert cli_main(cli_args(data, registry, out, datasets=("nope",)), model=hf_default) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    write_dataset(data, "novec")
    assert cli_main(cli_args(data, registry, out, datasets=("novec",)), model=hf_default) == 2
    assert "no trained vector 'novec.trained'" in capsys.readouterr().err
    write_dataset(data, "small")
    add_vectors(registry, "small", hidden=64)
    assert cli_main(cli_args(data, registry, out, datasets=("small",)), model=hf_default) == 2
    assert "hidden size 64 does not match" in capsys.readouterr().err
    assert cli_main(cli_args(data, registry, out, "--target-layer", "99"), model=hf_default) == 2
    assert "layer 99 is out of range" in capsys.readouterr().err
    assert cli_main(cli_args(data, registry, out, "--quantization", "fp8")) == 2
    assert "needs the vLLM backend" in capsys.readouterr().err
    assert cli_main(cli_args(data, registry, out, "--rollouts", "1"), model=hf_default) == 0
    assert cli_main(cli_args(data, registry, out, "--temperature", "0.7"), model=hf_default) == 2
    assert "use the same flags to resume" in capsys.readouterr().err
    assert not (out / "nope").exists() and not (out / "novec").exists()


# -- vLLM backend -------------------------------------------------------------------------------------------------
@pytest.mark.vllm
def test_vllm_rollouts_counts_resume_and_batching(vllm_default, setup):
    data, registry, out = setup
    dataset = load_dataset("tiny", data)
    settings = dict(rollouts=2, max_new_tokens=8, temperature=0.0, trained_scales=[1.0], activation_scales=[-2.0, 2.0])
    run_rollouts(vllm_default, [dataset], registry, RolloutSettings(**settings, batch_size=256), out / "batched", progress=False)
    batched = by_key(read_records(out / "batched" / "tiny" / "rollouts.jsonl"))
    assert len(batched) == 16
    assert json.loads((out / "batched" / "tiny" / "manifest.json").read_text())["backend"] == "vllm"
    with pytest.raises(Killed):
        run_rollouts(
            DiesAfter(vllm_default, 2),
            [dataset],
            registry,
            RolloutSettings(**settings, batch_size=3),
            out / "single",
            progress=False,
        )
    assert len(read_records(out / "single" / "tiny" / "rollouts.jsonl")) == 6
    run_rollouts(vllm_default, [dataset], registry, RolloutSettings(**settings, batch_size=1), out / "single", progress=False)
    single = read_records(out / "single" / "tiny" / "rollouts.jsonl")
    assert len(single) == 16 and len(by_key(single)) == 16
    assert {k: r["text"] for k, r in batched.items()} == {k: r["text"] for k, r in by_key(single).items()}


@pytest.mark.vllm
def test_vllm_seeds_make_sampling_independent_of_batch(vllm_default):
    check_seeds_independent_of_batch(vllm_default)
