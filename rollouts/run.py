"""The driver: every missing record of every dataset, generated in batches of per-request steered completions.

All variants x prompts x rollouts of all datasets are sent to the engine in batches of ``batch_size`` completions,
each completion steered by its own spec. A batch the engine died under (``EngineDeadError``) is sent again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import EngineDeadError
from engine.generation import Generation, GenerationConfig
from engine.stateful import SteerableModel
from rollouts.datasets import RolloutDataset
from rollouts.manifest import DatasetOutput
from rollouts.plan import RolloutSettings, WorkItem, batches, plan_work
from rollouts.variants import build_variants, load_vectors
from vectors import SteeringError, VectorRegistry

__all__ = ["RolloutSummary", "run_rollouts"]

log = logging.getLogger("sidesteer.rollouts")  # the CLI adds its --log file handler to this logger


@dataclass
class RolloutSummary:
    """What a :func:`run_rollouts` call did, per dataset and in total."""

    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    seconds: float = 0.0
    batches: int = 0
    engine_retries: int = 0  # batches sent again after the engine died under them

    @property
    def records_written(self) -> int:
        return sum(self.written.values())


def _generate_batch(model: SteerableModel, batch: list[WorkItem], config: GenerationConfig, retries: int,
                    summary: RolloutSummary) -> list[Generation]:  # fmt: skip
    """One batch's completions; sent again (at most ``retries`` times) when the engine dies under it."""
    prompts, steering = [w.prompt.prompt for w in batch], [w.variant.spec for w in batch]
    attempt = 0
    while True:
        try:
            return model.generate(prompts, config, steering=steering)
        except EngineDeadError as exc:
            # "dead": the backend will not come back by itself (auto_restart off, or its rebuild failed).
            if attempt >= retries or model.status() == "dead":
                raise
            attempt += 1
            summary.engine_retries += 1
            log.warning("the engine died under a batch of %d (%s); sending it again (%d/%d)", len(batch), exc, attempt, retries)


def run_rollouts(
    model: SteerableModel,
    datasets: Sequence[RolloutDataset],
    registry: VectorRegistry,
    settings: RolloutSettings,
    output_root: str | Path,
    *,
    run_info: dict[str, Any] | None = None,
    progress: bool = True,
) -> RolloutSummary:
    """Generate every missing record of every dataset, in batches of per-request steered completions.

    Work is ordered rollout-major (all variants of rollout 0 of every prompt first), so an interrupted run leaves
    complete baseline-vs-steered comparisons behind. Each batch's records are appended and fsynced before the next
    batch starts.

    Args:
        model: Any backend.
        datasets: Loaded datasets (see :func:`rollouts.datasets.load_dataset`); names must be distinct.
        registry: Where ``<dataset>.trained`` / ``<dataset>.activation`` live.
        settings: What to generate.
        output_root: Parent of the per-dataset output folders.
        run_info: The run's arguments, stored in each manifest.
        progress: Show a tqdm bar (records, records/s, ETA, tokens/s).

    Returns:
        Counts of written and skipped records per dataset.

    Raises:
        SteeringError: Missing vectors, wrong hidden size, bad layer, or an output folder made with other settings.
    """
    from tqdm.auto import tqdm

    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise SteeringError(f"datasets: names repeat ({names}); each dataset needs its own name and output folder")
    root = Path(output_root)
    summary = RolloutSummary()
    all_variants = [  # check every dataset's vectors before writing anything
        build_variants(model, load_vectors(registry, d.name, settings.kinds()), settings.scales(),
                       target_layer=settings.target_layer, normalize=settings.normalize)
        for d in datasets
    ]  # fmt: skip
    outputs = [DatasetOutput(root, d, model, settings, v, run_info or {}) for d, v in zip(datasets, all_variants, strict=True)]
    work: list[WorkItem] = []
    for index, (dataset, variants, out) in enumerate(zip(datasets, all_variants, outputs, strict=True)):
        out.start()
        pending, skipped = plan_work(index, dataset, variants, settings, out.records)
        work += pending
        summary.total[dataset.name] = len(pending) + skipped
        summary.skipped[dataset.name] = skipped
        summary.written[dataset.name] = 0
        log.info("%s: %d variants x %d prompts x %d rollouts = %d records, %d already done",
                 dataset.name, len(variants), len(dataset.prompts), settings.rollouts, len(pending) + skipped, skipped)  # fmt: skip
    bar = tqdm(total=sum(summary.total.values()), initial=sum(summary.skipped.values()), unit="rec",
               desc="rollouts", disable=not progress, dynamic_ncols=True, smoothing=0.1)  # fmt: skip
    status = "interrupted"
    start = time.perf_counter()
    try:
        for batch in batches(work, settings.batch_size):
            config = GenerationConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                      top_p=settings.top_p, seeds=[w.seed for w in batch])  # fmt: skip
            generations = _generate_batch(model, batch, config, settings.engine_retries, summary)
            per_dataset: dict[int, list[dict[str, Any]]] = {}
            for w, gen in zip(batch, generations, strict=True):
                v = w.variant
                per_dataset.setdefault(w.dataset, []).append({
                    "dataset": datasets[w.dataset].name, "prompt_id": w.prompt.id, "variant": v.kind, "vector": v.vector,
                    "scale": v.scale, "layer": v.layer, "spec_fingerprint": gen.spec_fingerprint, "rollout": w.rollout,
                    "seed": w.seed, "text": gen.text, "num_tokens": gen.num_tokens, "finish_reason": gen.finish_reason,
                })  # fmt: skip
                summary.tokens += gen.num_tokens
            for index, records in per_dataset.items():
                outputs[index].records.append(records)
                summary.written[datasets[index].name] += len(records)
            summary.batches += 1
            summary.seconds = time.perf_counter() - start
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{summary.tokens / max(summary.seconds, 1e-9):.0f}", refresh=False)
        status = "complete"
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
        for out, dataset in zip(outputs, datasets, strict=True):
            out.finish(status, summary.written[dataset.name], summary.skipped[dataset.name])
        log.info("%s after %.1f s: %d records written in %d batches, %d tokens (%.1f tok/s)", status, summary.seconds,
                 summary.records_written, summary.batches, summary.tokens, summary.tokens / max(summary.seconds, 1e-9))  # fmt: skip
    return summary
