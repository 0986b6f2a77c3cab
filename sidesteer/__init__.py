"""sidesteer: side-by-side activation steering. The public API in one import, and the ``sidesteer`` command.

Import from here: ``from sidesteer import SteeringSpec, HFSteerModel, VectorRegistry``. The names live in the
packages of the design, installed beside this one under their own top-level names: ``vectors`` (what a steering
setup *is*) <- ``engine`` (how a model is steered) <- ``app`` (the Gradio UI, reached through ``sidesteer app``, not
re-exported here: it imports gradio) and ``rollouts`` (steered rollouts at scale, reached through ``sidesteer
rollouts``). Those names are generic, so before anything is imported this package
checks that ``vectors`` and ``engine`` resolve to its own installation, not to a package of yours that comes earlier
on ``sys.path`` (see :func:`check_own_package`).

Names resolve on first use (PEP 562): ``import sidesteer`` and ``sidesteer --help`` load neither torch nor gradio.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, for type checkers and editors
    from engine import (
        EngineDeadError,
        Generation,
        GenerationConfig,
        HFSteerModel,
        QwenSteerModel,
        RequestLimits,
        SteerableModel,
        StreamEvent,
        VLLMSteeringConfig,
        VLLMSteerModel,
        mean_difference,
    )
    from vectors import (
        LAYER_CONVENTION,
        OP_ORDER,
        AblationSpec,
        LayerSteeringSpec,
        ProjectionCapSpec,
        SpecMetadata,
        SteeringError,
        SteeringSpec,
        VectorEntry,
        VectorRegistry,
        export_gguf_control_vector,
        export_gguf_control_vector_bytes,
        import_gguf_control_vector,
        import_gguf_control_vector_bytes,
        layer_to_llamacpp,
        llamacpp_to_layer,
    )

# The public API: vectors.__all__ + engine.__all__ (tests/test_install.py holds them equal).
__all__ = [
    "LAYER_CONVENTION",
    "OP_ORDER",
    "AblationSpec",
    "EngineDeadError",
    "Generation",
    "GenerationConfig",
    "HFSteerModel",
    "LayerSteeringSpec",
    "ProjectionCapSpec",
    "QwenSteerModel",
    "RequestLimits",
    "SpecMetadata",
    "SteerableModel",
    "SteeringError",
    "SteeringSpec",
    "StreamEvent",
    "VLLMSteerModel",
    "VLLMSteeringConfig",
    "VectorEntry",
    "VectorRegistry",
    "export_gguf_control_vector",
    "export_gguf_control_vector_bytes",
    "import_gguf_control_vector",
    "import_gguf_control_vector_bytes",
    "layer_to_llamacpp",
    "llamacpp_to_layer",
    "mean_difference",
]
# The names defined in engine; every other public name is defined in vectors.
_FROM_ENGINE = frozenset(
    {
        "EngineDeadError",
        "Generation",
        "GenerationConfig",
        "HFSteerModel",
        "QwenSteerModel",
        "RequestLimits",
        "SteerableModel",
        "StreamEvent",
        "VLLMSteerModel",
        "VLLMSteeringConfig",
        "mean_difference",
    }
)

# The folder this package was imported from: site-packages for an install, the repository for a checkout or an
# editable install. Its sibling packages vectors/, engine/ and app/ must come from the same folder.
HOME = Path(__file__).resolve().parent.parent


def check_own_package(name: str) -> None:
    """Make sure the top-level package ``name`` (``vectors``, ``engine`` or ``app``) is sidesteer's own.

    Finds the package without importing it (or looks at the one already imported).

    Raises:
        ImportError: ``name`` is missing, or resolves to a module outside sidesteer's installation, such as a
            package of yours of the same name in the current directory.
    """
    try:
        spec = importlib.util.find_spec(name)
    except ValueError:  # an imported module without __spec__ (e.g. one made by hand)
        spec = None
    if spec is None:
        raise ImportError(
            f"sidesteer: the package {name!r} is not installed; reinstall sidesteer (pip install sidesteer)", name=name
        )
    # origin is None for a namespace package: a bare folder of that name (no __init__.py), e.g. in the current
    # directory; Python's path finder returns it before an editable install's finder is asked
    if spec.origin is None or Path(spec.origin).resolve().parent != HOME / name:
        raise ImportError(
            f"sidesteer: {name!r} resolves to {spec.origin or spec.submodule_search_locations}, not to sidesteer's own "
            f"{HOME / name}; a module or package of yours named {name!r} comes first on sys.path. Rename it, or run "
            "from a directory that does not hold it",
            name=name,
        )


for _package in ("vectors", "engine"):
    check_own_package(_package)


def __getattr__(name: str) -> Any:
    """Resolve a public name from its package on first use (PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module 'sidesteer' has no attribute {name!r}")
    value = getattr(importlib.import_module("engine" if name in _FROM_ENGINE else "vectors"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
