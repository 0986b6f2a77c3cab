"""Rollouts at scale: steered completions over prompt datasets, batched per request, resumable.

An application of the engine (``vectors <- engine <- rollouts``): it drives any ``SteerableModel`` and is never
imported by ``engine/`` or ``vectors/``. ``sidesteer rollouts`` (``scripts/generate_behavior_rollouts.py``) is its
command line; docs/ROLLOUTS.md describes the flags and files. One concept a module:

- :mod:`rollouts.datasets`: the prompt file format (``<root>/<name>/prompts.jsonl`` or ``<root>/<name>.jsonl``).
- :mod:`rollouts.variants`: baseline plus ``scale * v`` per (vector kind, scale); the ``<dataset>.trained`` and
  ``<dataset>.activation`` registry vectors.
- :mod:`rollouts.plan`: the settings, the per-record seeds, and the work list (variants x prompts x rollouts).
- :mod:`rollouts.records`: ``rollouts.jsonl``: whole-line appends, fsync per batch, torn-tail repair, resume keys.
- :mod:`rollouts.manifest`: ``manifest.json`` and the checks that a resumed folder was made with the same settings.
- :mod:`rollouts.sharding`: every ``stride``-th dataset from ``offset``, to split datasets over machines.
- :mod:`rollouts.run`: :func:`run_rollouts`, the batch loop over an engine, with a retry of a batch the engine died
  under.
- :mod:`rollouts.ray_pool`: :class:`ReplicaPool`, data parallel: engine replicas on Ray fed from the driver's queue
  (``--replicas``); :mod:`rollouts.replica`: one replica (a Ray actor's body) and the driver's view of it. Ray is an
  optional dependency, imported only when replicas are asked for.
- :mod:`rollouts.paths`: the default dataset root and registry of a checkout.

Output
    ``<output_root>/<dataset>/rollouts.jsonl`` (one record per completion, see :data:`RECORD_FIELDS`) and
    ``<output_root>/<dataset>/manifest.json`` (model, backend, versions, git commit, generation settings, variants,
    and one entry per run with its arguments). Records are appended in whole lines and fsynced per batch; a rerun
    skips every finished ``(dataset, prompt_id, variant, scale, rollout)`` key and drops a torn last line left by a
    kill, so nothing is duplicated or lost.
"""

from __future__ import annotations

from rollouts.datasets import DATASET_FILE, DatasetPrompt, RolloutDataset, list_datasets, load_dataset, resolve_dataset
from rollouts.manifest import MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION, DatasetOutput, environment_info
from rollouts.paths import DEFAULT_DATASET_ROOT, DEFAULT_REGISTRY, REPO_ROOT
from rollouts.plan import RolloutSettings, WorkItem, batches, plan_work, record_seed
from rollouts.ray_pool import ReplicaPool
from rollouts.records import RECORD_FIELDS, RECORDS_FILE, RecordKey, RolloutFile, read_records, record_key
from rollouts.run import BatchRunner, RolloutSummary, run_rollouts
from rollouts.sharding import partition
from rollouts.variants import (
    VECTOR_KINDS,
    Variant,
    VariantKind,
    VectorKind,
    build_variants,
    default_target_layer,
    load_vectors,
    vector_name,
)

__all__ = [
    "DATASET_FILE",
    "DEFAULT_DATASET_ROOT",
    "DEFAULT_REGISTRY",
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "RECORDS_FILE",
    "RECORD_FIELDS",
    "REPO_ROOT",
    "VECTOR_KINDS",
    "DatasetOutput",
    "BatchRunner",
    "DatasetPrompt",
    "RecordKey",
    "ReplicaPool",
    "RolloutDataset",
    "RolloutFile",
    "RolloutSettings",
    "RolloutSummary",
    "Variant",
    "VariantKind",
    "VectorKind",
    "WorkItem",
    "batches",
    "build_variants",
    "default_target_layer",
    "environment_info",
    "list_datasets",
    "load_dataset",
    "load_vectors",
    "partition",
    "plan_work",
    "read_records",
    "record_key",
    "record_seed",
    "resolve_dataset",
    "run_rollouts",
    "vector_name",
]
