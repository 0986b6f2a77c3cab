"""Per-request limits: set by flag or environment, checked by every handler before any engine work, named in messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app import AppLimits, build_demo, launch_kwargs
from app.callbacks import Callbacks
from engine import RequestLimits
from tests.helpers import tiny_hf
from tests.test_app_support import load_app_script, one_vector_registry
from vectors import LayerSteeringSpec, SteeringError, SteeringSpec

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = 64


class CountingEngine:
    """The tiny engine, counting every call that does model work (a limit must stop a request before any)."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.work: list[str] = []

    def __getattr__(self, name):
        attr = getattr(self._engine, name)
        if name in ("generate", "generate_stream", "mean_activations"):
            self.work.append(name)
        return attr


@pytest.fixture(scope="module")
def tiny():
    return tiny_hf(hidden=HIDDEN)


@pytest.fixture
def registry(tmp_path):
    return one_vector_registry(tmp_path / "registry", HIDDEN)


def callbacks(tiny, registry, tmp_path, **limits) -> Callbacks:
    return Callbacks(
        CountingEngine(tiny), registry, tmp_path / "exports", limits=AppLimits(**limits), upload_dir=tmp_path / "uploads"
    )


# -- where limits come from ----------------------------------------------------------------------------------------
def test_limits_come_from_env_and_flags():
    assert AppLimits.from_env({}) == AppLimits(1024, 512, 16, 64, 16, 64)
    env = {"SIDESTEER_MAX_NEW_TOKENS": "100", "SIDESTEER_MAX_SWEEP_POINTS": " 4 ", "SIDESTEER_MAX_UPLOAD_MB": ""}
    assert AppLimits.from_env(env) == AppLimits(max_new_tokens=100, max_sweep_points=4)
    script = load_app_script()
    args = script.parse_args(["--max-new-tokens", "7", "--max-spec-layers", "3"], environ=env)
    assert script.limits_from_args(args) == AppLimits(max_new_tokens=7, max_sweep_points=4, max_spec_layers=3)
    assert AppLimits(max_prompts=8, max_sweep_points=20).request_limits() == RequestLimits(
        max_prompt_tokens=1024, max_new_tokens=512, max_prompts=20
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"SIDESTEER_MAX_NEW_TOKENS": "lots"},
            "SIDESTEER_MAX_NEW_TOKENS: 'lots' is not a whole number; set it to a positive integer such as 512",
        ),
        (
            {"SIDESTEER_MAX_UPLOAD_MB": "0"},
            "max_upload_mb: 0 is not a positive integer; set SIDESTEER_MAX_UPLOAD_MB (or --max-upload-mb) to e.g. 16",
        ),
    ],
)
def test_bad_limit_values_name_the_variable(environ, message):
    with pytest.raises(SteeringError) as info:
        AppLimits.from_env(environ)
    assert str(info.value) == message
    with pytest.raises(SystemExit, match="^sidesteer: "):
        load_app_script().parse_args([], environ=environ)


def test_help_lists_every_option_with_its_variable():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "app.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "", "HOME": "/nonexistent"},
    )
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for flag, env in [
        ("--backend", "SIDESTEER_BACKEND"),
        ("--model", "SIDESTEER_MODEL"),
        ("--registry", "SIDESTEER_REGISTRY"),
        ("--read-only-registry", "SIDESTEER_READ_ONLY"),
        ("--host", "GRADIO_SERVER_NAME"),
        ("--port", "GRADIO_SERVER_PORT"),
        ("--max-prompt-tokens", "SIDESTEER_MAX_PROMPT_TOKENS"),
        ("--max-new-tokens", "SIDESTEER_MAX_NEW_TOKENS"),
        ("--max-sweep-points", "SIDESTEER_MAX_SWEEP_POINTS"),
        ("--max-spec-layers", "SIDESTEER_MAX_SPEC_LAYERS"),
        ("--max-upload-mb", "SIDESTEER_MAX_UPLOAD_MB"),
        ("--max-prompts", "SIDESTEER_MAX_PROMPTS"),
    ]:
        assert flag in text and f"env {env}" in text, flag
    assert "SIDESTEER_DATA_DIR" in text and "SPACE_ID" in text


def test_slider_and_upload_size_follow_the_limits(tiny, registry):
    demo = build_demo(tiny, registry, limits=AppLimits(max_new_tokens=40))
    slider = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "max-new-tokens")
    assert (slider.maximum, slider.value) == (40, 40)
    demo.close()
    assert launch_kwargs(limits=AppLimits(max_upload_mb=2))["max_file_size"] == "2mb"
    assert launch_kwargs()["max_file_size"] == "16mb"


# -- checked before any work ---------------------------------------------------------------------------------------
def test_max_new_tokens_is_checked_in_the_handler(tiny, registry, tmp_path):
    cb = callbacks(tiny, registry, tmp_path, max_new_tokens=8)
    with pytest.raises(SteeringError) as info:
        list(cb.compare("hello", "", "up", 1, 1.0, 9, 0.0, 1.0, 0, True, "quick", None, {}))
    assert str(info.value) == (
        "max_new_tokens: 9 tokens is over this server's limit of 8 tokens; ask for fewer tokens "
        "(the operator can raise it with SIDESTEER_MAX_NEW_TOKENS or --max-new-tokens)"
    )
    with pytest.raises(SteeringError, match="max_new_tokens: 100000 tokens is over"):
        list(cb.sweep("hello", "", "up", 1, 1.0, 100000, 0.0, 1.0, 0, True, "quick", None, "1", {}))
    assert cb.engine.work == []
    assert list(cb.compare("hello", "", "up", 1, 1.0, 8, 0.0, 1.0, 0, True, "quick", None, {}))[-1][2].startswith("8 tokens")


def test_prompt_tokens_are_checked_in_the_handler(tiny, registry, tmp_path):
    cb = callbacks(tiny, registry, tmp_path, max_prompt_tokens=10)
    with pytest.raises(SteeringError) as info:
        list(cb.compare("hello world", "", "up", 1, 1.0, 2, 0.0, 1.0, 0, True, "quick", None, {}))
    assert str(info.value) == (  # bos + 11 characters of the tiny char tokenizer
        "prompt: 12 tokens is over this server's limit of 10 tokens; shorten the prompt or the system prompt "
        "(the operator can raise it with SIDESTEER_MAX_PROMPT_TOKENS or --max-prompt-tokens)"
    )
    with pytest.raises(
        SteeringError, match="prompt: 36 tokens is over this server.s limit of 10"
    ):  # "<system>system\n<user>hi\n<assistant>" + bos
        list(cb.sweep("hi", "system", "up", 1, 1.0, 2, 0.0, 1.0, 0, False, "quick", None, "1", {}))
    assert cb.engine.work == []


def test_sweep_points_are_limited(tiny, registry, tmp_path):
    cb = callbacks(tiny, registry, tmp_path, max_sweep_points=3)
    with pytest.raises(SteeringError) as info:
        list(cb.sweep("hello", "", "up", 1, 1.0, 2, 0.0, 1.0, 0, True, "quick", None, "1, 2, 3, 4", {}))
    assert str(info.value) == (
        "scales: 4 values; a sweep takes at most 3 on this server "
        "(the operator can raise it with SIDESTEER_MAX_SWEEP_POINTS or --max-sweep-points)"
    )
    assert cb.engine.work == []
    assert len(list(cb.sweep("hello", "", "up", 1, 1.0, 2, 0.0, 1.0, 0, True, "quick", None, "1, 2, 3", {}))[-1]) == 3


def test_spec_editor_rows_are_limited_before_any_lookup(tiny, registry, tmp_path):
    cb = callbacks(tiny, registry, tmp_path, max_spec_layers=2)
    rows = {"headers": [], "data": [[i, f"unknown-{i}", 1.0] for i in range(3)] + [[None] * 8]}
    with pytest.raises(SteeringError) as info:
        cb.export_spec(None, 0, 0.0, "editor", rows, "", {})
    assert str(info.value) == (
        "spec editor: 3 layers is over this server's limit of 2 layers; remove rows "
        "(the operator can raise it with SIDESTEER_MAX_SPEC_LAYERS or --max-spec-layers)"
    )
    ok = cb.export_spec(None, 0, 0.0, "editor", [[0, "up", 1.0], [1, "up", 2.0]], "", {})
    assert SteeringSpec.load(ok).active_layers() == [0, 1]


def test_imported_specs_are_limited_in_size_and_layers(tiny, registry, tmp_path):
    cb = callbacks(tiny, registry, tmp_path, max_spec_layers=2, max_upload_mb=1)
    for folder in ("a", "b"):  # Gradio keeps each upload in its own folder
        (tmp_path / "uploads" / folder).mkdir(parents=True)
    v = torch.ones(HIDDEN)
    wide = SteeringSpec({i: LayerSteeringSpec(v * (i + 1), 1.0) for i in range(3)}).save(
        tmp_path / "uploads" / "a" / "wide.safetensors"
    )
    with pytest.raises(SteeringError) as info:
        cb.import_spec(str(wide), {})
    assert str(info.value) == (
        "file: 3 layers is over this server's limit of 2 layers; import a spec with fewer layers "
        "(the operator can raise it with SIDESTEER_MAX_SPEC_LAYERS or --max-spec-layers)"
    )
    big = tmp_path / "uploads" / "b" / "big.safetensors"
    big.write_bytes(b"\0" * (3 * 1024 * 1024 // 2))
    with pytest.raises(SteeringError) as info:
        cb.import_spec(str(big), {})
    assert str(info.value) == (
        "file: 'big.safetensors' is 1.5 MB, over this server's limit of 1 MB; upload a smaller file "
        "(the operator can raise it with SIDESTEER_MAX_UPLOAD_MB or --max-upload-mb)"
    )


def test_create_vector_prompt_lists_are_limited(tiny, registry, tmp_path):
    cb = callbacks(tiny, registry, tmp_path, max_prompts=2)
    with pytest.raises(SteeringError) as info:
        cb.create_vector("new", "", 1, "a\nb\nc", "d", 0, False, {})
    assert str(info.value) == (
        "positive_prompts: 3 prompts is over this server's limit of 2 prompts; use fewer prompts "
        "(the operator can raise it with SIDESTEER_MAX_PROMPTS or --max-prompts)"
    )
    assert cb.engine.work == [] and "new" not in registry
