"""Installing sidesteer: the wheel's contents, a fresh virtual environment, the ``sidesteer`` facade and command.

Offline: the wheel is built with the project venv's setuptools (``--no-build-isolation``), installed with
``--no-deps --no-index``, and the fresh environment reads torch & co. from the project venv. Nothing is written into
the checkout: the wheel is built from a copy (a setuptools build writes ``build/`` and ``*.egg-info`` beside its
source).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import engine
import vectors
from sidesteer import cli

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"sidesteer", "vectors", "engine", "app", "rollouts"}
NOT_INSTALLED = {"tests", "bench"}  # packages of the checkout that stay out of the wheel (bench: measurement only)


def clean_env() -> dict[str, str]:
    """This process's environment without PYTHONPATH (nothing but the installation may supply sidesteer)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=clean_env() if env is None else env, capture_output=True, text=True, timeout=timeout)


# -- the facade and the command, from the checkout ---------------------------------------------------------------
def test_facade_exports_the_public_api_of_vectors_and_engine():
    import sidesteer

    assert sorted(sidesteer.__all__) == sorted([*vectors.__all__, *engine.__all__])
    for name in set(sidesteer.__all__) - {"VLLMSteerModel", "VLLMSteeringConfig"}:  # those two import vLLM (seconds)
        home = engine if name in engine.__all__ else vectors
        assert getattr(sidesteer, name) is getattr(home, name), name
    with pytest.raises(AttributeError, match="module 'sidesteer' has no attribute 'build_demo'"):
        sidesteer.build_demo  # noqa: B018 - the UI is not part of the library API


def test_import_sidesteer_and_its_command_load_neither_torch_nor_gradio():
    code = "import sys, sidesteer, sidesteer.cli; print(sorted(m for m in ('torch', 'gradio', 'engine', 'vectors', 'app') if m in sys.modules))"
    out = run([sys.executable, "-c", code], cwd=ROOT)
    assert (out.returncode, out.stdout) == (0, "[]\n"), out.stderr


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("app", "usage: sidesteer app [-h] [--backend {auto,vllm,hf,llamacpp}]"),
        ("rollouts", "usage: sidesteer rollouts [-h] [--datasets NAME [NAME ...]]"),
        ("selftest", "usage: sidesteer selftest [-h] [--model MODEL] [--layer LAYER]"),
        ("parity", "usage: sidesteer parity [-h] [--arch ARCH] [--tokenizer TOKENIZER]"),
        ("build-registry", "usage: sidesteer build-registry [-h] [--model MODEL] [--out OUT]"),
    ],
)
def test_each_command_gets_its_arguments_unchanged(command, usage, capsys):
    """``sidesteer COMMAND --help`` is the program's own help, under the command's name."""
    argv0 = sys.argv[0]
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(usage)
    assert sys.argv[0] == argv0  # the program name is put back


def test_sidesteer_help_lists_the_commands_and_refuses_others(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.split("commands:\n")[1].split("\n\n")[0].splitlines()] == list(cli.COMMANDS)
    with pytest.raises(SystemExit) as info:
        cli.main(["serve"])
    assert info.value.code == 2
    assert capsys.readouterr().err.endswith(
        "sidesteer: error: argument COMMAND: invalid choice: 'serve' (choose from 'app', 'rollouts', 'selftest', 'parity', 'build-registry')\n"
    )


def test_a_package_of_yours_named_like_a_layer_stops_the_import(tmp_path):
    """Your own ``vectors`` package first on sys.path (here: the current directory) must not be used silently."""
    (tmp_path / "vectors").mkdir()
    (tmp_path / "vectors" / "__init__.py").write_text("")
    out = run([sys.executable, "-c", "import sidesteer"], cwd=tmp_path, env={**clean_env(), "PYTHONPATH": str(ROOT)})
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"ImportError: sidesteer: 'vectors' resolves to {tmp_path / 'vectors' / '__init__.py'}, not to sidesteer's own "
        f"{ROOT / 'vectors'}; a module or package of yours named 'vectors' comes first on sys.path. Rename it, or run "
        "from a directory that does not hold it"
    )


# -- the wheel and a fresh environment ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline from a copy of the checkout's packaging files and packages."""
    before = sorted(p.name for p in ROOT.iterdir())
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for init in ROOT.glob("*/__init__.py"):  # every package, listed in pyproject.toml or not
        shutil.copytree(init.parent, source / init.parent.name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    build = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "-w",
            str(out),
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
        ],
        cwd=source,
    )
    assert build.returncode == 0, build.stderr
    assert sorted(p.name for p in ROOT.iterdir()) == before  # no build/ or *.egg-info in the checkout
    (path,) = out.glob("sidesteer-*.whl")
    return path


def test_wheel_holds_the_five_packages_and_the_command(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == PACKAGES | {"sidesteer-0.1.0.dist-info"}
    checkout = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert checkout - NOT_INSTALLED <= PACKAGES, "a package of the checkout is missing from pyproject.toml's list"
    assert {
        "sidesteer/commands/rollouts.py",
        "rollouts/run.py",
        "vectors/spec_file.py",
        "engine/vllm_extension.py",
        "app/ui.py",
    } <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    entry_points = zipfile.ZipFile(wheel).read("sidesteer-0.1.0.dist-info/entry_points.txt").decode()
    assert entry_points.split() == ["[console_scripts]", "sidesteer", "=", "sidesteer.cli:main"]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with only the wheel installed, reading torch & co. from the project venv."""
    home = tmp_path_factory.mktemp("venv")
    made = run([sys.executable, "-m", "venv", "--without-pip", str(home)], cwd=home)
    assert made.returncode == 0, made.stderr
    python = home / "bin" / "python"
    install = run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            str(wheel),
        ],
        cwd=home,
    )
    assert install.returncode == 0, install.stderr
    # Only now the packages this test runs with (the project venv's site-packages), after the environment's own:
    # `venv --system-site-packages` would expose the base interpreter's packages, not the project venv's (and pip,
    # finding an editable sidesteer there, would skip the wheel as already installed).
    (site,) = home.glob("lib/python*/site-packages")
    paths = dict.fromkeys(p for p in sys.path if Path(p).name in ("site-packages", "dist-packages"))
    (site / "project-venv.pth").write_text("".join(f"{p}\n" for p in paths))
    return home


def test_installed_wheel_serves_the_public_api_outside_the_checkout(venv, tmp_path):
    code = """
import importlib.util, json, torch
import sidesteer
from sidesteer import HFSteerModel, SteeringSpec, VectorRegistry
from sidesteer.commands import project_root
spec = SteeringSpec.single(2, torch.ones(8), 1.5)
back = SteeringSpec.load(spec.save("spec.safetensors"))
print(json.dumps({
    "files": {name: importlib.util.find_spec(name).origin for name in ("sidesteer", "vectors", "engine", "app")},
    "round_trip": back.fingerprint() == spec.fingerprint() and back.active_layers() == [2],
    "classes": [HFSteerModel.__module__, VectorRegistry.__module__],
    "project_root": str(project_root()),
}))
"""
    out = run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    (site,) = venv.glob("lib/python*/site-packages")
    assert got["files"] == {name: str(site / name / "__init__.py") for name in ("sidesteer", "vectors", "engine", "app")}
    assert got["round_trip"] is True and got["classes"] == ["engine.hf_backend", "vectors.registry"]
    assert got["project_root"] == str(tmp_path)  # installed: default paths are the current directory's, not site-packages'


def test_installed_console_script_runs_a_command(venv, tmp_path):
    top = run([str(venv / "bin" / "sidesteer"), "--help"], cwd=tmp_path)
    assert top.returncode == 0, top.stderr
    assert top.stdout.startswith("usage: sidesteer [-h] COMMAND ...") and "  build-registry  build registry vectors" in top.stdout
    sub = run([str(venv / "bin" / "sidesteer"), "rollouts", "--help"], cwd=tmp_path)
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout.startswith("usage: sidesteer rollouts [-h] [--datasets NAME [NAME ...]]")


def test_installed_sidesteer_refuses_a_shadowing_engine_package(venv, tmp_path):
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "__init__.py").write_text("raise RuntimeError('the user package ran')\n")
    out = run([str(venv / "bin" / "python"), "-c", "import sidesteer"], cwd=tmp_path)
    (site,) = venv.glob("lib/python*/site-packages")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"ImportError: sidesteer: 'engine' resolves to {tmp_path / 'engine' / '__init__.py'}, not to sidesteer's own "
        f"{site / 'engine'}; a module or package of yours named 'engine' comes first on sys.path. Rename it, or run "
        "from a directory that does not hold it"
    )
