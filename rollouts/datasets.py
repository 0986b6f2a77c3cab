"""Prompt datasets: a folder ``<root>/<name>/prompts.jsonl`` or a file ``<root>/<name>.jsonl``, one prompt a line.

Each line is ``{"id": ..., "prompt": "raw text"}`` or ``{"id": ..., "messages": [{"role", "content"}]}``; ``prompt`` is
used as is, ``messages`` gets the model's chat template. Ids are unique strings (ints are accepted and stored as
strings).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.generation import Prompt
from rollouts.paths import DEFAULT_DATASET_ROOT
from vectors import SteeringError

__all__ = ["DATASET_FILE", "DatasetPrompt", "RolloutDataset", "list_datasets", "load_dataset", "resolve_dataset"]

DATASET_FILE = "prompts.jsonl"


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
        raise SteeringError(
            f"{where}: give exactly one of 'prompt' (raw text) or 'messages' (chat), not {'both' if has_prompt else 'neither'}"
        )
    if has_prompt:
        if not isinstance(data["prompt"], str) or not data["prompt"]:
            raise SteeringError(f"{where}: 'prompt' must be a non-empty string")
        return DatasetPrompt(str(pid), data["prompt"])
    messages = data["messages"]
    ok = (
        isinstance(messages, list)
        and messages
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages)
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
        raise SteeringError(f'{path}: no prompts; add lines like {{"id": "p1", "prompt": "..."}}')
    return RolloutDataset(name, path, prompts, hashlib.sha256(raw).hexdigest())
