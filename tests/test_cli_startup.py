"""Start-up of the app's command line: a busy port and a missing registry folder fail before the model loads, the
start-up log says what is served, and ``--help`` lists every environment variable the code reads. Fast: a tiny
random model stands in for the default one."""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path

import gradio as gr
import httpx
import pytest

from app import cli
from app.deploy import SHIPPED_REGISTRY
from sidesteer import cli as sidesteer_cli
from tests.helpers import tiny_hf
from tests.test_app_support import free_port

ROOT = Path(__file__).resolve().parents[1]
# Read by the code but not settings of the app: the vLLM driver sets this one for its own workers during a rebuild.
INTERNAL = {"SIDESTEER_WARMUP_TOKENS", "PYTHONPATH"}


def model_must_not_load(*_args, **_kwargs):
    raise AssertionError("the model was loaded before the start-up checks")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """No default registry folder under the real home; the host and port come from the flags only."""
    monkeypatch.setenv("SIDESTEER_DATA_DIR", str(tmp_path / "data"))
    for name in ("SIDESTEER_REGISTRY", "SIDESTEER_CREATE_REGISTRY", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "SPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


# -- the port ------------------------------------------------------------------------------------------------------
def test_busy_port_fails_before_the_model_loads_and_names_port(home, monkeypatch):
    monkeypatch.setattr(cli, "create_engine", model_must_not_load)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            cli.main(["--port", str(port)])
    message = str(info.value)
    suggested = re.fullmatch(
        rf"sidesteer: --port: port {port} on 127.0.0.1 is in use \(is the app already running\?\); "
        r"pass --port with a free port \(e\.g\. --port (\d+)\) or set GRADIO_SERVER_PORT",
        message,
    )
    assert suggested, message
    assert port < int(suggested.group(1)) <= port + cli.PORTS_TRIED


def test_free_port_passes_the_check_and_bad_host_is_named():
    cli.check_port("127.0.0.1", free_port())  # no exception
    with pytest.raises(SystemExit, match=r"^sidesteer: --host: 'no-such-host\.invalid' does not resolve"):
        cli.check_port("no-such-host.invalid", 7860)


def test_start_up_logs_backend_model_dtype_device_registry_and_url(home, monkeypatch, caplog):
    engine = tiny_hf()
    monkeypatch.setattr(cli, "create_engine", lambda backend, model: engine)
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)  # main() would serve until interrupted
    port = free_port()
    registry = home / "mine"
    registry.mkdir()
    with caplog.at_level(logging.INFO, logger="sidesteer.app"):
        cli.main(["--backend", "hf", "--port", str(port), "--registry", str(registry), "--read-only-registry"])
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=30).status_code == 200
    finally:
        cli._demo.close()
        cli._demo = None
        engine.limits = None
    assert caplog.messages == [
        f"registry: read-only (vectors created in the UI stay in the browser session); user folder {registry}; "
        f"shipped folders {SHIPPED_REGISTRY}",
        "loading model 'default' on backend hf",
        "engine: backend transformers, model tiny-llama, dtype torch.float32, device cpu, 4 layers x 64",
        f"serving on http://127.0.0.1:{port}/ (Ctrl+C stops)",
    ]


# -- --help ----------------------------------------------------------------------------------------------------------
def environment_variables_in_the_code() -> set[str]:
    """Every literal variable name the app's packages read from (or name for) the environment."""
    names: set[str] = set()
    for package in ("app", "engine", "vectors", "sidesteer"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            names |= set(re.findall(r"environ(?:\.get)?[(\[]\s*\"([A-Z][A-Z0-9_]+)\"", text))
            names |= set(re.findall(r"^[A-Z_]+_ENV = \"([A-Z][A-Z0-9_]+)\"", text, re.MULTILINE))
    return names


def test_help_lists_every_option_and_environment_variable(capsys):
    from app.limits import OPTIONS

    found = environment_variables_in_the_code()
    assert {"SIDESTEER_READ_ONLY", "SPACE_ID", "GRADIO_SERVER_PORT", "GRADIO_TEMP_DIR", "SIDESTEER_CACHE"} <= found
    wanted = (found - INTERNAL) | {option.env for option in OPTIONS}
    for run in (lambda: cli.parse_args(["--help"], environ={}), lambda: sidesteer_cli.main(["app", "--help"])):
        with pytest.raises(SystemExit) as info:
            run()
        assert info.value.code == 0
        out = capsys.readouterr().out
        epilog = out.split("environment variables")[1]
        missing = sorted(name for name in wanted if not re.search(rf"^  {name} ", epilog, re.MULTILINE))
        assert missing == []
        for flag in ("--backend", "--model", "--registry", "--create-registry", "--read-only-registry", "--host", "--port"):
            assert f"  {flag}" in out
        assert all(option.flag in out for option in OPTIONS)


# -- the registry folder ---------------------------------------------------------------------------------------------
def test_missing_registry_folder_given_explicitly_is_an_error(home, monkeypatch):
    monkeypatch.setattr(cli, "create_engine", model_must_not_load)
    monkeypatch.chdir(home)
    with pytest.raises(SystemExit) as info:
        cli.create_demo(cli.parse_args(["--registry", "registry/qwen"]))
    assert str(info.value) == (
        f"sidesteer: --registry: folder 'registry/qwen' does not exist ({home / 'registry' / 'qwen'}); check the path, "
        "or pass --create-registry (or set SIDESTEER_CREATE_REGISTRY=1) to start an empty registry there"
    )
    monkeypatch.setenv("SIDESTEER_REGISTRY", str(home / "nowhere"))
    with pytest.raises(SystemExit, match=r"^sidesteer: SIDESTEER_REGISTRY: folder '.*nowhere' does not exist"):
        cli.create_demo(cli.parse_args([]))
    (home / "a-file").write_text("")
    with pytest.raises(SystemExit) as info:
        cli.create_demo(cli.parse_args(["--registry", "a-file"]))
    assert str(info.value) == "sidesteer: --registry: 'a-file' is a file, not a folder; pass the folder that holds the vectors"
    assert sorted(p.name for p in home.iterdir()) == ["a-file"]  # nothing created


def test_create_registry_flag_creates_the_folder(home, monkeypatch, caplog):
    monkeypatch.chdir(home)
    with caplog.at_level(logging.INFO, logger="sidesteer.app"):
        registry = cli.create_registry(cli.parse_args(["--registry", "registry/qwen", "--create-registry"]))
    assert (home / "registry" / "qwen").is_dir() and registry.root == Path("registry/qwen") and registry.writable
    assert caplog.messages[0] == "registry: created the empty folder registry/qwen (--create-registry)"
    monkeypatch.setenv("SIDESTEER_CREATE_REGISTRY", "1")
    cli.create_registry(cli.parse_args(["--registry", "other"]))
    assert (home / "other").is_dir()
    monkeypatch.setenv("SIDESTEER_CREATE_REGISTRY", "perhaps")
    with pytest.raises(SystemExit, match="^sidesteer: SIDESTEER_CREATE_REGISTRY: 'perhaps' is not a yes/no value"):
        cli.parse_args([])


def test_default_registry_folder_may_be_missing(home):
    args = cli.parse_args([])
    assert args.registry_source is None and args.registry == str(home / "data" / "registry")
    cli.create_registry(args)
    assert not (home / "data").exists()  # created on the first write only
