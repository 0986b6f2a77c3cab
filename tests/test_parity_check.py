"""The parity check proves every op: measured strengths change every prompt, and an op that does nothing fails it."""

from __future__ import annotations

import json

import pytest
import torch

import engine.hf_backend
from sidesteer.commands import parity
from sidesteer.commands.parity import ABLATION_SCALE, ADD_FACTOR, CAP_CUT, PROMPTS, SPEC_NAMES, measured_specs, run_parity
from tests.helpers import tiny_hf

TOKENS = 8


@pytest.fixture(scope="module")
def pair():
    """Two transformers backends on the same tiny random Llama (reference and candidate)."""
    return tiny_hf(0), tiny_hf(0)


def test_strengths_come_from_the_models_activations(pair):
    ref, _ = pair
    specs, strengths = measured_specs(ref, PROMPTS)
    assert list(specs) == list(SPEC_NAMES)
    n = ref.num_layers  # 4: adds at 1 and 3, the cap at 1, the ablation at 2
    means = ref.mean_activations(list(PROMPTS), [1, 2, 3])
    add = specs["add_two_layers"].layers
    assert sorted(add) == [1, 3]
    assert add[1].scale == pytest.approx(ADD_FACTOR * float(means[1].norm()), rel=1e-6)
    assert add[3].scale == pytest.approx(-ADD_FACTOR * float(means[n - 1].norm()), rel=1e-6)
    cap = specs["cap"].layers[1].projection_cap
    direction = means[1] / means[1].norm()
    torch.testing.assert_close(cap.direction, direction)
    projections = [float(ref.mean_activations([p], [1])[1] @ direction) for p in PROMPTS]
    assert strengths["cap"]["prompt_projections"] == pytest.approx(projections, rel=1e-5)
    low = min(projections)
    assert cap.min is None and cap.max == pytest.approx(low - CAP_CUT * abs(low), rel=1e-5)
    assert cap.max < low  # inside the measured range: below every prompt's mean projection
    ablation = specs["ablation"].layers[2].ablation
    torch.testing.assert_close(ablation.direction, means[2] / means[2].norm())
    assert ablation.scale == ABLATION_SCALE == -1.0
    assert all(p > 0 for p in strengths["ablation"]["prompt_projections"])  # a direction every prompt carries


def test_check_passes_and_every_op_changes_every_prompt(pair):
    ref, cand = pair
    specs, _ = measured_specs(ref, PROMPTS)
    report = run_parity(ref, cand, specs, PROMPTS, TOKENS)
    assert report["failures"] == [] and report["ok"] is True
    for name in SPEC_NAMES:
        assert report[name]["parity"] is True
        changed = report[name]["changed_tokens"]
        assert changed["candidate"] == changed["reference"]
        assert all(count > 0 for count in changed["candidate"]), (name, changed)
    assert report["mixed_batch"] is True and report["capture_rel_diff"] == 0.0


def _ablation_does_nothing(monkeypatch) -> None:
    """A broken ablation: its rows always carry scale 1, so the op leaves the stream as it is (in both backends)."""
    layer_rows = engine.hf_backend.layer_rows

    def broken(layer, hidden_size, skip_first_tokens=0):
        rows = layer_rows(layer, hidden_size, skip_first_tokens)
        rows["abl_scale"] = torch.tensor(1.0)
        return rows

    monkeypatch.setattr(engine.hf_backend, "layer_rows", broken)


def test_an_op_that_does_nothing_fails_the_check_naming_op_and_prompt(pair, monkeypatch):
    ref, cand = pair
    specs, _ = measured_specs(ref, PROMPTS)
    _ablation_does_nothing(monkeypatch)
    report = run_parity(ref, cand, specs, PROMPTS, TOKENS)
    assert report["ok"] is False
    assert report["ablation"]["parity"] is True  # the old check's blind spot: both backends agree on doing nothing
    assert report["ablation"]["changed_tokens"] == {"candidate": [0, 0, 0], "reference": [0, 0, 0]}
    assert report["failures"] == [
        f"ablation: prompt {i} {prompt!r}: the steered tokens equal the unsteered ones in the {backend} backend; the op "
        "changed nothing, so parity proves nothing (a stronger spec, or a broken op)"
        for i, prompt in enumerate(PROMPTS)
        for backend in ("candidate", "reference")
    ]


def test_a_candidate_that_differs_fails_the_check(pair):
    ref, _ = pair
    specs, _ = measured_specs(ref, PROMPTS)
    report = run_parity(ref, tiny_hf(1), {"cap": specs["cap"]}, PROMPTS[:1], TOKENS)
    assert report["ok"] is False
    assert report["failures"][0] == f"unsteered: prompt 0 {PROMPTS[0]!r}: candidate tokens differ from the reference"
    assert any(
        f.startswith(f"cap: prompt 0 {PROMPTS[0]!r}: candidate tokens differ from the reference from token ")
        for f in report["failures"]
    )


@pytest.mark.slow
def test_command_on_the_random_qwen3_tiny_with_the_hf_backend(tmp_path, capsys):
    argv = ["--arch", "qwen3-tiny", "--work-dir", str(tmp_path), "--tokens", "8", "--backend", "hf", "--skip-first-tokens", "1"]
    code = parity.main(argv)
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert code == 0, out
    assert report["ok"] is True and report["failures"] == [] and report["backend"] == "hf"
    assert report["skip_first_tokens"] == 1
    assert report["strengths"]["cap"]["layer"] == 1 and report["strengths"]["ablation"]["layer"] == 2
    for name in SPEC_NAMES:
        assert all(count > 0 for count in report[name]["changed_tokens"]["candidate"]), (name, report[name])


def test_skip_first_tokens_reaches_every_spec_and_the_check_passes(pair):
    ref, cand = pair
    specs, _ = measured_specs(ref, PROMPTS, skip_first_tokens=1)
    assert {name: spec.skip_first_tokens for name, spec in specs.items()} == dict.fromkeys(SPEC_NAMES, 1)
    plain, _ = measured_specs(ref, PROMPTS)
    assert all(specs[n].fingerprint() != plain[n].fingerprint() for n in SPEC_NAMES)
    report = run_parity(ref, cand, specs, PROMPTS, TOKENS)
    assert report["failures"] == [] and report["ok"] is True


def test_random_model_folder_is_built_once_and_whole(tmp_path):
    """build_random_model writes into a temporary folder and renames it: a second call reuses the folder, nothing
    temporary is left, and a leftover folder without config.json is named instead of being taken for a model."""
    from engine.default_model import resolve_model_path
    from sidesteer.random_model import build_random_model

    tok = resolve_model_path("default")
    path = build_random_model("qwen3-tiny", tok, str(tmp_path), "float32")
    assert path == str(tmp_path / "random-qwen3-tiny-float32")
    made = (tmp_path / "random-qwen3-tiny-float32" / "config.json").stat().st_mtime_ns
    assert build_random_model("qwen3-tiny", tok, str(tmp_path), "float32") == path
    assert (tmp_path / "random-qwen3-tiny-float32" / "config.json").stat().st_mtime_ns == made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random-qwen3-tiny-float32"]
    assert {"config.json", "tokenizer.json"} <= {p.name for p in (tmp_path / "random-qwen3-tiny-float32").iterdir()}
    (tmp_path / "random-qwen3-tiny-bfloat16").mkdir()
    (tmp_path / "random-qwen3-tiny-bfloat16" / "junk").write_text("x")
    with pytest.raises(RuntimeError) as info:
        build_random_model("qwen3-tiny", tok, str(tmp_path), "bfloat16")
    assert str(info.value) == (
        f"{tmp_path / 'random-qwen3-tiny-bfloat16'}: a folder without config.json is in the way (an older, unfinished "
        "build?); remove it"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random-qwen3-tiny-bfloat16", "random-qwen3-tiny-float32"]
