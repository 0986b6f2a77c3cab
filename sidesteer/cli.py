"""The ``sidesteer`` command: one subcommand per program, each the ``main(argv)`` of one module.

``sidesteer COMMAND [ARGS...]`` hands ``ARGS`` to that program unchanged, so ``sidesteer app --help`` is the app's
own help. The same programs run from a checkout as ``python app.py`` and ``python scripts/*.py``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sidesteer import check_own_package


@dataclass(frozen=True)
class Command:
    """One subcommand: the module whose ``main(argv)`` runs it, and the line ``sidesteer --help`` shows."""

    module: str
    help: str
    script: str  # the same program in a checkout


COMMANDS: dict[str, Command] = {
    "app": Command("app.cli", "the web app: compare unsteered and steered completions side by side", "app.py"),
    "rollouts": Command(
        "sidesteer.commands.rollouts",
        "steered rollouts over prompt datasets (baseline + every vector kind x scale), resumable",
        "scripts/generate_behavior_rollouts.py",
    ),
    "selftest": Command(
        "sidesteer.commands.selftest",
        "four steering checks on a live vLLM engine, as a pass/fail report",
        "scripts/test_vllm_steering.py",
    ),
    "parity": Command(
        "sidesteer.commands.parity",
        "greedy-token parity of the vLLM backend with the transformers backend on a random model",
        "scripts/parity_check.py",
    ),
    "build-registry": Command(
        "sidesteer.commands.build_registry", "build registry vectors from contrastive prompt sets", "scripts/build_registry.py"
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """``sidesteer [-h] COMMAND [ARGS...]``: everything after COMMAND is the command's own (``--help`` included)."""
    width = max(map(len, COMMANDS))
    table = "\n".join(f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="sidesteer",
        description=f"sidesteer: side-by-side activation steering.\n\ncommands:\n{table}",
        epilog="`sidesteer COMMAND --help` shows a command's options. From a checkout the same programs run as "
        + ", ".join(c.script for c in COMMANDS.values())
        + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    # REMAINDER after a positional takes every later argument as is, options and "--" included
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="the command's arguments")
    return parser


@contextmanager
def program_name(name: str) -> Iterator[None]:
    """``sys.argv[0]`` set to ``name`` while a command runs, so that its usage line reads ``usage: sidesteer rollouts ...``."""
    saved = sys.argv[:1]
    sys.argv[:1] = [name]
    try:
        yield
    finally:
        sys.argv[:1] = saved


def command_main(name: str) -> Callable[[list[str] | None], int | None]:
    """The ``main`` function of command ``name`` (its module is imported only now)."""
    module = COMMANDS[name].module
    check_own_package(module.split(".")[0])
    return importlib.import_module(module).main


def main(argv: list[str] | None = None) -> int:
    """Run ``sidesteer COMMAND ARGS...``; returns the command's exit status."""
    args = build_parser().parse_args(argv)
    run = command_main(args.command)
    with program_name(f"sidesteer {args.command}"):
        status = run(args.args)
    return status or 0
