"""End-to-end tests of the app through gradio_client on the default model (transformers backend, fp32).

The app runs in-process on 127.0.0.1; every call goes through the queue and the HTTP API like a real client's.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from app.callbacks import SWEEP_RUNNING, build_prompt
from engine import GenerationConfig
from tests.test_app_support import registry_copy, serve
from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SpecMetadata, SteeringSpec, import_gguf_control_vector

pytestmark = pytest.mark.slow

PROMPT = "Tell me about your weekend."
TOKENS = 12


@pytest.fixture(scope="module")
def registry(hf_default, tmp_path_factory):
    return registry_copy(tmp_path_factory.mktemp("registry"), hf_default.hidden_size, hf_default.model_id)


@pytest.fixture(scope="module")
def url(hf_default, registry):
    with serve(hf_default, registry) as address:
        yield address


@pytest.fixture
def client(url):
    """A fresh client = a fresh session (its own gr.State)."""
    return Client(url, verbose=False)


def quick_spec(engine, registry, name: str, layer: int, scale: float) -> SteeringSpec:
    return SteeringSpec.single(layer, registry.get(name).vector, scale, model_id=engine.model_id)


def compare(client: Client, **kwargs):
    args = {"prompt": PROMPT, "max_new_tokens": TOKENS, "api_name": "/compare", **kwargs}
    return client.predict(**args)


def test_compare_matches_engine_steered_output(client, hf_default, registry):
    name = registry.names()[-1]
    layer = registry.get(name).suggested_layer or 1
    baseline, steered, baseline_stats, steered_stats = compare(
        client, vector=name, layer=layer, scale=4.0, temperature=0.8, top_p=0.95, seed=7, system_prompt="You are brief."
    )
    request = build_prompt(PROMPT, "You are brief.", raw_completion=False)
    config = GenerationConfig(max_new_tokens=TOKENS, temperature=0.8, top_p=0.95, seed=7)
    expected_steered = hf_default.generate(request, config, steering=quick_spec(hf_default, registry, name, layer, 4.0))[0]
    expected_baseline = hf_default.generate(request, config, steering=[None])[0]
    # Both panes share seed 7: each equals a single-prompt engine call with that seed.
    assert steered == expected_steered.text
    assert baseline == expected_baseline.text
    assert baseline != steered
    assert steered_stats.startswith(f"{expected_steered.num_tokens} tokens")
    assert baseline_stats.startswith(f"{expected_baseline.num_tokens} tokens")


def test_compare_raw_completion_and_editor_mode(client, hf_default, registry):
    name = registry.names()[0]
    v = registry.get(name).vector
    editor = {"headers": [], "data": [[2, name, 3.0, name, None, 1.0, None, None], [5, None, None, None, None, None, name, 0.0]]}
    _, steered, _, _ = compare(client, prompt="Once upon a time", raw_completion=True, steering_mode="editor", editor=editor)
    spec = SteeringSpec(
        {2: LayerSteeringSpec(v, 3.0, ProjectionCapSpec(v, None, 1.0)), 5: LayerSteeringSpec(ablation=AblationSpec(v, 0.0))}
    )
    assert (
        steered == hf_default.generate("Once upon a time", GenerationConfig(max_new_tokens=TOKENS, seed=0), steering=spec)[0].text
    )


def test_two_concurrent_clients_get_their_own_steering(url, hf_default, registry):
    a, b = registry.names()[0], registry.names()[-1]
    setups = {"a": (a, 6, 5.0), "b": (b, 3, -4.0)}
    results: dict[str, tuple] = {}

    def run(key: str) -> None:
        name, layer, scale = setups[key]
        results[key] = compare(Client(url, verbose=False), vector=name, layer=layer, scale=scale)

    threads = [threading.Thread(target=run, args=(k,)) for k in setups]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    request = build_prompt(PROMPT, "", raw_completion=False)
    for key, (name, layer, scale) in setups.items():
        expected = hf_default.generate(
            request,
            GenerationConfig(max_new_tokens=TOKENS, seed=0),
            steering=quick_spec(hf_default, registry, name, layer, scale),
        )
        assert results[key][1] == expected[0].text, key
    assert results["a"][1] != results["b"][1]
    assert results["a"][0] == results["b"][0]  # same unsteered baseline


def test_sweep_streams_rows_that_say_running_until_done(client, registry):
    job = client.submit(
        prompt=PROMPT, vector=registry.names()[-1], layer=4, scale=2.0, max_new_tokens=12, scales="-1, 1", api_name="/sweep"
    )
    final = job.result()
    updates = [update["data"] for update in job.outputs()]
    assert updates[0] == [[-1.0, 0, f"[{SWEEP_RUNNING}]"], [1.0, 0, f"[{SWEEP_RUNNING}]"]]
    assert len(updates) >= 3  # the empty grid, at least one row in progress, the final grid
    assert any(SWEEP_RUNNING in row[2] and row[1] > 0 for update in updates[1:-1] for row in update)
    assert updates[-1] == final["data"] and not any(SWEEP_RUNNING in row[2] for row in final["data"])


def test_sweep_returns_one_row_per_scale(client, hf_default, registry):
    name = registry.names()[-1]
    grid = client.predict(
        prompt=PROMPT, vector=name, layer=4, scale=2.0, max_new_tokens=8, scales="-1, 0, 1.5", api_name="/sweep"
    )
    rows = grid["data"]
    assert [row[0] for row in rows] == [-1.0, 0.0, 1.5]
    spec = quick_spec(hf_default, registry, name, 4, 2.0)
    request = build_prompt(PROMPT, "", raw_completion=False)
    config = GenerationConfig(max_new_tokens=8, seed=0)
    for factor, tokens, text in rows:
        expected = hf_default.generate(request, config, steering=spec.scaled(factor))[0]
        assert (tokens, text) == (expected.num_tokens, expected.text)


def test_export_import_round_trips_the_spec(client, hf_default, registry, tmp_path):
    name = registry.names()[-1]
    exported = client.predict(
        vector=name, layer=7, scale=2.5, steering_mode="quick", description="round trip", api_name="/export_spec"
    )
    spec = SteeringSpec.load(exported)
    assert spec.fingerprint() == quick_spec(hf_default, registry, name, 7, 2.5).fingerprint()
    assert spec.metadata.description == "round trip"
    mode, rows, status = client.predict(handle_file(exported), api_name="/import_spec")
    assert mode == "editor" and "Imported" in status
    assert rows["data"] == [[7, name, 2.5, None, None, None, None, None]]  # a registry vector comes back by name
    again = client.predict(
        vector=name, layer=0, scale=0.0, steering_mode="editor", editor=rows, description="", api_name="/export_spec"
    )
    assert SteeringSpec.load(again).fingerprint() == spec.fingerprint()


def test_import_of_vectors_outside_the_registry_round_trips(client, hf_default, tmp_path):
    gen = torch.Generator().manual_seed(1)
    h = hf_default.hidden_size
    v, c, a = (torch.randn(h, generator=gen) for _ in range(3))
    spec = SteeringSpec(
        {3: LayerSteeringSpec(v, 1.5, ProjectionCapSpec(c, -1.0, 2.0)), 9: LayerSteeringSpec(ablation=AblationSpec(a, 0.5))},
        SpecMetadata(description="custom"),
    )
    path = spec.save(tmp_path / "custom.safetensors")
    mode, rows, _ = client.predict(handle_file(str(path)), api_name="/import_spec")
    assert [row[0] for row in rows["data"]] == [3, 9]
    assert rows["data"][0][1].startswith("file:")
    # The tensors stay in this client's session; exporting the editor gives the same spec back.
    again = client.predict(steering_mode="editor", editor=rows, description="", api_name="/export_spec")
    assert SteeringSpec.load(again).fingerprint() == spec.fingerprint()
    _, steered, _, _ = compare(client, steering_mode="editor", editor=rows)
    assert (
        steered
        == hf_default.generate(build_prompt(PROMPT, "", False), GenerationConfig(max_new_tokens=TOKENS, seed=0), steering=spec)[
            0
        ].text
    )
    # Another session does not have them.
    with pytest.raises(AppError, match="not among this session's imported vectors"):
        compare(Client(client.src, verbose=False), steering_mode="editor", editor=rows)


def test_gguf_export_import_round_trip(client, hf_default, registry):
    name = registry.names()[0]
    exported = client.predict(vector=name, layer=5, scale=-2.0, steering_mode="quick", description="", api_name="/export_gguf")
    assert exported.endswith(".gguf")
    from_file = import_gguf_control_vector(exported)
    assert from_file.active_layers() == [5]
    torch.testing.assert_close(from_file.layers[5].vector, registry.get(name).vector * -2.0, rtol=0, atol=0)
    mode, rows, _ = client.predict(handle_file(exported), api_name="/import_spec")
    assert rows["data"][0][:3] == [5, "file:L5.vector", 1.0]  # the scale is baked into a llama.cpp direction
    again = client.predict(steering_mode="editor", editor=rows, description="", api_name="/export_spec")
    assert SteeringSpec.load(again).fingerprint() == from_file.fingerprint()


def test_malformed_upload_shows_the_error_and_changes_nothing(client, hf_default, registry, tmp_path):
    name = registry.names()[0]
    good = client.predict(vector=name, layer=2, scale=1.0, steering_mode="quick", description="", api_name="/export_spec")
    _, rows, _ = client.predict(handle_file(good), api_name="/import_spec")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04K\x01." + b"0" * 64)  # a pickle renamed to .safetensors
    with pytest.raises(AppError, match="not a valid safetensors file"):
        client.predict(handle_file(str(junk)), api_name="/import_spec")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(open(good, "rb").read()[:-100])
    with pytest.raises(AppError, match="spec file"):
        client.predict(handle_file(str(truncated)), api_name="/import_spec")
    wrong_model = tmp_path / "wrong.safetensors"
    SteeringSpec.single(1, torch.ones(hf_default.hidden_size + 1)).save(wrong_model)
    with pytest.raises(AppError, match="hidden_size"):
        client.predict(handle_file(str(wrong_model)), api_name="/import_spec")
    # The session still holds the good import.
    again = client.predict(steering_mode="editor", editor=rows, description="", api_name="/export_spec")
    assert SteeringSpec.load(again).fingerprint() == SteeringSpec.load(good).fingerprint()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vector": "no-such-vector"}, "no vector 'no-such-vector'"),
        ({"prompt": "  "}, "prompt: the prompt is empty"),
        (
            {"steering_mode": "editor", "editor": {"headers": [], "data": [[99, "x", 1.0, None, None, None, None, None]]}},
            "spec editor row 1, vector",
        ),
        ({"steering_mode": "editor", "editor": {"headers": [], "data": []}}, "no row holds a vector"),
    ],
)
def test_bad_compare_input_names_its_error(client, kwargs, message):
    with pytest.raises(AppError, match=message):
        compare(client, **kwargs)


def test_layer_out_of_range_is_rejected(client, hf_default, registry):
    name = registry.names()[0]
    rows = {"headers": [], "data": [[hf_default.num_layers, name, 1.0, None, None, None, None, None]]}
    with pytest.raises(AppError, match="layer out of range"):
        compare(client, steering_mode="editor", editor=rows)


def test_stop_cancels_and_the_engine_stays_usable(client, hf_default, registry):
    job = client.submit(prompt=PROMPT, vector=registry.names()[0], max_new_tokens=400, api_name="/compare")
    deadline = time.time() + 300
    while not job.outputs() and time.time() < deadline:
        time.sleep(0.2)
    assert job.outputs(), "no streamed output"
    job.cancel()
    started = time.time()
    baseline, steered, _, _ = compare(client, vector=registry.names()[0], max_new_tokens=4)
    assert baseline and steered
    assert time.time() - started < 120  # would wait for all 400 tokens if the cancelled stream kept the model's lock


def test_registry_endpoints(client, hf_default, registry):
    table = client.predict(api_name="/list_vectors")
    assert [row[0] for row in table["data"]] == registry.names()
    positive = ["I love this, it is wonderful!", "What a great day."]
    negative = ["I hate this, it is awful.", "What a terrible day."]
    created = client.predict(
        name="test-made",
        description="made in a test",
        layer=4,
        positive_prompts="\n".join(positive),
        negative_prompts="\n".join(negative) + "\n\n",
        suggested_scale=3.0,
        overwrite=False,
        api_name="/create_vector",
    )
    assert created["suggested_layer"] == 4 and created["extra"]["suggested_scale"] == 3.0
    from engine import mean_difference

    torch.testing.assert_close(
        registry.get("test-made").vector, mean_difference(hf_default, positive, negative, 4), rtol=0, atol=0
    )
    assert "test-made" in [row[0] for row in client.predict(api_name="/list_vectors")["data"]]
    assert client.predict("test-made", api_name="/vector_details")["description"] == "made in a test"
    assert client.predict("test-made", 0, 0.0, api_name="/vector_defaults") == (4, 3.0)
    with pytest.raises(AppError, match="already exists"):
        client.predict(name="test-made", layer=4, positive_prompts="a", negative_prompts="b", api_name="/create_vector")
    with pytest.raises(AppError, match="not a valid vector name"):
        client.predict(name="../escape", layer=4, positive_prompts="a", negative_prompts="b", api_name="/create_vector")
    assert "Deleted" in client.predict("test-made", api_name="/delete_vector")
    assert "test-made" not in registry
    with pytest.raises(AppError, match="no vector 'test-made' to remove"):
        client.predict("test-made", api_name="/delete_vector")


def test_engine_info(client, hf_default):
    info = client.predict(api_name="/engine_info")
    assert info["backend"] == "transformers"
    assert (info["num_layers"], info["hidden_size"]) == (hf_default.num_layers, hf_default.hidden_size)


def test_server_files_outside_the_app_folders_are_not_served(url, registry):
    import httpx

    entry = registry.get(registry.names()[0])
    for path in (entry.path.resolve(), Path(__file__).resolve()):
        assert httpx.get(f"{url}gradio_api/file={path}").status_code == 403


def test_compare_api_takes_several_vectors_and_names_the_bad_field(client, hf_default, registry):
    if not {"happy", "formal"} <= set(registry.names()):
        pytest.skip("needs the shipped registry/smollm2 vectors")
    _, steered, _, stamp = compare(client, vector="happy", layer=8, scale=3.0, vector_2="formal", layer_2=10, scale_2=2.5)
    spec = SteeringSpec(
        {8: LayerSteeringSpec(registry.get("happy").vector, 3.0), 10: LayerSteeringSpec(registry.get("formal").vector, 2.5)}
    )
    request = build_prompt(PROMPT, "", raw_completion=False)
    assert steered == hf_default.generate(request, GenerationConfig(max_new_tokens=TOKENS, seed=0), steering=spec)[0].text
    assert f"L8\\: add happy ×3\\; L10\\: add formal ×2\\.5 · spec `{spec.fingerprint()[:12]}`" in stamp
    bad = [
        ({"vector_2": "nope", "layer_2": 9}, "vector_2: name: no vector 'nope'"),
        ({"vector_3": "formal", "layer_3": 7.5}, "layer_3: 7.5 is not a whole number; send a whole number between 0 and 29"),
        ({"vector_2": "formal", "layer_2": 8}, "layer_2: layer 8 is already steered by row 1"),
        ({"vector_4": "formal", "layer_4": 9, "scale_4": "x"}, "scale_4: 'x' is not a number"),
        ({"skip_first_tokens": -1}, "skip_first_tokens: -1 is out of range"),
    ]
    for kwargs, message in bad:
        with pytest.raises(AppError, match=re.escape(message)):
            compare(client, vector="happy", layer=8, scale=3.0, **kwargs)


def test_chat_over_the_api_continues_the_sessions_conversation(client, hf_default, registry):
    name = registry.names()[-1]
    layer = registry.get(name).suggested_layer or 1
    setup = {"vector": name, "layer": layer, "scale": 2.0, "chat_mode": True}
    first = compare(client, **setup)
    second = compare(client, prompt="And then?", **setup)
    spec = quick_spec(hf_default, registry, name, layer, 2.0)
    config = GenerationConfig(max_new_tokens=TOKENS, seed=0)

    def conversation(reply: str) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "And then?"},
        ]

    assert second[1] == hf_default.generate(conversation(first[1]), config, steering=spec)[0].text
    assert second[0] == hf_default.generate(conversation(first[0]), config, steering=[None])[0].text
    assert client.predict(api_name="/new_chat") == ("", "", "", "")
    fresh = compare(client, prompt="And then?", **setup)
    assert fresh[1] == hf_default.generate(build_prompt("And then?", "", False), config, steering=spec)[0].text


def test_regenerate_over_the_api_runs_the_sessions_last_turn_again(client, hf_default, registry):
    from app.chat import NO_TURN_YET

    name = registry.names()[-1]
    layer = registry.get(name).suggested_layer or 1
    setup = {"vector": name, "layer": layer, "scale": 2.0, "max_new_tokens": 4}
    with pytest.raises(AppError, match=re.escape(NO_TURN_YET)):
        client.predict(**setup, api_name="/regenerate")
    first = compare(client, chat_mode=True, **setup)
    second = compare(client, prompt="And then?", chat_mode=True, **setup)
    again = client.predict(**setup, api_name="/regenerate")
    assert again[:2] == second[:2]  # greedy: the same last turn
    # the session holds two turns, the second regenerated: a third turn continues from both
    third = compare(client, prompt="Why?", chat_mode=True, **setup)
    conversation = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": first[1]},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": again[1]},
        {"role": "user", "content": "Why?"},
    ]
    spec = quick_spec(hf_default, registry, name, layer, 2.0)
    config = GenerationConfig(max_new_tokens=4, seed=0)
    assert third[1] == hf_default.generate(conversation, config, steering=spec)[0].text
