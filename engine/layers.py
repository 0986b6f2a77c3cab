"""Finding the decoder layers of a transformers model (the common layouts)."""

from __future__ import annotations

from typing import Any

import torch

from vectors import SteeringError

# Attribute paths from the model object to its list of decoder blocks, most common first.
LAYER_PATHS = (
    "model.layers",  # Llama, Qwen2/3, Mistral, Gemma2/3 text, Phi3
    "model.language_model.layers",  # Gemma3 / Llava-style multimodal (transformers 5)
    "language_model.model.layers",  # older multimodal wrappers
    "model.decoder.layers",  # OPT
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "transformer.layers",
    "layers",
)


def layer_list_at(model: Any, paths: tuple[str, ...]) -> torch.nn.ModuleList | None:
    """The first non-empty ``ModuleList`` found at one of the dotted attribute ``paths``, or None."""
    for path in paths:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return obj
    return None


def find_decoder_layers(model: Any) -> torch.nn.ModuleList:
    """Return the model's decoder-block list.

    Raises:
        SteeringError: None of the known layouts matches.
    """
    found = layer_list_at(model, LAYER_PATHS)
    if found is not None:
        return found
    raise SteeringError(
        f"model: cannot find the decoder layers of {type(model).__name__} (tried {', '.join(LAYER_PATHS)}); "
        "this architecture is not supported yet, add its layer path to engine.layers.LAYER_PATHS"
    )
