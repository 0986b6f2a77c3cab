"""Variants of a sweep: the baseline plus ``scale * v`` per (vector kind, scale), checked against the model.

Each dataset may have two registry vectors, named by convention ``<dataset>.trained`` (an optimised steering vector)
and ``<dataset>.activation`` (an activation-difference vector). A vector is needed only when scales of its kind are
asked for. Its layer is ``target_layer`` when given, else the entry's ``suggested_layer``, else
:func:`default_target_layer` of the model. A steered variant adds
``scale * v`` at the layer's output residual stream, ``v`` L2-normalised first when ``normalize`` is on.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from engine.stateful import SteerableModel
from vectors import SteeringError, SteeringSpec, VectorEntry, VectorRegistry

__all__ = [
    "VECTOR_KINDS",
    "Variant",
    "VariantKind",
    "VectorKind",
    "build_variants",
    "default_target_layer",
    "load_vectors",
    "vector_name",
]

VectorKind = Literal["trained", "activation"]
VariantKind = Literal["baseline", "trained", "activation"]
VECTOR_KINDS: tuple[VectorKind, ...] = ("trained", "activation")


SEED_TARGET_LAYER, SEED_NUM_LAYERS = 22, 64  # the original design's --target-layer default, for its 64-layer model


def default_target_layer(num_layers: int) -> int:
    """The seed's layer 22 of 64 at the same relative depth of a model with ``num_layers`` layers (about a third,
    rounded): 22 for 64 layers, 10 for the default model's 30, 1 for 4."""
    return min(num_layers - 1, round(num_layers * SEED_TARGET_LAYER / SEED_NUM_LAYERS))


def vector_name(dataset: str, kind: VectorKind) -> str:
    """The registry name of a dataset's vector: ``<dataset>.trained`` or ``<dataset>.activation``."""
    return f"{dataset}.{kind}"


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
                f"add one (VectorRegistry.add({name!r}, ...), see scripts/build_example_dataset.py) or pass --{kind}-scales "
                "with no values"
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
        target_layer: Steer at this layer; None uses each vector's ``suggested_layer``, or
            :func:`default_target_layer` for a vector without one.
        normalize: L2-normalise each vector before scaling.

    Raises:
        SteeringError: Wrong hidden size, a layer out of range, a zero vector with
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
            layer = default_target_layer(model.num_layers)
        if not 0 <= layer < model.num_layers:
            raise SteeringError(
                f"target_layer: layer {layer} is out of range for {model.model_id!r}; use 0..{model.num_layers - 1}"
            )
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
