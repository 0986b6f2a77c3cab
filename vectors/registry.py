"""The vector registry: a folder of named steering vectors, one ``<name>.safetensors`` file each.

Each file holds one float32 tensor ``"vector"`` (``[hidden_size]``) and, under the safetensors metadata key
``"sidesteer.vector"``, a JSON header::

    {"format": "sidesteer.vector", "version": 1, "name": ..., "description": ..., "model_id": ...,
     "hidden_size": int, "suggested_layer": int|null, "method": "mean-diff"|"imported"|"gguf"|...,
     "created": ISO-8601 UTC, "norm": float, "sha256": hex of the little-endian float32 bytes, "extra": {...}}

``suggested_layer`` follows :mod:`vectors.convention` (0-based decoder block, output residual stream).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from vectors.errors import SteeringError
from vectors.safetensors_io import atomic_write_bytes, decode, encode, read_limited, tensor_sha256
from vectors.spec import as_vector

VECTOR_FORMAT = "sidesteer.vector"
VECTOR_VERSION = 1
METADATA_KEY = "sidesteer.vector"
TENSOR_NAME = "vector"
SUFFIX = ".safetensors"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_VECTOR_FILE_BYTES = 4 * 1024 * 1024  # one fp32 vector of 16k floats is 64 KB; anything far larger is not ours


def validate_name(name: Any) -> str:
    """Check a registry name: 1-64 chars of letters, digits, ``.``, ``_``, ``-``; starts alphanumeric; no ``..``.

    Raises:
        SteeringError: The name is not a string, is empty, hidden, too long, or holds a path separator or ``..``.
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        shown = name if isinstance(name, str) else type(name).__name__
        raise SteeringError(
            f"name: {shown!r:.80} is not a valid vector name; use 1-64 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit (no path separators, no '..'), e.g. 'happy' or 'formal-v2'"
        )
    return name


def _utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class VectorEntry:
    """One registry vector with its metadata.

    Args:
        name: Registry name (the file stem).
        vector: float32 ``[hidden_size]``.
        description: What steering with it does.
        model_id: The model it was made for (hub id), if known.
        hidden_size: ``vector.numel()``.
        suggested_layer: 0-based decoder layer it works best at, if known.
        method: How it was made: ``"mean-diff"``, ``"imported"``, ``"gguf"``, ...
        created: ISO-8601 UTC timestamp.
        norm: L2 norm of ``vector``.
        path: The file it was read from or written to.
        extra: Free-form JSON metadata, e.g. ``{"suggested_scale": 4.0}``.
    """

    name: str
    vector: torch.Tensor
    description: str = ""
    model_id: str | None = None
    hidden_size: int = 0
    suggested_layer: int | None = None
    method: str = "imported"
    created: str = ""
    norm: float = 0.0
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_name(self.name)
        self.vector = as_vector(self.vector, f"vector[{self.name}]")
        self.hidden_size = int(self.vector.numel())
        self.norm = float(self.vector.norm())
        if self.suggested_layer is not None and (
            isinstance(self.suggested_layer, bool) or not isinstance(self.suggested_layer, int) or self.suggested_layer < 0
        ):
            raise SteeringError(f"suggested_layer: {self.suggested_layer!r} is not a 0-based layer index; pass an int >= 0 or None")
        if not isinstance(self.extra, dict):
            raise SteeringError(f"extra: expected a dict of JSON values, got {type(self.extra).__name__}")
        self.created = self.created or _utc_now()

    @property
    def suggested_scale(self) -> float | None:
        """``extra["suggested_scale"]`` when set."""
        value = self.extra.get("suggested_scale")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def to_dict(self) -> dict[str, Any]:
        """Metadata as a plain dict (no tensor), for tables and JSON APIs."""
        return {
            "name": self.name,
            "description": self.description,
            "model_id": self.model_id,
            "hidden_size": self.hidden_size,
            "suggested_layer": self.suggested_layer,
            "method": self.method,
            "created": self.created,
            "norm": self.norm,
            "path": None if self.path is None else str(self.path),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], vector: torch.Tensor) -> VectorEntry:
        """Rebuild an entry from :meth:`to_dict` output plus its tensor (``norm``/``hidden_size`` are recomputed)."""
        return cls(
            name=data.get("name"),  # type: ignore[arg-type]
            vector=vector,
            description=data.get("description") or "",
            model_id=data.get("model_id"),
            suggested_layer=data.get("suggested_layer"),
            method=data.get("method") or "imported",
            created=data.get("created") or "",
            path=None if data.get("path") is None else Path(data["path"]),
            extra=dict(data.get("extra") or {}),
        )

    def header(self) -> dict[str, Any]:
        """The file header (see the module docstring)."""
        return {
            "format": VECTOR_FORMAT,
            "version": VECTOR_VERSION,
            "name": self.name,
            "description": self.description,
            "model_id": self.model_id,
            "hidden_size": self.hidden_size,
            "suggested_layer": self.suggested_layer,
            "method": self.method,
            "created": self.created,
            "norm": self.norm,
            "sha256": tensor_sha256(self.vector),
            "extra": self.extra,
        }

    def to_bytes(self) -> bytes:
        """The registry file's bytes."""
        return encode({TENSOR_NAME: self.vector}, METADATA_KEY, self.header())

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "vector file", path: Path | None = None) -> VectorEntry:
        """Parse and validate registry-file bytes (never unpickles).

        Raises:
            SteeringError: Not a sidesteer vector file, wrong format/version, bad tensor, or a checksum mismatch.
        """
        header, tensors = decode(data, METADATA_KEY, what, max_bytes=MAX_VECTOR_FILE_BYTES)
        if header.get("format") != VECTOR_FORMAT:
            raise SteeringError(f"{what}: format is {header.get('format')!r}, expected {VECTOR_FORMAT!r}; this is not a registry vector")
        if header.get("version") != VECTOR_VERSION:
            raise SteeringError(f"{what}: version {header.get('version')!r} is not supported (expected {VECTOR_VERSION}); upgrade sidesteer")
        if set(tensors) != {TENSOR_NAME}:
            raise SteeringError(f"{what}: expected exactly one tensor {TENSOR_NAME!r}, found {sorted(tensors)}; the file is corrupt")
        vector = tensors[TENSOR_NAME]
        if vector.dtype != torch.float32:
            raise SteeringError(f"{what}: tensor dtype {vector.dtype}, expected float32; re-add the vector through the registry")
        vector = as_vector(vector, f"{what}.vector")
        expected = header.get("sha256")
        if expected is not None and expected != tensor_sha256(vector):
            raise SteeringError(f"{what}: the vector's sha256 does not match its header; the file is corrupt, re-add it")
        hidden = header.get("hidden_size")
        if hidden is not None and hidden != vector.numel():
            raise SteeringError(f"{what}: header hidden_size={hidden} but the vector has {vector.numel()} floats; the file is corrupt")
        extra = header.get("extra") or {}
        try:
            return cls(
                name=header.get("name"),  # type: ignore[arg-type]
                vector=vector,
                description=header.get("description") or "",
                model_id=header.get("model_id"),
                suggested_layer=header.get("suggested_layer"),
                method=header.get("method") or "imported",
                created=header.get("created") or "",
                path=path,
                extra=extra,
            )
        except SteeringError as exc:
            raise SteeringError(f"{what}: {exc}") from exc


class VectorRegistry:
    """A folder of named vectors, one ``<name>.safetensors`` each.

    Args:
        root: The folder (created on first :meth:`add`).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"VectorRegistry({str(self.root)!r})"

    def path_for(self, name: str) -> Path:
        """The file of ``name`` (validated; always directly inside ``root``)."""
        validate_name(name)
        path = self.root / f"{name}{SUFFIX}"
        if path.resolve().parent != self.root.resolve():
            raise SteeringError(f"name: {name!r} resolves outside the registry folder {str(self.root)!r}; pick a plain name")
        return path

    def _files(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return iter(())
        return (p for p in sorted(self.root.iterdir()) if p.suffix == SUFFIX and NAME_PATTERN.match(p.stem) and p.is_file())

    def names(self) -> list[str]:
        """Sorted names of the vector files in the folder (not opened, so corrupt files are included)."""
        return [p.stem for p in self._files()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(NAME_PATTERN.match(name)) and ".." not in name and (self.root / f"{name}{SUFFIX}").is_file()

    def __len__(self) -> int:
        return len(self.names())

    def _read(self, path: Path) -> VectorEntry:
        what = f"registry vector {path.name!r}"
        entry = VectorEntry.from_bytes(read_limited(path, what, MAX_VECTOR_FILE_BYTES), what, path)
        if entry.name != path.stem:
            raise SteeringError(f"{what}: the header names it {entry.name!r}; rename the file or re-add the vector")
        return entry

    def list(self, model: str | None = None, hidden_size: int | None = None) -> list[VectorEntry]:
        """All readable vectors, sorted by name; corrupt files are skipped with a warning.

        Args:
            model: Keep only vectors whose ``model_id`` equals this.
            hidden_size: Keep only vectors of this length.
        """
        out: list[VectorEntry] = []
        for path in self._files():
            try:
                entry = self._read(path)
            except SteeringError as exc:
                warnings.warn(f"skipping unreadable registry file {str(path)!r}: {exc}", stacklevel=2)
                continue
            if model is not None and entry.model_id != model:
                continue
            if hidden_size is not None and entry.hidden_size != hidden_size:
                continue
            out.append(entry)
        return out

    def get(self, name: str) -> VectorEntry:
        """The vector called ``name``.

        Raises:
            SteeringError: Bad or unknown name (the message lists the available names), or a corrupt file.
        """
        path = self.path_for(name)
        if not path.is_file():
            available = ", ".join(self.names()) or "none"
            raise SteeringError(f"name: no vector {name!r} in {str(self.root)!r}; available: {available}")
        return self._read(path)

    def add(
        self,
        name: str,
        vector: torch.Tensor,
        *,
        description: str = "",
        model_id: str | None = None,
        suggested_layer: int | None = None,
        method: str = "imported",
        overwrite: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> VectorEntry:
        """Store a vector (atomic write) and return its entry.

        Args:
            name: Registry name (see :func:`validate_name`).
            vector: 1-D finite vector, stored as float32.
            description: What steering with it does.
            model_id: The model it was made for.
            suggested_layer: 0-based decoder layer it works best at.
            method: How it was made (``"mean-diff"``, ``"imported"``, ``"gguf"``, ...).
            overwrite: Replace an existing vector of that name.
            extra: Free-form JSON metadata, e.g. ``{"suggested_scale": 4.0}``.

        Raises:
            SteeringError: Bad name or vector, or the name is taken and ``overwrite`` is False.
        """
        path = self.path_for(name)
        if path.exists() and not overwrite:
            raise SteeringError(f"name: a vector {name!r} already exists in {str(self.root)!r}; pass overwrite=True or pick another name")
        if not isinstance(method, str) or not method:
            raise SteeringError(f"method: {method!r} is not a non-empty string; use e.g. 'mean-diff' or 'imported'")
        entry = VectorEntry(
            name=name,
            vector=vector,
            description=description or "",
            model_id=model_id,
            suggested_layer=suggested_layer,
            method=method,
            path=path,
            extra=dict(extra or {}),
        )
        if not math.isfinite(entry.norm):
            raise SteeringError(f"vector: the norm of {name!r} overflows float32; rescale it")
        try:
            data = entry.to_bytes()
        except (TypeError, ValueError) as exc:  # json.dumps on extra
            raise SteeringError(f"extra: not JSON-serialisable ({exc}); use plain numbers, strings, lists and dicts") from exc
        atomic_write_bytes(path, data)
        return entry

    def remove(self, name: str) -> None:
        """Delete the vector called ``name``.

        Raises:
            SteeringError: Bad or unknown name.
        """
        path = self.path_for(name)
        if not path.is_file():
            available = ", ".join(self.names()) or "none"
            raise SteeringError(f"name: no vector {name!r} to remove in {str(self.root)!r}; available: {available}")
        path.unlink()
