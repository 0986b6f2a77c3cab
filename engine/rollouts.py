"""Rollouts at scale: steered completions over prompt datasets, batched per request, resumable.

Datasets
    A dataset is a folder ``<root>/<name>/prompts.jsonl`` or a file ``<root>/<name>.jsonl`` (or an explicit path to
    either). Each line is ``{"id": ..., "prompt": "raw text"}`` or ``{"id": ..., "messages": [{"role", "content"}]}``;
    ``prompt`` is used as is, ``messages`` gets the model's chat template. Ids are unique strings (ints are accepted
    and stored as strings).

Vectors
    Each dataset may have two registry vectors, named by convention ``<dataset>.trained`` (an optimised steering
    vector) and ``<dataset>.activation`` (an activation-difference vector). A vector is needed only when scales of its
    kind are asked for. Its layer is ``target_layer`` when given, else the entry's ``suggested_layer``.

Variants
    ``baseline`` (unsteered) plus one variant per (kind, scale): ``scale * v`` added at the layer's output residual
    stream, ``v`` L2-normalised first when ``normalize`` is on. All variants x prompts x rollouts of all datasets are
    sent to the engine as per-request steering in batches of ``batch_size`` completions.

Seeds
    Record seed = first 31 bits of ``sha256("<base seed>|<dataset>|<prompt id>|<rollout>")``. It does not depend on
    the batch a record lands in, the variant list or the run, so reruns reproduce records; it deliberately does not
    depend on the variant either: every variant of a rollout samples with the same random stream (common random
    numbers), so baseline-vs-steered differences come from the steering, not from sampling noise.

Output
    ``<output_root>/<dataset>/rollouts.jsonl`` (one record per completion, see :data:`RECORD_FIELDS`) and
    ``<output_root>/<dataset>/manifest.json`` (model, backend, versions, git commit, generation settings, variants,
    and one entry per run with its arguments). Records are appended in whole lines and fsynced per batch; a rerun
    skips every finished ``(dataset, prompt_id, variant, scale, rollout)`` key and drops a torn last line left by a
    kill, so nothing is duplicated or lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from engine.base import GenerationConfig, Prompt, SteerableModel
from vectors import SteeringError, SteeringSpec, VectorEntry, VectorRegistry
from vectors.safetensors_io import atomic_write_bytes

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATASET_ROOT = REPO_ROOT / "datasets"
DEFAULT_REGISTRY = REPO_ROOT / "registry" / "smollm2"
DATASET_FILE = "prompts.jsonl"
RECORDS_FILE = "rollouts.jsonl"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "sidesteer.rollouts"
MANIFEST_VERSION = 1

VectorKind = Literal["trained", "activation"]
VariantKind = Literal["baseline", "trained", "activation"]
VECTOR_KINDS: tuple[VectorKind, ...] = ("trained", "activation")
RECORD_FIELDS = (
    "dataset", "prompt_id", "variant", "vector", "scale", "layer", "spec_fingerprint",
    "rollout", "seed", "text", "num_tokens", "finish_reason",
)  # fmt: skip
RecordKey = tuple[str, str, str, float | None, int]

log = logging.getLogger("sidesteer.rollouts")


# -- datasets -----------------------------------------------------------------------------------------------------
@dataclass
class DatasetPrompt:
    """One prompt of a dataset: a raw string or a chat message list."""

    id: str
    prompt: Prompt


@dataclass
class RolloutDataset:
    """A named list of prompts read from a JSONL file.

    Args:
        name: Dataset name (folder name or file stem); names its output folder and its vectors.
        path: The JSONL file.
        prompts: Its prompts, in file order.
        sha256: Hash of the file's bytes (stored in the manifest).
    """

    name: str
    path: Path
    prompts: list[DatasetPrompt]
    sha256: str


def vector_name(dataset: str, kind: VectorKind) -> str:
    """The registry name of a dataset's vector: ``<dataset>.trained`` or ``<dataset>.activation``."""
    return f"{dataset}.{kind}"


def list_datasets(root: str | Path = DEFAULT_DATASET_ROOT) -> list[str]:
    """Sorted names of the datasets under ``root`` (folders with a prompts.jsonl, and *.jsonl files)."""
    root = Path(root)
    if not root.is_dir():
        return []
    names = {p.name for p in root.iterdir() if p.is_dir() and (p / DATASET_FILE).is_file()}
    names |= {p.stem for p in root.glob("*.jsonl") if p.is_file()}
    return sorted(names)


def resolve_dataset(name_or_path: str | Path, root: str | Path = DEFAULT_DATASET_ROOT) -> tuple[str, Path]:
    """``(name, jsonl path)`` of a dataset given by name (looked up under ``root``) or by path.

    Raises:
        SteeringError: Nothing matches; the message lists the datasets under ``root``.
    """
    root = Path(root)
    text = str(name_or_path)
    candidates = [root / text / DATASET_FILE, root / f"{text}.jsonl", Path(text) / DATASET_FILE, Path(text)]
    for path in candidates:
        if path.is_file() and path.suffix == ".jsonl":
            name = path.parent.name if path.name == DATASET_FILE else path.stem
            return name, path
    available = ", ".join(list_datasets(root)) or "none"
    raise SteeringError(
        f"datasets: unknown dataset {text!r} (looked for {root / text / DATASET_FILE} and {root / text}.jsonl); "
        f"available in {str(root)!r}: {available}; or pass a folder with {DATASET_FILE} or a .jsonl path"
    )


def _parse_prompt(data: Any, where: str) -> DatasetPrompt:
    if not isinstance(data, dict):
        raise SteeringError(f"{where}: expected a JSON object with 'id' and 'prompt' or 'messages'")
    pid = data.get("id")
    if isinstance(pid, bool) or not isinstance(pid, (str, int)) or str(pid) == "":
        raise SteeringError(f"{where}: 'id' is {pid!r}; give every prompt a unique non-empty string id")
    has_prompt, has_messages = "prompt" in data, "messages" in data
    if has_prompt == has_messages:
        raise SteeringError(f"{where}: give exactly one of 'prompt' (raw text) or 'messages' (chat), not {'both' if has_prompt else 'neither'}")
    if has_prompt:
        if not isinstance(data["prompt"], str) or not data["prompt"]:
            raise SteeringError(f"{where}: 'prompt' must be a non-empty string")
        return DatasetPrompt(str(pid), data["prompt"])
    messages = data["messages"]
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    )
    if not ok:
        raise SteeringError(f"{where}: 'messages' must be a non-empty list of {{'role': str, 'content': str}}")
    return DatasetPrompt(str(pid), [{"role": m["role"], "content": m["content"]} for m in messages])


def load_dataset(name_or_path: str | Path, root: str | Path = DEFAULT_DATASET_ROOT) -> RolloutDataset:
    """Read a dataset (see the module docstring for the format).

    Args:
        name_or_path: A name under ``root``, a folder holding ``prompts.jsonl``, or a ``.jsonl`` file.
        root: Where names are looked up.

    Raises:
        SteeringError: Unknown dataset, bad JSON, a bad record, duplicate ids or no prompts; the message names the
            file and line.
    """
    name, path = resolve_dataset(name_or_path, root)
    raw = path.read_bytes()
    prompts: list[DatasetPrompt] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SteeringError(f"{where}: not valid JSON ({exc.msg}); write one JSON object per line") from exc
        prompt = _parse_prompt(data, where)
        if prompt.id in seen:
            raise SteeringError(f"{where}: duplicate id {prompt.id!r} (first on line {seen[prompt.id]}); ids must be unique")
        seen[prompt.id] = number
        prompts.append(prompt)
    if not prompts:
        raise SteeringError(f"{path}: no prompts; add lines like {{\"id\": \"p1\", \"prompt\": \"...\"}}")
    return RolloutDataset(name, path, prompts, hashlib.sha256(raw).hexdigest())


def partition(names: Sequence[str], stride: int = 1, offset: int = 0) -> list[str]:
    """Every ``stride``-th name starting at ``offset`` (machine ``offset`` of ``stride`` takes these).

    The ``stride`` partitions for offsets ``0..stride-1`` are disjoint and together hold every name once.

    Raises:
        SteeringError: ``stride < 1`` or ``offset`` outside ``0..stride-1``.
    """
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise SteeringError(f"dataset_stride: {stride!r} must be an integer >= 1 (1 = every dataset)")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < stride:
        raise SteeringError(f"dataset_offset: {offset!r} must be an integer in 0..{stride - 1} (below dataset_stride={stride})")
    return list(names)[offset::stride]


# -- variants -----------------------------------------------------------------------------------------------------
@dataclass
class Variant:
    """One steering setting of a sweep: the baseline or ``scale * vector`` at ``layer``.

    Args:
        kind: ``"baseline"``, ``"trained"`` or ``"activation"``.
        scale: Add scale (None for the baseline).
        vector: Registry name of the vector (None for the baseline).
        layer: 0-based decoder layer (None for the baseline).
        spec: The steering spec (None for the baseline).
        vector_sha256: Hash of the registry vector (before normalisation).
    """

    kind: VariantKind
    scale: float | None = None
    vector: str | None = None
    layer: int | None = None
    spec: SteeringSpec | None = None
    vector_sha256: str | None = None

    @property
    def label(self) -> str:
        return self.kind if self.scale is None else f"{self.kind}@{self.scale:g}"

    @property
    def fingerprint(self) -> str | None:
        return None if self.spec is None else self.spec.fingerprint()

    def to_dict(self) -> dict[str, Any]:
        """Manifest form (no tensors)."""
        return {"variant": self.kind, "scale": self.scale, "vector": self.vector, "layer": self.layer,
                "spec_fingerprint": self.fingerprint, "vector_sha256": self.vector_sha256}  # fmt: skip


def load_vectors(registry: VectorRegistry, dataset: str, kinds: Sequence[VectorKind]) -> dict[VectorKind, VectorEntry]:
    """The dataset's registry vectors of the given kinds.

    Raises:
        SteeringError: A vector is missing or unreadable; the message names it and the fix.
    """
    out: dict[VectorKind, VectorEntry] = {}
    for kind in kinds:
        name = vector_name(dataset, kind)
        if name not in registry:
            raise SteeringError(
                f"{kind}_scales: dataset {dataset!r} has no {kind} vector {name!r} in registry {str(registry.root)!r}; "
                f"add one (VectorRegistry.add({name!r}, ...), see scripts/build_example_dataset.py) or drop --{kind}-scales"
            )
        out[kind] = registry.get(name)
    return out


def build_variants(
    model: SteerableModel,
    vectors: dict[VectorKind, VectorEntry],
    scales: dict[VectorKind, Sequence[float]],
    *,
    target_layer: int | None = None,
    normalize: bool = False,
) -> list[Variant]:
    """Baseline plus one variant per (kind, scale), checked against the model.

    Args:
        model: The model the specs are for (hidden size and layer count are checked).
        vectors: The registry entries by kind (see :func:`load_vectors`).
        scales: Scales per kind; kinds without scales get no variants.
        target_layer: Steer at this layer; None uses each vector's ``suggested_layer``.
        normalize: L2-normalise each vector before scaling.

    Raises:
        SteeringError: Wrong hidden size, no layer to steer at, a layer out of range, a zero vector with
            ``normalize``, or a non-finite scale.
    """
    variants = [Variant("baseline")]
    for kind in VECTOR_KINDS:
        if not scales.get(kind):
            continue
        entry = vectors[kind]
        if entry.hidden_size != model.hidden_size:
            raise SteeringError(
                f"vector {entry.name!r}: hidden size {entry.hidden_size} does not match model {model.model_id!r} "
                f"(hidden size {model.hidden_size}); use a registry built for this model (--registry)"
            )
        if entry.model_id and entry.model_id != model.model_id:
            warnings.warn(f"vector {entry.name!r} was made for {entry.model_id!r}, not {model.model_id!r}", stacklevel=2)
        layer = target_layer if target_layer is not None else entry.suggested_layer
        if layer is None:
            raise SteeringError(f"target_layer: vector {entry.name!r} has no suggested_layer; pass --target-layer")
        if not 0 <= layer < model.num_layers:
            raise SteeringError(f"target_layer: layer {layer} is out of range for {model.model_id!r}; use 0..{model.num_layers - 1}")
        vector = entry.vector
        if normalize:
            if entry.norm < 1e-8:
                raise SteeringError(f"normalize_steering: vector {entry.name!r} is zero and cannot be normalised")
            vector = vector / vector.norm()
        seen: set[float] = set()
        for scale in scales[kind]:
            scale = float(scale)
            if not math.isfinite(scale):
                raise SteeringError(f"{kind}_scales: {scale} is not finite; pass numbers like 0.5 1.0 2.0")
            if scale in seen:
                continue
            seen.add(scale)
            spec = model.validate_spec(SteeringSpec.single(layer, vector, scale, model_id=model.model_id))
            variants.append(Variant(kind, scale, entry.name, layer, spec, entry.header()["sha256"]))
    return variants


def record_seed(base_seed: int, dataset: str, prompt_id: str, rollout: int) -> int:
    """The sampling seed of a record (see the module docstring): 31 bits of a sha256, stable across runs."""
    digest = hashlib.sha256(f"{base_seed}|{dataset}|{prompt_id}|{rollout}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def record_key(record: dict[str, Any]) -> RecordKey:
    """The resume key of a record: ``(dataset, prompt_id, variant, scale, rollout)``."""
    scale = record.get("scale")
    return (record["dataset"], str(record["prompt_id"]), record["variant"], None if scale is None else float(scale), int(record["rollout"]))


# -- the append-only record file ----------------------------------------------------------------------------------
class RolloutFile:
    """Append-only JSONL of finished records.

    Opening reads the finished keys and cuts a torn last line (a kill mid-write leaves at most one, at the end);
    :meth:`append` writes whole lines and fsyncs before returning, so a record is either complete or absent.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.keys: set[RecordKey] = set()
        self.repaired_bytes = 0
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        if end < len(data):
            self.repaired_bytes = len(data) - end
            warnings.warn(f"{self.path}: dropping a torn last line ({self.repaired_bytes} bytes) left by an interrupted run", stacklevel=3)
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        duplicates = 0
        for number, line in enumerate(data[:end].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                key = record_key(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise SteeringError(
                    f"{self.path}:{number}: not a rollout record ({exc}); the file was edited or is not a rollouts file; "
                    "fix or remove that line, or use another --output-root"
                ) from exc
            duplicates += key in self.keys
            self.keys.add(key)
        if duplicates:
            warnings.warn(f"{self.path}: {duplicates} duplicate records (kept; readers should dedupe by key)", stacklevel=3)

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append records as whole JSON lines and fsync."""
        if not records:
            return
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.path.parent)
        self.keys.update(record_key(r) for r in records)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a rollouts JSONL (a torn last line is ignored, the file is not changed)."""
    data = Path(path).read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())
    _fsync_dir(path.parent)


# -- running ------------------------------------------------------------------------------------------------------
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
        target_layer: Steering layer for every vector (None: each vector's suggested layer).
        normalize: L2-normalise vectors before scaling.
        batch_size: Completions per engine call.
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

    def __post_init__(self) -> None:
        for name in ("rollouts", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SteeringError(f"{name}: {value!r} must be an integer >= 1")
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
class _Work:
    dataset: int
    prompt: DatasetPrompt
    variant: Variant
    rollout: int
    seed: int


@dataclass
class RolloutSummary:
    """What a :func:`run_rollouts` call did, per dataset and in total."""

    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    seconds: float = 0.0
    batches: int = 0

    @property
    def records_written(self) -> int:
        return sum(self.written.values())


def environment_info() -> dict[str, Any]:
    """Package versions, Python, host and the git commit of this checkout (for manifests)."""
    import importlib.metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("torch", "transformers", "vllm", "safetensors"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"versions": versions, "git_commit": commit, "git_dirty": dirty, "host": platform.node()}


def _utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class _Output:
    """One dataset's output folder: the record file and the manifest."""

    def __init__(self, root: Path, dataset: RolloutDataset, model: SteerableModel, settings: RolloutSettings,
                 variants: list[Variant], run_info: dict[str, Any]) -> None:  # fmt: skip
        self.dir = root / dataset.name
        self.records = RolloutFile(self.dir / RECORDS_FILE)
        self.manifest_path = self.dir / MANIFEST_FILE
        self.manifest = self._merge_manifest(dataset, model, settings, variants, run_info)
        self.run = self.manifest["runs"][-1]

    def _merge_manifest(self, dataset: RolloutDataset, model: SteerableModel, settings: RolloutSettings,
                        variants: list[Variant], run_info: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        old: dict[str, Any] | None = None
        if self.manifest_path.exists():
            try:
                old = json.loads(self.manifest_path.read_text())
            except json.JSONDecodeError as exc:
                raise SteeringError(f"{self.manifest_path}: unreadable manifest ({exc.msg}); fix it or use another --output-root") from exc
        current = {v.label: v.to_dict() for v in variants}
        if old is not None:
            where = f"{self.manifest_path}"
            if old.get("model") != model.model_id:
                raise SteeringError(f"{where}: records are from model {old.get('model')!r}, not {model.model_id!r}; use another --output-root")
            if old.get("generation") != settings.generation():
                raise SteeringError(
                    f"{where}: records were made with {old.get('generation')}, this run asks for {settings.generation()}; "
                    "use the same flags to resume, or another --output-root"
                )
            for label, info in (old.get("variants") or {}).items():
                if label in current and current[label]["spec_fingerprint"] != info.get("spec_fingerprint"):
                    raise SteeringError(
                        f"{where}: variant {label!r} steered with another spec before (vector or layer changed: "
                        f"layer {info.get('layer')} -> {current[label]['layer']}); use another --output-root"
                    )
            if old.get("dataset", {}).get("sha256") != dataset.sha256:
                warnings.warn(f"{dataset.path} changed since the last run into {self.dir}; records are keyed by prompt id", stacklevel=3)
        env = environment_info()
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "dataset": {"name": dataset.name, "path": str(dataset.path), "sha256": dataset.sha256, "num_prompts": len(dataset.prompts)},
            "model": model.model_id,
            "backend": model.backend,
            "model_info": model.info(),
            "generation": settings.generation(),
            "seed_rule": "sha256('<seed>|<dataset>|<prompt_id>|<rollout>')[:4] & 0x7fffffff",
            "variants": {**((old or {}).get("variants") or {}), **current},
            "versions": env["versions"],
            "git_commit": env["git_commit"],
            "git_dirty": env["git_dirty"],
            "runs": [*((old or {}).get("runs") or []), {
                "started": _utc_now(), "finished": None, "status": "running", "host": env["host"], "backend": model.backend,
                "git_commit": env["git_commit"], "args": run_info, "settings": asdict(settings), "written": 0,
                "skipped": 0,
            }],
        }  # fmt: skip
        return manifest

    def start(self) -> None:
        """Write the manifest with this run marked ``running``."""
        _atomic_write_json(self.manifest_path, self.manifest)

    def finish(self, status: str, written: int, skipped: int) -> None:
        self.run.update(finished=_utc_now(), status=status, written=written, skipped=skipped, records_in_file=len(self.records))
        _atomic_write_json(self.manifest_path, self.manifest)


def _batches(items: list[_Work], size: int) -> Iterator[list[_Work]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
        datasets: Loaded datasets (see :func:`load_dataset`); names must be distinct.
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
    outputs = [_Output(root, d, model, settings, v, run_info or {}) for d, v in zip(datasets, all_variants, strict=True)]
    work: list[_Work] = []
    for index, (dataset, variants, out) in enumerate(zip(datasets, all_variants, outputs, strict=True)):
        out.start()
        pending = skipped = 0
        for rollout in range(settings.rollouts):
            for prompt in dataset.prompts:
                seed = record_seed(settings.seed, dataset.name, prompt.id, rollout)
                for variant in variants:
                    if (dataset.name, prompt.id, variant.kind, variant.scale, rollout) in out.records:
                        skipped += 1
                        continue
                    work.append(_Work(index, prompt, variant, rollout, seed))
                    pending += 1
        summary.total[dataset.name] = pending + skipped
        summary.skipped[dataset.name] = skipped
        summary.written[dataset.name] = 0
        log.info("%s: %d variants x %d prompts x %d rollouts = %d records, %d already done",
                 dataset.name, len(variants), len(dataset.prompts), settings.rollouts, pending + skipped, skipped)  # fmt: skip
    bar = tqdm(total=sum(summary.total.values()), initial=sum(summary.skipped.values()), unit="rec",
               desc="rollouts", disable=not progress, dynamic_ncols=True, smoothing=0.1)  # fmt: skip
    status = "interrupted"
    start = time.perf_counter()
    try:
        for batch in _batches(work, settings.batch_size):
            config = GenerationConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                      top_p=settings.top_p, seeds=[w.seed for w in batch])  # fmt: skip
            generations = model.generate([w.prompt.prompt for w in batch], config, steering=[w.variant.spec for w in batch])
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
