"""The llama.cpp backend: control-vector layout and refusals (always), and against the transformers reference on the
real default model (only where llama-cpp-python imports; CI does not install it).

Measured on the default model (teacher-forced along the reference's greedy tokens, 3 prompts x 24 tokens): llama.cpp's
logits differ from the fp32 reference by at most 0.9-2.3 on the Q4_1 file and 2.4 on the backend's Q8_0 copy of it
(4-bit weights re-rounded to 8 bits, 8-bit activations), and its argmax differs only at steps where the reference's top
two logits lie within 0.4 of each other. Steering at layer L moves
llama.cpp as the reference's steering at layer L does (difference 0.9-2.3) and not as at L - 1 or L + 1 (4.6-28).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from engine import GenerationConfig
from engine.hf_backend import build_batch_tables
from engine.llamacpp_backend import USE_INSTEAD, control_vector, inexpressible, llamacpp_available
from engine.steering_ops import layer_rows
from vectors import (
    AblationSpec,
    LayerSteeringSpec,
    ProjectionCapSpec,
    SteeringError,
    SteeringSpec,
    VectorRegistry,
    export_gguf_control_vector,
)

REGISTRY = Path(__file__).resolve().parent.parent / "registry" / "smollm2"
PROMPTS = [
    [{"role": "user", "content": "Tell me about your day."}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
]
LOGIT_TOLERANCE = 3.0  # largest |llama.cpp - reference| logit difference allowed (measured: <= 2.3)
NEAR_TIE = 1.0  # a step whose reference top-2 margin is below this may pick either token (measured: <= 0.4)
needs_llamacpp = pytest.mark.skipif(
    not llamacpp_available(), reason="llama-cpp-python is not installed (pip install 'sidesteer[llamacpp]')"
)


def _vec(seed: int, n: int = 8) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


# -- the control vector: layout and what it cannot express (no llama.cpp needed) --------------------------------------
def test_control_vector_puts_layer_l_at_llamacpp_block_l() -> None:
    spec = SteeringSpec({1: LayerSteeringSpec(_vec(0), 2.0), 4: LayerSteeringSpec(_vec(1), -0.5)})
    cv = control_vector(spec, num_layers=6, hidden_size=8)
    # llama.cpp's buffer starts at block 1: block n's floats at (n - 1) * hidden
    assert cv.data.dtype == np.float32 and cv.data.shape == (5 * 8,)
    assert np.array_equal(cv.data[0:8], layer_rows(spec.layers[1], 8)["add"].numpy())
    assert np.array_equal(cv.data[24:32], layer_rows(spec.layers[4], 8)["add"].numpy())
    assert not cv.data[8:24].any() and not cv.data[32:].any()
    assert (cv.il_start, cv.il_end, cv.key) == (1, 4, spec.fingerprint())


def test_control_vector_equals_what_llamacpp_loads_from_the_exported_file(tmp_path: Path) -> None:
    spec = SteeringSpec({2: LayerSteeringSpec(_vec(2), 1.5), 5: LayerSteeringSpec(_vec(3), 3.0)})
    reader = gguf.GGUFReader(export_gguf_control_vector(spec, tmp_path / "cv.gguf"))
    # common_control_vector_load: direction.N goes to data[(N - 1) * n_embd], the layout llama_set_adapter_cvec reads
    loaded = np.zeros(6 * 8, dtype=np.float32)
    for tensor in reader.tensors:
        n = int(tensor.name.split(".")[1])
        loaded[(n - 1) * 8 : n * 8] = tensor.data
    assert np.array_equal(control_vector(spec, num_layers=7, hidden_size=8).data, loaded)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            SteeringSpec({3: LayerSteeringSpec(_vec(0), projection_cap=ProjectionCapSpec(_vec(1), max=1.0))}),
            "layers[3]: a projection cap cannot be steered by llama.cpp (its control vectors only add)",
        ),
        (
            SteeringSpec({2: LayerSteeringSpec(ablation=AblationSpec(_vec(1), 0.0))}),
            "layers[2]: an ablation cannot be steered by llama.cpp (its control vectors only add)",
        ),
        (
            SteeringSpec({0: LayerSteeringSpec(_vec(0))}),
            "layers[0]: llama.cpp has no control-vector slot for block 0's output (its buffer starts at block 1)",
        ),
        (
            SteeringSpec({3: LayerSteeringSpec(_vec(0))}, skip_first_tokens=2),
            "skip_first_tokens: 2 cannot be steered by llama.cpp (its control vectors add at every position)",
        ),
    ],
)
def test_inexpressible_specs_are_named_and_refused(spec: SteeringSpec, message: str) -> None:
    assert inexpressible(spec) == message
    with pytest.raises(SteeringError) as info:
        control_vector(spec, num_layers=6, hidden_size=8)
    assert str(info.value) == f"{message}; {USE_INSTEAD}"


def test_additive_specs_and_none_are_expressible() -> None:
    assert inexpressible(None) is None
    assert inexpressible(SteeringSpec({1: LayerSteeringSpec(_vec(0), 4.0), 5: LayerSteeringSpec(_vec(1))})) is None


# -- against the reference on the default model ------------------------------------------------------------------
@pytest.fixture(scope="module")
def llamacpp():
    from engine.llamacpp_backend import LlamaCppSteerModel

    model = LlamaCppSteerModel("default", threads=1, parallel=2)
    yield model
    model.close()


def _pirate(layer: int) -> SteeringSpec:
    entry = VectorRegistry(REGISTRY).get("pirate")
    return SteeringSpec.single(layer, entry.vector, entry.suggested_scale)


def _reference_logits(hf, ids: list[int], spec: SteeringSpec | None) -> torch.Tensor:
    """``[len(ids), vocab]`` the transformers backend's logits over ``ids``, steered by ``spec``."""
    tables, rows = build_batch_tables([spec], hf.hidden_size, hf.device)
    with torch.inference_mode(), hf._hooks(tables, rows):
        return hf.model(torch.tensor([ids], device=hf.device)).logits[0].float().cpu()


def _run(context, prompt: list[int], completion: list[int]) -> tuple[int, torch.Tensor]:
    """(prompt tokens reused, ``[len(completion) + 1, vocab]`` logits) of ``prompt`` then ``completion`` on ``context``."""
    reused = context.start(prompt)
    rows = [context.logits()]
    for token in completion:
        context.decode([token])
        rows.append(context.logits())
    return reused, torch.stack(rows)


def _llamacpp_logits(model, prompt: list[int], completion: list[int], spec: SteeringSpec | None) -> torch.Tensor:
    """``[len(completion) + 1, vocab]`` llama.cpp's logits after the prompt and after each completion token."""
    context = model._pool(1)[0]
    context.steer(None if spec is None else control_vector(spec, model.num_layers, model.hidden_size))
    return _run(context, prompt, completion)[1]


def _compare(hf, model, prompt, spec: SteeringSpec | None, reference_spec: SteeringSpec | None = None):
    """Teacher-forced along the reference's greedy tokens (steered by ``spec``): llama.cpp steered by ``spec`` vs the
    reference steered by ``reference_spec`` (default ``spec``). Returns (max |difference|, argmax agreement at every
    step that is not a near-tie of the reference)."""
    ids = hf.encode_prompt(prompt)
    completion = hf.generate([prompt], GenerationConfig(max_new_tokens=24), steering=spec)[0].token_ids
    ours = _llamacpp_logits(model, ids, completion, spec)
    ref = _reference_logits(hf, ids + completion, spec if reference_spec is None else reference_spec)[len(ids) - 1 :]
    top = ref.topk(2, dim=-1).values
    confident = (top[:, 0] - top[:, 1]) >= NEAR_TIE
    agree = bool((ref.argmax(-1) == ours.argmax(-1))[confident].all())
    return float((ref - ours).abs().max()), agree


@pytest.mark.slow
@needs_llamacpp
def test_unsteered_logits_follow_the_reference(hf_default, llamacpp) -> None:
    for prompt in PROMPTS:
        difference, agree = _compare(hf_default, llamacpp, prompt, None)
        assert difference <= LOGIT_TOLERANCE and agree, (prompt, difference)


@pytest.mark.slow
@needs_llamacpp
def test_the_files_own_q4_1_weights_follow_the_reference_too(hf_default, llamacpp) -> None:
    from engine.llamacpp_backend import LlamaCppSteerModel

    assert llamacpp.info()["dtype"] == "GGUF Q8_0" and llamacpp.info()["gguf_source"].endswith(".Q4_1.gguf")
    q4 = LlamaCppSteerModel("default", threads=1, parallel=1, weights="file")
    try:
        assert q4.info()["dtype"] == "GGUF Q4_1" and q4.info()["gguf"] == llamacpp.info()["gguf_source"]
        for spec in (None, _pirate(8)):
            difference, agree = _compare(hf_default, q4, PROMPTS[0], spec)
            assert difference < LOGIT_TOLERANCE and agree
    finally:
        q4.close()


@pytest.mark.slow
@needs_llamacpp
def test_q8_0_copy_is_written_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.default_model import gguf_source
    from engine.llamacpp_backend import q8_0_copy

    monkeypatch.setenv("SIDESTEER_CACHE", str(tmp_path))
    copy = q8_0_copy(gguf_source())
    assert (
        copy.parent == tmp_path / "gguf" and copy.name.startswith("SmolLM2-135M-Instruct.") and copy.name.endswith(".Q8_0.gguf")
    )
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]  # no temporary file left behind
    assert copy.stat().st_mode & 0o777 == 0o644
    reader = gguf.GGUFReader(copy)
    assert reader.fields["general.file_type"].parts[-1][0] == gguf.LlamaFileType.MOSTLY_Q8_0
    written = copy.stat().st_mtime_ns
    assert q8_0_copy(gguf_source()) == copy and copy.stat().st_mtime_ns == written  # reused, not written again


def test_unknown_weights_are_refused_by_name() -> None:
    from engine.llamacpp_backend import LlamaCppSteerModel

    with pytest.raises(SteeringError, match=r"^weights: 'q4' is not one of auto, q8_0, file; pass e.g. 'auto'$"):
        LlamaCppSteerModel("default", weights="q4")


@pytest.mark.slow
@needs_llamacpp
def test_unsteered_greedy_tokens_part_only_at_near_ties(hf_default, llamacpp) -> None:
    config = GenerationConfig(max_new_tokens=32)
    ours = llamacpp.generate(PROMPTS, config)
    for prompt, reference, mine in zip(PROMPTS, hf_default.generate(PROMPTS, config), ours, strict=True):
        split = next((i for i, (a, b) in enumerate(zip(reference.token_ids, mine.token_ids, strict=False)) if a != b), None)
        if split is None:
            assert mine.token_ids == reference.token_ids
            continue
        ids = hf_default.encode_prompt(prompt)
        logits = _reference_logits(hf_default, ids + reference.token_ids[:split], None)[-1]
        top = logits.topk(2).values
        assert float(top[0] - top[1]) < NEAR_TIE, (prompt, split)


@pytest.mark.slow
@needs_llamacpp
@pytest.mark.parametrize("layer", [1, 8, 29])  # llama.cpp's first slot, the pirate's layer, the last block
def test_steering_at_layer_l_matches_the_reference_at_l_not_its_neighbours(hf_default, llamacpp, layer: int) -> None:
    prompt = PROMPTS[0]
    same, agree = _compare(hf_default, llamacpp, prompt, _pirate(layer))
    assert same <= LOGIT_TOLERANCE and agree
    for neighbour in (layer - 1, layer + 1):
        if 0 <= neighbour < hf_default.num_layers:
            off, _ = _compare(hf_default, llamacpp, prompt, _pirate(layer), reference_spec=_pirate(neighbour))
            assert off > 2 * same, (layer, neighbour, same, off)


@pytest.mark.slow
@needs_llamacpp
def test_pair_runs_concurrently_with_the_results_of_single_calls(llamacpp) -> None:
    config = GenerationConfig(max_new_tokens=12)
    spec = _pirate(8)
    pair = llamacpp.generate([PROMPTS[0], PROMPTS[0]], config, steering=[None, spec])
    assert pair[0].token_ids == llamacpp.generate(PROMPTS[0], config)[0].token_ids
    assert pair[1].token_ids == llamacpp.generate(PROMPTS[0], config, steering=spec)[0].token_ids
    assert pair[0].token_ids != pair[1].token_ids
    assert [g.spec_fingerprint for g in pair] == [None, spec.fingerprint()]
    streamed: dict[int, list[int]] = {}
    finished = {}
    for event in llamacpp.generate_stream([PROMPTS[0], PROMPTS[0]], config, steering=[None, spec]):
        streamed[event.index] = event.token_ids
        finished[event.index] = (event.finished, event.finish_reason)
    assert [streamed[0], streamed[1]] == [g.token_ids for g in pair]
    assert finished == {0: (True, "length"), 1: (True, "length")}
    # closing the stream stops both contexts and frees the backend for the next call
    stream = llamacpp.generate_stream([PROMPTS[0], PROMPTS[0]], config, steering=[None, spec])
    assert [next(stream).finished for _ in range(3)] == [False, False, False]
    stream.close()
    assert llamacpp.generate([PROMPTS[0], PROMPTS[0]], config, steering=[None, spec])[1].token_ids == pair[1].token_ids
    # three prompts on two contexts: the third waits for a free context and still gets its own result
    three = llamacpp.generate([PROMPTS[1], PROMPTS[0], PROMPTS[0]], config, steering=[None, None, spec])
    assert [g.token_ids for g in three[1:]] == [g.token_ids for g in pair]


@pytest.mark.slow
@needs_llamacpp
def test_a_cached_prefix_gives_what_a_fresh_context_gives(llamacpp) -> None:
    """A context decodes only what its cache does not hold under the same control vector, with the same logits."""
    spec = _pirate(8)
    vector = control_vector(spec, llamacpp.num_layers, llamacpp.hidden_size)
    first, second = (llamacpp.encode_prompt(p) for p in PROMPTS[:2])
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)  # the system turn and more
    assert 20 < shared < len(first) - 1
    reply = llamacpp.generate(PROMPTS[0], GenerationConfig(max_new_tokens=8))[0]
    chat = [*PROMPTS[0], {"role": "assistant", "content": reply.text}, {"role": "user", "content": "Why?"}]
    follow_up = llamacpp.encode_prompt(chat)
    assert follow_up[: len(first) + 8] == first + reply.token_ids  # the next turn starts with the whole first turn
    completion = reply.token_ids
    context = llamacpp._pool(1)[0]
    for steer in (None, vector):
        context.steer(steer)
        fresh = {}
        for name, ids in (("first", first), ("second", second), ("follow_up", follow_up)):
            context.cached = [-1]  # nothing in common with any prompt: the cache is emptied
            reused, fresh[name] = _run(context, ids, completion)
            assert reused == 0
        # the cache holds follow_up + completion; each step: (prompt, tokens of it the cache holds)
        for name, ids, reused in (
            ("first", first, len(first) - 1),  # follow_up starts with first: all but first's last token (for its logits)
            ("first", first, len(first) - 1),  # the same prompt again
            ("second", second, shared),  # a new user turn keeps the system turn
            ("first", first, shared),
            ("follow_up", follow_up, len(first) + len(completion)),  # the chat's next turn keeps the whole first turn
        ):
            got_reused, got = _run(context, ids, completion)
            assert got_reused == reused, name
            assert torch.equal(got, fresh[name]), name  # bit for bit: a cached position is what decoding it gives
    # another control vector drops the cache: every position was decoded under the old one
    context.steer(vector)
    context.start(first)
    context.steer(None)
    assert context.start(first) == 0
    # through the public API: the same pair again (both contexts reuse their prompt) gives the same tokens
    config = GenerationConfig(max_new_tokens=12)
    pair = [g.token_ids for g in llamacpp.generate([PROMPTS[1], PROMPTS[1]], config, steering=[None, spec])]
    assert [g.token_ids for g in llamacpp.generate([PROMPTS[1], PROMPTS[1]], config, steering=[None, spec])] == pair


@pytest.mark.slow
@needs_llamacpp
def test_sampling_settings_map_to_the_reference_sampler(llamacpp) -> None:
    config = GenerationConfig(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=5)
    first = llamacpp.generate([PROMPTS[0], PROMPTS[0]], config)
    assert [g.token_ids for g in first] == [g.token_ids for g in llamacpp.generate([PROMPTS[0], PROMPTS[0]], config)]
    # prompt i samples with seed + i, as in the transformers backend
    sixth = llamacpp.generate(PROMPTS[0], GenerationConfig(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=6))
    assert first[1].token_ids == sixth[0].token_ids and first[0].token_ids != first[1].token_ids
    greedy = llamacpp.generate(PROMPTS[0], GenerationConfig(max_new_tokens=16))[0].token_ids
    assert llamacpp.generate(PROMPTS[0], GenerationConfig(max_new_tokens=16, seed=9))[0].token_ids == greedy
    # end of sequence stops a pane unless ignore_eos
    sum_prompt = [{"role": "user", "content": "What is 2 + 2?"}]
    short = llamacpp.generate(sum_prompt, GenerationConfig(max_new_tokens=64))[0]
    assert short.finish_reason == "stop" and short.token_ids[-1] in llamacpp._eos_ids and len(short.token_ids) < 64
    long = llamacpp.generate(sum_prompt, GenerationConfig(max_new_tokens=64, ignore_eos=True))[0]
    assert long.finish_reason == "length" and len(long.token_ids) == 64


@pytest.mark.slow
@needs_llamacpp
def test_refuses_what_it_cannot_steer_and_names_the_fix(llamacpp) -> None:
    hidden = llamacpp.hidden_size
    cap = SteeringSpec({8: LayerSteeringSpec(_vec(0, hidden), projection_cap=ProjectionCapSpec(_vec(1, hidden), max=1.0))})
    with pytest.raises(SteeringError) as info:
        llamacpp.generate(PROMPTS[0], steering=cap)
    assert str(info.value) == (
        "layers[8]: a projection cap cannot be steered by llama.cpp (its control vectors only add); use the "
        "transformers backend (--backend hf; --backend auto serves such specs with it)"
    )
    with pytest.raises(SteeringError, match=r"^layers\[3\]: an ablation cannot be steered by llama.cpp"):
        llamacpp.set_layer_ablation(3, _vec(2, hidden))
    with pytest.raises(SteeringError, match=r"^layers\[0\]: llama.cpp has no control-vector slot for block 0"):
        llamacpp.set_layer_vector(0, _vec(2, hidden))
    with pytest.raises(SteeringError, match=r"^skip_first_tokens: 1 cannot be steered by llama.cpp"):
        llamacpp.apply_steering_spec(SteeringSpec({4: LayerSteeringSpec(_vec(3, hidden))}, skip_first_tokens=1))
    assert llamacpp.export_steering_spec().is_empty()  # refused changes leave the state alone
    with pytest.raises(SteeringError, match=r"^mean_activations: the llama.cpp backend does not read activations"):
        llamacpp.mean_activations(PROMPTS[:1], [3])


@pytest.mark.slow
@needs_llamacpp
def test_bad_construction_is_refused() -> None:
    from engine.llamacpp_backend import LlamaCppSteerModel

    with pytest.raises(SteeringError, match=r"^threads: 0 is not a positive integer; pass e.g. 1$"):
        LlamaCppSteerModel("default", threads=0)
    with pytest.raises(SteeringError, match=r"^model: the llama.cpp backend loads GGUF files, not 'some/hub-id'"):
        LlamaCppSteerModel("some/hub-id")
    with pytest.raises(SteeringError, match=r"^model: '/nonexistent/x.gguf' is not a file"):
        LlamaCppSteerModel("/nonexistent/x.gguf")


@pytest.mark.slow
@needs_llamacpp
def test_fallback_serves_caps_with_the_reference_and_adds_with_llamacpp(hf_default, llamacpp) -> None:
    from engine.llamacpp_backend import LlamaCppWithFallback

    auto = LlamaCppWithFallback("default", fallback=lambda: hf_default)
    try:
        assert "loads on first use" in auto.info()["fallback"]
        config = GenerationConfig(max_new_tokens=12)
        add = _pirate(8)
        cap = SteeringSpec({8: LayerSteeringSpec(add.layers[8].vector, 2.0, ProjectionCapSpec(add.layers[8].vector, max=1.0))})
        assert auto.route([None, add]) is auto.fast
        assert auto._fallback is None  # an additive call never loads transformers
        assert auto.generate([PROMPTS[0]] * 2, config, steering=[None, add])[1].token_ids == (
            llamacpp.generate(PROMPTS[0], config, steering=add)[0].token_ids
        )
        # a cap anywhere in the call: the whole pair runs on the reference
        assert auto.route([None, cap]) is hf_default
        pair = auto.generate([PROMPTS[0]] * 2, config, steering=[None, cap])
        reference = hf_default.generate([PROMPTS[0]] * 2, config, steering=[None, cap])
        assert [g.token_ids for g in pair] == [g.token_ids for g in reference]
        assert "(loaded)" in auto.info()["fallback"]
        means = auto.mean_activations(PROMPTS[:2], [3])
        assert torch.equal(means[3], hf_default.mean_activations(PROMPTS[:2], [3])[3])
    finally:
        auto.fast.close()
