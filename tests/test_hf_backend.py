"""The transformers backend on a tiny random Llama: exact deltas, restore, batching and bad input."""

from __future__ import annotations

import pytest
import torch

from engine import GenerationConfig, HFSteerModel, mean_difference
from engine.layers import find_decoder_layers
from engine.steering_ops import steer_layer_output
from tests.helpers import CharTokenizer, tiny_hf, tiny_llama
from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SteeringError, SteeringSpec

H = 64
PROMPTS = ["hello world", "the quick brown fox", "a"]
GREEDY = GenerationConfig(max_new_tokens=12)


@pytest.fixture(scope="module")
def model() -> HFSteerModel:
    return tiny_hf()


def hidden_states(model: HFSteerModel, text: str, spec: SteeringSpec | None) -> list[torch.Tensor]:
    """The residual stream as the model sees it: entry ``i`` is the input of layer ``i`` (``i`` = num_layers: the
    last layer's output), i.e. transformers' ``hidden_states`` indexing, observed *after* the steering hooks."""
    from engine.hf_backend import build_batch_tables

    ids = torch.tensor([model.encode_prompt(text)])
    seen: dict[int, torch.Tensor] = {}
    tables, rows = build_batch_tables([spec], H, model.device)
    with torch.no_grad(), model._hooks(tables, rows):
        handles = [
            layer.register_forward_pre_hook(
                lambda m, a, k, i=i: seen.__setitem__(i, (k.get("hidden_states") if "hidden_states" in k else a[0]).clone()),
                with_kwargs=True,
            )
            for i, layer in enumerate(model.layers)
        ]
        last = len(model.layers)
        handles.append(
            model.layers[-1].register_forward_hook(
                lambda m, a, o: seen.__setitem__(last, (o[0] if isinstance(o, tuple) else o).clone())
            )
        )
        try:
            model.model(input_ids=ids)
        finally:
            for h in handles:
                h.remove()
    return [seen[i] for i in range(last + 1)]


def rand(seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(H, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize(
    "layer_spec",
    [
        LayerSteeringSpec(rand(1, 2.0), 1.5),
        LayerSteeringSpec(projection_cap=ProjectionCapSpec(rand(2), -0.1, 0.1)),
        LayerSteeringSpec(ablation=AblationSpec(rand(3), 0.0)),
        LayerSteeringSpec(rand(1), -3.0, ProjectionCapSpec(rand(2), max=0.0), AblationSpec(rand(3), 2.0)),
    ],
    ids=["add", "cap", "ablate", "all"],
)
def test_layer_output_changes_by_exact_delta(model, layer_spec):
    layer = 2
    base = hidden_states(model, "steer me", None)
    steered = hidden_states(model, "steer me", SteeringSpec({layer: layer_spec}))
    for i in range(layer + 1):  # embeddings and layers before L: untouched, bit for bit
        assert torch.equal(base[i], steered[i])
    expected = steer_layer_output(base[layer + 1], layer_spec)  # hidden_states[L+1] is layer L's output
    assert torch.allclose(steered[layer + 1], expected, atol=1e-6)
    assert not torch.allclose(steered[layer + 2], base[layer + 2])


def test_ablation_zeroes_component_and_cap_bounds(model):
    d = rand(5)
    spec = SteeringSpec(
        {1: LayerSteeringSpec(projection_cap=ProjectionCapSpec(rand(6), min=0.5, max=0.7), ablation=AblationSpec(d, 0.0))}
    )
    hs = hidden_states(model, "some text here", spec)
    assert (hs[2][0] @ (d / d.norm())).abs().max() < 1e-5
    last = SteeringSpec({3: LayerSteeringSpec(ablation=AblationSpec(d, 0.0))})  # the last layer is hooked too
    assert (hidden_states(model, "some text here", last)[4][0] @ (d / d.norm())).abs().max() < 1e-5


def test_clear_restores_baseline_tokens(model):
    base = model.generate(PROMPTS, GREEDY)
    model.set_layer_vector(1, rand(7, 4.0), 2.0)
    model.set_layer_projection_cap(2, rand(8), cap_below=-0.1, cap_above=0.1)
    model.set_layer_ablation(3, rand(9), 0.0)
    steered = model.generate(PROMPTS, GREEDY)
    assert [g.token_ids for g in steered] != [g.token_ids for g in base]
    assert model.export_steering_spec().active_layers() == [1, 2, 3]
    model.clear_layer_ablation(3)
    assert model.export_steering_spec().active_layers() == [1, 2]
    model.clear_all_vectors()
    assert model.export_steering_spec().is_empty()
    assert [g.token_ids for g in model.generate(PROMPTS, GREEDY)] == [g.token_ids for g in base]


def test_per_prompt_specs_equal_one_by_one(model):
    specs = [
        SteeringSpec.single(1, rand(10, 3.0)),
        None,
        SteeringSpec({2: LayerSteeringSpec(rand(11, 3.0), -1.0, ablation=AblationSpec(rand(12), 0.0))}),
    ]
    batch = model.generate(PROMPTS, GREEDY, steering=specs)
    for prompt, spec, got in zip(PROMPTS, specs, batch, strict=True):
        alone = model.generate([prompt], GREEDY, steering=[spec])[0]
        assert got.token_ids == alone.token_ids
        assert got.spec_fingerprint == (None if spec is None else spec.fingerprint())
    assert batch[0].token_ids != model.generate([PROMPTS[0]], GREEDY)[0].token_ids


def test_stream_equals_generate(model):
    spec = SteeringSpec.single(1, rand(13, 3.0))
    full = model.generate(PROMPTS, GREEDY, steering=[spec, None, spec])
    texts = ["", "", ""]
    finished = {}
    for event in model.generate_stream(PROMPTS, GREEDY, steering=[spec, None, spec]):
        texts[event.index] += event.delta
        if event.finished:
            finished[event.index] = (event.token_ids, event.finish_reason)
    assert texts == [g.text for g in full]
    assert [finished[i][0] for i in range(3)] == [g.token_ids for g in full]
    assert [finished[i][1] for i in range(3)] == [g.finish_reason for g in full]


def test_stream_resumed_on_other_threads_equals_generate(model):
    """A streaming UI resumes the stream on a pool thread after each event; inference mode is thread-local, so a
    stream that held it across a yield ran its next forward with grad mode on ("Inference tensors cannot be saved
    for backward")."""
    from concurrent.futures import ThreadPoolExecutor

    spec = SteeringSpec.single(1, rand(13, 3.0))
    full = model.generate(PROMPTS, GREEDY, steering=[spec, None, spec])
    stream = model.generate_stream(PROMPTS, GREEDY, steering=[spec, None, spec])
    finished = {}
    while True:
        with ThreadPoolExecutor(max_workers=1) as pool:  # a new thread for every step
            event = pool.submit(next, stream, None).result()
        if event is None:
            break
        if event.finished:
            finished[event.index] = event.token_ids
    assert [finished[i] for i in range(3)] == [g.token_ids for g in full]


def test_sampling_seeded_and_independent_of_batch(model):
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=123)
    a = model.generate(PROMPTS, cfg)
    b = model.generate(PROMPTS, cfg)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert model.generate(PROMPTS[:1], cfg)[0].token_ids == a[0].token_ids


def test_steering_context_restores_also_on_error(model):
    model.set_layer_vector(0, rand(14))
    before = model.export_steering_spec().fingerprint()
    with model.steering(SteeringSpec.single(3, rand(15))):
        assert model.export_steering_spec().active_layers() == [3]
    assert model.export_steering_spec().fingerprint() == before
    with pytest.raises(RuntimeError), model.steering(SteeringSpec.single(2, rand(16))):
        raise RuntimeError("boom")
    assert model.export_steering_spec().fingerprint() == before
    model.clear_all_vectors()


def test_seed_single_layer_api_and_save_pretrained(model, tmp_path):
    with pytest.raises(SteeringError, match="set_target_layer"):
        HFSteerModel.from_model(tiny_llama(), CharTokenizer()).set_vector(rand(1))
    model.set_target_layer(2)
    model.set_vector(rand(17), 2.0)
    spec = model.export_steering_spec()
    assert spec.active_layers() == [2] and spec.layers[2].scale == 2.0
    out = model.save_pretrained(tmp_path / "saved")
    loaded = SteeringSpec.load(out / "steering_spec.safetensors")
    assert loaded.fingerprint() == spec.fingerprint() and loaded.model_id == "tiny-llama"
    model.set_vector(None)
    assert model.export_steering_spec().is_empty()


BAD = [
    (lambda m: m.set_layer_vector(1, torch.ones(H + 1)), "does not match the model's hidden_size 64"),
    (lambda m: m.set_layer_vector(4, torch.ones(H)), r"layer: 4 is out of range .* 0..3"),
    (lambda m: m.set_layer_vector(-1, torch.ones(H)), "out of range"),
    (lambda m: m.set_layer_vector(1, torch.full((H,), float("nan"))), "NaN"),
    (lambda m: m.set_layer_projection_cap(1, torch.ones(H)), "at least one bound"),
    (lambda m: m.set_layer_projection_cap(1, torch.ones(H), 1.0, 0.0), "min=1.0 > max=0.0"),
    (lambda m: m.set_layer_ablation(1, torch.zeros(H), 0.0), "zero norm"),
    (lambda m: m.apply_steering_spec(SteeringSpec.single(9, torch.ones(H))), r"layers\[9\]: layer out of range"),
    (lambda m: m.apply_steering_spec(SteeringSpec.single(1, torch.ones(8))), "hidden_size"),
    (lambda m: m.generate(PROMPTS, GREEDY, steering=[None]), "3 prompts"),
    (lambda m: m.generate(PROMPTS, GREEDY, steering="x"), "steering"),
    (lambda m: m.generate([], GREEDY), "empty"),
    (lambda m: m.generate([42], GREEDY), "neither a string"),
    (lambda m: GenerationConfig(max_new_tokens=0), "max_new_tokens"),
    (lambda m: GenerationConfig(top_p=0.0), "top_p"),
    (lambda m: GenerationConfig(temperature=-1.0), "temperature"),
]


@pytest.mark.parametrize("action,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_leaves_state_unchanged(model, action, message):
    model.clear_all_vectors()
    model.set_layer_vector(1, rand(20))
    before = model.export_steering_spec()
    with pytest.raises(SteeringError, match=message):
        action(model)
    after = model.export_steering_spec()
    assert after.fingerprint() == before.fingerprint() and after.active_layers() == [1]
    model.clear_all_vectors()


def test_mean_difference_and_activations(model):
    pos, neg = ["good good good", "great day"], ["bad bad bad", "awful day"]
    diff = mean_difference(model, pos, neg, 2)
    acts_p = model.mean_activations(pos, [2])[2]
    acts_n = model.mean_activations(neg, [2])[2]
    assert torch.allclose(diff, acts_p - acts_n)
    # by hand: prompt 0's tokens after the first, at hidden_states[3]
    hs = hidden_states(model, pos[0], None)[3][0]
    one = model.mean_activations(pos[:1], [2])[2]
    assert torch.allclose(one, hs[1:].mean(0), atol=1e-5)
    unit = mean_difference(model, pos, neg, 2, normalize=True)
    assert abs(float(unit.norm()) - 1.0) < 1e-5
    with pytest.raises(SteeringError, match="normalize"):
        mean_difference(model, pos, pos, 2, normalize=True)
    with pytest.raises(SteeringError, match="non-empty"):
        mean_difference(model, [], neg, 2)


def test_layer_detection_error():
    class Odd(torch.nn.Module):
        pass

    with pytest.raises(SteeringError, match="cannot find the decoder layers of Odd"):
        find_decoder_layers(Odd())


def test_decode_all_uses_one_batch_call_where_the_tokenizer_has_it(model, monkeypatch):
    seqs = [[5, 6, 7], [], [8]]
    one_by_one = [model.tokenizer.decode(s, skip_special_tokens=True) for s in seqs]
    assert not hasattr(model.tokenizer, "batch_decode") and model.decode_all(seqs) == one_by_one
    calls = []

    def batch_decode(sequences, skip_special_tokens):
        calls.append((sequences, skip_special_tokens))
        return [model.tokenizer.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

    monkeypatch.setattr(model.tokenizer, "batch_decode", batch_decode, raising=False)
    assert model.decode_all(seqs) == one_by_one and calls == [(seqs, True)]
    gen = model.generate_token_ids([[5, 6]], GenerationConfig(max_new_tokens=3, ignore_eos=True))[0]
    assert gen.text == model.tokenizer.decode(gen.token_ids, skip_special_tokens=True) and len(calls) == 2
    calls.clear()
    ids_only = model.generate_token_ids([[5, 6]], GenerationConfig(max_new_tokens=3, ignore_eos=True), decode_text=False)[0]
    assert ids_only.token_ids == gen.token_ids and ids_only.text == "" and calls == []  # nothing decoded


def test_a_spec_is_validated_once_per_entry_and_again_only_after_a_change(model, monkeypatch):
    """validate_spec checks a spec once; generate, apply_steering_spec and steering() trust it while it is unchanged,
    and any assignment or in-place write makes the next entry check it in full (and refuse it)."""
    calls = []
    real = SteeringSpec.validate_for_model
    monkeypatch.setattr(SteeringSpec, "validate_for_model", lambda s, *a: calls.append(id(s)) or real(s, *a))
    spec = SteeringSpec.single(1, torch.ones(H))
    assert model.validate_spec(spec) is spec and len(calls) == 1
    model.generate(PROMPTS[:2], GREEDY, steering=[spec, spec])  # the app's compare: validate_spec, then generate
    model.apply_steering_spec(spec)
    with model.steering(spec):
        pass
    model.clear_all_vectors()
    assert len(calls) == 1
    spec.layers[1].scale = 2e6  # assigned after validation
    with pytest.raises(SteeringError, match=r"layers\[1\]\.scale: 2e\+06 is beyond the limit"):
        model.generate(PROMPTS[:1], GREEDY, steering=spec)
    spec.layers[1].scale = 1.0  # back to the content validated before: trusted again
    model.validate_spec(spec)
    assert len(calls) == 2
    spec.layers[1].vector.mul_(float("nan"))  # written in place: the tensor's version counter moves
    with pytest.raises(SteeringError, match=r"layers\[1\]\.vector: the vector holds NaN or Inf"):
        model.generate(PROMPTS[:1], GREEDY, steering=spec)
    assert len(calls) == 3
    spec.layers[1].vector = torch.ones(H)
    model.validate_spec(spec)
    spec.skip_first_tokens = -1  # the spec-level field counts as content too
    with pytest.raises(SteeringError, match=r"skip_first_tokens: -1 is negative"):
        model.generate(PROMPTS[:1], GREEDY, steering=spec)
    assert len(calls) == 5


def steering_deltas(model: HFSteerModel, prompts: list[str], specs: list[SteeringSpec | None], tokens: int = 4):
    """Per forward of the generation loop (prefill, then each decode step): layer 1's output ``[batch, seq, hidden]``
    before the steering hooks (a hook registered first runs first) and after them (layer 2's input)."""
    before: list[torch.Tensor] = []
    after: list[torch.Tensor] = []
    handles = [
        model.layers[1].register_forward_hook(lambda m, a, o: before.append((o[0] if isinstance(o, tuple) else o).clone())),
        model.layers[2].register_forward_pre_hook(
            lambda m, a, k: after.append((k["hidden_states"] if "hidden_states" in k else a[0]).clone()), with_kwargs=True
        ),
    ]
    try:
        model.generate(prompts, GenerationConfig(max_new_tokens=tokens, ignore_eos=True), steering=specs)
    finally:
        for handle in handles:
            handle.remove()
    assert len(before) == len(after) == tokens  # the prefill and tokens - 1 decode steps
    return before, after


def test_skip_first_tokens_leaves_leading_positions_unsteered_in_a_left_padded_batch(model):
    """Position p of each row (its index in its own sequence, not the padded column) is unsteered exactly when
    p < its spec's skip_first_tokens, in the prefill and in every decode step; every other token gets the exact add."""
    prompts = ["a", "hello world", "abc"]  # 2, 12 and 4 tokens with the BOS: rows 0 and 2 are left-padded
    adds = [rand(20, 3.0), rand(21, 3.0), rand(22, 3.0)]
    skips = [3, 1, 0]  # row 0's skip reaches past its prompt into its decode steps; row 2 steers position 0 too
    specs = [SteeringSpec.single(1, add, 1.0, skip_first_tokens=skip) for add, skip in zip(adds, skips, strict=True)]
    lengths = [len(model.encode_prompt(p)) for p in prompts]
    width = max(lengths)
    before, after = steering_deltas(model, prompts, specs)
    checked = {"unsteered": 0, "steered": 0}
    for step, (pre, post) in enumerate(zip(before, after, strict=True)):
        for row, (length, add, skip) in enumerate(zip(lengths, adds, skips, strict=True)):
            if step == 0:
                columns = range(width - length, width)
                positions = [c - (width - length) for c in columns]
            else:
                columns, positions = [0], [length + step - 1]
            for column, position in zip(columns, positions, strict=True):
                if position < skip:
                    assert torch.equal(post[row, column], pre[row, column]), (step, row, position)
                    checked["unsteered"] += 1
                else:
                    assert torch.equal(post[row, column], pre[row, column] + add), (step, row, position)
                    checked["steered"] += 1
    # row 0: positions 0, 1 (prompt) and 2 (first decode input); row 1: position 0
    assert checked == {"unsteered": 4, "steered": 2 + 12 + 4 + 3 * 3 - 4}


def test_skip_first_tokens_on_a_cap_changes_only_later_positions(model):
    """A cap with skip_first_tokens=1: position 0's stream passes unchanged, later positions are capped (their
    projection is clamped to the bounds), and the tokens equal the same cap without skip where position 0 is within
    the bounds anyway."""
    d = rand(23)
    unit = d / d.norm()
    spec = SteeringSpec({1: LayerSteeringSpec(projection_cap=ProjectionCapSpec(d, -0.05, 0.05))}, skip_first_tokens=1)
    before, after = steering_deltas(model, ["the quick brown fox"], [spec], tokens=2)
    pre, post = before[0][0], after[0][0]  # the prefill's only row: [seq, hidden]
    assert torch.equal(post[0], pre[0]) and not -0.05 <= float(pre[0] @ unit) <= 0.05
    projections = post[1:] @ unit
    assert projections.abs().max() <= 0.05 + 1e-6 and not torch.equal(post[1:], pre[1:])
    assert torch.allclose(post[1:], steer_layer_output(pre[1:], spec.layers[1]), atol=1e-6)


def test_row_positions_follow_each_rows_own_tokens():
    """The positions the hooks mask by: ``position_ids`` when the forward has them, else the attention mask's running
    count over the new columns (left padding and cached columns included), else the cache length plus the column."""
    from transformers import DynamicCache

    from engine.hf_backend import row_positions

    ids = torch.zeros(2, 3, dtype=torch.long)
    given = torch.tensor([[0, 0, 1], [4, 5, 6]])
    assert torch.equal(row_positions((), {"input_ids": ids, "position_ids": given}), given)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])  # row 0 left-padded by 2; 2 cached columns, 3 new
    assert row_positions((ids,), {"attention_mask": mask}).tolist() == [[0, 1, 2], [2, 3, 4]]
    assert row_positions((ids,), {}).tolist() == [[0, 1, 2], [0, 1, 2]]
    cache = DynamicCache()
    cache.update(torch.zeros(2, 1, 4, 2), torch.zeros(2, 1, 4, 2), 0)  # 4 cached positions
    assert row_positions((), {"input_ids": ids, "past_key_values": cache}).tolist() == [[4, 5, 6], [4, 5, 6]]
