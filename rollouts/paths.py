"""Where rollouts look by default: the repository's example datasets and the default model's vector registry."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_DATASET_ROOT", "DEFAULT_REGISTRY", "REPO_ROOT"]

# rollouts/ sits at the top of the repository, beside engine/ and vectors/: the repository is one level up.
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATASET_ROOT = REPO_ROOT / "datasets"
DEFAULT_REGISTRY = REPO_ROOT / "registry" / "smollm2"
