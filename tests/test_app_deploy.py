"""Public deploys: read-only mode (flag, environment, Spaces default), the registry folders, session-only vectors.

Fast: a tiny random model; the API test serves it in-process through gradio_client.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError

from app import build_demo
from app.callbacks import READ_ONLY_DELETE, Callbacks
from app.deploy import SHIPPED_REGISTRY, open_registry, read_only_default, user_registry_dir
from app.spec_editor import SESSION_PREFIX
from engine import GenerationConfig, mean_difference
from tests.helpers import tiny_hf
from tests.test_app_support import load_app_script, serve
from vectors import SteeringError, SteeringSpec, VectorRegistry

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = 64
POSITIVE, NEGATIVE = "I love it\nWonderful day", "I hate it\nAwful day"


@pytest.fixture(scope="module")
def engine():
    return tiny_hf(hidden=HIDDEN)


@pytest.fixture
def shipped(tmp_path):
    """A stand-in for registry/smollm2: a shipped folder with one vector that fits the tiny model."""
    folder = tmp_path / "shipped"
    VectorRegistry(folder).add("up", torch.randn(HIDDEN, generator=torch.Generator().manual_seed(0)) * 3, suggested_layer=2)
    return folder


def registry_over(tmp_path: Path, shipped: Path, read_only: bool) -> VectorRegistry:
    return VectorRegistry(tmp_path / "user", read_only=read_only, shipped=[shipped])


# -- the switch ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({"SPACE_ID": "someone/sidesteer"}, True),  # a Space is public: read-only unless told otherwise
        ({"SPACE_ID": "someone/sidesteer", "SIDESTEER_READ_ONLY": "0"}, False),
        ({"SPACE_ID": "someone/sidesteer", "SIDESTEER_READ_ONLY": "no"}, False),
        ({"SIDESTEER_READ_ONLY": "1"}, True),
        ({"SIDESTEER_READ_ONLY": "TRUE"}, True),
        ({"SIDESTEER_READ_ONLY": "yes"}, True),
        ({"SIDESTEER_READ_ONLY": "false"}, False),
        ({"SIDESTEER_READ_ONLY": ""}, False),  # empty = unset
    ],
)
def test_read_only_default_follows_env_and_spaces(environ, expected):
    assert read_only_default(environ) is expected


def test_bad_read_only_value_names_the_variable():
    with pytest.raises(SteeringError) as info:
        read_only_default({"SIDESTEER_READ_ONLY": "maybe"})
    assert str(info.value) == "SIDESTEER_READ_ONLY: 'maybe' is not a yes/no value; set it to one of 1, true, yes, 0, false, no"
    with pytest.raises(SystemExit, match="sidesteer: SIDESTEER_READ_ONLY: 'maybe' is not a yes/no value"):
        load_app_script().parse_args([], environ={"SIDESTEER_READ_ONLY": "maybe"})


def test_flag_and_env_set_read_only_mode(tmp_path):
    parse = load_app_script().parse_args
    home = {"XDG_DATA_HOME": str(tmp_path)}
    assert parse([], environ=home).read_only_registry is False
    assert parse(["--read-only-registry"], environ=home).read_only_registry is True
    assert parse([], environ={**home, "SIDESTEER_READ_ONLY": "1"}).read_only_registry is True
    assert parse([], environ={**home, "SPACE_ID": "a/b"}).read_only_registry is True
    assert parse(["--no-read-only-registry"], environ={**home, "SPACE_ID": "a/b"}).read_only_registry is False


# -- folders -------------------------------------------------------------------------------------------------------
def test_user_registry_folder_is_never_the_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_registry_dir({}) == tmp_path / "home" / ".local" / "share" / "sidesteer" / "registry"
    assert user_registry_dir({"XDG_DATA_HOME": "/xdg"}) == Path("/xdg/sidesteer/registry")
    assert user_registry_dir({"XDG_DATA_HOME": "/xdg", "SIDESTEER_DATA_DIR": "/data"}) == Path("/data/registry")
    assert user_registry_dir({"SIDESTEER_DATA_DIR": "/data", "SIDESTEER_REGISTRY": "/reg"}) == Path("/reg")
    assert user_registry_dir({"SIDESTEER_REGISTRY": "/reg"}, "/flag") == Path("/flag")  # --registry wins


def test_app_registry_is_the_user_folder_over_the_shipped_vectors(tmp_path, caplog):
    script = load_app_script()
    args = script.parse_args([], environ={"SIDESTEER_DATA_DIR": str(tmp_path), "SIDESTEER_READ_ONLY": "1"})
    with caplog.at_level(logging.INFO, logger="sidesteer.app"):
        registry = script.create_registry(args)
    assert registry.root == tmp_path / "registry"
    assert registry.shipped == (SHIPPED_REGISTRY,) and SHIPPED_REGISTRY == ROOT / "registry" / "smollm2"
    assert registry.writable is False
    assert caplog.messages == [
        f"registry: read-only (vectors created in the UI stay in the browser session); user folder {tmp_path / 'registry'}; "
        f"shipped folders {SHIPPED_REGISTRY}"
    ]
    assert not (tmp_path / "registry").exists()  # nothing written


def test_created_vectors_go_to_the_user_folder_not_the_repository(engine, tmp_path, shipped):
    before = sorted(p.name for p in SHIPPED_REGISTRY.iterdir()) if SHIPPED_REGISTRY.is_dir() else []
    registry = open_registry(tmp_path / "user", read_only=False)
    cb = Callbacks(engine, registry, tmp_path / "exports")
    details, session = cb.create_vector("made-here", "", 1, POSITIVE, NEGATIVE, 0, False, {})
    assert details["name"] == "made-here" and session == {}
    assert (tmp_path / "user" / "made-here.safetensors").is_file()
    after = sorted(p.name for p in SHIPPED_REGISTRY.iterdir()) if SHIPPED_REGISTRY.is_dir() else []
    assert after == before


def test_shipped_vectors_cannot_be_deleted_or_replaced(engine, tmp_path, shipped):
    cb = Callbacks(engine, registry_over(tmp_path, shipped, read_only=False), tmp_path / "exports")
    with pytest.raises(SteeringError) as info:
        cb.delete_vector("up")
    assert (
        str(info.value)
        == "delete: 'up' ships with the app (a read-only folder), so it cannot be deleted; only vectors created on this server can"
    )
    with pytest.raises(
        SteeringError, match="name: 'up' is a vector shipped with the app and cannot be replaced; pick another name"
    ):
        cb.create_vector("up", "", 1, POSITIVE, NEGATIVE, 0, True, {})
    assert (shipped / "up.safetensors").is_file()
    assert [row[7] for row in cb.list_vectors()] == ["shipped"]


# -- read-only mode: session vectors -------------------------------------------------------------------------------
def test_read_only_mode_keeps_created_vectors_in_the_session(engine, tmp_path, shipped):
    registry = registry_over(tmp_path, shipped, read_only=True)
    cb = Callbacks(engine, registry, tmp_path / "exports")
    assert cb.read_only
    details, session = cb.create_vector("mine", "my own", 3, POSITIVE, NEGATIVE, 2.5, False, {})
    name = f"{SESSION_PREFIX}mine"
    assert details["name"] == name and details["suggested_layer"] == 3 and "path" not in details
    assert list(session) == [name]
    assert not (tmp_path / "user").exists()  # nothing on disk
    # This session sees and uses it: registry table, dropdown, defaults, quick mode, editor, sweep.
    assert [(row[0], row[7]) for row in cb.list_vectors(session)] == [("up", "shipped"), (name, "this session")]
    assert cb.vector_names(session) == ["up", name]
    assert cb.vector_defaults(name, 0, 1.0, session) == (3, 2.5)
    vector = session[name].vector
    *_, (_, steered, _, _, _) = cb.compare("hello", "", name, 3, 2.0, 4, 0.0, 1.0, 0, True, "quick", None, session)
    assert (
        steered
        == engine.generate("hello", GenerationConfig(max_new_tokens=4), steering=SteeringSpec.single(3, vector, 2.0))[0].text
    )
    rows = [[1, name, 1.5, None, None, None, None, None]]
    assert cb.current_spec(None, 0, 0, "editor", rows, session).layers[1].vector.equal(vector)
    assert [
        r[0] for r in list(cb.sweep("hello", "", name, 3, 1.0, 2, 0.0, 1.0, 0, True, "quick", None, "0, 1", session))[-1]
    ] == [0.0, 1.0]
    # Another session does not have it.
    with pytest.raises(SteeringError, match=f"vector: '{name}' is not among this session's vectors; create it again"):
        cb.current_spec(name, 3, 1.0, "quick", None, {})
    # Taken names need overwrite; deleting removes it from the session only.
    with pytest.raises(SteeringError, match=f"name: '{name}' already exists in this session"):
        cb.create_vector("mine", "", 1, POSITIVE, NEGATIVE, 0, False, session)
    status, session = cb.delete_vector(name, session)
    assert status == "Removed **session\\:mine** from this session." and session == {}


def test_read_only_mode_refuses_registry_deletes(engine, tmp_path, shipped):
    user = tmp_path / "user"
    VectorRegistry(user).add("old", torch.ones(HIDDEN))
    cb = Callbacks(engine, registry_over(tmp_path, shipped, read_only=True), tmp_path / "exports")
    with pytest.raises(SteeringError) as info:
        cb.delete_vector("old", {})
    assert str(info.value) == READ_ONLY_DELETE.format(name="old")
    assert "read-only registry (public mode: SIDESTEER_READ_ONLY=1 or --read-only-registry)" in str(info.value)
    assert (user / "old.safetensors").is_file()


def test_the_page_shows_the_registry_mode(engine, tmp_path, shipped):
    for read_only, expected in ((True, "**Registry: read-only (public mode).**"), (False, "**Registry: writable.**")):
        demo = build_demo(engine, registry_over(tmp_path, shipped, read_only=read_only))
        line = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "registry-mode")
        assert line.value.startswith(expected)
        demo.close()


def test_api_refuses_deletes_and_keeps_created_vectors_per_session(engine, tmp_path, shipped):
    registry = registry_over(tmp_path, shipped, read_only=True)
    with serve(engine, registry) as url:
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match=r"this app serves a read-only registry \(public mode: SIDESTEER_READ_ONLY=1"):
            client.predict("up", api_name="/delete_vector")
        created = client.predict(
            name="mine", layer=2, positive_prompts=POSITIVE, negative_prompts=NEGATIVE, api_name="/create_vector"
        )
        assert created["name"] == "session:mine"
        _, steered, _, _ = client.predict(
            prompt="hello", vector="session:mine", layer=2, scale=4.0, max_new_tokens=3, raw_completion=True, api_name="/compare"
        )
        vector = mean_difference(engine, POSITIVE.splitlines(), NEGATIVE.splitlines(), 2)
        assert (
            steered
            == engine.generate("hello", GenerationConfig(max_new_tokens=3), steering=SteeringSpec.single(2, vector, 4.0))[0].text
        )
        assert "session:mine" in [row[0] for row in client.predict(api_name="/list_vectors")["data"]]
        with pytest.raises(AppError, match="'session:mine' is not among this session's vectors"):
            Client(url, verbose=False).predict(
                prompt="hello", vector="session:mine", layer=2, max_new_tokens=3, api_name="/compare"
            )
    assert (shipped / "up.safetensors").is_file() and not (tmp_path / "user").exists()


def test_spaces_mode_end_to_end_builds_a_read_only_app(engine, tmp_path, monkeypatch):
    """create_demo with SPACE_ID set: read-only registry over the shipped folder, the engine gets the limits."""
    from engine import RequestLimits

    script = load_app_script()
    monkeypatch.setattr(script, "create_engine", lambda backend, model: engine)
    args = script.parse_args(["--max-new-tokens", "100"], environ={"SPACE_ID": "a/b", "SIDESTEER_DATA_DIR": str(tmp_path)})
    previous = engine.limits
    try:
        demo = script.create_demo(args)
        assert engine.limits == RequestLimits(max_prompt_tokens=1024, max_new_tokens=100, max_prompts=64)
        line = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "registry-mode")
        assert "read-only" in line.value
        demo.close()
    finally:
        engine.limits = previous
