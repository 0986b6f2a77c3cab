"""The driver: every missing record of every dataset, generated in batches of per-request steered completions.

All variants x prompts x rollouts of all datasets are sent to the engine in batches of ``batch_size`` completions,
each completion steered by its own spec. A batch the engine died under (``EngineDeadError``) is sent again. Who
generates a batch is a :class:`BatchRunner`: this process's model by default (:func:`generate_batches`), or engine
replicas on Ray (:class:`rollouts.ray_pool.ReplicaPool`); either way this driver alone writes the records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.errors import EngineDeadError
from engine.generation import Generation, GenerationConfig
from engine.stateful import SteerableModel
from rollouts.datasets import RolloutDataset
from rollouts.manifest import DatasetOutput
from rollouts.plan import RolloutSettings, WorkItem, batches, plan_work
from rollouts.variants import build_variants, load_vectors
from vectors import SteeringError, VectorRegistry

__all__ = ["BatchRunner", "RolloutSummary", "batch_config", "generate_batch", "generate_batches", "run_rollouts"]

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
    replicas_lost: int = 0  # Ray replicas that died during the run
    requeued: int = 0  # batches a lost replica had in flight, sent to another replica

    @property
    def records_written(self) -> int:
        return sum(self.written.values())


class BatchRunner(Protocol):
    """Generates batches of work items and yields each finished batch with its completions (in any order)."""

    def results(self, batches: list[list[WorkItem]], settings: RolloutSettings,
                summary: RolloutSummary) -> Generator[tuple[list[WorkItem], list[Generation]], None, None]: ...  # fmt: skip


def batch_config(batch: Sequence[WorkItem], settings: RolloutSettings) -> GenerationConfig:
    """The generation settings of one batch: the run's sampling settings and each record's own seed."""
    return GenerationConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                            top_p=settings.top_p, seeds=[w.seed for w in batch])  # fmt: skip


def generate_batch(model: SteerableModel, batch: list[WorkItem], config: GenerationConfig, retries: int,
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


def generate_batches(model: SteerableModel, batches: list[list[WorkItem]], settings: RolloutSettings,
                     summary: RolloutSummary) -> Generator[tuple[list[WorkItem], list[Generation]], None, None]:  # fmt: skip
    """The default :class:`BatchRunner`: every batch on ``model`` in this process, in order."""
    for batch in batches:
        yield batch, generate_batch(model, batch, batch_config(batch, settings), settings.engine_retries, summary)


def run_rollouts(
    model: SteerableModel,
    datasets: Sequence[RolloutDataset],
    registry: VectorRegistry,
    settings: RolloutSettings,
    output_root: str | Path,
    *,
    run_info: dict[str, Any] | None = None,
    progress: bool = True,
    runner: BatchRunner | None = None,
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
        runner: Who generates the batches (default: ``model`` in this process). With engine replicas on Ray,
            ``model`` is the pool's stand-in (:attr:`rollouts.ray_pool.ReplicaPool.model`) and ``runner`` the pool.

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
    work_batches = list(batches(work, settings.batch_size))
    if runner is None:
        results = generate_batches(model, work_batches, settings, summary)
    else:
        results = runner.results(work_batches, settings, summary)
    try:
        for batch, generations in results:
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
        results.close()  # a stop (error, Ctrl-C) drops the batches Ray replicas still have in flight
        bar.close()
        summary.seconds = time.perf_counter() - start
        for out, dataset in zip(outputs, datasets, strict=True):
            out.finish(status, summary.written[dataset.name], summary.skipped[dataset.name])
        if summary.replicas_lost:
            log.warning(
                "%d replicas died; %d batches they had in flight were sent again", summary.replicas_lost, summary.requeued
            )
        log.info("%s after %.1f s: %d records written in %d batches, %d tokens (%.1f tok/s)", status, summary.seconds,
                 summary.records_written, summary.batches, summary.tokens, summary.tokens / max(summary.seconds, 1e-9))  # fmt: skip
    return summary
