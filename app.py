"""Run the sidesteer web app: ``python app.py [--backend auto|vllm|hf] [--model NAME_OR_DIR] [--registry DIR]``.

Name clash, on purpose: this file and the ``app/`` package sit side by side. Python's import system prefers a package
directory over a module file of the same name, so ``import app`` (here and anywhere else) gets the package, while
``python app.py`` runs this file as ``__main__``. Hugging Face Spaces (``sdk: gradio``, ``app_file: app.py``) runs
it that way too. ``gradio app.py`` (hot reload) would import the package instead and is not supported.

``demo`` is module-level, as the Spaces convention asks, but lazy: it is built (and the model loaded) on first
access, from ``$SIDESTEER_BACKEND`` / ``$SIDESTEER_MODEL`` / ``$SIDESTEER_REGISTRY``. Loading this file by path (as
the tests do) therefore costs nothing, and ``python app.py`` builds exactly one demo from its arguments.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from app import build_demo, launch_kwargs
from app.server import default_host, default_port

DEFAULT_REGISTRY = "registry/smollm2"
BACKENDS = ("auto", "vllm", "hf")

_demo: Any = None


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``vllm`` where a CUDA GPU is present, else ``hf`` (transformers)."""
    if backend not in BACKENDS:
        raise SystemExit(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    import torch

    return "vllm" if torch.cuda.is_available() else "hf"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; every option also has an environment default (for Spaces, where there is no command line)."""
    parser = argparse.ArgumentParser(description="sidesteer: side-by-side activation steering in the browser")
    parser.add_argument("--backend", choices=BACKENDS, default=os.environ.get("SIDESTEER_BACKEND", "auto"), help="vllm (GPU), hf (transformers) or auto")
    parser.add_argument("--model", default=os.environ.get("SIDESTEER_MODEL", "default"), help="'default' (offline SmolLM2-135M-Instruct), a folder or a hub id")
    parser.add_argument("--registry", default=os.environ.get("SIDESTEER_REGISTRY", DEFAULT_REGISTRY), help="vector registry folder")
    parser.add_argument("--host", default=default_host(), help="interface to bind (default $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port(), help="port (default $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--read-only-registry", action="store_true", help="disable creating and deleting vectors (public demos)")
    return parser.parse_args(argv)


def create_engine(backend: str, model: str) -> Any:
    """Load the model on the chosen backend."""
    backend = resolve_backend(backend)
    if backend == "vllm":
        from engine import VLLMSteeringConfig, VLLMSteerModel

        return VLLMSteerModel(VLLMSteeringConfig(model_name=model, capture=True))  # the Registry tab extracts vectors
    from engine import HFSteerModel

    return HFSteerModel(model)


def create_demo(args: argparse.Namespace) -> Any:
    """Engine + registry -> the Gradio app."""
    from vectors import VectorRegistry

    engine = create_engine(args.backend, args.model)
    return build_demo(engine, VectorRegistry(args.registry), registry_writable=not args.read_only_registry)


def __getattr__(name: str) -> Any:
    """Module-level ``demo``, built on first access (PEP 562)."""
    global _demo
    if name == "demo":
        if _demo is None:
            _demo = create_demo(parse_args([]))
        return _demo
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, build the demo and serve it until interrupted."""
    global _demo
    args = parse_args(argv)
    _demo = create_demo(args)
    _demo.launch(**launch_kwargs(args.host, args.port))


if __name__ == "__main__":
    main()
