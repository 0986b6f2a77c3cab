"""The shape of the code, read with ``ast``: no module patches ``sys.path``, and imports never go round in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

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
    assert {"vectors.spec", "vectors.spec_file", "engine.base", "app.ui", "sidesteer.cli"} <= set(modules)
    graph = import_graph(modules)
    assert cycles(graph) == []
    assert "vectors.spec_file" in graph["vectors.spec"]  # the spec builds on its file format, not the other way
