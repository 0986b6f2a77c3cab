"""One dataset's output folder: its record file and ``manifest.json``, checked against earlier runs into it.

The manifest holds the model, backend, package versions, git commit, generation settings, variants, and one entry
per run with its arguments. Resuming into a folder made with another model, other generation settings, or a variant
whose spec changed is refused.
"""

from __future__ import annotations

import json
import platform
import subprocess
import warnings
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.stateful import SteerableModel
from rollouts.datasets import RolloutDataset
from rollouts.paths import REPO_ROOT
from rollouts.plan import RolloutSettings
from rollouts.records import RECORDS_FILE, RolloutFile, fsync_dir
from rollouts.variants import Variant
from vectors import SteeringError
from vectors.safetensors_io import atomic_write_bytes

__all__ = ["MANIFEST_FILE", "MANIFEST_FORMAT", "MANIFEST_VERSION", "DatasetOutput", "environment_info"]

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "sidesteer.rollouts"
MANIFEST_VERSION = 1


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
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"versions": versions, "git_commit": commit, "git_dirty": dirty, "host": platform.node()}


def _utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())
    fsync_dir(path.parent)


class DatasetOutput:
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
                raise SteeringError(
                    f"{self.manifest_path}: unreadable manifest ({exc.msg}); fix it or use another --output-root"
                ) from exc
        current = {v.label: v.to_dict() for v in variants}
        if old is not None:
            where = f"{self.manifest_path}"
            if old.get("model") != model.model_id:
                raise SteeringError(
                    f"{where}: records are from model {old.get('model')!r}, not {model.model_id!r}; use another --output-root"
                )
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
                warnings.warn(
                    f"{dataset.path} changed since the last run into {self.dir}; records are keyed by prompt id", stacklevel=3
                )
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
