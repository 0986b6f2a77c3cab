"""Fast tests of the quick controls (issue 18, items 9, 15, 16, 17, 18): the scale range derived from the vector,
several vector rows -> the spec the editor builds, the first tokens left unsteered (compare and the projection trace
alike), and multi-turn chat per side with regenerate."""

from __future__ import annotations

import re

import pytest
import torch

from app.callbacks import CHAT_NEEDS_TEMPLATE, Callbacks
from app.chat import NO_TURN_YET, add_turn, drop_last_turn, new_chat, turn_prompts
from app.projection_view import trace_handler
from app.scale_range import REFERENCE_PROMPTS, ScaleRange, nice_ceil, scale_note, scale_range
from app.stamps import stamps
from engine import GenerationConfig
from tests.helpers import tiny_hf
from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SteeringError, SteeringSpec, VectorRegistry
from vectors.registry import VectorEntry

HIDDEN = 64
NO_MORE_ROWS = (None, 0, 1.0) * 3  # vector_2 .. scale_4 left out


@pytest.fixture(scope="module")
def engine():
    return tiny_hf(hidden=HIDDEN)


@pytest.fixture
def registry(tmp_path):
    reg = VectorRegistry(tmp_path / "registry")
    gen = torch.Generator().manual_seed(0)
    reg.add("up", torch.randn(HIDDEN, generator=gen) * 3, suggested_layer=2, extra={"suggested_scale": 1.5})
    reg.add("down", torch.randn(HIDDEN, generator=gen) * 3)
    return reg


@pytest.fixture
def cb(engine, registry, tmp_path):
    return Callbacks(engine, registry, tmp_path / "exports")


def rows_args(*rows):
    """``extra`` for rows 2..: the given (vector, layer, scale) rows, the rest left out."""
    flat = [c for row in rows for c in row]
    return tuple(flat) + NO_MORE_ROWS[len(flat) :]


# -- item 9: the scale range follows the vector ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "nice"), [(3.958, 5.0), (8.53, 10.0), (0.3, 0.5), (1.0, 1.0), (100.0, 100.0), (0.012, 0.02), (150.0, 200.0)]
)
def test_nice_ceil(value, nice):
    assert nice_ceil(value) == nice


@pytest.mark.parametrize(
    ("vector_norm", "residual_norm", "suggested", "expected"),
    [
        (26.09, 103.27, 2.0, ScaleRange(5.0, 0.05, 2.0)),  # pirate at layer 8: residual/vector = 3.96 -> +-5
        (12.11, 103.27, 3.0, ScaleRange(10.0, 0.1, 3.0)),  # happy: 8.5 -> +-10
        (26.28, 112.54, 2.5, ScaleRange(5.0, 0.05, 2.5)),  # formal at layer 10: max(4.28, 2 x 2.5) -> +-5
        (10.0, 100.0, None, ScaleRange(10.0, 0.1, 4.0)),  # no suggestion: 0.4 x residual/vector
        (1.0, 103.0, None, ScaleRange(200.0, 2.0, 42.0)),  # a unit vector: 0.4 x 103 = 41.2, snapped to the step
        (26.09, None, 2.0, ScaleRange(10.0, 0.1, 2.0)),  # residual unknown: 4 x the suggested scale
        (26.09, None, None, ScaleRange(10.0, 0.1, 1.0)),  # nothing known: +-10, the vector as made
        (26.09, None, 0.0, ScaleRange(10.0, 0.1, 1.0)),  # a suggested 0 is no suggestion
        (2.0, 1.0, None, ScaleRange(0.5, 0.005, 0.2)),  # a vector longer than the residual: a small range
    ],
)
def test_scale_range_from_the_vector_and_the_residual(vector_norm, residual_norm, suggested, expected):
    assert scale_range(vector_norm, residual_norm, suggested) == expected
    assert expected.minimum == -expected.span


def test_scale_note_relates_the_scale_to_the_residual_norm():
    assert scale_note(2.0, 26.09, 103.27, 8) == "2 = about 0.51x the residual norm at layer 8"
    assert scale_note(-3.0, 12.11, 103.27, 8) == "-3 = about 0.35x the residual norm at layer 8"
    assert scale_note(2.0, 26.09, None, 8) == (
        "relation to the residual norm at layer 8 unknown (no record for this vector); generic range"
    )


def test_registry_entry_residual_norm_is_read_from_extra():
    vector = torch.ones(4)
    assert VectorEntry("a", vector, extra={"residual_norm": 103.25}).residual_norm == 103.25
    for bad in (True, -1.0, 0, "103"):
        assert VectorEntry("a", vector, extra={"residual_norm": bad}).residual_norm is None
    assert VectorEntry("a", vector).residual_norm is None


def test_created_vectors_record_the_residual_norm_and_the_slider_uses_it(cb, engine, registry):
    positive, negative = ["I love it", "great day", "so happy"], ["I hate it", "awful day"]
    details, _ = cb.create_vector("made", "", 2, "\n".join(positive), "\n".join(negative), 0, False)
    entry = registry.get("made")
    expected = float(engine.mean_activations(positive + negative, [2])[2].norm())  # the mean over all the prompts
    assert details["extra"]["residual_norm"] == pytest.approx(expected, abs=1e-4)
    assert entry.residual_norm == details["extra"]["residual_norm"]
    from engine import mean_difference

    torch.testing.assert_close(entry.vector, mean_difference(engine, positive, negative, 2), rtol=0, atol=0)
    # at its own layer the record counts; at another layer the reference measurement does
    settings, note = cb.scale_controls("made", 2, None, {})
    assert settings == scale_range(entry.norm, entry.residual_norm, None)
    assert note == scale_note(settings.default, entry.norm, entry.residual_norm, 2)
    reference = float(engine.mean_activations([[{"role": "user", "content": p}] for p in REFERENCE_PROMPTS], [3])[3].norm())
    assert cb.residual_norm(entry, 3) == pytest.approx(reference, rel=1e-5)
    assert cb.scale_note("made", 3, 2.0, {}) == scale_note(2.0, entry.norm, cb.residual_norm(entry, 3), 3)


def test_without_a_residual_measurement_the_range_is_generic(engine, registry, tmp_path):
    class NoCapture:  # a vLLM engine without activation capture: mean_activations refuses
        def __getattr__(self, name):
            return getattr(engine, name)

        def mean_activations(self, *args, **kwargs):
            raise SteeringError("capture: activation capture is off")

    cb = Callbacks(NoCapture(), registry, tmp_path / "exports")
    assert cb.reference_residual_norms() == {}
    settings, note = cb.scale_controls("down", 3, None, {})
    assert settings == ScaleRange(10.0, 0.1, 1.0)
    assert note == "relation to the residual norm at layer 3 unknown (no record for this vector); generic range"
    assert cb.vector_defaults("down", 3, 9.0) == (3, 9.0)  # nothing known: the slider keeps its value


# -- item 17: several vectors in the quick controls --------------------------------------------------------------
def test_quick_rows_build_the_spec_the_editor_builds(cb, registry):
    extra = rows_args(("down", 3, -2.0))
    quick = cb.current_spec("up", 2, 1.5, "quick", None, {}, extra=extra)
    editor = [[2, "up", 1.5, None, None, None, None, None], [3, "down", -2.0, None, None, None, None, None]]
    from_editor = cb.current_spec(None, 0, 0, "editor", editor, {})
    up, down = registry.get("up").vector, registry.get("down").vector
    direct = SteeringSpec({2: LayerSteeringSpec(up, 1.5), 3: LayerSteeringSpec(down, -2.0)})
    assert quick.fingerprint() == from_editor.fingerprint() == direct.fingerprint()
    assert quick.metadata.description == "up at layer 2, scale 1.5; down at layer 3, scale -2"
    assert cb.quick_to_editor("up", 2, 1.5, {}, *extra) == ("editor", editor)
    # a removed row (no vector) is off, whatever its layer and scale
    assert cb.current_spec("up", 2, 1.5, "quick", None, {}, extra=rows_args((None, 2, 9.0))).fingerprint() == (
        SteeringSpec.single(2, up, 1.5).fingerprint()
    )


@pytest.mark.parametrize(
    ("row1", "rows", "message"),
    [
        (("up", 2, 1.0), [("nope", 3, 1.0)], "vector_2: name: no vector 'nope'"),
        (
            ("up", 2, 1.0),
            [("down", 3, 1.0), ("down", 2.5, 1.0)],
            "layer_3: 2.5 is not a layer of this model; pass a whole number 0..3",
        ),
        (("up", 2, 1.0), [("down", 1, 1.0), (None, 0, 1.0), ("down", 9, 1.0)], "layer_4: 9 is not a layer of this model"),
        (("up", 2, 1.0), [("down", 3, float("nan"))], "scale_2: nan is not finite; pass e.g. 2.0"),
        (("up", 2, 1.0), [("down", 3, "x")], "scale_2: 'x' is not a number; pass e.g. 2.0"),
        (
            ("up", 2, 1.0),
            [("down", 2, 1.0)],
            "layer_2: layer 2 is already steered by row 1; the quick controls add one vector per layer, so pick another "
            "layer for this row",
        ),
        ((None, 2, 1.0), [("down", 3, 1.0)], "vector: none selected; pick a registry vector"),
    ],
)
def test_bad_quick_rows_name_their_field(cb, row1, rows, message):
    with pytest.raises(SteeringError) as info:
        cb.current_spec(*row1, "quick", None, {}, extra=rows_args(*rows))
    assert str(info.value).startswith(message)


def test_compare_with_two_rows_steers_with_both(cb, engine, registry):
    *_, (baseline, steered, _, stamp, _) = cb.compare(
        "hello", "", "up", 2, 4.0, 5, 0.0, 1.0, 0, True, "quick", None, {}, "down", 3, -3.0
    )
    up, down = registry.get("up").vector, registry.get("down").vector
    spec = SteeringSpec({2: LayerSteeringSpec(up, 4.0), 3: LayerSteeringSpec(down, -3.0)})
    config = GenerationConfig(max_new_tokens=5)
    assert steered == engine.generate("hello", config, steering=spec)[0].text
    assert baseline == engine.generate("hello", config, steering=[None])[0].text
    assert stamp.splitlines()[-1].startswith("**steered** · L2\\: add up ×4\\; L3\\: add down ×\\-3 · spec `")


# -- item 15: the first tokens left unsteered --------------------------------------------------------------------
def test_skip_first_tokens_defaults_to_one_with_a_cap_or_ablation(cb, registry):
    up = registry.get("up").vector
    add_only = [[1, "up", 2.0, None, None, None, None, None]]
    capped = [[1, None, None, "up", -1.0, 1.0, None, None]]
    ablated = [[1, None, None, None, None, None, "down", 0.0]]
    assert cb.current_spec(None, 0, 0, "editor", capped, {}).skip_first_tokens == 0  # the API's default: as before
    assert cb.current_spec(None, 0, 0, "editor", add_only, {}, skip_first_tokens=None).skip_first_tokens == 0
    assert cb.current_spec(None, 0, 0, "editor", capped, {}, skip_first_tokens=None).skip_first_tokens == 1
    assert cb.current_spec(None, 0, 0, "editor", ablated, {}, skip_first_tokens="").skip_first_tokens == 1
    assert cb.current_spec(None, 0, 0, "editor", capped, {}, skip_first_tokens=0).skip_first_tokens == 0
    quick = cb.current_spec("up", 1, 2.0, "quick", None, {}, skip_first_tokens=3.0)
    assert quick.fingerprint() == SteeringSpec.single(1, up, 2.0, skip_first_tokens=3).fingerprint()
    with pytest.raises(SteeringError, match=r"^skip_first_tokens: 1.5 is not a whole number >= 0"):
        cb.current_spec("up", 1, 2.0, "quick", None, {}, skip_first_tokens=1.5)
    expected = SteeringSpec({1: LayerSteeringSpec(projection_cap=ProjectionCapSpec(up, -1.0, 1.0))}, skip_first_tokens=1)
    assert cb.current_spec(None, 0, 0, "editor", capped, {}, skip_first_tokens=None).fingerprint() == expected.fingerprint()
    ablation = SteeringSpec({1: LayerSteeringSpec(ablation=AblationSpec(registry.get("down").vector, 0.0))})
    assert cb.current_spec(None, 0, 0, "editor", ablated, {}, skip_first_tokens=0).fingerprint() == ablation.fingerprint()


def test_the_stamp_says_which_tokens_are_unsteered():
    spec = SteeringSpec.single(1, torch.ones(4), 2.0, skip_first_tokens=1)
    config = GenerationConfig(max_new_tokens=3, seed=0)
    _, steered = stamps("L1: cap up [-1, 1]", spec, config)
    assert steered == (
        f"**steered** · L1\\: cap up \\[\\-1\\, 1\\] · first 1 token unsteered · spec `{spec.fingerprint()[:12]}` · "
        "greedy · seed 0 · max 3 tokens"
    )
    spec.skip_first_tokens = 2
    assert "· first 2 tokens unsteered ·" in stamps("x", spec, config)[1]


# -- item 18: multi-turn chat, each side its own history ---------------------------------------------------------
def test_chat_history_helpers():
    history = add_turn(new_chat(), "Hi", ["plain", "steered!"])
    assert history == {
        "baseline": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "plain"}],
        "steered": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "steered!"}],
    }
    baseline, steered = turn_prompts(history, "More?", "Be brief.")
    assert baseline == [{"role": "system", "content": "Be brief."}, *history["baseline"], {"role": "user", "content": "More?"}]
    assert steered[-2:] == [{"role": "assistant", "content": "steered!"}, {"role": "user", "content": "More?"}]
    with pytest.raises(SteeringError, match="history: not a conversation per side"):
        turn_prompts({"baseline": "oops"}, "x", "")


def test_each_side_continues_from_its_own_replies(cb, engine, registry):
    def turn(prompt, history):
        args = ("", "up", 2, 6.0, 4, 0.0, 1.0, 0, False, "quick", None, {}, *NO_MORE_ROWS, None, True, history)
        return list(cb.compare(prompt, *args))[-1]

    first = turn("hi", None)
    assert first[4]["baseline"][1] == {"role": "assistant", "content": first[0]}
    assert first[4]["steered"][1] == {"role": "assistant", "content": first[1]}
    assert first[0] != first[1]  # the sides have diverged: the next turn shows whose history each one gets
    second = turn("more", first[4])
    spec = SteeringSpec.single(2, registry.get("up").vector, 6.0)
    config = GenerationConfig(max_new_tokens=4)
    steered_chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": first[1]},
        {"role": "user", "content": "more"},
    ]
    baseline_chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": first[0]},
        {"role": "user", "content": "more"},
    ]
    assert second[1] == engine.generate(steered_chat, config, steering=spec)[0].text
    assert second[0] == engine.generate(baseline_chat, config, steering=[None])[0].text
    assert [len(second[4][side]) for side in ("baseline", "steered")] == [4, 4]
    assert cb.new_chat() == (new_chat(), "", "", "", "")
    with pytest.raises(SteeringError, match=re.escape(CHAT_NEEDS_TEMPLATE)):
        list(cb.compare("hi", "", "up", 2, 6.0, 4, 0.0, 1.0, 0, True, "quick", None, {}, *NO_MORE_ROWS, None, True, None))


def test_drop_last_turn_gives_the_earlier_history_and_the_message():
    one = add_turn(new_chat(), "Hi", ["plain", "steered!"])
    two = add_turn(one, "More?", ["plain 2", "steered 2"])
    assert drop_last_turn(two) == (one, "More?")
    assert drop_last_turn(one) == (new_chat(), "Hi")
    assert two["steered"][-1] == {"role": "assistant", "content": "steered 2"}  # the caller's history is not changed
    for empty in (None, new_chat(), {}):
        with pytest.raises(SteeringError, match=f"^{re.escape(NO_TURN_YET)}$"):
            drop_last_turn(empty)
    uneven = {"baseline": one["baseline"], "steered": two["steered"]}
    with pytest.raises(SteeringError, match="^history: the sides do not end in the same user turn; press New chat$"):
        drop_last_turn(uneven)


def test_regenerate_runs_the_last_turn_again(cb, engine, registry):
    def turn(prompt, history, seed=0, temperature=0.0):
        args = ("", "up", 2, 6.0, 4, temperature, 1.0, seed, False, "quick", None, {}, *NO_MORE_ROWS, 0, True, history)
        return list(cb.compare(prompt, *args))[-1]

    def regenerate(history, seed=0, temperature=0.0):
        args = ("", "up", 2, 6.0, 4, temperature, 1.0, seed, False, "quick", None, {}, *NO_MORE_ROWS, 0, history)
        return list(cb.regenerate(*args))[-1]

    first = turn("hi", None)
    second = turn("more", first[4])
    again = regenerate(second[4])
    assert (again[:2], again[4]) == (second[:2], second[4])  # greedy: the same replies, the same two turns
    assert [line.splitlines()[-1] for line in again[2:4]] == [line.splitlines()[-1] for line in second[2:4]]  # stamps
    assert [len(again[4][side]) for side in ("baseline", "steered")] == [4, 4]
    # sampling with another seed: a new last turn, computed as one batch of both sides' conversations
    sampled = regenerate(second[4], seed=7, temperature=1.0)
    assert sampled[4]["baseline"][:2] == first[4]["baseline"] and sampled[4]["steered"][:2] == first[4]["steered"]
    conversations = [[*first[4][side], {"role": "user", "content": "more"}] for side in ("baseline", "steered")]
    config = GenerationConfig(max_new_tokens=4, temperature=1.0, top_p=1.0, seed=7, seeds=[7, 7])
    spec = SteeringSpec.single(2, registry.get("up").vector, 6.0)
    expected = engine.generate(conversations, config, steering=[None, spec])
    assert sampled[:2] == (expected[0].text, expected[1].text)
    assert sampled[4]["steered"][2:] == [
        {"role": "user", "content": "more"},
        {"role": "assistant", "content": expected[1].text},
    ]
    assert sampled[1] != second[1]  # the seed changed the steered reply
    with pytest.raises(SteeringError, match=f"^{re.escape(NO_TURN_YET)}$"):
        list(cb.regenerate("", "up", 2, 6.0, 4, 0.0, 1.0, 0, False, "quick", None, {}, history=new_chat()))
    with pytest.raises(SteeringError, match=re.escape(CHAT_NEEDS_TEMPLATE)):
        list(cb.regenerate("", "up", 2, 6.0, 4, 0.0, 1.0, 0, True, "quick", None, {}, history=second[4]))


# -- item 16: the projection trace takes the same controls as compare --------------------------------------------
def test_trace_projection_steers_every_token_by_default_like_compare(cb, engine, registry):
    handler = trace_handler(cb)
    capped = [[1, None, None, "up", -1.0, 1.0, None, None]]
    _, data = handler("hi", "", True, "abc", None, False, None, 0, 0, "editor", capped, {})
    spec = SteeringSpec({1: LayerSteeringSpec(projection_cap=ProjectionCapSpec(registry.get("up").vector, -1.0, 1.0))})
    assert data == engine.trace_projection("hi", "abc", spec).to_dict()
    assert data["skip_first_tokens"] == 0  # as /compare's default: the same spec for the same controls
    assert cb.current_spec(None, 0, 0, "editor", capped, {}).fingerprint() == data["spec_fingerprint"]
    _, page_default = handler("hi", "", True, "abc", None, False, None, 0, 0, "editor", capped, {}, *NO_MORE_ROWS, None)
    assert page_default["skip_first_tokens"] == 1  # empty: the page's default for a cap


def test_trace_layer_box_is_empty_or_a_whole_number():
    from app.projection_view import trace_layer_index

    # the page sends the box's text (an empty number box would arrive as 0, tracing layer 0); the API may send numbers
    assert [trace_layer_index(v) for v in (None, "", "  ", "3", " 0 ", 3, 8.0)] == [None, None, None, 3, 0, 3, 8]
    for bad, message in (
        ("x", "trace layer: 'x' is not a number; type a 0-based decoder layer or leave it empty"),
        ("1.5", "trace layer: 1.5 is not a whole number; use a 0-based decoder layer"),
        (2.5, "trace layer: 2.5 is not a whole number; use a 0-based decoder layer"),
    ):
        with pytest.raises(SteeringError, match=f"^{re.escape(message)}$"):
            trace_layer_index(bad)
