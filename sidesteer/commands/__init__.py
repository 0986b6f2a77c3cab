"""The programs behind the ``sidesteer`` subcommands, one module each, each with ``main(argv) -> exit status``.

``scripts/*.py`` in a checkout run the same ``main`` functions. Default paths are the repository's folders when
sidesteer runs from a checkout (editable install included) and the current directory's otherwise, so that an
installed sidesteer never writes into site-packages.
"""

from __future__ import annotations

from pathlib import Path

from sidesteer import HOME


def project_root() -> Path:
    """The repository when running from a checkout (it holds ``pyproject.toml``), else the current directory."""
    return HOME if (HOME / "pyproject.toml").is_file() else Path.cwd()
