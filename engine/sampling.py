"""Next-token choice for the backends that sample in Python (transformers, llama.cpp): one implementation.

vLLM samples inside its engine; these two share this function so that the same logits, settings and generator
give the same token on both.
"""

from __future__ import annotations

import torch

from engine.generation import GenerationConfig

__all__ = ["pick_tokens"]


def pick_tokens(logits: torch.Tensor, config: GenerationConfig, generators: list[torch.Generator | None]) -> torch.Tensor:
    """The next token of each row: greedy at temperature 0, else temperature and top-p (nucleus) sampling.

    Args:
        logits: ``[rows, vocab]`` logits of the last position.
        config: The call's sampling settings (``temperature``, ``top_p``).
        generators: One CPU generator per row (its seed makes the row reproducible); unused when greedy.

    Returns:
        ``[rows]`` token ids, on ``logits``' device.
    """
    logits = logits.float()
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / config.temperature, dim=-1)
    if config.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < config.top_p  # always keeps the top token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    out = [torch.multinomial(probs[row].cpu(), 1, generator=g).item() for row, g in enumerate(generators)]
    return torch.tensor(out, device=logits.device)
