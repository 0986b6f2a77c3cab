"""Rollouts on Ray replicas: the same records as one engine, a replica dying mid-run, a driver stop, resume, errors.

A local Ray cluster (CPU, shared by the module) runs tiny random models on the transformers backend; the scheduling
code is the same for vLLM replicas.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from rollouts import RECORD_FIELDS, RolloutSettings, load_dataset, read_records, record_key, run_rollouts
from rollouts.ray_pool import ReplicaPool
from scripts.generate_behavior_rollouts import main as cli_main
from tests.conftest import build_tiny_checkpoint
from tests.helpers import tiny_hf
from vectors import SteeringError, VectorRegistry

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    {"id": "chat-a", "messages": [{"role": "user", "content": "Tell me about your day."}]},
    {"id": "raw-b", "prompt": "When I woke up this morning, I felt"},
]
# Sampling (temperature 1), so that equal records prove the per-record seeds; 4 variants x 2 prompts x 2 rollouts
# = 16 records in 6 batches of 3.
SETTINGS = dict(rollouts=2, max_new_tokens=8, temperature=1.0, top_p=0.9, trained_scales=[1.0],
                activation_scales=[-2.0, 2.0], batch_size=3)  # fmt: skip
TOTAL = 16


class Killed(RuntimeError):
    pass


class TinyFactory:
    """Builds the tiny random Llama in a replica (the same weights in every process: a fixed seed)."""

    def __call__(self):
        return tiny_hf(0)


class DiesOnCall:
    """A model whose ``call``-th generate kills its process mid-batch, as a crashed node or OOM kill would."""

    def __init__(self, model, call: int) -> None:
        self.model, self.call, self.calls = model, call, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.call:
            time.sleep(1.0)  # lets the reply of the batch before reach the driver (a crash may also lose it)
            os._exit(1)
        return self.model.generate(*args, **kwargs)


class DyingFactory:
    """The first replica to build its model (it creates ``marker``) dies during its second batch; others live."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __call__(self):
        model = tiny_hf(0)
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return model
        return DiesOnCall(model, 2)


class KillAfterFirst:
    """A runner proxy that kills (``ray.kill``) the replica that finished the first batch, and waits until it is dead:
    the driver then sends it the next batch (it holds one batch fewer than it may), which fails and goes elsewhere."""

    def __init__(self, pool) -> None:
        self.pool, self.victim = pool, None

    def results(self, *args):
        before = list(self.pool.done)  # the module's pool ran batches before
        inner = self.pool.results(*args)
        try:
            for done, item in enumerate(inner):
                if done == 0:
                    self.victim = [a - b for a, b in zip(self.pool.done, before, strict=True)].index(1)
                    self.kill(self.pool.actors[self.victim])
                yield item
        finally:
            inner.close()

    def kill(self, actor) -> None:
        ray = self.pool.ray
        ray.kill(actor, no_restart=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                ray.get(actor.describe.remote(), timeout=10)
            except ray.exceptions.RayActorError:
                return
            except ray.exceptions.GetTimeoutError:
                pass
            time.sleep(0.05)
        raise AssertionError("the killed replica still answers")


class StopAfter:
    """A runner proxy whose driver stops (raises) after ``batches`` finished batches, as a Ctrl-C or a kill would."""

    def __init__(self, runner, batches: int) -> None:
        self.runner, self.batches = runner, batches

    def results(self, *args):
        inner = self.runner.results(*args)
        try:
            for done, item in enumerate(inner):
                if done == self.batches:
                    raise Killed("driver stopped")
                yield item
        finally:
            inner.close()


def write_dataset(root: Path, name: str) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))


def add_vectors(registry: VectorRegistry, name: str, hidden: int, layer: int, model_id: str) -> None:
    g = torch.Generator().manual_seed(0)
    for kind in ("trained", "activation"):
        v = torch.randn(hidden, generator=g)
        registry.add(f"{name}.{kind}", 4.0 * v / v.norm(), suggested_layer=layer, model_id=model_id)


def lines_by_key(path: Path) -> Counter:
    return Counter(record_key(r) for r in read_records(path))


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    # Workers import the factories above by module name: give them the checkout and tests/ on their path.
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), *([old] if old else [])])
    try:
        ray.init(num_cpus=4, include_dashboard=False, object_store_memory=100 * 2**20, configure_logging=False)
    finally:
        os.environ.pop("PYTHONPATH") if old is None else os.environ.__setitem__("PYTHONPATH", old)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A dataset, its vectors, and the single-engine (no Ray) reference records."""
    root = tmp_path_factory.mktemp("ray-job")
    write_dataset(root / "datasets", "tiny")
    registry = VectorRegistry(root / "registry")
    add_vectors(registry, "tiny", hidden=64, layer=1, model_id="tiny-llama")
    dataset = load_dataset("tiny", root / "datasets")
    run_rollouts(tiny_hf(0), [dataset], registry, RolloutSettings(**SETTINGS), root / "plain", progress=False)
    reference = {record_key(r): r for r in read_records(root / "plain" / "tiny" / "rollouts.jsonl")}
    assert len(reference) == TOTAL
    return dataset, registry, reference


@pytest.fixture(scope="module")
def pool(ray_cluster):
    with ReplicaPool(TinyFactory(), 2, num_cpus=1) as pool:
        yield pool


def check_complete(out: Path, reference: dict) -> None:
    """Every record once, each equal in every field to the single-engine run's."""
    path = out / "tiny" / "rollouts.jsonl"
    assert lines_by_key(path) == Counter(dict.fromkeys(reference, 1))
    assert {record_key(r): r for r in read_records(path)} == reference


def test_two_replicas_give_the_single_engine_records(pool, job, tmp_path):
    dataset, registry, reference = job
    summary = run_rollouts(pool.model, [dataset], registry, RolloutSettings(**SETTINGS), tmp_path, progress=False, runner=pool)
    check_complete(tmp_path, reference)
    assert (summary.records_written, summary.batches, summary.replicas_lost) == (TOTAL, 6, 0)
    assert all(pool.done)  # both replicas generated batches
    manifest = json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    assert (manifest["backend"], manifest["model_info"]["replicas"], manifest["runs"][-1]["status"]) == (
        "transformers",
        2,
        "complete",
    )


def test_all_replicas_dead_stops_cleanly_and_a_rerun_resumes(pool, job, tmp_path):
    dataset, registry, reference = job
    settings, out = RolloutSettings(**SETTINGS), tmp_path / "out"
    with ReplicaPool(DyingFactory(tmp_path / "dies"), 1, num_cpus=1) as dying:
        with pytest.raises(SteeringError, match=r"replicas: all 1 replicas died; \d+ batches are not done .* rerun the same"):
            run_rollouts(dying.model, [dataset], registry, settings, out, progress=False, runner=dying)
    # Its first batch, written before it died (unless the crash also lost that batch's reply: then it is sent again).
    path = out / "tiny" / "rollouts.jsonl"
    written = sum(lines_by_key(path).values()) if path.exists() else 0
    assert written in (0, 3)
    assert json.loads((out / "tiny" / "manifest.json").read_text())["runs"][-1]["status"] == "interrupted"
    summary = run_rollouts(pool.model, [dataset], registry, settings, out, progress=False, runner=pool)
    assert (summary.records_written, summary.skipped["tiny"]) == (TOTAL - written, written)
    check_complete(out, reference)


def test_a_driver_stop_then_resume_completes_without_duplicates(pool, job, tmp_path):
    dataset, registry, reference = job
    settings = RolloutSettings(**SETTINGS)
    with pytest.raises(Killed):
        run_rollouts(pool.model, [dataset], registry, settings, tmp_path, progress=False, runner=StopAfter(pool, 2))
    assert sum(lines_by_key(tmp_path / "tiny" / "rollouts.jsonl").values()) == 6
    summary = run_rollouts(pool.model, [dataset], registry, settings, tmp_path, progress=False, runner=pool)
    assert (summary.records_written, summary.skipped["tiny"]) == (TOTAL - 6, 6)
    check_complete(tmp_path, reference)


def test_cli_replica_matches_one_engine_and_compose_with_dataset_stride(ray_cluster, tmp_path):
    """``--replicas 1`` through the command line (each replica loads ``--model``) with ``--dataset-stride 2
    --dataset-offset 1``: only the second dataset, and its records equal a run without Ray."""
    model_dir = build_tiny_checkpoint("llama", tmp_path / "model")
    data, registry = tmp_path / "datasets", VectorRegistry(tmp_path / "registry")
    for name in ("first", "second"):
        write_dataset(data, name)
        add_vectors(registry, name, hidden=128, layer=2, model_id=str(model_dir))
    args = ["--datasets", "first", "second", "--dataset-root", str(data), "--registry", str(registry.root),
            "--model", str(model_dir), "--dtype", "float32", "--rollouts", "2", "--max-new-tokens", "6",
            "--batch-size", "4", "--dataset-stride", "2", "--dataset-offset", "1", "--no-progress"]  # fmt: skip
    assert cli_main([*args, "--output-root", str(tmp_path / "plain")]) == 0
    assert cli_main([*args, "--output-root", str(tmp_path / "ray"), "--replicas", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["second"]
    plain = read_records(tmp_path / "plain" / "second" / "rollouts.jsonl")
    ray_records = read_records(tmp_path / "ray" / "second" / "rollouts.jsonl")
    assert len(plain) == len(ray_records) == 3 * 2 * 2 and all(tuple(r) == RECORD_FIELDS for r in ray_records)
    assert {record_key(r): r for r in ray_records} == {record_key(r): r for r in plain}
    run = json.loads((tmp_path / "ray" / "second" / "manifest.json").read_text())["runs"][-1]
    assert (run["status"], run["args"]["replicas"]) == ("complete", 1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--replicas", "0"], "error: replicas: 0 must be an integer >= 1 (engine replicas on Ray); drop --replicas"),
        (["--ray-address", "head:6379"], "error: --ray-address: 'head:6379' needs --replicas N"),
    ],
)
def test_cli_rejects_bad_replica_flags(tmp_path, capsys, extra, message):
    assert cli_main(["--datasets", "nope", "--dataset-root", str(tmp_path), "--output-root", str(tmp_path), *extra]) == 2
    assert capsys.readouterr().err.startswith(message)


def test_data_parallel_size_points_to_replicas(tmp_path, capsys):
    """vLLM refuses data parallelism in one process: the flag's message names the replacement (before any engine)."""
    argv = ["--datasets", "happy", "--use-vllm", "--data-parallel-size", "2", "--output-root", str(tmp_path)]
    assert cli_main(argv) == 2
    assert capsys.readouterr().err == (
        "error: --data-parallel-size: 2 is not supported in one process; use --replicas 2 (engine replicas on Ray) instead\n"
    )


def test_replicas_without_ray_name_the_flag_and_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    assert cli_main(["--datasets", "nope", "--dataset-root", str(tmp_path), "--replicas", "2"]) == 2
    assert capsys.readouterr().err == (
        "error: replicas: --replicas 2 runs engine replicas on Ray, which is not installed; pip install 'sidesteer[ray]' "
        "(or drop --replicas to run one engine in this process)\n"
    )
    with pytest.raises(SteeringError, match=r"pip install 'sidesteer\[ray\]'"):
        ReplicaPool(TinyFactory(), 1)


def test_everything_imports_without_ray():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import rollouts, rollouts.ray_pool, sidesteer.commands.rollouts, bench.ray_overhead\n"
        "sidesteer.commands.rollouts.build_parser().parse_args(['--replicas', '2'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (out.returncode, out.stderr) == (0, "")


# Last: it kills one of the module's two replicas.
def test_a_replica_killed_mid_run_loses_and_duplicates_nothing(pool, job, tmp_path):
    dataset, registry, reference = job
    settings = RolloutSettings(**SETTINGS)
    killer = KillAfterFirst(pool)
    summary = run_rollouts(pool.model, [dataset], registry, settings, tmp_path, progress=False, runner=killer)
    assert (summary.replicas_lost, pool.alive, summary.records_written) == (1, [1 - killer.victim], TOTAL)
    assert summary.requeued >= 1  # the batch sent to it after its death, and any it held when it was killed
    check_complete(tmp_path, reference)
    again = run_rollouts(pool.model, [dataset], registry, settings, tmp_path, progress=False, runner=pool)
    assert (again.records_written, again.skipped["tiny"]) == (0, TOTAL)
    check_complete(tmp_path, reference)
