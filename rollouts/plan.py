"""What a run generates: the settings, the per-record seeds, and the work list (variants x prompts x rollouts).

Seeds
    Record seed = first 31 bits of ``sha256("<base seed>|<dataset>|<prompt id>|<rollout>")``. It does not depend on
    the batch a record lands in, the variant list or the run, so reruns reproduce records; it deliberately does not
    depend on the variant either: every variant of a rollout samples with the same random stream (common random
    numbers), so baseline-vs-steered differences come from the steering, not from sampling noise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.generation import GenerationConfig
from rollouts.datasets import DatasetPrompt, RolloutDataset
from rollouts.records import RecordKey
from rollouts.variants import Variant, VectorKind
from vectors import SteeringError

__all__ = ["RolloutSettings", "WorkItem", "batches", "plan_work", "record_seed"]


def record_seed(base_seed: int, dataset: str, prompt_id: str, rollout: int) -> int:
    """The sampling seed of a record (see the module docstring): 31 bits of a sha256, stable across runs."""
    digest = hashlib.sha256(f"{base_seed}|{dataset}|{prompt_id}|{rollout}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass
class RolloutSettings:
    """What to generate.

    Args:
        rollouts: Completions per (prompt, variant).
        max_new_tokens: Tokens per completion.
        temperature: 0 = greedy.
        top_p: Nucleus sampling mass.
        seed: Base seed of :func:`record_seed`.
        trained_scales: Scales of the ``<dataset>.trained`` vector.
        activation_scales: Scales of the ``<dataset>.activation`` vector.
        target_layer: Steering layer for every vector (None: each vector's suggested layer, else
            :func:`rollouts.variants.default_target_layer`).
        normalize: L2-normalise vectors before scaling.
        batch_size: Completions per engine call.
        engine_retries: Times one batch is sent again after the engine died under it (``EngineDeadError``; the vLLM
            backend starts a new engine and the retry waits for it). Records are written per finished batch only, so
            a retried batch is neither lost nor duplicated. No retry when the backend reports itself ``"dead"``.
    """

    rollouts: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    trained_scales: list[float] = field(default_factory=list)
    activation_scales: list[float] = field(default_factory=list)
    target_layer: int | None = None
    normalize: bool = False
    batch_size: int = 256
    engine_retries: int = 2

    def __post_init__(self) -> None:
        for name in ("rollouts", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SteeringError(f"{name}: {value!r} must be an integer >= 1")
        if isinstance(self.engine_retries, bool) or not isinstance(self.engine_retries, int) or self.engine_retries < 0:
            raise SteeringError(f"engine_retries: {self.engine_retries!r} must be an integer >= 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise SteeringError(f"seed: {self.seed!r} must be a non-negative integer")
        GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p)  # validates
        self.trained_scales = [float(s) for s in self.trained_scales]
        self.activation_scales = [float(s) for s in self.activation_scales]

    def scales(self) -> dict[VectorKind, list[float]]:
        return {"trained": self.trained_scales, "activation": self.activation_scales}

    def kinds(self) -> list[VectorKind]:
        """Vector kinds that have scales (whose vectors are needed)."""
        return [kind for kind, values in self.scales().items() if values]

    def generation(self) -> dict[str, Any]:
        """The settings every record of an output folder must share (checked on resume)."""
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed, "normalize": self.normalize}  # fmt: skip


@dataclass
class WorkItem:
    """One record to generate: a prompt of dataset number ``dataset`` under one variant, one rollout."""

    dataset: int  # index into the run's dataset list
    prompt: DatasetPrompt
    variant: Variant
    rollout: int
    seed: int


def plan_work(index: int, dataset: RolloutDataset, variants: Sequence[Variant], settings: RolloutSettings,
              done: Container[RecordKey]) -> tuple[list[WorkItem], int]:  # fmt: skip
    """The records of one dataset that are not ``done`` yet, rollout-major, and how many are done.

    Rollout-major (all variants of rollout 0 of every prompt first), so that an interrupted run leaves complete
    baseline-vs-steered comparisons behind.

    Args:
        index: The dataset's position in the run's dataset list (stored in each item).
        dataset: The dataset.
        variants: Its variants (see :func:`rollouts.variants.build_variants`).
        settings: How many rollouts, and the base seed.
        done: The finished record keys (a :class:`rollouts.records.RolloutFile`).

    Returns:
        The work items to generate, and the number of records skipped as done.
    """
    work: list[WorkItem] = []
    skipped = 0
    for rollout in range(settings.rollouts):
        for prompt in dataset.prompts:
            seed = record_seed(settings.seed, dataset.name, prompt.id, rollout)
            for variant in variants:
                if (dataset.name, prompt.id, variant.kind, variant.scale, rollout) in done:
                    skipped += 1
                    continue
                work.append(WorkItem(index, prompt, variant, rollout, seed))
    return work, skipped


def batches(items: list[WorkItem], size: int) -> Iterator[list[WorkItem]]:
    """``items`` in consecutive chunks of ``size`` (the last one may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
