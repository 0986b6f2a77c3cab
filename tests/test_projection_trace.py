"""Where did steering act? Projection traces on the tiny random Llama: exact pre/post values, clamp masks, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import GenerationConfig, HFSteerModel
from engine.projection_trace import ProjectionTrace, clamped_mask, trace_direction
from tests.helpers import tiny_hf
from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SteeringError, SteeringSpec

H = 64
LAYER = 2
PROMPT = "hello world"


@pytest.fixture(scope="module")
def model() -> HFSteerModel:
    return tiny_hf()


def rand(seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(H, generator=torch.Generator().manual_seed(seed)) * scale


def unit(seed: int) -> torch.Tensor:
    v = rand(seed)
    return v / v.norm()


def steered_ids(model: HFSteerModel, spec: SteeringSpec, n: int = 10) -> list[int]:
    return model.generate(PROMPT, GenerationConfig(max_new_tokens=n, ignore_eos=True), steering=spec)[0].token_ids


def unsteered_projection(model: HFSteerModel, ids: list[int], layer: int, u: torch.Tensor) -> list[float]:
    """``hidden_states[layer + 1]`` of the plain model projected onto ``u`` (transformers' own output)."""
    with torch.no_grad():
        out = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return (out.hidden_states[layer + 1][0].to(torch.float32) @ u).tolist()


def test_add_trace_shifts_every_token_by_scale_times_v_dot_u(model):
    v = rand(1, 0.5)
    spec = SteeringSpec.single(LAYER, v, 3.0)
    completion = steered_ids(model, spec)
    trace = model.trace_projection(PROMPT, completion, spec)
    prompt_ids = model.encode_prompt(PROMPT)
    assert isinstance(trace, ProjectionTrace)
    assert (trace.layer, trace.op, trace.prompt_len) == (LAYER, "add", len(prompt_ids))
    assert trace.token_ids == prompt_ids + completion
    assert trace.tokens == [model.tokenizer.decode([t], skip_special_tokens=False) for t in trace.token_ids]
    assert trace.clamped is None and trace.num_clamped == 0
    assert trace.spec_fingerprint == spec.fingerprint()
    shift = 3.0 * float(v @ (v / v.norm()))  # scale * (v . u), u = v / |v|
    assert len(trace.pre) == len(trace.post) == len(trace.token_ids)
    for pre, post in zip(trace.pre, trace.post, strict=True):
        assert post - pre == pytest.approx(shift, abs=1e-5)


def test_pre_equals_unsteered_hidden_state_projection(model):
    v = rand(2, 0.5)
    spec = SteeringSpec.single(LAYER, v, -4.0)
    completion = steered_ids(model, spec)
    trace = model.trace_projection(PROMPT, completion, spec)
    expected = unsteered_projection(model, trace.token_ids, LAYER, v / v.norm())
    assert trace.pre == pytest.approx(expected, abs=1e-5)


def test_post_equals_steered_model_next_layer_input(model):
    """``post`` is what the next layer reads: the input of layer L + 1 in the steered generate path."""
    v = rand(3, 0.5)
    spec = SteeringSpec({LAYER: LayerSteeringSpec(vector=v, scale=2.0)})
    completion = steered_ids(model, spec, 6)
    trace = model.trace_projection(PROMPT, completion, spec)
    from engine.hf_backend import build_batch_tables

    seen: list[torch.Tensor] = []
    tables, rows = build_batch_tables([spec], H, model.device)
    handle = model.layers[LAYER + 1].register_forward_pre_hook(
        lambda m, a, k: seen.append((k["hidden_states"] if "hidden_states" in k else a[0])[0].clone()), with_kwargs=True
    )
    try:
        with torch.no_grad(), model._hooks(tables, rows):
            model.model(input_ids=torch.tensor([trace.token_ids]))
    finally:
        handle.remove()
    assert trace.post == pytest.approx((seen[0] @ (v / v.norm())).tolist(), abs=1e-5)
    assert trace.post != pytest.approx(trace.pre, abs=1e-2)


def test_cap_marks_exactly_the_tokens_outside_the_bounds(model):
    u = unit(4)
    pre = unsteered_projection(model, model.encode_prompt(PROMPT) + [72, 105, 33, 32, 120, 121], LAYER, u)
    ordered = sorted(pre)
    low, high = ordered[2], ordered[-3]  # bounds inside the observed range: some tokens below, some above
    spec = SteeringSpec({LAYER: LayerSteeringSpec(projection_cap=ProjectionCapSpec(u, low, high))})
    completion = [72, 105, 33, 32, 120, 121]
    trace = model.trace_projection(PROMPT, completion, spec)
    assert trace.op == "projection_cap"
    assert (trace.cap_min, trace.cap_max) == (low, high)
    assert trace.pre == pytest.approx(pre, abs=1e-5)
    outside = [p < low or p > high for p in trace.pre]
    assert trace.clamped == outside
    assert trace.num_clamped == 4
    for pre_value, post_value, clamped in zip(trace.pre, trace.post, trace.clamped, strict=True):
        expected = low if pre_value < low else high if pre_value > high else pre_value
        assert post_value == pytest.approx(expected, abs=1e-5)
        assert clamped == (pre_value != pytest.approx(post_value, abs=1e-6))


def test_cap_after_add_sees_the_added_stream(model):
    """The cap clamps the stream after the layer's add: the mask is computed from pre + scale * v."""
    v = rand(5, 0.5)
    u = v / v.norm()
    add_only = model.trace_projection(PROMPT, "abc", SteeringSpec.single(LAYER, v, 2.0))
    ordered = sorted(add_only.post)
    half = len(ordered) // 2
    top = (ordered[half - 1] + ordered[half]) / 2  # between two values after the add: half the tokens are above
    spec = SteeringSpec({LAYER: LayerSteeringSpec(vector=v, scale=2.0, projection_cap=ProjectionCapSpec(u, None, top))})
    trace = model.trace_projection(PROMPT, "abc", spec)
    shifted = [p + 2.0 * float(v @ u) for p in trace.pre]
    assert trace.pre == add_only.pre
    assert trace.op == "add"
    assert trace.clamped == [s > top for s in add_only.post]
    assert trace.num_clamped == len(shifted) - half
    assert trace.post == pytest.approx([min(s, top) for s in shifted], abs=1e-5)


def test_ablation_scales_the_component(model):
    u = unit(6)
    spec = SteeringSpec({LAYER: LayerSteeringSpec(ablation=AblationSpec(u, 0.25))})
    trace = model.trace_projection(PROMPT, "xyz!", spec)
    assert trace.op == "ablation" and trace.clamped is None
    assert trace.post == pytest.approx([0.25 * p for p in trace.pre], abs=1e-5)


def test_earlier_layers_of_the_spec_shape_pre(model):
    """Tracing layer 2 of a spec that also adds at layer 0: pre carries layer 0's steering (not the plain model)."""
    v0, v2 = rand(7, 0.5), rand(8, 0.5)
    spec = SteeringSpec({0: LayerSteeringSpec(vector=v0, scale=4.0), LAYER: LayerSteeringSpec(vector=v2, scale=1.0)})
    trace = model.trace_projection(PROMPT, "ok", spec, layer=LAYER)
    plain = unsteered_projection(model, trace.token_ids, LAYER, v2 / v2.norm())
    assert trace.pre != pytest.approx(plain, abs=1e-3)
    # pre depends on the layers below only: other ops at layer 2 (same direction) see the same pre
    other = SteeringSpec({0: spec.layers[0], LAYER: LayerSteeringSpec(ablation=AblationSpec(v2, 0.0))})
    assert model.trace_projection(PROMPT, "ok", other, layer=LAYER).pre == pytest.approx(trace.pre, abs=1e-6)
    # the first steered layer is traced by default
    assert model.trace_projection(PROMPT, "ok", spec).layer == 0


def test_trace_with_token_id_prompt_matches_text_prompt(model):
    spec = SteeringSpec.single(LAYER, rand(9, 0.5), 2.0)
    by_text = model.trace_projection(PROMPT, "hi", spec)
    by_ids = model.trace_projection(
        model.encode_prompt(PROMPT), model.tokenizer("hi", add_special_tokens=False)["input_ids"], spec
    )
    assert by_ids == by_text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layer": 1}, "layer: 1 has no op in the spec; trace one of its steered layers [2]"),
        ({"layer": 9}, "layer: 9 is out of range for a model with 4 layers; use 0..3"),
        ({"op": "ablation"}, "op: the layer has no ablation; trace one of add"),
        ({"op": "rotate"}, "op: 'rotate' is not one of add, projection_cap, ablation"),
        ({"completion": 3.5}, "completion: 3.5 is neither text nor a list of token ids; pass one of those"),
        ({"prompt": ""}, "prompt: it has no tokens"),
        ({"completion": [5, -1]}, "completion: token ids must be >= 0; got -1"),
    ],
)
def test_bad_input_names_the_field(model, kwargs, message):
    spec = SteeringSpec.single(LAYER, rand(10), 1.0)
    call = {"prompt": PROMPT, "completion": "ab", "spec": spec, **kwargs}
    if call["prompt"] == "":
        call["prompt"] = []
    with pytest.raises(SteeringError) as info:
        model.trace_projection(**call)
    assert str(info.value).startswith(message)


def test_empty_spec_and_limits_are_refused(model):
    with pytest.raises(SteeringError, match="spec: it has no op at any layer"):
        model.trace_projection(PROMPT, "ab", SteeringSpec())
    model.limits.max_new_tokens = 3
    try:
        with pytest.raises(SteeringError, match="max_new_tokens: 4 is over the limit of 3"):
            model.trace_projection(PROMPT, "abcd", SteeringSpec.single(LAYER, rand(11), 1.0))
    finally:
        model.limits.max_new_tokens = None


def test_pure_helpers():
    u = unit(12)
    layer = LayerSteeringSpec(projection_cap=ProjectionCapSpec(u, -1.0, 1.0))
    rows = torch.stack([u * -2.0, u * 0.5, u * 1.0, u * 3.0])
    assert clamped_mask(rows, layer) == [True, False, False, True]
    assert clamped_mask(rows, LayerSteeringSpec(vector=u)) is None
    op, direction = trace_direction(LayerSteeringSpec(vector=u * 3.0, ablation=AblationSpec(unit(13), 0.0)))
    assert op == "add" and torch.allclose(direction, u, atol=1e-6)
    op, direction = trace_direction(LayerSteeringSpec(vector=u * 3.0, ablation=AblationSpec(unit(13), 0.0)), "ablation")
    assert op == "ablation" and torch.allclose(direction, unit(13), atol=1e-6)


def test_skip_first_tokens_leaves_leading_positions_unsteered_and_unclamped(model):
    u = unit(14)
    spec = SteeringSpec({LAYER: LayerSteeringSpec(projection_cap=ProjectionCapSpec(u, -0.01, 0.01))}, skip_first_tokens=3)
    trace = model.trace_projection(PROMPT, "abcdef", spec)
    assert trace.skip_first_tokens == 3
    assert trace.clamped[:3] == [False, False, False]
    assert trace.post[:3] == pytest.approx(trace.pre[:3], abs=1e-6)
    assert trace.clamped[3:] == [abs(p) > 0.01 for p in trace.pre[3:]]
    assert trace.post[3:] == pytest.approx([min(max(p, -0.01), 0.01) for p in trace.pre[3:]], abs=1e-5)


@pytest.mark.parametrize(
    "layer_spec",
    [
        LayerSteeringSpec(vector=rand(15, 0.5), scale=2.5),
        LayerSteeringSpec(projection_cap=ProjectionCapSpec(unit(16), -0.2, 0.1)),
        LayerSteeringSpec(ablation=AblationSpec(unit(17), -1.0)),
        LayerSteeringSpec(
            vector=rand(18, 0.5), projection_cap=ProjectionCapSpec(unit(19), None, 0.0), ablation=AblationSpec(unit(20), 0.0)
        ),
    ],
    ids=["add", "cap", "ablation", "all"],
)
def test_post_rows_reproduce_the_hooks(model, layer_spec):
    """The vLLM path computes ``post`` from ``pre`` with :func:`post_rows`: it must equal what the HF hooks carried."""
    from engine.projection_trace import post_rows

    spec = SteeringSpec({LAYER: layer_spec}, skip_first_tokens=2)
    ids = model.encode_prompt(PROMPT) + [72, 105]
    pre, post = model._trace_rows(ids, spec, LAYER)
    assert torch.allclose(post_rows(pre, layer_spec, 2), post, atol=1e-5)
    assert torch.equal(post[:2], pre[:2])


def test_vllm_prefix_sums_give_rows_and_spec_below_keeps_earlier_layers():
    from engine.vllm_trace import rows_from_prefix_sums, spec_below

    rows = np.array([[9.0, -9.0], [1.0, 2.0], [3.0, 5.0], [-4.0, 0.5]])
    # prefix of length 1: row 0; longer prefixes: rows 1..k-1 (position 0 left out of the capture)
    sums = [rows[0], rows[1], rows[1] + rows[2], rows[1] + rows[2] + rows[3]]
    assert np.array_equal(rows_from_prefix_sums(sums), rows)
    assert np.array_equal(rows_from_prefix_sums(sums[:1]), rows[:1])
    spec = SteeringSpec({0: LayerSteeringSpec(vector=rand(21)), 2: LayerSteeringSpec(vector=rand(22))}, skip_first_tokens=1)
    assert spec_below(spec, 0) is None
    below = spec_below(spec, 2)
    assert list(below.layers) == [0] and below.skip_first_tokens == 1
    assert torch.equal(below.layers[0].vector, spec.layers[0].vector)
    assert list(spec.layers) == [0, 2]  # the caller's spec is untouched


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_trace_matches_transformers(vllm_tiny_llama):
    """The vLLM trace (prefix captures + the hooks' math) equals the transformers trace (hooks) on one tiny Llama (the
    session's engine on it, capture on)."""
    from tests.conftest import build_tiny_checkpoint

    path = build_tiny_checkpoint("llama")
    hf = HFSteerModel(str(path), dtype="float32")
    hidden = hf.hidden_size
    g = torch.Generator().manual_seed(0)
    v0, v2 = torch.randn(hidden, generator=g), torch.randn(hidden, generator=g)
    u2 = v2 / v2.norm()
    add = SteeringSpec({0: LayerSteeringSpec(vector=v0, scale=0.5), 2: LayerSteeringSpec(vector=v2, scale=2.0)})
    probe = hf.trace_projection("Tell me a story.", "Once upon a time", SteeringSpec.single(2, u2), layer=2)
    ordered = sorted(probe.pre[1:])
    middle = (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2  # between two tokens: no knife edge
    cap = SteeringSpec({2: LayerSteeringSpec(projection_cap=ProjectionCapSpec(u2, None, middle))}, skip_first_tokens=1)
    model = vllm_tiny_llama
    for spec, layer in ((add, 2), (add, 0), (cap, 2)):
        want = hf.trace_projection("Tell me a story.", "Once upon a time", spec, layer=layer)
        got = model.trace_projection("Tell me a story.", "Once upon a time", spec, layer=layer)
        assert (got.token_ids, got.tokens, got.prompt_len, got.op) == (want.token_ids, want.tokens, want.prompt_len, want.op)
        scale = max(abs(x) for x in want.pre[1:])
        assert got.pre == pytest.approx(want.pre, abs=1e-4 * scale)
        assert got.post == pytest.approx(want.post, abs=1e-4 * scale)
        assert got.clamped == want.clamped
    assert 0 < want.num_clamped < len(want.pre)  # the cap case clamps some tokens, not all


# -- the UI view ---------------------------------------------------------------------------------------------------
def hand_trace(**changes) -> ProjectionTrace:
    values = dict(
        layer=3,
        op="projection_cap",
        token_ids=[1, 2, 3, 4],
        tokens=["<s>", "a", " b", '"c'],
        prompt_len=2,
        pre=[10.0, 0.0, 1.0, -3.0],
        post=[10.0, 0.0, 1.0, -2.0],
        clamped=[False, False, False, True],
        skip_first_tokens=0,
        cap_min=-2.0,
        cap_max=None,
        spec_fingerprint="abcdef0123456789" * 4,
    )
    values.update(changes)
    return ProjectionTrace(**values)


def test_svg_plots_exact_points_bounds_and_clamped_tokens():
    from app.projection_view import projection_svg

    svg = projection_svg(hand_trace())
    # completion tokens 2 and 3; y range [-3, 1] (values and the cap's bound) over 178 px from y=12; x 56 + (k+0.5)*326
    assert '<polyline class="pre" points="219.0,12.0 545.0,190.0"' in svg
    assert '<polyline class="post" points="219.0,12.0 545.0,145.5"' in svg
    assert '<line class="bound" data-value="-2" x1="56" x2="708" y1="145.5" y2="145.5"' in svg
    assert svg.count('<g class="token"') == 2
    assert '<g class="token" data-index="2" data-token=" b" data-pre="1" data-post="1" data-clamped="0">' in svg
    assert '<g class="token" data-index="3" data-token="&quot;c" data-pre="-3" data-post="-2" data-clamped="1">' in svg
    assert svg.count('<circle class="clamped"') == 1 and '<circle class="clamped" cx="545.0" cy="145.5"' in svg
    assert "<title>#3 &#x27;&quot;c&#x27;: before -3, after -2, clamped</title>" in svg
    # with the prompt: four tokens over [-3, 10], the prompt band over the first two
    full = projection_svg(hand_trace(), include_prompt=True)
    assert full.count('<g class="token"') == 4
    assert '<rect class="prompt-band" x="56" y="12" width="326.0" height="178"' in full
    assert '<polyline class="pre" points="137.5,12.0 300.5,148.9 463.5,135.2 626.5,190.0"' in full


def test_html_summary_and_no_cap_view():
    from app.projection_view import projection_html

    page = projection_html(hand_trace())
    assert (
        "Layer 3, projection onto the cap direction: 2 completion tokens, mean change +0.5 (before → after); "
        "the cap [-2, ∞] clamped 1 of them. Spec abcdef012345." in page
    )
    add = projection_html(
        hand_trace(op="add", clamped=None, cap_min=None, cap_max=None, post=[12.0, 2.0, 3.0, -1.0], skip_first_tokens=1)
    )
    assert "projection onto the add vector: 2 completion tokens, mean change +2 (before → after); the first 1 positions" in add
    assert 'class="clamped"' not in add and 'class="bound"' not in add and "◯ clamped" not in add


def test_trace_handler_on_the_tiny_model(tmp_path):
    from app.callbacks import Callbacks
    from app.projection_view import EMPTY_OUTPUT, trace_handler
    from vectors import VectorRegistry

    engine = tiny_hf()
    reg = VectorRegistry(tmp_path / "registry")
    reg.add("up", rand(23, 3.0), model_id="tiny-llama")
    handler = trace_handler(Callbacks(engine, reg, tmp_path / "exports"))
    steering = ("up", 2, 1.5, "quick", None, {})
    page, data = handler("hi", "", True, "abc", None, False, *steering)
    spec = SteeringSpec.single(2, reg.get("up").vector, 1.5)
    want = engine.trace_projection("hi", "abc", spec)
    assert data == want.to_dict()
    assert data["layer"] == 2 and data["prompt_len"] == 3 and len(data["pre"]) == 6
    assert page.count('<g class="token"') == 3
    # a second quick row and a skip: the spec the compare call builds from the same controls
    page, data = handler("hi", "", True, "abc", 0, True, *steering, "up", 0, -1.0, None, 0, 1.0, None, 0, 1.0, 2)
    two = SteeringSpec({0: LayerSteeringSpec(reg.get("up").vector, -1.0), 2: LayerSteeringSpec(reg.get("up").vector, 1.5)})
    two.skip_first_tokens = 2
    assert data == engine.trace_projection("hi", "abc", two, layer=0).to_dict()
    assert data["skip_first_tokens"] == 2 and page.count('<g class="token"') == 6
    with pytest.raises(SteeringError, match=EMPTY_OUTPUT):
        handler("hi", "", True, "", None, False, *steering)
    with pytest.raises(SteeringError, match="layer: 1 has no op in the spec"):
        handler("hi", "", True, "abc", 1, False, *steering)
    with pytest.raises(SteeringError, match="trace layer: 1.5 is not a whole number"):
        handler("hi", "", True, "abc", 1.5, False, *steering)


def test_attach_wires_the_accordion_and_the_api_endpoint(tmp_path):
    import gradio as gr

    from app.callbacks import Callbacks
    from app.projection_view import attach_projection_view
    from vectors import VectorRegistry

    cb = Callbacks(tiny_hf(), VectorRegistry(tmp_path / "registry"), tmp_path / "exports")
    with gr.Blocks() as demo:
        steering = [gr.Textbox(), gr.Number(), gr.Number(), gr.Textbox(), gr.Dataframe(), gr.State({})]
        view = attach_projection_view(
            cb,
            prompt=gr.Textbox(),
            system_prompt=gr.Textbox(),
            raw_completion=gr.Checkbox(),
            steered_text=gr.Textbox(),
            steering_inputs=steering,
        )
    config = demo.get_config_file()
    ids = {c["props"].get("elem_id") for c in config["components"]}
    assert {"projection-accordion", "projection-layer", "projection-trace", "projection-plot", "projection-data"} <= ids
    assert view.button.value == "Trace projection"
    assert "trace_projection" in [d.get("api_name") for d in config["dependencies"]]
