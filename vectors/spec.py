"""Steering spec dataclasses: what a steering setup *is*, independent of any model or backend.

Layer indices follow :mod:`vectors.convention` (0-based decoder block, output residual stream). Every tensor is
stored as a contiguous float32 CPU tensor, so specs are device-free, hashable by content and round-trip bit-exactly.
"""

from __future__ import annotations

import copy
import hashlib
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vectors.errors import SteeringError

# Norms below this count as zero: a direction must be normalisable.
MIN_DIRECTION_NORM = 1e-8


def as_vector(value: Any, field_name: str, *, direction: bool = False) -> torch.Tensor:
    """Validate ``value`` as a 1-D finite vector and return it as contiguous float32 on the CPU.

    Args:
        value: A tensor (or anything ``torch.as_tensor`` accepts, such as a list of floats).
        field_name: Name used in the error message, e.g. ``"layers[3].projection_cap.vector"``.
        direction: Also require a non-zero norm (the vector will be normalised to a unit direction).

    Returns:
        The vector as a detached float32 CPU tensor.

    Raises:
        SteeringError: The value is not a 1-D, non-empty, finite (and, for directions, non-zero) vector.
    """
    if value is None:
        raise SteeringError(f"{field_name}: a vector is required, got None; pass a 1-D tensor of hidden_size floats")
    try:
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SteeringError(f"{field_name}: cannot read {type(value).__name__} as a vector ({exc}); pass a 1-D tensor") from exc
    if t.is_complex() or t.dtype == torch.bool:
        raise SteeringError(f"{field_name}: dtype {t.dtype} is not a real float vector; pass a float tensor")
    if t.dim() != 1:
        raise SteeringError(
            f"{field_name}: expected a 1-D vector, got shape {tuple(t.shape)}; flatten it or pick one row"
        )
    if t.numel() == 0:
        raise SteeringError(f"{field_name}: the vector is empty; pass hidden_size floats")
    t = t.detach().to(device="cpu", dtype=torch.float32).clone()  # the spec owns its tensors
    if not bool(torch.isfinite(t).all()):
        raise SteeringError(f"{field_name}: the vector holds NaN or Inf values; recompute it from finite activations")
    if direction and float(t.norm()) < MIN_DIRECTION_NORM:
        raise SteeringError(f"{field_name}: the direction has zero norm and cannot be normalised; pass a non-zero vector")
    return t


def as_scalar(value: Any, field_name: str) -> float:
    """Validate a finite real number and return it as a Python float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        else:
            raise SteeringError(f"{field_name}: expected a number, got {value!r}; pass a finite float")
    out = float(value)
    if not math.isfinite(out):
        raise SteeringError(f"{field_name}: {out} is not finite; pass a finite float")
    return out


@dataclass
class ProjectionCapSpec:
    """Clamp the projection of the residual stream onto the unit direction ``vector`` into ``[min, max]``.

    Either bound may be None (unbounded on that side); at least one is required.
    """

    vector: torch.Tensor
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        self.vector = as_vector(self.vector, "projection_cap.vector", direction=True)
        self.min = None if self.min is None else as_scalar(self.min, "projection_cap.min")
        self.max = None if self.max is None else as_scalar(self.max, "projection_cap.max")
        if self.min is None and self.max is None:
            raise SteeringError("projection_cap: min and max are both None; set at least one bound")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise SteeringError(f"projection_cap: min={self.min} > max={self.max}; swap them or widen the range")

    @property
    def direction(self) -> torch.Tensor:
        """The unit direction (float32)."""
        return self.vector / self.vector.norm()


@dataclass
class AblationSpec:
    """Multiply the component of the residual stream along the unit direction ``vector`` by ``scale``.

    ``scale=0`` removes the component, ``1`` is a no-op, ``>1`` amplifies it, negative flips it.
    """

    vector: torch.Tensor
    scale: float = 0.0

    def __post_init__(self) -> None:
        self.vector = as_vector(self.vector, "ablation.vector", direction=True)
        self.scale = as_scalar(self.scale, "ablation.scale")

    @property
    def direction(self) -> torch.Tensor:
        """The unit direction (float32)."""
        return self.vector / self.vector.norm()


@dataclass
class LayerSteeringSpec:
    """Ops at one layer, applied in order: add ``scale * vector``, projection cap, ablation."""

    vector: torch.Tensor | None = None
    scale: float = 1.0
    projection_cap: ProjectionCapSpec | None = None
    ablation: AblationSpec | None = None

    def __post_init__(self) -> None:
        if self.vector is not None:
            self.vector = as_vector(self.vector, "vector")
        self.scale = as_scalar(self.scale, "scale")
        if self.projection_cap is not None and not isinstance(self.projection_cap, ProjectionCapSpec):
            raise SteeringError("projection_cap: expected a ProjectionCapSpec; build one with ProjectionCapSpec(vector, min, max)")
        if self.ablation is not None and not isinstance(self.ablation, AblationSpec):
            raise SteeringError("ablation: expected an AblationSpec; build one with AblationSpec(vector, scale)")

    def is_empty(self) -> bool:
        """True when no op at this layer changes the residual stream."""
        return self.vector is None and self.projection_cap is None and self.ablation is None

    def hidden_sizes(self) -> set[int]:
        """The lengths of every tensor in this layer."""
        tensors = [self.vector, *(op.vector for op in (self.projection_cap, self.ablation) if op is not None)]
        return {int(t.numel()) for t in tensors if t is not None}


@dataclass
class SpecMetadata:
    """Who a spec is for and what it does. Not part of the content fingerprint."""

    model_id: str | None = None
    hidden_size: int | None = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "hidden_size": self.hidden_size, "description": self.description}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpecMetadata:
        return cls(model_id=data.get("model_id"), hidden_size=data.get("hidden_size"), description=data.get("description") or "")


@dataclass
class SteeringSpec:
    """A full steering setup: ops per layer plus metadata.

    Args:
        layers: Layer index (0-based decoder block, output residual stream) to the ops at that layer.
        metadata: Model id, hidden size and description. ``hidden_size`` is inferred from the tensors when unset.
    """

    layers: dict[int, LayerSteeringSpec] = field(default_factory=dict)
    metadata: SpecMetadata = field(default_factory=SpecMetadata)

    def __post_init__(self) -> None:
        if not isinstance(self.layers, dict):
            raise SteeringError(f"layers: expected a dict of layer index -> LayerSteeringSpec, got {type(self.layers).__name__}")
        if self.metadata is None:
            self.metadata = SpecMetadata()
        layers: dict[int, LayerSteeringSpec] = {}
        sizes: set[int] = set()
        for key, layer_spec in self.layers.items():
            if isinstance(key, bool) or not isinstance(key, int):
                raise SteeringError(f"layers: key {key!r} is not an int layer index; use 0-based decoder layer numbers")
            if key < 0:
                raise SteeringError(f"layers[{key}]: negative layer index; use 0-based indices 0..num_layers-1")
            if not isinstance(layer_spec, LayerSteeringSpec):
                raise SteeringError(f"layers[{key}]: expected a LayerSteeringSpec, got {type(layer_spec).__name__}")
            sizes |= layer_spec.hidden_sizes()
            layers[key] = layer_spec
        if len(sizes) > 1:
            raise SteeringError(f"layers: vectors have different lengths {sorted(sizes)}; all must equal the model's hidden_size")
        declared = self.metadata.hidden_size
        if declared is not None and sizes and sizes != {declared}:
            raise SteeringError(
                f"metadata.hidden_size={declared} but the vectors have length {sizes.pop()}; fix hidden_size or the vectors"
            )
        if declared is None and sizes:
            self.metadata.hidden_size = next(iter(sizes))
        self.layers = dict(sorted(layers.items()))

    # -- convenience -------------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int | None:
        return self.metadata.hidden_size

    @property
    def model_id(self) -> str | None:
        return self.metadata.model_id

    @classmethod
    def single(cls, layer: int, vector: torch.Tensor, scale: float = 1.0, **metadata: Any) -> SteeringSpec:
        """A spec that adds ``scale * vector`` at one layer."""
        return cls({layer: LayerSteeringSpec(vector=vector, scale=scale)}, SpecMetadata(**metadata))

    def clone(self) -> SteeringSpec:
        """A deep copy: mutating the copy (or its tensors) never changes this spec."""
        return copy.deepcopy(self)

    def is_empty(self) -> bool:
        """True when the spec changes nothing (no layer has an op)."""
        return all(layer.is_empty() for layer in self.layers.values())

    def active_layers(self) -> list[int]:
        """Sorted layer indices that carry at least one op."""
        return [index for index, layer in self.layers.items() if not layer.is_empty()]

    def scaled(self, factor: float) -> SteeringSpec:
        """A copy whose add scales are multiplied by ``factor`` (caps and ablations unchanged), for sweeps."""
        factor = as_scalar(factor, "factor")
        out = self.clone()
        for layer in out.layers.values():
            layer.scale *= factor
        return out

    def validate_for_model(self, num_layers: int, hidden_size: int) -> None:
        """Check this spec fits a model.

        Raises:
            SteeringError: A layer index is out of range or the vectors' length differs from ``hidden_size``.
        """
        for index in self.layers:
            if index >= num_layers:
                raise SteeringError(
                    f"layers[{index}]: layer out of range for a model with {num_layers} layers; use 0..{num_layers - 1}"
                )
        if self.metadata.hidden_size is not None and self.active_layers() and self.metadata.hidden_size != hidden_size:
            raise SteeringError(
                f"hidden_size: spec vectors have length {self.metadata.hidden_size} but the model's hidden_size is "
                f"{hidden_size}; use vectors made for this model"
            )

    def fingerprint(self) -> str:
        """Stable sha256 of the steering content (tensors and scalars; not the metadata).

        Identical setups give identical fingerprints; changing any value, scale, bound or layer changes it.
        Empty layers are ignored, so ``{}`` and ``{3: LayerSteeringSpec()}`` agree.
        """
        h = hashlib.sha256(b"sidesteer.spec.v1")

        def put_tensor(t: torch.Tensor | None) -> None:
            if t is None:
                h.update(b"T0")
                return
            h.update(b"T1" + struct.pack("<q", t.numel()))
            h.update(t.numpy().astype("<f4").tobytes())

        def put_float(x: float | None) -> None:
            h.update(b"F0" if x is None else b"F1" + struct.pack("<d", x))

        for index in self.active_layers():
            layer = self.layers[index]
            h.update(b"L" + struct.pack("<q", index))
            put_tensor(layer.vector)
            put_float(layer.scale if layer.vector is not None else None)
            cap = layer.projection_cap
            put_tensor(cap.vector if cap else None)
            put_float(cap.min if cap else None)
            put_float(cap.max if cap else None)
            abl = layer.ablation
            put_tensor(abl.vector if abl else None)
            put_float(abl.scale if abl else None)
        return h.hexdigest()

    # -- files (format in vectors.spec_file) ------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write this spec as one ``.safetensors`` spec file (atomic). Returns the path."""
        from vectors.spec_file import save_spec

        return save_spec(self, path)

    @classmethod
    def load(cls, path: str | Path) -> SteeringSpec:
        """Read a spec file written by :meth:`save` (validated; never unpickles)."""
        from vectors.spec_file import load_spec

        return load_spec(path)

    def to_bytes(self) -> bytes:
        """The spec file's bytes."""
        from vectors.spec_file import spec_to_bytes

        return spec_to_bytes(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> SteeringSpec:
        """Parse spec-file bytes (as uploaded)."""
        from vectors.spec_file import spec_from_bytes

        return spec_from_bytes(data)
