"""The spec file: one ``.safetensors`` file holding a whole :class:`SteeringSpec`.

Tensors are float32, named ``layers.{L}.vector``, ``layers.{L}.projection_cap.vector`` and
``layers.{L}.ablation.vector``. The safetensors metadata key ``"sidesteer"`` holds a JSON header::

    {"format": "sidesteer.steering_spec", "version": 1, "model_id": ..., "hidden_size": ...,
     "layer_convention": ..., "op_order": [...], "description": ...,
     "layers": {"L": {"vector": name|null, "scale": float,
                      "projection_cap": {"vector": name, "min": float|null, "max": float|null}|null,
                      "ablation": {"vector": name, "scale": float}|null}},
     "sha256": {tensor name: hex digest of its little-endian float32 bytes}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vectors.convention import LAYER_CONVENTION, OP_ORDER
from vectors.errors import SteeringError
from vectors.safetensors_io import atomic_write_bytes, decode, encode, read_limited, tensor_sha256
from vectors.spec import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SpecMetadata, SteeringSpec

SPEC_FORMAT = "sidesteer.steering_spec"
SPEC_VERSION = 1
METADATA_KEY = "sidesteer"


def spec_to_bytes(spec: SteeringSpec) -> bytes:
    """Serialise a spec into spec-file bytes."""
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    for index, layer in spec.layers.items():
        entry: dict[str, Any] = {"vector": None, "scale": layer.scale, "projection_cap": None, "ablation": None}
        if layer.vector is not None:
            entry["vector"] = name = f"layers.{index}.vector"
            tensors[name] = layer.vector
        if layer.projection_cap is not None:
            name = f"layers.{index}.projection_cap.vector"
            tensors[name] = layer.projection_cap.vector
            entry["projection_cap"] = {"vector": name, "min": layer.projection_cap.min, "max": layer.projection_cap.max}
        if layer.ablation is not None:
            name = f"layers.{index}.ablation.vector"
            tensors[name] = layer.ablation.vector
            entry["ablation"] = {"vector": name, "scale": layer.ablation.scale}
        layers[str(index)] = entry
    header = {
        "format": SPEC_FORMAT,
        "version": SPEC_VERSION,
        "model_id": spec.metadata.model_id,
        "hidden_size": spec.metadata.hidden_size,
        "description": spec.metadata.description,
        "layer_convention": LAYER_CONVENTION,
        "op_order": list(OP_ORDER),
        "layers": layers,
        "sha256": {name: tensor_sha256(t) for name, t in tensors.items()},
        "fingerprint": spec.fingerprint(),
    }
    return encode(tensors, METADATA_KEY, header)


def save_spec(spec: SteeringSpec, path: str | Path) -> Path:
    """Write ``spec`` to ``path`` atomically and return the path."""
    p = Path(path)
    if p.suffix != ".safetensors":
        raise SteeringError(f"path: spec files end in .safetensors, got {p.name!r}; rename it")
    atomic_write_bytes(p, spec_to_bytes(spec))
    return p


def load_spec(path: str | Path) -> SteeringSpec:
    """Read and validate a spec file."""
    return spec_from_bytes(read_limited(path, "spec file"))


def _tensor(tensors: dict[str, torch.Tensor], hashes: dict[str, str], name: Any, field_name: str) -> torch.Tensor:
    if not isinstance(name, str) or name not in tensors:
        raise SteeringError(f"{field_name}: names tensor {name!r}, which the file does not hold; the file is corrupt")
    t = tensors[name]
    if t.dtype != torch.float32:
        raise SteeringError(f"{field_name}: tensor {name!r} has dtype {t.dtype}; spec files store float32")
    if name in hashes and hashes[name] != tensor_sha256(t):
        raise SteeringError(f"{field_name}: sha256 of tensor {name!r} does not match the header; the file is corrupt")
    return t


def spec_from_bytes(data: bytes) -> SteeringSpec:
    """Parse and validate spec-file bytes.

    Raises:
        SteeringError: Wrong format or version, corrupt or truncated data, bad values (NaN, zero directions, ...).
    """
    header, tensors = decode(data, METADATA_KEY, "spec file")
    if header.get("format") != SPEC_FORMAT:
        raise SteeringError(f"format: expected {SPEC_FORMAT!r}, got {header.get('format')!r}; this is not a sidesteer spec file")
    version = header.get("version")
    if version != SPEC_VERSION:
        raise SteeringError(f"version: spec file version {version!r} is not supported (this sidesteer reads {SPEC_VERSION}); upgrade sidesteer or re-export")
    raw_layers = header.get("layers")
    if not isinstance(raw_layers, dict):
        raise SteeringError("layers: the header has no layers object; the file is corrupt")
    hashes = header.get("sha256") or {}
    layers: dict[int, LayerSteeringSpec] = {}
    for key, entry in raw_layers.items():
        try:
            index = int(key)
        except ValueError as exc:
            raise SteeringError(f"layers: key {key!r} is not a layer number; the file is corrupt") from exc
        if not isinstance(entry, dict):
            raise SteeringError(f"layers[{index}]: expected an object; the file is corrupt")
        where = f"layers[{index}]"
        vector = None if entry.get("vector") is None else _tensor(tensors, hashes, entry["vector"], f"{where}.vector")
        cap = entry.get("projection_cap")
        abl = entry.get("ablation")
        try:
            layers[index] = LayerSteeringSpec(
                vector=vector,
                scale=entry.get("scale", 1.0),
                projection_cap=None
                if cap is None
                else ProjectionCapSpec(_tensor(tensors, hashes, cap.get("vector"), f"{where}.projection_cap.vector"), cap.get("min"), cap.get("max")),
                ablation=None
                if abl is None
                else AblationSpec(_tensor(tensors, hashes, abl.get("vector"), f"{where}.ablation.vector"), abl.get("scale")),
            )
        except SteeringError as exc:
            raise SteeringError(f"{where}.{exc}") from exc
    hidden = header.get("hidden_size")
    if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0):
        raise SteeringError(f"hidden_size: {hidden!r} is not a positive integer; the file is corrupt")
    meta = SpecMetadata(model_id=header.get("model_id"), hidden_size=hidden, description=header.get("description") or "")
    return SteeringSpec(layers, meta)
