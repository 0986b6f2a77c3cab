"""Hygiene of a public deploy: temp files cleaned up, strangers' text escaped, no tracebacks or server paths shown,
no analytics, security headers, and an engine that restarts. Fast: a tiny random model (served in-process for the
HTTP checks) and fakes."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from markdown_it import MarkdownIt

from app import SECURITY_HEADERS, build_demo
from app.callbacks import Callbacks
from app.errors import ENGINE_RESTARTING, user_errors
from app.sanitize import escape_markdown, redact_paths
from app.sides import ENGINE_RESTARTING_RETRY, ENGINE_RESTARTING_STATS, ENGINE_RESTARTING_WAIT, notice
from app.temp_files import ExportFolder, gradio_upload_dir
from engine import EngineDeadError, GenerationConfig
from tests.helpers import tiny_hf
from tests.test_app_support import one_vector_registry, serve
from vectors import LayerSteeringSpec, SpecMetadata, SteeringError, SteeringSpec

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = 64
INJECTION = "![x](http://evil/) [click](javascript:alert(1)) <img src=x onerror=alert(1)> <script>alert(2)</script>"


@pytest.fixture(scope="module")
def engine():
    return tiny_hf(hidden=HIDDEN)


@pytest.fixture
def registry(tmp_path):
    return one_vector_registry(tmp_path / "registry", HIDDEN)


@pytest.fixture
def cb(engine, registry, tmp_path):
    return Callbacks(engine, registry, tmp_path / "exports", upload_dir=tmp_path / "uploads")


def upload(tmp_path: Path, spec: SteeringSpec, name: str = "spec.safetensors") -> Path:
    """Where Gradio would put an upload: its own folder inside the upload cache."""
    folder = tmp_path / "uploads" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return spec.save(folder / name)


def rendered(markdown: str) -> str:
    """HTML of a Markdown string (CommonMark with raw HTML on: the worst case)."""
    return MarkdownIt("commonmark", {"html": True}).render(markdown)


# -- (a) temp files ------------------------------------------------------------------------------------------------
def test_exports_are_pruned_by_count(cb):
    cb.exports.keep = 3
    paths = [Path(cb.export_spec("up", 1, float(i + 1), "quick", None, "", {})) for i in range(5)]
    assert [p.exists() for p in paths] == [False, False, True, True, True]
    assert len(cb.exports.exports()) == 3


def test_exports_are_pruned_by_age(tmp_path):
    folder = ExportFolder(tmp_path / "exports", keep=100, max_age_s=60)
    old = folder.new_path("old.gguf")
    old.write_bytes(b"x")
    past = time.time() - 120
    os.utime(old.parent, (past, past))
    new = folder.new_path("new.gguf")
    assert not old.parent.exists() and new.parent.is_dir()


def test_uploads_are_deleted_once_read_good_or_bad(cb, tmp_path):
    good = upload(tmp_path, SteeringSpec.single(1, torch.ones(HIDDEN)))
    cb.import_spec(str(good), {})
    assert not good.exists() and not good.parent.exists()
    junk = upload(tmp_path, SteeringSpec.single(1, torch.ones(HIDDEN)), "junk.safetensors")
    junk.write_bytes(b"\x80\x04K\x01." + b"0" * 64)
    with pytest.raises(SteeringError):
        cb.import_spec(str(junk), {})
    assert not junk.exists()
    elsewhere = SteeringSpec.single(1, torch.ones(HIDDEN)).save(tmp_path / "mine.safetensors")
    cb.import_spec(str(elsewhere), {})
    assert elsewhere.exists()  # only Gradio's upload cache is cleaned, never a file outside it


def test_blocks_delete_gradio_cache_files(engine, registry):
    demo = build_demo(engine, registry)
    assert demo.delete_cache == (900, 3600)
    demo.close()


# -- (b) strangers' text is escaped --------------------------------------------------------------------------------
def test_import_status_escapes_markdown_and_html_from_the_file(cb, engine, tmp_path):
    spec = SteeringSpec(
        {1: LayerSteeringSpec(torch.ones(HIDDEN), 1.0)}, SpecMetadata(model_id="[m](javascript:x)", description=INJECTION)
    )
    path = upload(tmp_path, spec, "![a](javascript:x).safetensors")
    _, _, _, status = cb.import_spec(str(path), {})
    assert status == (
        f"Imported **\\!\\[a\\]\\(javascript\\:x\\)\\.safetensors**: 1 layer(s), fingerprint `{spec.fingerprint()[:12]}` "
        "(made for \\[m\\]\\(javascript\\:x\\), loaded model is tiny\\-llama); "
        "\\!\\[x\\]\\(http\\:\\/\\/evil\\/\\) \\[click\\]\\(javascript\\:alert\\(1\\)\\) \\<img src\\=x onerror\\=alert\\(1\\)\\> "
        "\\<script\\>alert\\(2\\)\\<\\/script\\>"
    )
    html = rendered(status)
    assert "<img" not in html and "<a " not in html and "<script" not in html
    assert "![x](http://evil/) [click](javascript:alert(1)) &lt;img src=x onerror=alert(1)&gt;" in html  # shown as typed


def test_escape_markdown_flattens_and_shortens():
    assert escape_markdown("a\n\n# b  *c*") == "a \\# b \\*c\\*"
    assert escape_markdown("x" * 400) == "x" * 299 + "…"
    assert escape_markdown("www.evil.com $$x$$") == "www\\.evil\\.com \\$\\$x\\$\\$"


# -- (c) clear messages, no tracebacks, no server paths ------------------------------------------------------------
def test_internal_errors_show_an_id_and_log_the_traceback(caplog):
    def broken(prompt: str) -> str:
        return {}[prompt]

    with caplog.at_level(logging.ERROR, logger="sidesteer.app"), pytest.raises(gr.Error) as info:
        user_errors(broken)("secret-key")
    match = re.fullmatch(r"internal error; the server logged it as ([0-9a-f]{8})", info.value.message)
    assert match, info.value.message
    assert "secret-key" not in info.value.message
    record = caplog.records[-1]
    assert (
        record.getMessage()
        == f"internal error {match.group(1)} in test_internal_errors_show_an_id_and_log_the_traceback.<locals>.broken"
    )
    assert record.exc_info[0] is KeyError


def test_steering_error_messages_lose_server_paths(cb, tmp_path):
    with pytest.raises(gr.Error) as info:
        user_errors(cb.current_spec)("nope", 1, 1.0, "quick", None, {})
    assert str(tmp_path) not in info.value.message
    assert info.value.message == "vector: name: no vector 'nope' in 'registry'; available: up"
    assert (
        redact_paths("/tmp/gradio/3f2a/x.gguf: bad; see '/srv/app/registry' or C:\\Users\\me\\y.gguf")
        == "x.gguf: bad; see 'registry' or y.gguf"
    )
    assert redact_paths("cap min/max, 1/2, http://example.org/a/b, a / b") == "cap min/max, 1/2, http://example.org/a/b, a / b"


def test_engine_dead_errors_become_a_retry_message():
    def sweep() -> None:
        raise EngineDeadError("engine: the vLLM engine died (RuntimeError('/opt/venv/lib/x.so'))")

    with pytest.raises(gr.Error) as info:
        user_errors(sweep)()
    assert info.value.message == ENGINE_RESTARTING


# -- (d) no analytics ----------------------------------------------------------------------------------------------
def test_gradio_analytics_are_off(engine, registry):
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    demo = build_demo(engine, registry)
    assert demo.analytics_enabled is False
    demo.close()


# -- served: (c), (a) and (e) over HTTP ----------------------------------------------------------------------------
def test_served_app_sends_security_headers_hides_paths_and_deletes_uploads(engine, registry, tmp_path):
    with serve(engine, registry) as url:
        for path in ("", "gradio_api/info", "config"):
            response = httpx.get(url + path, timeout=60)
            assert response.status_code == 200, path
            for name, value in SECURITY_HEADERS.items():
                assert response.headers[name] == value, (path, name)
            assert "x-frame-options" not in response.headers  # Spaces embed the app in an iframe
        assert SECURITY_HEADERS["Content-Security-Policy"] == "frame-ancestors 'self' https://huggingface.co https://*.hf.space"
        client = Client(url, verbose=False)
        with pytest.raises(AppError) as info:
            client.predict(prompt="hello", vector="nope", max_new_tokens=2, api_name="/compare")
        assert str(registry.root) not in str(info.value) and "no vector 'nope' in 'registry'" in str(info.value)
        name = f"upload-{uuid.uuid4().hex}.safetensors"
        local = SteeringSpec.single(1, torch.ones(HIDDEN)).save(tmp_path / name)
        mode, rows, status = client.predict(handle_file(str(local)), api_name="/import_spec")
        assert mode == "editor" and rows["data"][0][0] == 1
        assert list(gradio_upload_dir().rglob(name)) == []  # read into the session, then deleted from the server


# -- 5: engine restarting ------------------------------------------------------------------------------------------
class RestartingEngine:
    """The tiny engine behind a vLLM-like status: "restarting" for a while, and streams that may die under a request."""

    def __init__(self, engine, state: str, failures: int) -> None:
        self._engine = engine
        self.state = state
        self.failures = failures

    def status(self) -> str:
        return self.state

    def generate_stream(self, *args, **kwargs):
        if self.failures:
            self.failures -= 1
            raise EngineDeadError("engine: the vLLM engine died (EOFError()); call restart() to rebuild it")
        self.state = "ready"
        return self._engine.generate_stream(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._engine, name)


def compare_args(session=None):
    return ("hello", "", "up", 1, 2.0, 4, 0.0, 1.0, 0, True, "quick", None, session or {})


def test_compare_says_engine_restarting_then_works_on_the_next_click(engine, registry, tmp_path):
    fake = RestartingEngine(engine, "restarting", failures=1)
    cb = Callbacks(fake, registry, tmp_path / "exports")
    assert list(cb.compare(*compare_args())) == [  # each output ends with the (unchanged) chat history
        (*notice(ENGINE_RESTARTING_WAIT, ENGINE_RESTARTING_STATS), None),
        (*notice(ENGINE_RESTARTING_RETRY, ENGINE_RESTARTING_STATS), None),
    ]
    assert ENGINE_RESTARTING_WAIT == "engine restarting — your request will run when it is back"
    last = list(cb.compare(*compare_args()))[-1]
    expected = engine.generate(
        "hello", GenerationConfig(max_new_tokens=4), steering=SteeringSpec.single(1, registry.get("up").vector, 2.0)
    )[0]
    assert last[1] == expected.text and last[3].startswith("4 tokens")


def test_compare_waits_for_a_restarting_engine(engine, registry, tmp_path):
    cb = Callbacks(RestartingEngine(engine, "restarting", failures=0), registry, tmp_path / "exports")
    outputs = list(cb.compare(*compare_args()))
    assert outputs[0] == (*notice(ENGINE_RESTARTING_WAIT, ENGINE_RESTARTING_STATS), None)  # shown while it waits
    assert outputs[-1][0] == engine.generate("hello", GenerationConfig(max_new_tokens=4), steering=[None])[0].text


def test_compare_on_a_dead_engine_says_so(engine, registry, tmp_path):
    cb = Callbacks(RestartingEngine(engine, "dead", failures=0), registry, tmp_path / "exports")
    with pytest.raises(SteeringError, match="engine: the model engine stopped and could not be restarted"):
        list(cb.compare(*compare_args()))


# -- the test suite's own hygiene: tests never change the checkout --------------------------------------------------
GUARD_TESTS = {
    "test_clean.py": "def test_writes_a_temporary_folder(tmp_path):\n    (tmp_path / 'out.txt').write_text('x')\n",
    "test_dirty.py": "from pathlib import Path\n\ndef test_writes_the_checkout():\n    Path('tracked.txt').write_text('changed')\n",
}


def run_guarded(folder: Path, test_file: str) -> subprocess.Popen[str]:
    """pytest on ``folder/test_file`` with this suite's conftest as a plugin (the folder is the rootdir)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest", test_file]
    return subprocess.Popen(args, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_test_that_changes_the_checkout_fails_the_session(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    runs = {}
    # each run in its own folder: they run at once, and the dirty run's write must not reach the clean run's checkout
    for kind, name in (("repo", "test_dirty.py"), ("repo", "test_clean.py"), ("plain", "test_dirty.py")):
        folder = tmp_path / f"{kind}-{name[:-3]}"
        folder.mkdir()
        (folder / "tracked.txt").write_text("original")
        for test_file, code in GUARD_TESTS.items():
            (folder / test_file).write_text(code)
        if kind == "repo":
            subprocess.run([*git, "init", "-q"], cwd=folder, check=True)
            subprocess.run([*git, "add", "."], cwd=folder, check=True)
            subprocess.run([*git, "commit", "-q", "-m", "seed"], cwd=folder, check=True)
            (folder / "tracked.txt").write_text("edited before the run")  # already dirty: a further change counts too
        runs[kind, name] = run_guarded(folder, name)
    results = {key: (proc.wait(timeout=300), proc.stdout.read()) for key, proc in runs.items()}
    code, out = results["repo", "test_dirty.py"]
    assert code == 1, out
    assert "the tests changed the git checkout (tests must write to tmp_path only)" in out
    assert " M tracked.txt" in out.splitlines() and "1 passed" in out  # the test itself passed; the session failed
    assert results["repo", "test_clean.py"][0] == 0, results["repo", "test_clean.py"][1]
    assert results["plain", "test_dirty.py"][0] == 0  # outside a git checkout: no check


# -- how `make test` spreads the suite over xdist workers (tests/conftest.py) --------------------------------------
class FakeItem:
    def __init__(self, nodeid: str, fixturenames=(), marks=()) -> None:
        self.nodeid, self.fixturenames, self.marks = nodeid, list(fixturenames), set(marks)

    def get_closest_marker(self, name: str):
        return name if name in self.marks else None


class FakeConfig:
    def __init__(self, dist: str) -> None:
        self.option = SimpleNamespace(dist=dist, loadscopereorder=True, numprocesses=2, tx=["2*popen"], maxprocesses=None)
        self.cache = None

    def getvalue(self, name: str):
        return getattr(self.option, name)


def test_a_module_using_a_session_engine_must_be_listed_to_be_collected():
    from tests import conftest

    listed = [FakeItem("tests/test_vllm_backend.py::test_x", ["vllm_default"])]
    conftest.pytest_collection_modifyitems(FakeConfig("no"), listed)  # listed: collected as usual
    with pytest.raises(pytest.UsageError) as info:
        conftest.pytest_collection_modifyitems(FakeConfig("no"), [FakeItem("tests/test_new.py::test_y", ["vllm_default"])])
    assert str(info.value) == (
        "tests/test_new.py uses the session engine vllm_default: add it to SESSION_ENGINE_MODULES in tests/conftest.py "
        "(under xdist its tests must run on the worker that holds the engine)"
    )


def test_xdist_units_keep_a_session_engines_modules_together_and_longest_first(monkeypatch):
    from tests import conftest

    scheduler = conftest.pytest_xdist_make_scheduler(FakeConfig("loadfile"), None)
    scopes = {
        scheduler._split_scope(n)
        for n in ("tests/test_app_vllm.py::test_a", "tests/test_vllm_backend.py::test_b[x]", "tests/test_rollouts.py::test_c")
    }
    assert scopes == {"vllm_default"}
    assert scheduler._split_scope("tests/test_spec.py::test_d") == "tests/test_spec.py"
    assert scheduler.config.option.loadscopereorder is False  # xdist's own order (by test count) would replace ours
    assert conftest.pytest_xdist_make_scheduler(FakeConfig("load"), None) is None  # other modes stay xdist's
    monkeypatch.setattr(conftest, "XDIST_WORKER", "gw0")
    items = [
        FakeItem("tests/test_spec.py::test_a"),
        FakeItem("tests/test_new_browser.py::test_b", marks={"browser"}),
        FakeItem("tests/test_vllm_backend.py::test_c", ["vllm_default"], {"vllm"}),
        FakeItem("tests/test_spaces_build.py::test_d", marks={"slow"}),
    ]
    conftest.pytest_collection_modifyitems(FakeConfig("loadfile"), items)
    # vllm_default and the Spaces build by tests/unit_seconds.json, then by their marks: browser (60 s), the rest (5 s)
    assert [i.nodeid for i in items] == [
        "tests/test_vllm_backend.py::test_c",
        "tests/test_spaces_build.py::test_d",
        "tests/test_new_browser.py::test_b",
        "tests/test_spec.py::test_a",
    ]


def test_the_suite_collects_without_xdist():
    """``-p no:xdist`` (one plain pytest process) must not trip over the conftest's xdist hook."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "--collect-only", "-q", "tests/test_spec.py"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert re.search(r"^\d+ tests collected", run.stdout, re.M)
