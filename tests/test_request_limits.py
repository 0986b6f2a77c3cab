"""Every call is checked against the context length and the model's RequestLimits before any work starts.

Before, an 8448-token prompt ran on the transformers backend (context 8192) without a check, holding its lock for
over a minute, and on vLLM an over-long prompt raised inside the engine's loop and killed the engine for everyone.
"""

from __future__ import annotations

import pytest
import torch

from engine import GenerationConfig, RequestLimits
from tests.helpers import tiny_hf
from vectors import LayerSteeringSpec, SteeringError, SteeringSpec


@pytest.fixture()
def model():
    return tiny_hf()  # max_position_embeddings 512; a fresh model per test: limits are per model


def test_context_length_comes_from_the_model(model):
    assert model.context_length == 512


def test_prompt_plus_new_tokens_must_fit_the_context(model, monkeypatch):
    calls = []
    monkeypatch.setattr(model, "_generate", lambda *a, **k: calls.append(a))
    long = "x" * 600  # 601 tokens with bos
    with pytest.raises(
        SteeringError,
        match=r"^prompts\[1\]: 601 prompt tokens \+ 4 max_new_tokens = 605 is over the context length of 512 tokens; shorten",
    ):
        model.generate(["hi", long], GenerationConfig(max_new_tokens=4))
    fits = "x" * 500  # 501 + 11 = 512: exactly the context
    with pytest.raises(SteeringError, match=r"prompts\[0\]: 501 prompt tokens \+ 12 max_new_tokens = 513 is over"):
        model.generate_token_ids([[5] * 501], GenerationConfig(max_new_tokens=12))
    model.generate([fits], GenerationConfig(max_new_tokens=11))
    assert len(calls) == 1  # only the call that fits reached the backend


def test_request_limits_are_checked_before_any_work(model, monkeypatch):
    calls = []
    monkeypatch.setattr(model, "_generate", lambda *a, **k: calls.append(a))
    model.limits = RequestLimits(max_prompt_tokens=10, max_new_tokens=8, max_prompts=2)
    cases = {
        r"^prompts\[0\]: 12 prompt tokens is over the limit of 10; shorten the prompt": (
            ["x" * 11],
            GenerationConfig(max_new_tokens=4),
        ),
        r"^max_new_tokens: 9 is over the limit of 8; ask for fewer tokens": (["hi"], GenerationConfig(max_new_tokens=9)),
        r"^prompts: 3 prompts in one call is over the limit of 2; split the call": (
            ["a", "b", "c"],
            GenerationConfig(max_new_tokens=4),
        ),
        # far too long to tokenise at all (32 characters per allowed token)
        r"^prompts: 321 characters is far over the limit of 10 prompt tokens": (["x" * 321], GenerationConfig(max_new_tokens=4)),
    }
    for message, (prompts, config) in cases.items():
        with pytest.raises(SteeringError, match=message):
            model.generate(prompts, config)
        with pytest.raises(SteeringError, match=message.replace("^", "")):
            list(model.generate_stream(prompts, config))
    with pytest.raises(SteeringError, match=r"prompts\[0\]: 12 prompt tokens is over the limit of 10"):
        model.mean_activations(["x" * 11], [1])
    assert calls == []
    model.generate(["x" * 9], GenerationConfig(max_new_tokens=8))  # 10 tokens, 8 new: at the limits
    assert len(calls) == 1


def test_request_limits_refuse_bad_values():
    for field, value in (("max_prompt_tokens", 0), ("max_new_tokens", -1), ("max_prompts", True), ("max_prompts", 2.5)):
        with pytest.raises(SteeringError, match=rf"^limits\.{field}: {value!r} is not a positive integer or None"):
            RequestLimits(**{field: value})


def test_a_refused_call_leaves_the_steering_state_alone(model):
    spec = SteeringSpec({1: LayerSteeringSpec(torch.ones(64), 2.0)})
    model.apply_steering_spec(spec)
    with pytest.raises(SteeringError, match="over the context length"):
        model.generate(["x" * 600], GenerationConfig(max_new_tokens=4))
    assert model.export_steering_spec().fingerprint() == spec.fingerprint()
