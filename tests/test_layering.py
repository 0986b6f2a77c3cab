"""The shape of the code, read with ``ast``: no module patches ``sys.path``, and imports never go round in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIPPED_DIRS = {"__pycache__", "build", "out", "runs", "node_modules"}  # and every hidden folder (.venv, .git, ...)
PATH_METHODS = {"insert", "append", "extend", "remove", "pop", "clear", "__setitem__"}


def python_files() -> list[Path]:
    """Every ``.py`` file of the repository, outside hidden and generated folders."""
    files = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts[:-1]
        if not any(p.startswith(".") or p in SKIPPED_DIRS or p.endswith(".egg-info") for p in parts):
            files.append(path)
    return sorted(files)


def is_sys_path(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) and node.value.id == "sys"


def sys_path_changes(tree: ast.AST) -> list[int]:
    """Line numbers where ``sys.path`` is changed: a method call, an item or slice assignment, a rebinding."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in PATH_METHODS:
            if is_sys_path(node.func.value):
                lines.append(node.lineno)
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
        for target in targets:
            if is_sys_path(target) or (isinstance(target, ast.Subscript) and is_sys_path(target.value)):
                lines.append(node.lineno)
    return sorted(lines)


def test_no_module_changes_sys_path_outside_the_tests_conftest():
    """Scripts import the installed packages (``make setup`` installs the checkout editable); only tests/conftest.py
    may arrange the test path."""
    every_form = "import sys\nsys.path.insert(0, 'x')\nsys.path.append('y')\nsys.path[:0] = ['z']\nsys.path = []\nsys.path += ['w']\nprint(sys.path)\n"
    assert sys_path_changes(ast.parse(every_form)) == [2, 3, 4, 5, 6]  # the finder sees each form, and no mere read
    found = {
        f"{path.relative_to(ROOT)}:{line}"
        for path in python_files()
        if path != ROOT / "tests" / "conftest.py"
        for line in sys_path_changes(ast.parse(path.read_text(), str(path)))
    }
    assert found == set()


def product_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the repository's top-level packages (tests aside)."""
    packages = [p.parent for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests"]
    modules = {}
    for package in packages:
        for path in package.rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the product modules it imports anywhere (function-level imports too).

    ``from package import name`` points at the submodule ``package.name`` when there is one, else at the package.
    """
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_product_modules_import_each_other_in_one_direction(tmp_path):
    """No import cycle anywhere in the product packages, counting imports inside functions (which only hide one)."""
    # the finder itself: two modules that import each other, one of them inside a function
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n    return x\n")
    pair = import_graph({"a": tmp_path / "a.py", "b": tmp_path / "b.py"})
    assert pair == {"a": {"b"}, "b": {"a"}} and cycles(pair) == [["a", "b"]] and cycles({"a": {"b"}, "b": set()}) == []

    modules = product_modules()
    assert {"vectors.spec", "vectors.spec_file", "engine.backend", "engine.stateful", "app.ui", "sidesteer.cli"} <= set(modules)
    graph = import_graph(modules)
    assert cycles(graph) == []
    assert "vectors.spec_file" in graph["vectors.spec"]  # the spec builds on its file format, not the other way


PRODUCT = ("sidesteer", "vectors", "engine", "app", "rollouts")  # what the wheel installs (bench/ is measurement)


def test_the_product_never_imports_the_benchmarks(tmp_path):
    """bench/ (timing RPCs, drivers, tables) is not installed: a product module importing it would break the wheel."""
    (tmp_path / "m.py").write_text("def f():\n    from bench.stats import summarize\n")  # the finder sees a late import
    assert import_graph({"m": tmp_path / "m.py", "bench.stats": tmp_path / "m.py"})["m"] == {"bench.stats"}
    modules = product_modules()
    assert {"bench.run", "bench.kernel_timer", "bench.worker_ext"} <= set(modules)
    graph = import_graph(modules)
    found = {
        f"{name} -> {t}"
        for name, targets in graph.items()
        if name.split(".")[0] in PRODUCT
        for t in targets
        if t.split(".")[0] == "bench"
    }
    assert found == set()


def apply_calls(tree: ast.AST) -> int:
    """Calls of ``engine.vllm_patches.apply`` in a module: ``vllm_patches.apply()`` or ``apply()`` imported from it."""
    imported = any(
        isinstance(n, ast.ImportFrom) and n.module == "engine.vllm_patches" and any(a.name == "apply" for a in n.names)
        for n in ast.walk(tree)
    )
    return sum(
        isinstance(n, ast.Call)
        and (
            (
                isinstance(n.func, ast.Attribute)
                and n.func.attr == "apply"
                and isinstance(n.func.value, ast.Name)
                and n.func.value.id == "vllm_patches"
            )
            or (imported and isinstance(n.func, ast.Name) and n.func.id == "apply")
        )
        for n in ast.walk(tree)
    )


def test_vllm_patches_are_applied_from_the_extension_module_only():
    assert apply_calls(ast.parse("from engine.vllm_patches import apply\napply()\n")) == 1
    assert apply_calls(ast.parse("from engine import vllm_patches\nvllm_patches.apply()\n")) == 1
    found = {str(p.relative_to(ROOT)): n for p in python_files() if (n := apply_calls(ast.parse(p.read_text(), str(p))))}
    assert found == {"engine/vllm_extension.py": 1}


PATCH_PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from torch._dynamo.aot_compile_types import BundledAOTAutogradSerializableCallable as Bundled
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.gpu.model_runner import GPUModelRunner as MRV2
from vllm.v1.worker.gpu_model_runner import GPUModelRunner as V1
runners = {"v1": V1, "cpu": CPUModelRunner, "mrv2": MRV2}
wrapped = [f"{k}.{m}" for k, c in runners.items() for m, f in vars(c).items() if getattr(f, "_sidesteer_wrapped", False)]
print(json.dumps([sorted(wrapped), any("finalize_loading" in vars(k) for k in Bundled.__mro__)]))
"""


def patched_after_importing(*modules: str) -> list:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PATCH_PROBE, *modules], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_engine_patches_nothing_until_the_extension_loads():
    """A driver process that builds engines (and the benchmark's driver) imports every engine module but the worker
    extension: vLLM's runner classes and torch's AOT callable must stay as shipped. Importing the extension (what
    vLLM does in each worker) applies every patch."""
    pytest.importorskip("vllm")
    driver = ["engine", "engine.vllm_backend", "engine.vllm_slots", "engine.vllm_patches", "engine.vllm_capture",
              "engine.vllm_lifecycle", "bench.run", "bench.engines", "bench.kernel_timer", "bench.table"]  # fmt: skip
    assert patched_after_importing(*driver) == [[], False]
    every = ["cpu.load_model", "cpu.warming_up_model", "mrv2.execute_model", "mrv2.load_model", "mrv2.prepare_inputs",
             "v1._prepare_inputs", "v1.execute_model", "v1.load_model"]  # fmt: skip
    assert patched_after_importing("engine.vllm_extension") == [every, True]


MAY_IMPORT = {
    "vectors": {"vectors"},
    "engine": {"vectors", "engine"},
    "rollouts": {"vectors", "engine", "rollouts"},
    "app": {"vectors", "engine", "app"},
    "sidesteer": {"vectors", "engine", "rollouts", "app", "sidesteer"},
    "bench": {"vectors", "engine", "rollouts", "app", "sidesteer", "bench"},  # measurement: nothing imports it
}


def test_packages_import_only_what_docs_architecture_allows():
    """The table in docs/ARCHITECTURE.md: vectors <- engine <- (rollouts, app) <- sidesteer, counting imports in functions."""
    graph = import_graph(product_modules())
    wrong = sorted(
        f"{module} imports {other}"
        for module, imported in graph.items()
        for other in imported
        if other.split(".")[0] not in MAY_IMPORT[module.split(".")[0]]
    )
    assert wrong == []
