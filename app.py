"""Run the sidesteer web app: ``python app.py [--backend auto|vllm|hf] [--model NAME_OR_DIR] [--registry DIR] ...``.

``python app.py --help`` lists every option with its environment variable (Spaces have no command line, so each
option can also be set in the environment; a flag wins over its variable).

Name clash, on purpose: this file and the ``app/`` package sit side by side. Python's import system prefers a package
directory over a module file of the same name, so ``import app`` (here and anywhere else) gets the package, while
``python app.py`` runs this file as ``__main__``. Hugging Face Spaces (``sdk: gradio``, ``app_file: app.py``) runs
it that way too. ``gradio app.py`` (hot reload) would import the package instead and is not supported.

``demo`` is module-level, as the Spaces convention asks, but lazy: it is built (and the model loaded) on first
access, from the environment. Loading this file by path (as the tests do) therefore costs nothing, and
``python app.py`` builds exactly one demo from its arguments.
"""

from __future__ import annotations

from typing import Any

from app import cli


def __getattr__(name: str) -> Any:
    """Module-level ``demo``, built on first access (PEP 562)."""
    if name == "demo":
        return cli.get_demo()
    raise AttributeError(name)


if __name__ == "__main__":
    cli.main()
