"""The append-only record file ``<output_root>/<dataset>/rollouts.jsonl``: one JSON line per finished completion.

Records are appended in whole lines and fsynced per batch. Opening the file for a rerun drops a torn last line left
by a kill and collects the finished ``(dataset, prompt_id, variant, scale, rollout)`` keys, which the rerun skips, so
nothing is duplicated or lost.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vectors import SteeringError

__all__ = ["RECORDS_FILE", "RECORD_FIELDS", "RecordKey", "RolloutFile", "fsync_dir", "read_records", "record_key"]

RECORDS_FILE = "rollouts.jsonl"
RECORD_FIELDS = (
    "dataset", "prompt_id", "variant", "vector", "scale", "layer", "spec_fingerprint",
    "rollout", "seed", "text", "num_tokens", "finish_reason",
)  # fmt: skip
RecordKey = tuple[str, str, str, float | None, int]


def record_key(record: dict[str, Any]) -> RecordKey:
    """The resume key of a record: ``(dataset, prompt_id, variant, scale, rollout)``."""
    scale = record.get("scale")
    return (
        record["dataset"],
        str(record["prompt_id"]),
        record["variant"],
        None if scale is None else float(scale),
        int(record["rollout"]),
    )


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
            warnings.warn(
                f"{self.path}: dropping a torn last line ({self.repaired_bytes} bytes) left by an interrupted run", stacklevel=3
            )
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
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path.parent)
        self.keys.update(record_key(r) for r in records)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a rollouts JSONL (a torn last line is ignored, the file is not changed)."""
    data = Path(path).read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]


def fsync_dir(path: Path) -> None:
    """fsync a folder, so that a file just created in it survives a crash (best effort: some file systems refuse)."""
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
