"""Fast app tests: editor parsing, handlers on a tiny random model, the error wrapper, ``app.py`` wiring, layering."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest
import torch

from app.callbacks import Callbacks, build_prompt, parse_scales
from app.errors import user_errors
from app.scale_range import scale_range
from app.sides import SIDES
from app.spec_editor import IMPORTED_PREFIX, VectorSource, rows_to_spec, spec_to_rows
from engine import GenerationConfig
from tests.helpers import tiny_hf
from tests.test_app_support import load_app_script
from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SteeringError, SteeringSpec, VectorRegistry

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = 64


@pytest.fixture(scope="module")
def engine():
    return tiny_hf(hidden=HIDDEN)


@pytest.fixture
def registry(tmp_path):
    reg = VectorRegistry(tmp_path / "registry")
    gen = torch.Generator().manual_seed(0)
    reg.add(
        "up", torch.randn(HIDDEN, generator=gen) * 3, model_id="tiny-llama", suggested_layer=2, extra={"suggested_scale": 1.5}
    )
    reg.add("down", torch.randn(HIDDEN, generator=gen) * 3, model_id="tiny-llama")
    reg.add("too-wide", torch.randn(HIDDEN * 2, generator=gen))
    return reg


@pytest.fixture
def cb(engine, registry, tmp_path):
    return Callbacks(engine, registry, tmp_path / "exports")


# -- spec editor ---------------------------------------------------------------------------------------------------
def test_editor_rows_round_trip_a_full_spec(registry):
    up, down = registry.get("up").vector, registry.get("down").vector
    other = torch.arange(HIDDEN, dtype=torch.float32) + 1
    spec = SteeringSpec(
        {
            1: LayerSteeringSpec(up, -2.0, ProjectionCapSpec(down, None, 0.5)),
            3: LayerSteeringSpec(other, 0.25, ablation=AblationSpec(up, 0.0)),
        }
    )
    rows, imported = spec_to_rows(spec, registry.list(hidden_size=HIDDEN))
    assert rows == [
        [1, "up", -2.0, "down", None, 0.5, None, None],
        [3, f"{IMPORTED_PREFIX}L3.vector", 0.25, None, None, None, "up", 0.0],
    ]
    assert set(imported) == {f"{IMPORTED_PREFIX}L3.vector"}
    assert rows_to_spec(rows, VectorSource(registry, imported)).fingerprint() == spec.fingerprint()


def test_editor_accepts_api_dicts_blank_cells_and_strings(registry):
    rows = {"headers": [], "data": [["2", " up ", "", "", float("nan"), "", "", ""], [None] * 8]}
    spec = rows_to_spec(rows, VectorSource(registry, {}))
    assert spec.active_layers() == [2] and spec.layers[2].scale == 1.0  # empty scale = 1


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[1.5, "up", 1, None, None, None, None, None]], "row 1, layer: 1.5 is not a 0-based layer index"),
        ([[None, "up", 1, None, None, None, None, None]], "row 1, layer: the layer is empty"),
        ([[1, "up", "lots", None, None, None, None, None]], "row 1, scale: 'lots' is not a number"),
        (
            [[1, "up", 1, None, None, None, None, None], [1, "down", 1, None, None, None, None, None]],
            "row 2: layer 1 appears twice",
        ),
        ([[1, "nope", 1, None, None, None, None, None]], "row 1, vector: name: no vector 'nope'"),
        ([[1, "file:L1.vector", 1, None, None, None, None, None]], "not among this session's imported vectors"),
        ([[1, None, None, None, 0.0, None, None, None]], "cap min/max are set but no cap vector"),
        ([[1, None, None, "up", 2.0, 1.0, None, None]], "min=2.0 > max=1.0"),
        ([[1, None, None, "up", None, None, None, None]], "set at least one bound"),
        ([], "no row holds a vector"),
    ],
)
def test_editor_rejects_bad_rows_by_name(registry, rows, message):
    with pytest.raises(SteeringError, match=message):
        rows_to_spec(rows, VectorSource(registry, {}))


# -- small parsers -------------------------------------------------------------------------------------------------
def test_parse_scales():
    assert parse_scales("-2, -1,0 1;2.5") == [-2.0, -1.0, 0.0, 1.0, 2.5]
    for bad, message in [
        ("", "no values"),
        ("1, x", "not a number"),
        ("inf", "non-finite"),
        (",".join(["1"] * 17), "at most 16"),
    ]:
        with pytest.raises(SteeringError, match=message):
            parse_scales(bad)


def test_build_prompt():
    assert build_prompt("hi", "be brief", False) == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert build_prompt("hi", "  ", False) == [{"role": "user", "content": "hi"}]
    assert build_prompt("Once", "ignored", True) == "Once"
    with pytest.raises(SteeringError, match="prompt: the prompt is empty"):
        build_prompt(" ", "", False)


# -- handlers on the tiny model ------------------------------------------------------------------------------------
def test_registry_is_filtered_to_vectors_that_fit(cb):
    assert [row[0] for row in cb.list_vectors()] == ["down", "up"]
    assert cb.vector_defaults("up", 0, 9.0) == (2, 1.5)
    # no suggested scale: 0.4x the residual norm at the layer (measured on the reference prompts) over the vector's norm
    residual = cb.reference_residual_norms()[3]
    down = cb.registry.get("down").norm
    step = scale_range(down, residual, None).step
    assert cb.vector_defaults("down", 3, 9.0) == (3, round(round(0.4 * residual / down / step) * step, 10))


def test_compare_streams_both_sides_and_ends_with_the_batch_result(cb, engine, registry):
    outputs = list(cb.compare("hello", "", "up", 2, 4.0, 6, 0.9, 1.0, 5, True, "quick", None, {}))
    assert len(outputs) >= 2 and all(len(o) == 2 * len(SIDES) + 1 for o in outputs)  # the panes, then the chat history
    baseline, steered, baseline_stats, steered_stats, history = outputs[-1]
    assert history is None  # not a chat: no history kept
    spec = SteeringSpec.single(2, registry.get("up").vector, 4.0)
    config = GenerationConfig(max_new_tokens=6, temperature=0.9, seed=5)
    assert baseline == engine.generate("hello", config, steering=[None])[0].text
    assert steered == engine.generate("hello", config, steering=spec)[0].text
    assert steered_stats.startswith("6 tokens")


def test_compare_sends_first_texts_and_ends_at_once_and_the_rest_at_most_every_interval(cb, engine, registry, monkeypatch):
    import app.compare

    args = ("hello", "", "up", 2, 4.0, 6, 0.0, 1.0, 0, True, "quick", None, {})  # raw completion, greedy, seed 0
    spec = SteeringSpec.single(2, registry.get("up").vector, 4.0)
    config = GenerationConfig(max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0)
    events = list(engine.generate_stream(["hello", "hello"], config, steering=[None, spec]))
    monkeypatch.setattr(app.compare, "UPDATE_INTERVAL_S", 0.0)  # every event is sent, then the final output
    every = list(cb.compare(*args))
    assert len(every) == len(events) + 1
    monkeypatch.setattr(app.compare, "UPDATE_INTERVAL_S", 1e9)  # only each pane's first text, its end, the final output
    few = list(cb.compare(*args))
    texts, sent = ["" for _ in SIDES], []
    for event in events:  # the rule, replayed on the same (greedy) events: which updates go out at once
        first = not texts[event.index]
        texts[event.index] += event.delta
        if (first and texts[event.index]) or event.finished:
            sent.append(tuple(texts))
    assert len(sent) >= len(SIDES) and len(few) == len(sent) + 1 < len(every)
    assert [out[: len(SIDES)] for out in few[:-1]] == sent
    assert few[-1][: len(SIDES)] == every[-1][: len(SIDES)]  # the same final panes
    assert [line.split(" · ")[0] for line in few[-1][len(SIDES) : 2 * len(SIDES)]] == ["6 tokens"] * len(SIDES)


def test_compare_never_touches_the_engine_state(cb, engine):
    before = engine.export_steering_spec().fingerprint()
    list(cb.compare("hello", "", "up", 2, 4.0, 3, 0.0, 1.0, 0, True, "quick", None, {}))
    assert engine.export_steering_spec().fingerprint() == before


def test_closing_the_compare_stream_releases_the_engine(cb, engine):
    stream = cb.compare("hello", "", "up", 2, 4.0, 200, 0.0, 1.0, 0, True, "quick", None, {})
    next(stream)
    stream.close()  # what Stop does
    assert engine.generate("hi", GenerationConfig(max_new_tokens=2))[0].num_tokens == 2  # the lock is free again


def test_sweep_rows_follow_the_scales(cb, engine, registry):
    *_, rows = cb.sweep("hello", "", "up", 2, 2.0, 4, 0.0, 1.0, 0, True, "quick", None, "-1, 0, 3", {})  # the final yield
    spec = SteeringSpec.single(2, registry.get("up").vector, 2.0)
    assert [r[0] for r in rows] == [-1.0, 0.0, 3.0]
    for factor, tokens, text in rows:
        expected = engine.generate("hello", GenerationConfig(max_new_tokens=4), steering=spec.scaled(factor))[0]
        assert (tokens, text) == (expected.num_tokens, expected.text)


def test_export_and_import_round_trip_spec_and_gguf(cb, registry):
    path = cb.export_spec("up", 1, -3.0, "quick", None, "desc", {})
    assert Path(path).parent.parent == cb.export_dir
    mode, rows, imported, status = cb.import_spec(path)
    assert (mode, rows, imported) == ("editor", [[1, "up", -3.0, None, None, None, None, None]], {})
    assert "Imported" in status
    gguf = cb.export_gguf("up", 1, -3.0, "quick", None, "", {})
    _, rows, imported, _ = cb.import_spec(gguf)
    assert rows == [[1, f"{IMPORTED_PREFIX}L1.vector", 1.0, None, None, None, None, None]]
    torch.testing.assert_close(imported[f"{IMPORTED_PREFIX}L1.vector"], registry.get("up").vector * -3.0, rtol=0, atol=0)


def test_import_rejects_other_files(cb, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(SteeringError, match="neither a .safetensors spec file nor a .gguf"):
        cb.import_spec(str(text))
    with pytest.raises(SteeringError, match="nothing uploaded"):
        cb.import_spec(None)
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 32)
    with pytest.raises(SteeringError, match="control vector"):
        cb.import_spec(str(fake))


def test_read_only_registry_refuses_edits(engine, registry, tmp_path):
    cb = Callbacks(engine, registry, tmp_path, registry_writable=False)
    with pytest.raises(SteeringError, match="read-only registry"):
        cb.delete_vector("up")
    details, session = cb.create_vector("x", "", 1, "a", "b", 0, False)  # made, but kept in the session only
    assert details["name"] == "session:x" and list(session) == ["session:x"]
    assert "up" in registry and "x" not in registry


def test_details_never_show_server_paths(cb):
    assert "path" not in cb.vector_details("up")
    assert "/" not in cb.engine_info()["registry"]


# -- errors --------------------------------------------------------------------------------------------------------
def test_user_errors_turns_steering_errors_into_gr_error_for_functions_and_generators():
    def plain() -> None:
        """Doc."""
        raise SteeringError("layer: 99 is out of range; use 0..3")

    def stream():
        yield 1
        raise SteeringError("scale: nan is not finite")

    with pytest.raises(gr.Error, match="layer: 99 is out of range"):
        user_errors(plain)()
    wrapped = user_errors(stream)
    gen = wrapped()
    assert next(gen) == 1
    with pytest.raises(gr.Error, match="scale: nan"):
        next(gen)
    assert user_errors(plain).__doc__ == "Doc."
    with pytest.raises(gr.Error, match=r"^'?internal error; the server logged it as [0-9a-f]{8}'?$"):  # bugs: no traceback
        user_errors(lambda: 1 / 0)()


def test_build_demo_names_every_action(engine, registry):
    from app import build_demo

    demo = build_demo(engine, registry)
    names = {d.api_name for d in demo.fns.values() if d.api_name and d.api_visibility == "public"}
    expected = {
        "compare",
        "sweep",
        "export_spec",
        "export_gguf",
        "import_spec",
        "list_vectors",
        "create_vector",
        "delete_vector",
        "engine_info",
        "new_chat",
        "regenerate",
        "trace_projection",
    }
    assert expected <= names
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert {
        "baseline-output",
        "steered-output",
        "generate",
        "stop",
        "vector",
        "spec-editor",
        "import-file",
        "export-file",
        "regenerate",
    } <= ids
    demo.close()


# -- app.py and the package of the same name -----------------------------------------------------------------------
def test_import_app_gets_the_package_and_the_script_loads_lazily(tmp_path):
    import app

    assert Path(app.__file__).parent.name == "app" and hasattr(app, "build_demo")
    script = load_app_script()
    assert script._demo is None  # loading the file built nothing (no model load)
    args = script.parse_args([], environ={"XDG_DATA_HOME": str(tmp_path)})
    assert (args.backend, args.model, args.registry, args.host) == (
        "auto",
        "default",
        str(tmp_path / "sidesteer" / "registry"),
        "127.0.0.1",
    )
    assert script.resolve_backend("hf") == "hf"
    assert script.resolve_backend("auto") == ("vllm" if torch.cuda.is_available() else "hf")


def test_vllm_engine_of_the_app_installs_activation_capture(monkeypatch):
    """The Registry tab creates vectors by mean difference, which needs the capture op (off by default)."""
    import engine.vllm_backend as backend

    seen = []
    monkeypatch.setattr(backend, "VLLMSteerModel", lambda config: seen.append(config) or "engine")
    assert load_app_script().create_engine("vllm", "some/model") == "engine"
    assert seen[0].capture is True and seen[0].model_name == "some/model"
    assert backend.VLLMSteeringConfig().capture is False


def test_host_and_port_come_from_gradio_env(monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8123")
    args = load_app_script().parse_args([])
    assert (args.host, args.port) == ("0.0.0.0", 8123)
    from app import launch_kwargs

    kwargs = launch_kwargs()
    assert (kwargs["server_name"], kwargs["server_port"], kwargs["share"]) == ("0.0.0.0", 8123, False)
    assert kwargs["max_file_size"] and "allowed_paths" not in kwargs


def test_running_app_py_as_a_script_finds_the_package():
    out = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--backend" in out.stdout and "--registry" in out.stdout


def test_only_app_imports_gradio():
    for package in ("vectors", "engine"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                assert not any(n.split(".")[0] == "gradio" for n in names), f"{path} imports gradio"


def test_server_refuses_uploads_over_the_limit(engine, registry):
    """A 17 MB upload is refused by the server before any handler sees it; a small one is accepted."""
    import httpx

    from tests.test_app_support import serve

    with serve(engine, registry) as url:
        big = httpx.post(url + "gradio_api/upload", files={"files": ("big.safetensors", b"\0" * (17 * 1024 * 1024))}, timeout=60)
        small = httpx.post(url + "gradio_api/upload", files={"files": ("small.safetensors", b"\0" * 1024)}, timeout=60)
    assert big.status_code == 413, (big.status_code, big.text[:200])
    assert small.status_code == 200


def test_page_errors_warn_and_leave_the_outputs_unchanged():
    from app.events import page_errors

    def bad(value: float) -> tuple[float, float]:
        raise SteeringError(f"scale: {value} is not finite; send a number")

    def bad_stream():
        yield 1
        raise SteeringError("vector: 'nope' is not in the registry")

    with pytest.warns(UserWarning, match=r"scale: nan is not finite; send a number"):
        unchanged = page_errors(bad, 2)(float("nan"))
    assert [type(x) for x in unchanged] == [type(gr.skip())] * 2
    with pytest.warns(UserWarning, match="vector: 'nope'"):
        assert list(page_errors(bad_stream, 4)()) == [1]
    assert page_errors(bad, 1).__name__ == "bad"


def test_stop_while_waiting_says_stopped():
    assert Callbacks.stopped_stats("waiting for the model…", "0 tokens · generating…") == ("stopped", "0 tokens · stopped")


def test_stop_closes_the_stream_and_writes_the_last_counts(cb, engine):
    from types import SimpleNamespace

    from app.chat import new_chat
    from app.sides import GENERATING, STOPPED

    request = SimpleNamespace(session_hash="page-1")
    args = ("hello", "", "up", 2, 4.0, 200, 0.0, 1.0, 0, False, "quick", None, {}, *(None, 0, 1.0) * 3, 0, True, new_chat())
    stream = cb.compare(*args, request=request)
    shown = next(stream)[2:4]  # what the page holds when Stop is clicked
    assert all(GENERATING in line for line in shown) and cb.runs.streaming("page-1")
    # Gradio's cancel drops the handler's generator without closing it; Stop closes the engine stream itself
    final = cb.stop_stats(*shown, request=request)
    assert not cb.runs.streaming("page-1")
    assert engine.generate("hi", GenerationConfig(max_new_tokens=2))[0].num_tokens == 2  # the engine's lock is free
    assert final == tuple(line.replace(GENERATING, STOPPED) for line in shown)  # the server's counts, now "stopped"
    assert final[1].splitlines()[-1] == shown[1].splitlines()[-1]  # the stamp stays
    # were the handler resumed, it would end with the same lines and keep no turn of the stopped run
    last = list(stream)
    assert [out[2:] for out in last] == [(*final, new_chat())]
    # nothing was generating (still waiting, or no page session): the page's own lines, "stopped" for "waiting…"
    assert cb.stop_stats("waiting for the model…", "", request=request) == ("stopped", "")
    waiting = cb.compare(*args, request=SimpleNamespace(session_hash="page-2"))
    next(waiting)
    closed = cb.runs.stop_soon("page-2", 5.0)  # what Stop starts for a run that has not streamed yet
    assert closed.wait(5.0) and not cb.runs.streaming("page-2")
    assert engine.generate("hi", GenerationConfig(max_new_tokens=2))[0].num_tokens == 2
    assert cb.stop_stats(*shown) == final
    after = cb.new_chat(request)  # a new chat forgets the old run: Stop never brings its lines back
    assert after[1:] == ("", "", "", "") and cb.runs.view("page-1") is None


def test_run_tracker_waits_for_a_session_to_go_idle():
    from app.runs import RunTracker

    runs = RunTracker()
    first, second = runs.start("s"), runs.start("s")
    assert runs.stop("s", 0.0) is False  # no stream to close yet: both wait for the engine
    runs.show(second, lambda stopped: ("second",))
    runs.show(first, lambda stopped: ("first",))  # superseded: ignored
    assert runs.view("s")(True) == ("second",)
    assert runs.wait_idle("s", 0.0) is False
    runs.finish(first)
    assert runs.wait_idle("s", 0.0) is False and not runs.is_current(first) and runs.is_current(second)
    runs.finish(second)
    assert runs.wait_idle("s", 0.0) is True and runs.wait_idle("other", 0.0) is True
    runs.forget("s")
    assert runs.view("s") is None


def test_repeated_stops_share_one_stopper_and_never_end_a_later_run():
    import threading

    from app.runs import RunTracker

    runs = RunTracker()
    first = runs.start("s")
    release, closed = threading.Event(), []

    def closer(run):
        def close():  # busy (waiting for the engine) until released
            if not release.is_set():
                raise ValueError("generator already executing")
            closed.append(run.number)

        return close

    runs.closes_with(first, closer(first))
    done = runs.stop_soon("s", 30.0)
    second = runs.start("s")  # Generate again while the first run still waits
    runs.closes_with(second, closer(second))
    assert all(runs.stop_soon("s", 30.0) is done for _ in range(50))  # more clicks: the same stopper, now up to run 2
    assert [t.name for t in threading.enumerate()].count("sidesteer-stop") == 1
    third = runs.start("s")  # after the last Stop: never ended by it
    runs.closes_with(third, closer(third))
    release.set()
    assert done.wait(5.0) and sorted(closed) == [first.number, second.number]
    assert runs.active(third) and not runs.active(first) and not runs.active(second)
    fresh = runs.stop_soon("s", 5.0)  # the stopper has ended: a new Stop starts a new one, for run 3
    assert fresh is not done and fresh.wait(5.0) and closed[-1] == third.number and not runs.streaming("s")


def test_steering_controls_from_a_handlers_arguments():
    from app.steering_controls import MORE_ROW_FIELDS, SteeringControls

    assert MORE_ROW_FIELDS == (
        "vector_2",
        "layer_2",
        "scale_2",
        "vector_3",
        "layer_3",
        "scale_3",
        "vector_4",
        "layer_4",
        "scale_4",
    )
    args = {"self": None, "vector": "up", "layer": 2, "scale": 1.5, "session": {}, "vector_3": "down", "layer_3": 1}
    controls = SteeringControls.from_args(args)
    assert controls == SteeringControls("up", 2, 1.5, "quick", None, {}, (None, None, None, "down", 1, None, None, None, None), 0)
    assert [(r.number, r.vector, r.layer) for r in controls.quick_rows()] == [
        (1, "up", 2),
        (2, None, None),
        (3, "down", 1),
        (4, None, None),
    ]


def test_stop_retries_a_stream_busy_in_a_step():
    import threading

    from app.runs import RunTracker

    runs = RunTracker()
    run = runs.start("s")
    busy = threading.Event()
    calls = []

    def close():  # busy for the first two tries, as a generator running a step on another thread
        calls.append(1)
        if len(calls) < 3:
            raise ValueError("generator already executing")
        busy.set()

    runs.closes_with(run, close)
    assert runs.stop("s", 5.0) is True and busy.is_set() and len(calls) == 3
    assert not runs.active(run) and not runs.streaming("s")
    runs.finish(run)  # the handler's own finish afterwards changes nothing
    assert not runs.streaming("s")
