"""End to end on the real default model (transformers backend): registry vectors steer, steering() restores."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import GenerationConfig
from vectors import SteeringSpec, VectorRegistry

pytestmark = pytest.mark.slow
REGISTRY = Path(__file__).resolve().parent.parent / "registry" / "smollm2"
CHAT = [{"role": "user", "content": "Tell me about your day."}]


def test_registry_fits_default_model(hf_default):
    entries = VectorRegistry(REGISTRY).list(model=hf_default.model_id, hidden_size=hf_default.hidden_size)
    assert {"happy", "formal", "pirate"} <= {e.name for e in entries}
    for entry in entries:
        assert entry.hidden_size == 576 and 0 <= entry.suggested_layer < 30 and entry.suggested_scale


def test_registry_vector_changes_greedy_output_and_steering_restores(hf_default):
    cfg = GenerationConfig(max_new_tokens=32)
    base = hf_default.generate(CHAT, cfg)[0]
    assert "day" in base.text.lower()
    pirate = VectorRegistry(REGISTRY).get("pirate")
    spec = SteeringSpec.single(pirate.suggested_layer, pirate.vector, pirate.suggested_scale)
    with hf_default.steering(spec):
        steered = hf_default.generate(CHAT, cfg)[0]
    assert steered.token_ids[:3] != base.token_ids[:3]
    assert any(word in steered.text.lower() for word in ("sail", "sea", "ye", "ship", "o'"))
    again = hf_default.generate(CHAT, cfg)[0]
    assert again.token_ids == base.token_ids
    assert hf_default.generate(CHAT, cfg, steering=spec)[0].token_ids == steered.token_ids
