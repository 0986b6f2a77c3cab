"""The offline default model: converted once from the bundled GGUF into a plain transformers folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.default_model import DEFAULT_MODEL_ID, is_default, resolve_model_path


def test_non_default_names_pass_through() -> None:
    assert resolve_model_path("some/hub-id") == "some/hub-id"
    assert resolve_model_path("/a/local/folder") == "/a/local/folder"
    assert is_default("default") and is_default("SmolLM2-135M-Instruct") and not is_default(DEFAULT_MODEL_ID)


@pytest.mark.slow
def test_converted_folder_loads_with_chat_template() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(resolve_model_path("default"))
    assert resolve_model_path("SmolLM2-135M-Instruct") == str(path)
    config = json.loads((path / "config.json").read_text())
    # what vLLM reads: a plain bf16 Llama, no leftover GGUF quantization config, legacy rope_theta
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["torch_dtype"] == "bfloat16" and config["tie_word_embeddings"] is True
    assert "quantization_config" not in config and config["rope_theta"] == 100000.0
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])
