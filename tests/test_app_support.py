"""Support code of the app tests (no tests here): registries, a free port, an in-process app server, ``app.py``."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from vectors import VectorRegistry

ROOT = Path(__file__).resolve().parents[1]
REAL_REGISTRY = ROOT / "registry" / "smollm2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def registry_copy(
    directory: Path, hidden_size: int, model_id: str, names: tuple[str, ...] = ("happy", "pirate")
) -> VectorRegistry:
    """A registry the test may edit: a copy of ``registry/smollm2`` when its vectors fit, else seeded random vectors."""
    directory.mkdir(parents=True, exist_ok=True)
    real = VectorRegistry(REAL_REGISTRY)
    entries = [e for e in real.list(hidden_size=hidden_size)] if REAL_REGISTRY.is_dir() else []
    if entries:
        for entry in entries:
            shutil.copy(entry.path, directory / entry.path.name)
        return VectorRegistry(directory)
    registry = VectorRegistry(directory)
    gen = torch.Generator().manual_seed(0)
    for name in names:
        vector = torch.randn(hidden_size, generator=gen) * 4.0
        registry.add(name, vector, model_id=model_id, suggested_layer=1, extra={"suggested_scale": 2.0})
    return registry


def one_vector_registry(directory: Path, hidden_size: int, name: str = "up") -> VectorRegistry:
    """A registry in ``directory`` with one seeded random vector ``name`` (suggested layer 1)."""
    registry = VectorRegistry(directory)
    registry.add(name, torch.randn(hidden_size, generator=torch.Generator().manual_seed(0)), suggested_layer=1)
    return registry


def load_app_script():
    """The app's command-line module, :mod:`app.cli` (``app.py`` and ``sidesteer app`` run it; importing it builds nothing)."""
    import app.cli

    return app.cli


@contextmanager
def serve(engine, registry: VectorRegistry, **build_kwargs) -> Iterator[str]:
    """Launch the app in-process on 127.0.0.1 and a free port; yield its URL; close it after."""
    from app import build_demo, launch_kwargs

    demo = build_demo(engine, registry, **build_kwargs)
    port = free_port()
    demo.launch(**launch_kwargs("127.0.0.1", port, prevent_thread_lock=True, quiet=True))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
