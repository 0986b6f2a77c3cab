"""Shared fixtures: tiny random models built from configs, one engine per backend per test session, and a guard
that fails the session when the tests changed the git checkout (tests write only to temporary folders)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from bench.ui_browser import CHROMIUM, CHROMIUM_ARGS

# Before anything imports torch (pytest imports this file before any test module), and inherited by every process a
# test starts (vLLM's spawned workers, the app, the scripts): OpenMP threads busy-wait between parallel regions, so
# on a loaded 2-core machine torch's runs collapse (2 x 8 tokens of the default model: 33-49 s with the defaults,
# 7.3 s with OMP_WAIT_POLICY=PASSIVE, 3.5 s with OMP_NUM_THREADS=1; measured). Threads stay at torch's default: on an
# idle machine (CI) one thread was 1.4x slower (75 vs 52 s on the rollouts and end-to-end tests), while PASSIVE keeps
# the loaded case near one thread's. A value set by the caller wins (OMP_NUM_THREADS=1 on a machine others share).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Under pytest-xdist (`make test` runs two workers), each worker's vLLM engines compute on their own core: vllm-cpu's
# automatic binding would put every engine's worker on core 0, so two engines started by two test workers would share
# one core while the other idles. A value set by the caller wins.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if XDIST_WORKER.startswith("gw"):
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", str(int(XDIST_WORKER[2:]) % (os.cpu_count() or 1)))

HAS_VLLM = importlib.util.find_spec("vllm") is not None
CHECKOUT_CHANGES = pytest.StashKey[str]()
ALLOW_CHANGES = "--allow-checkout-changes"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sidesteer")
    group.addoption(
        ALLOW_CHANGES,
        action="store_true",
        help="do not fail the session when `git status --porcelain` changed during it (`make screenshot` writes "
        "docs/screenshot.png; others may edit the checkout while tests run)",
    )
    group.addoption("--screenshot", default=None, metavar="PATH", help="where the browser test also saves its screenshot")


# The modules whose tests use each session-scoped engine (directly, or through request.getfixturevalue with the name
# in a module-level SESSION_ENGINES_USED). Under xdist (`make test`: `-n 2 --dist loadfile`) each set is scheduled as
# one unit, so the engine starts on one worker only; collection fails when a module uses one and is not listed here.
SESSION_ENGINE_MODULES = {
    "vllm_default": (
        "tests/test_app_vllm.py",
        "tests/test_rollouts.py",
        "tests/test_vllm_backend.py",
        "tests/test_vllm_safety.py",
    ),
    "vllm_tiny_llama": ("tests/test_projection_trace.py", "tests/test_vllm_architectures.py", "tests/test_vllm_recovery.py"),
}
UNIT_OF_MODULE = {module: engine for engine, modules in SESSION_ENGINE_MODULES.items() for module in modules}


def module_of(nodeid: str) -> str:
    return nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Checks that every module using a session engine is listed in SESSION_ENGINE_MODULES. Under xdist it also puts
    the units that start vLLM engines first, then the other slow ones: the long units start early, and the many short
    ones fill both workers at the end. Without xdist the order is the files' own."""
    for item in items:
        used = {*getattr(item, "fixturenames", ()), *getattr(getattr(item, "module", None), "SESSION_ENGINES_USED", ())}
        for engine in sorted(used & set(SESSION_ENGINE_MODULES)):
            if module_of(item.nodeid) not in SESSION_ENGINE_MODULES[engine]:
                raise pytest.UsageError(
                    f"{module_of(item.nodeid)} uses the session engine {engine}: add it to SESSION_ENGINE_MODULES in "
                    "tests/conftest.py (under xdist its tests must run on the worker that holds the engine)"
                )
    if not XDIST_WORKER:
        return
    # Longest first: each unit's seconds in this checkout's last full run (pytest's cache, written by the worker that
    # ran it), else in tests/unit_seconds.json (a full run on a clean 2-core machine, as CI's: only the order of the
    # units depends on it), else a guess from its marks (one that starts vLLM engines, a slow or browser one, the rest).
    guess: dict[str, float] = {}
    for item in items:
        if item.get_closest_marker("vllm"):
            seconds = 300.0
        elif item.get_closest_marker("slow") or item.get_closest_marker("browser"):
            seconds = 60.0
        else:
            seconds = 5.0
        guess[unit_of(item.nodeid)] = max(guess.get(unit_of(item.nodeid), 0.0), seconds)
    cache = getattr(config, "cache", None)
    measured = json.loads(Path(__file__).with_name("unit_seconds.json").read_text())
    seconds = {
        name: (cache.get(unit_seconds_key(name), None) if cache else None) or measured.get(name) or guess[name] for name in guess
    }
    first_seen = {name: i for i, name in enumerate(dict.fromkeys(unit_of(item.nodeid) for item in items))}
    items.sort(key=lambda item: (-seconds[unit_of(item.nodeid)], first_seen[unit_of(item.nodeid)]))


def unit_of(nodeid: str) -> str:
    """The unit xdist schedules a test in: its module, or the session engine its module uses."""
    return UNIT_OF_MODULE.get(module_of(nodeid), module_of(nodeid))


def unit_seconds_key(unit: str) -> str:
    return "sidesteer/unit-seconds/" + unit.replace("/", "_")


UNIT_SECONDS = pytest.StashKey[dict[str, float]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Adds each test's time (setup, call, teardown) to its unit's total, kept for the next run's order."""
    start = time.perf_counter()
    try:
        return (yield)
    finally:
        totals = item.config.stash.setdefault(UNIT_SECONDS, {})
        totals[unit_of(item.nodeid)] = totals.get(unit_of(item.nodeid), 0.0) + time.perf_counter() - start


@pytest.hookimpl(optionalhook=True)  # a run with -p no:xdist has no such hook
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadfile`` with the modules of one session engine as one unit (see SESSION_ENGINE_MODULES); the units go
    to the workers in collection order. Other --dist modes are xdist's own."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # xdist would order the units by their number of tests instead

    class EngineUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return EngineUnits(config, log)


def checkout_state(root: Path) -> dict[str, str] | None:
    """``git status --porcelain`` lines of the checkout holding ``root``, each with a hash of the file's content (so a
    file that was already modified and is changed again counts too); None outside a git checkout or without git."""
    if shutil.which("git") is None:
        return None
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True, timeout=60)
    if top.returncode != 0:
        return None
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=root, capture_output=True, text=True, timeout=60
    )
    state = {}
    for line in out.stdout.splitlines():
        path = Path(top.stdout.strip()) / line[3:].split(" -> ")[-1].strip('"')
        state[line] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    return state


@pytest.fixture(scope="session", autouse=True)
def checkout_unchanged(request: pytest.FixtureRequest):
    """Records the checkout's state before the first test and compares after the last; a change fails the session."""
    root = request.config.rootpath
    before = None if request.config.getoption(ALLOW_CHANGES) else checkout_state(root)
    yield
    if before is None:
        return
    after = checkout_state(root) or {}
    changed = [line for line in sorted(after) if before.get(line) != after[line]]
    changed += [f"{line}  (no longer)" for line in sorted(set(before) - set(after))]
    if changed:
        request.config.stash[CHECKOUT_CHANGES] = "\n".join(changed)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """An xdist worker records its units' seconds (only a unit that ran whole: all its tests were selected). A changed
    checkout turns a passing session into a failing one (exit status 1) and says what changed."""
    cache, option = getattr(session.config, "cache", None), session.config.option
    if XDIST_WORKER and cache is not None and not (option.file_or_dir or option.keyword or option.markexpr):
        for unit, seconds in session.config.stash.get(UNIT_SECONDS, {}).items():
            cache.set(unit_seconds_key(unit), round(seconds, 1))
    changes = session.config.stash.get(CHECKOUT_CHANGES, None)
    if not changes:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write("\n")  # the progress line may still be open
        reporter.write_sep("=", "the tests changed the git checkout (tests must write to tmp_path only)", red=True)
        reporter.write_line(changes)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def tiny_config(arch: str, **overrides):
    """A small random-weight config of a real architecture (head_dim 64: vllm-cpu rejects 16)."""
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        vocab_size=49152,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    common.update(overrides)
    if arch == "llama":
        return LlamaConfig(**common, bos_token_id=1, eos_token_id=2)
    if arch == "qwen2":
        common.pop("head_dim")
        return Qwen2Config(**common, bos_token_id=1, eos_token_id=2)
    if arch == "qwen3":
        return Qwen3Config(**common, bos_token_id=1, eos_token_id=2)
    if arch == "gemma2":
        return Gemma2Config(
            **common, bos_token_id=1, eos_token_id=2, pad_token_id=0, query_pre_attn_scalar=64, sliding_window=512
        )
    if arch == "gemma3":
        return Gemma3TextConfig(
            **common, bos_token_id=1, eos_token_id=2, pad_token_id=0, query_pre_attn_scalar=64, sliding_window=512
        )
    raise ValueError(arch)


def build_tiny_checkpoint(arch: str, directory: Path | None = None, seed: int = 0) -> Path:
    """A tiny random model of ``arch`` (fp32) with the default model's tokenizer, saved into ``directory``.

    Without ``directory`` the checkpoint lives in the user's cache (``$SIDESTEER_CACHE/test-models/<arch>-<hash>``, a
    hash of everything that makes its files: config, seed, init, tokenizer, torch and transformers versions), built once and
    then reused: vLLM keys its compile cache by the model's path, so a stable path lets every later engine of the same
    settings (this run's and the next run's) load the compiled model instead of compiling it again (on 2 cores: ~20 s
    instead of ~60-110 s per engine). Written to a temporary folder and renamed, so concurrent sessions never see half
    a checkpoint. Tests must not change it; one that writes next to a model passes its own ``directory``.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.default_model import cache_dir, resolve_model_path

    def build(folder: Path) -> None:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_config(arch), dtype=torch.float32)
        with torch.no_grad():  # larger weights than init so random models make varied, input-dependent tokens
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.08)
        model.save_pretrained(folder, safe_serialization=True)
        AutoTokenizer.from_pretrained(resolve_model_path("default")).save_pretrained(folder)

    if directory is not None:
        if not (directory / "config.json").exists():
            build(directory)
        return directory
    tokenizer = Path(resolve_model_path("default")) / "tokenizer.json"
    recipe = [arch, seed, "normal(0, 0.08)", tiny_config(arch).to_json_string(), transformers.__version__, torch.__version__]
    recipe.append(hashlib.sha256(tokenizer.read_bytes()).hexdigest() if tokenizer.exists() else "")
    key = hashlib.sha256(repr(recipe).encode()).hexdigest()[:16]
    return cached_folder(cache_dir() / "test-models" / f"{arch}-{key}", build)


def cached_folder(final: Path, build) -> Path:
    """``final`` once it holds a config.json; else ``build(folder)`` into a temporary folder beside it, renamed to
    ``final`` (so concurrent sessions never see half a folder; the first rename wins)."""
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    build(folder)
    try:
        folder.rename(final)
    except OSError:  # another session renamed its identical copy first
        shutil.rmtree(folder, ignore_errors=True)
    return final


# Debian's Chromium, driven by Playwright (never a downloaded browser): one per browser-test module. Its path and
# flags (CHROMIUM, CHROMIUM_ARGS) are the benchmark's: `python -m bench ui` drives the same browser.
@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("system chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def default_model_path() -> str:
    from engine.default_model import resolve_model_path

    return resolve_model_path("default")


@pytest.fixture(scope="session")
def hf_default(default_model_path):
    """The transformers backend on the default model, fp32 (the reference)."""
    from engine import HFSteerModel

    return HFSteerModel("default", dtype="float32")


@pytest.fixture(scope="session")
def vllm_default(default_model_path):
    """One vLLM engine (vllm-cpu, compiled, fp32) on the default model for the whole session."""
    if not HAS_VLLM:
        pytest.skip("vllm is not installed")
    from engine import VLLMSteeringConfig, VLLMSteerModel

    model = VLLMSteerModel(
        VLLMSteeringConfig(dtype="float32", max_model_len=1024, gpu_memory_utilization=0.2, max_slots=16, capture=True)
    )
    yield model
    model.close()


# The settings of every vLLM engine on a tiny random checkpoint in this suite (fp32 like the transformers reference;
# an explicit KV cache size, because vllm-cpu otherwise gives the KV cache "share of RAM minus the worker's RSS", and a
# small share came out negative on a busy 12 GiB node; capture on, so the projection trace can use the same engine).
# One settings set means one compiled graph per checkpoint, loaded from vLLM's compile cache by every later engine.
TINY_ENGINE_SETTINGS = dict(
    dtype="float32", max_model_len=512, max_slots=4, capture=True, engine_kwargs={"kv_cache_memory_bytes": 64 << 20}
)


def tiny_engine_config(path, **changes):
    """A ``VLLMSteeringConfig`` with :data:`TINY_ENGINE_SETTINGS` (its own copy of engine_kwargs) for ``path``."""
    from engine import VLLMSteeringConfig

    settings = {**TINY_ENGINE_SETTINGS, "engine_kwargs": dict(TINY_ENGINE_SETTINGS["engine_kwargs"]), **changes}
    return VLLMSteeringConfig(model_name=str(path), **settings)


@pytest.fixture(scope="session")
def vllm_tiny_llama():
    """One vLLM engine (vllm-cpu, compiled, fp32, capture on) on the tiny random Llama for the whole session: the
    architecture parity test's llama case, the recovery tests (which kill and rebuild it) and the projection trace."""
    if not HAS_VLLM:
        pytest.skip("vllm is not installed")
    from engine import VLLMSteerModel

    model = VLLMSteerModel(tiny_engine_config(build_tiny_checkpoint("llama")))
    yield model
    model.close()
