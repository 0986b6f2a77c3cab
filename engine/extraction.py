"""Vector extraction from contrastive prompts (works on any backend through ``mean_activations``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.backend import SteerableBackend
from engine.generation import Prompt
from vectors import SteeringError


def mean_difference(
    model: SteerableBackend,
    positive_prompts: Sequence[Prompt],
    negative_prompts: Sequence[Prompt],
    layer: int,
    *,
    normalize: bool = False,
) -> torch.Tensor:
    """Mean activation difference ``mean(positive) - mean(negative)`` at a layer's output residual stream.

    Each prompt's activations are averaged over its tokens (all but the first, an attention sink), then over
    prompts.

    Args:
        model: Any steerable backend.
        positive_prompts: Prompts showing the concept (raw strings or chat message lists).
        negative_prompts: Prompts showing its opposite.
        layer: 0-based decoder layer (output residual stream).
        normalize: Return a unit vector.

    Returns:
        A float32 ``[hidden]`` vector.

    Raises:
        SteeringError: Empty prompt lists, a bad layer, or identical means (zero vector) with ``normalize``.
    """
    if not positive_prompts or not negative_prompts:
        raise SteeringError("prompts: positive_prompts and negative_prompts must both be non-empty")
    pos = model.mean_activations(list(positive_prompts), [layer])[layer]
    neg = model.mean_activations(list(negative_prompts), [layer])[layer]
    diff = pos - neg
    if normalize:
        norm = float(diff.norm())
        if norm < 1e-8:
            raise SteeringError("normalize: the two prompt sets give the same mean activation; use more contrastive prompts")
        diff = diff / norm
    return diff
