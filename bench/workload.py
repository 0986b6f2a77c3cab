"""The benchmark's workload: random prompt token ids and the steering of each steered-engine configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sidesteer.random_model import unit
from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SteeringSpec

__all__ = [
    "DRIVER_DIAG",
    "DRIVER_DIAG_STEERED",
    "configurations",
    "random_prompts",
    "select",
    "spec_every_layer",
    "spec_one_layer",
]

DRIVER_DIAG = "idle_llm_generate"  # the steered engine, nothing steered, under vLLM's own driver (see bench.rounds)
DRIVER_DIAG_STEERED = "one_layer_llm_generate"  # the same with one_layer's steered requests (measure.steered_llm_generate)


def spec_one_layer(num_layers: int, hidden: int, scale: float = 4.0, seed: int = 1) -> SteeringSpec:
    return SteeringSpec.single(num_layers // 2, unit(hidden, seed), scale)


def spec_every_layer(num_layers: int, hidden: int) -> SteeringSpec:
    layers = {
        layer: LayerSteeringSpec(
            vector=unit(hidden, 100 + layer),
            scale=2.0,
            projection_cap=ProjectionCapSpec(unit(hidden, 200 + layer), min=-1.0, max=1.0),
            ablation=AblationSpec(unit(hidden, 300 + layer), scale=0.0),
        )
        for layer in range(num_layers)
    }
    return SteeringSpec(layers=layers)


def configurations(num_layers: int, hidden: int, n: int) -> dict[str, list[SteeringSpec | None]]:
    """Per-prompt steering for each steered-engine configuration (None = unsteered request)."""
    one = spec_one_layer(num_layers, hidden)
    every = spec_every_layer(num_layers, hidden)
    out: dict[str, list[SteeringSpec | None]] = {
        "idle": [None] * n,
        "one_layer": [one] * n,
        "every_layer_add_cap_ablate": [every] * n,
        "compare_half": [None if i % 2 == 0 else one for i in range(n)],
    }
    for k in (2, 8, 32):
        specs = [spec_one_layer(num_layers, hidden, seed=10 + j) for j in range(k)]
        out[f"distinct_specs_{k}"] = [specs[i % k] for i in range(n)]
    sweep = [one.scaled(s) for s in np.linspace(-5.0, 5.0, 51)]
    out["sweep_51_scales"] = [sweep[i % 51] for i in range(n)]
    return out


def select(
    confs: dict[str, list[SteeringSpec | None]], only: str | None, no_hooks: bool
) -> tuple[dict[str, list[SteeringSpec | None]], bool, bool]:
    """``(configurations to run, run DRIVER_DIAG, run DRIVER_DIAG_STEERED)`` for ``--only`` and ``--no-hooks`` (an
    engine without hooked layers runs only the unsteered configurations)."""
    keep = set(only.split(",")) if only else None
    if no_hooks:
        keep = {"idle", DRIVER_DIAG} & (keep or {"idle", DRIVER_DIAG})
    if keep is not None:
        confs = {k: v for k, v in confs.items() if k in keep}
    driver_diag = keep is None or DRIVER_DIAG in keep
    driver_diag_steered = not no_hooks and (keep is None or DRIVER_DIAG_STEERED in keep)
    return confs, driver_diag, driver_diag_steered


def random_prompts(tokenizer: Any, path: str, n: int, length: int) -> list[list[int]]:
    """``n`` prompts of ``length`` random token ids (seed 0) that both the tokenizer and the model know."""
    model_vocab = int(json.loads((Path(path) / "config.json").read_text()).get("vocab_size", 1 << 30))
    vocab = min(len(tokenizer), int(getattr(tokenizer, "vocab_size", 1 << 30)), model_vocab)
    return np.random.default_rng(0).integers(100, vocab - 1, size=(n, length)).tolist()
