"""The app's command line: options (each also an environment variable), engine, registry, limits, launch.

``python app.py ...`` and ``sidesteer app ...`` both run :func:`main`; ``app.py`` keeps Spaces' module-level ``demo``
(:func:`get_demo`). ``--help`` lists every option with its environment variable.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app import AppLimits, build_demo, launch_kwargs  # the package turns gradio analytics off before importing gradio
from app.deploy import (
    DATA_DIR_ENV,
    READ_ONLY_ENV,
    REGISTRY_ENV,
    SHIPPED_REGISTRY,
    open_registry,
    read_only_default,
    user_registry_dir,
)
from app.limits import OPTIONS
from app.server import default_host, default_port
from vectors import SteeringError

BACKENDS = ("auto", "vllm", "hf")

logger = logging.getLogger("sidesteer.app")
_demo: Any = None


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``vllm`` where a CUDA GPU is present, else ``hf`` (transformers)."""
    if backend not in BACKENDS:
        raise SystemExit(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    import torch

    return "vllm" if torch.cuda.is_available() else "hf"


def parse_args(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """Command line; every option also has an environment default (for Spaces, where there is no command line).

    A bad environment value ends the program with a message naming the variable.
    """
    env = os.environ if environ is None else environ
    try:
        limits = AppLimits.from_env(env)
        read_only = read_only_default(env)
    except SteeringError as exc:
        raise SystemExit(f"sidesteer: {exc}") from exc
    parser = argparse.ArgumentParser(
        description="sidesteer: side-by-side activation steering in the browser",
        epilog=f"On Hugging Face Spaces ($SPACE_ID is set) the app starts read-only unless {READ_ONLY_ENV}=0.",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=env.get("SIDESTEER_BACKEND", "auto"),
        help="vllm (GPU), hf (transformers) or auto [env SIDESTEER_BACKEND]",
    )
    parser.add_argument(
        "--model",
        default=env.get("SIDESTEER_MODEL", "default"),
        help="'default' (offline SmolLM2-135M-Instruct), a folder or a hub id [env SIDESTEER_MODEL]",
    )
    parser.add_argument(
        "--registry",
        default=None,
        help=(
            f"folder for vectors created on this server; the app also serves the shipped {SHIPPED_REGISTRY.parent.name}/{SHIPPED_REGISTRY.name} "
            f"(read-only) [env {REGISTRY_ENV}; default ${DATA_DIR_ENV}/registry, else $XDG_DATA_HOME/sidesteer/registry, "
            "else ~/.local/share/sidesteer/registry]"
        ),
    )
    parser.add_argument(
        "--read-only-registry",
        action=argparse.BooleanOptionalAction,
        default=read_only,
        help=f"public mode: nobody can create, change or delete server vectors; created vectors live in the browser session [env {READ_ONLY_ENV}=1/0; on by default on Spaces]",
    )
    parser.add_argument("--host", default=default_host(), help="interface to bind (default 127.0.0.1) [env GRADIO_SERVER_NAME]")
    parser.add_argument("--port", type=int, default=default_port(), help="port (default 7860) [env GRADIO_SERVER_PORT]")
    for option in OPTIONS:
        default = getattr(limits, option.field)
        parser.add_argument(
            option.flag,
            type=int,
            default=default,
            metavar="N",
            help=f"limit: {option.help} (default {getattr(AppLimits, option.field)}) [env {option.env}]",
        )
    args = parser.parse_args(argv)
    args.registry = str(user_registry_dir(env, args.registry))
    return args


def limits_from_args(args: argparse.Namespace) -> AppLimits:
    """The limits the options ask for."""
    try:
        return AppLimits(**{option.field: getattr(args, option.field) for option in OPTIONS})
    except SteeringError as exc:
        raise SystemExit(f"sidesteer: {exc}") from exc


def create_engine(backend: str, model: str) -> Any:
    """Load the model on the chosen backend."""
    backend = resolve_backend(backend)
    if backend == "vllm":
        from engine import VLLMSteeringConfig, VLLMSteerModel

        return VLLMSteerModel(VLLMSteeringConfig(model_name=model, capture=True))  # the Registry tab extracts vectors
    from engine import HFSteerModel

    return HFSteerModel(model)


def create_registry(args: argparse.Namespace) -> Any:
    """The user folder over the shipped vectors, read-only when asked; logs the mode and the folders."""
    return open_registry(Path(args.registry), read_only=args.read_only_registry)


def create_demo(args: argparse.Namespace) -> Any:
    """Engine + registry + limits -> the Gradio app. The engine gets the limits too (a second line of defence)."""
    limits = limits_from_args(args)
    registry = create_registry(args)
    engine = create_engine(args.backend, args.model)
    engine.limits = limits.request_limits()
    return build_demo(engine, registry, limits=limits)


def get_demo() -> Any:
    """The demo built from the environment (Spaces have no command line), built once, on first call."""
    global _demo
    if _demo is None:
        _demo = create_demo(parse_args([]))
    return _demo


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, build the demo and serve it until interrupted."""
    global _demo
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    _demo = create_demo(args)
    _demo.launch(**launch_kwargs(args.host, args.port, limits=limits_from_args(args)))
