"""Steering spec dataclasses: what a steering setup *is*, independent of any model or backend.

Layer indices follow :mod:`vectors.convention` (0-based decoder block, output residual stream). Every tensor is
stored as a contiguous float32 CPU tensor, so specs are device-free, hashable by content and round-trip bit-exactly.

Every way of building a spec (the constructors, :meth:`SteeringSpec.scaled`, the spec file, GGUF import) runs the
same checks, including the magnitude limits of :mod:`vectors.limits`; :meth:`SteeringSpec.validate` re-runs them on
a spec whose fields were changed after it was built.

:attr:`SteeringSpec.skip_first_tokens` leaves the first positions of every sequence unsteered: position 0 is the
attention sink, whose residual stream has an outsized projection onto most directions, so a cap or an ablation meant
for ordinary tokens rewrites it (a cap of [-20, 20] at layer 8 of the default model breaks the output by that alone).
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

from vectors import spec_file
from vectors.errors import SteeringError, show
from vectors.limits import (
    MAX_ABLATION_SCALE,
    MAX_ADD_NORM,
    MAX_CAP_BOUND,
    MAX_HIDDEN_SIZE,
    MAX_LAYERS,
    MAX_SCALE,
    MAX_VECTOR_NORM,
)

# Norms below this count as zero: a direction must be normalisable.
MIN_DIRECTION_NORM = 1e-8
# Upper bound of SteeringSpec.skip_first_tokens: beyond any context length in use, and small enough that the engines'
# float32 slot tables hold every allowed value (and compare it with any position) exactly (2**24 is float32's limit).
MAX_SKIP_FIRST_TOKENS = 1 << 20


def _norm(t: torch.Tensor) -> float:
    """L2 norm in float64: float32 elements near 3e38 are finite, but their float32 norm overflows to Inf."""
    return float(torch.linalg.vector_norm(t, dtype=torch.float64))


def as_vector(value: Any, field_name: str, *, direction: bool = False, copy: bool = True) -> torch.Tensor:
    """Validate ``value`` as a 1-D finite vector and return it as contiguous float32 on the CPU.

    Args:
        value: A tensor (or anything ``torch.as_tensor`` accepts, such as a list of floats).
        field_name: Name used in the error message, e.g. ``"layers[3].projection_cap.vector"``.
        direction: Also require a non-zero norm (the vector will be normalised to a unit direction).
        copy: Always return a new tensor (the spec owns its tensors). With ``False`` a tensor that is already
            contiguous float32 on the CPU is checked and returned as is (re-validation of a built spec).

    Returns:
        The vector as a detached float32 CPU tensor.

    Raises:
        SteeringError: The value is not a 1-D, non-empty, finite (and, for directions, non-zero) vector, is longer
            than :data:`~vectors.limits.MAX_HIDDEN_SIZE`, or its norm is beyond
            :data:`~vectors.limits.MAX_VECTOR_NORM`.
    """
    if value is None:
        raise SteeringError(f"{field_name}: a vector is required, got None; pass a 1-D tensor of hidden_size floats")
    try:
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise SteeringError(f"{field_name}: cannot read {type(value).__name__} as a vector ({exc}); pass a 1-D tensor") from exc
    if t.layout != torch.strided or t.is_complex() or t.dtype == torch.bool or t.is_quantized:
        raise SteeringError(
            f"{field_name}: a {t.layout} tensor of dtype {t.dtype} is not a real float vector; pass a dense float tensor"
        )
    if t.dim() != 1:
        raise SteeringError(f"{field_name}: expected a 1-D vector, got shape {tuple(t.shape)}; flatten it or pick one row")
    if t.numel() == 0:
        raise SteeringError(f"{field_name}: the vector is empty; pass hidden_size floats")
    if t.numel() > MAX_HIDDEN_SIZE:
        raise SteeringError(
            f"{field_name}: length {t.numel()} is beyond the limit hidden_size <= {MAX_HIDDEN_SIZE}; pass a vector of "
            "the model's hidden_size"
        )
    if copy or t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous() or t.requires_grad:
        t = t.detach().to(device="cpu", dtype=torch.float32).clone()  # the spec owns its tensors
    norm = _norm(t)  # NaN or Inf exactly when an element is: float64 squares of float32 values cannot overflow
    if not math.isfinite(norm):
        raise SteeringError(f"{field_name}: the vector holds NaN or Inf values; recompute it from finite activations")
    if norm > MAX_VECTOR_NORM:
        raise SteeringError(
            f"{field_name}: the vector's norm {norm:.3g} is beyond the limit |vector| <= {MAX_VECTOR_NORM:g} "
            "(residual-stream norms are about 1-1e4; a norm this large overflows fp16/bf16 arithmetic downstream); "
            "rescale the vector"
        )
    if direction and norm < MIN_DIRECTION_NORM:
        raise SteeringError(f"{field_name}: the direction has zero norm and cannot be normalised; pass a non-zero vector")
    return t


def as_scalar(value: Any, field_name: str) -> float:
    """Validate a finite real number and return it as a Python float.

    Raises:
        SteeringError: Not a real number (bools, strings and lists are not), or not finite (including ints too
            large for a float, such as ``10**400``).
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not (value.is_complex() or value.dtype == torch.bool):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SteeringError(f"{field_name}: expected a number, got {show(value)}; pass a finite float")
    try:
        out = float(value)
    except OverflowError:  # an int beyond the float range
        out = math.inf
    if not math.isfinite(out):
        shown = f"{out}" if isinstance(value, float) else show(value)
        raise SteeringError(f"{field_name}: {shown} is not finite; pass a finite float")
    return out


def check_skip_first_tokens(value: Any) -> int:
    """Validate :attr:`SteeringSpec.skip_first_tokens`: an int (not a bool) in ``0..MAX_SKIP_FIRST_TOKENS``.

    Raises:
        SteeringError: The message names ``skip_first_tokens``, the value and the fix.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise SteeringError(
            f"skip_first_tokens: expected a whole number of positions, got {show(value)}; pass an int such as 1 (leave "
            "the first token, the attention sink, unsteered) or 0 (steer every position)"
        )
    if value < 0:
        raise SteeringError(
            f"skip_first_tokens: {value} is negative; pass 0 (steer every position) or the number of leading positions "
            "to leave unsteered, such as 1"
        )
    if value > MAX_SKIP_FIRST_TOKENS:
        raise SteeringError(
            f"skip_first_tokens: {show(value)} is beyond the limit skip_first_tokens <= {MAX_SKIP_FIRST_TOKENS}; pass "
            "the number of leading prompt positions to leave unsteered, such as 1"
        )
    return int(value)


def check_limit(value: float, limit: float, field_name: str, quantity: str, why: str, fix: str) -> None:
    """Refuse ``|value| > limit`` with a message naming the field, the limit, why it exists and the fix."""
    if abs(value) > limit:
        raise SteeringError(f"{field_name}: {value:g} is beyond the limit |{quantity}| <= {limit:g} ({why}); {fix}")


@dataclass
class ProjectionCapSpec:
    """Clamp the projection of the residual stream onto the unit direction ``vector`` into ``[min, max]``.

    Either bound may be None (unbounded on that side); at least one is required. ``|min|`` and ``|max|`` are at most
    :data:`~vectors.limits.MAX_CAP_BOUND`.
    """

    vector: torch.Tensor
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        self.vector = as_vector(self.vector, "projection_cap.vector", direction=True)
        self._check()

    def validate(self) -> None:
        """Re-run the constructor's checks (after fields were changed). Raises :class:`SteeringError`."""
        self.vector = as_vector(self.vector, "projection_cap.vector", direction=True, copy=False)
        self._check()

    def _check(self) -> None:
        for name in ("min", "max"):
            value = getattr(self, name)
            if value is not None:
                value = as_scalar(value, f"projection_cap.{name}")
                check_limit(
                    value,
                    MAX_CAP_BOUND,
                    f"projection_cap.{name}",
                    name,
                    "projections of the residual stream onto a unit direction are about 1-1e4",
                    "use a bound of the size of the projections you observe, or None for no bound",
                )
                setattr(self, name, value)
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

    ``scale=0`` removes the component, ``1`` is a no-op, ``>1`` amplifies it, negative flips it. ``|scale|`` is at
    most :data:`~vectors.limits.MAX_ABLATION_SCALE`.
    """

    vector: torch.Tensor
    scale: float = 0.0

    def __post_init__(self) -> None:
        self.vector = as_vector(self.vector, "ablation.vector", direction=True)
        self._check()

    def validate(self) -> None:
        """Re-run the constructor's checks (after fields were changed). Raises :class:`SteeringError`."""
        self.vector = as_vector(self.vector, "ablation.vector", direction=True, copy=False)
        self._check()

    def _check(self) -> None:
        self.scale = as_scalar(self.scale, "ablation.scale")
        check_limit(
            self.scale,
            MAX_ABLATION_SCALE,
            "ablation.scale",
            "ablation scale",
            "0 removes the component, 1 keeps it; a factor this large only saturates the model",
            "use 0 to remove the component, 1 to keep it, or a few to amplify it",
        )

    @property
    def direction(self) -> torch.Tensor:
        """The unit direction (float32)."""
        return self.vector / self.vector.norm()


@dataclass
class LayerSteeringSpec:
    """Ops at one layer, applied in order: add ``scale * vector``, projection cap, ablation.

    ``|scale|`` is at most :data:`~vectors.limits.MAX_SCALE` and the norm of ``scale * vector`` at most
    :data:`~vectors.limits.MAX_ADD_NORM`.
    """

    vector: torch.Tensor | None = None
    scale: float = 1.0
    projection_cap: ProjectionCapSpec | None = None
    ablation: AblationSpec | None = None

    def __post_init__(self) -> None:
        if self.vector is not None:
            self.vector = as_vector(self.vector, "vector")
        self._check()

    def validate(self) -> None:
        """Re-run the constructor's checks, also of the cap and the ablation. Raises :class:`SteeringError`."""
        if self.vector is not None:
            self.vector = as_vector(self.vector, "vector", copy=False)
        self._check()
        if self.projection_cap is not None:
            self.projection_cap.validate()
        if self.ablation is not None:
            self.ablation.validate()

    def _check(self) -> None:
        self.scale = as_scalar(self.scale, "scale")
        check_limit(
            self.scale, MAX_SCALE, "scale", "scale", "an add this large only saturates the model", "use a scale of about 1-20"
        )
        if self.vector is not None:
            added = abs(self.scale) * _norm(self.vector)
            if added > MAX_ADD_NORM:
                raise SteeringError(
                    f"vector: scale * vector has norm {added:.3g}, beyond the limit |scale * vector| <= {MAX_ADD_NORM:g} "
                    "(residual-stream norms are about 1-1e4; an add this large only saturates the model); lower the "
                    "scale or rescale the vector"
                )
        if self.projection_cap is not None and not isinstance(self.projection_cap, ProjectionCapSpec):
            raise SteeringError(
                "projection_cap: expected a ProjectionCapSpec; build one with ProjectionCapSpec(vector, min, max)"
            )
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
    """Who a spec is for and what it does. Not part of the content fingerprint.

    ``model_id`` is a string or None, ``hidden_size`` a positive int (at most
    :data:`~vectors.limits.MAX_HIDDEN_SIZE`) or None, ``description`` a string (None counts as ``""``).
    """

    model_id: str | None = None
    hidden_size: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the field types. Raises :class:`SteeringError` naming the field."""
        if self.model_id is not None and not isinstance(self.model_id, str):
            raise SteeringError(
                f"metadata.model_id: expected a string or None, got {show(self.model_id)}; pass a hub id such as 'org/model'"
            )
        if self.description is None:
            self.description = ""
        if not isinstance(self.description, str):
            raise SteeringError(f"metadata.description: expected a string, got {show(self.description)}; pass text")
        hidden = self.hidden_size
        if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or not 0 < hidden <= MAX_HIDDEN_SIZE):
            raise SteeringError(
                f"metadata.hidden_size: {show(hidden)} is not a positive integer <= {MAX_HIDDEN_SIZE}; pass the model's "
                "hidden_size or None"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "hidden_size": self.hidden_size, "description": self.description}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpecMetadata:
        """Rebuild metadata from :meth:`to_dict` output (checked like the constructor)."""
        if not isinstance(data, dict):
            raise SteeringError(f"metadata: expected a dict, got {type(data).__name__}")
        return cls(model_id=data.get("model_id"), hidden_size=data.get("hidden_size"), description=data.get("description"))


@dataclass
class SteeringSpec:
    """A full steering setup: ops per layer plus metadata.

    Args:
        layers: Layer index (0-based decoder block, output residual stream, below
            :data:`~vectors.limits.MAX_LAYERS`) to the ops at that layer.
        metadata: Model id, hidden size and description. ``hidden_size`` is inferred from the tensors when unset.
        skip_first_tokens: Positions ``p < skip_first_tokens`` of every sequence (prompt positions ``0..N-1``,
            counted in the request's own tokens, whatever the padding or batching) get no op of this spec at any
            layer: no add, no cap, no ablation. 0 (the default) steers every position; 1 leaves the attention sink
            (position 0) alone. An int in ``0..MAX_SKIP_FIRST_TOKENS``; part of the fingerprint and the spec file.

    Raises:
        SteeringError: A bad layer key or value; the message starts with ``layers[L].`` and the field.
    """

    layers: dict[int, LayerSteeringSpec] = field(default_factory=dict)
    metadata: SpecMetadata = field(default_factory=SpecMetadata)
    skip_first_tokens: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every layer and the metadata again (the constructor runs this; so do :meth:`scaled` and
        :meth:`validate_for_model`, which catches fields changed after construction).

        Raises:
            SteeringError: The message names the layer and the field, e.g. ``layers[8].scale: ...``.
        """
        if not isinstance(self.layers, dict):
            raise SteeringError(f"layers: expected a dict of layer index -> LayerSteeringSpec, got {type(self.layers).__name__}")
        if self.metadata is None:
            self.metadata = SpecMetadata()
        if not isinstance(self.metadata, SpecMetadata):
            raise SteeringError(f"metadata: expected a SpecMetadata, got {type(self.metadata).__name__}")
        self.metadata.validate()
        self.skip_first_tokens = check_skip_first_tokens(self.skip_first_tokens)
        layers: dict[int, LayerSteeringSpec] = {}
        sizes: set[int] = set()
        for key, layer_spec in self.layers.items():
            if isinstance(key, bool) or not isinstance(key, int):
                raise SteeringError(f"layers: key {show(key)} is not an int layer index; use 0-based decoder layer numbers")
            if key < 0:
                raise SteeringError(f"layers[{key}]: negative layer index; use 0-based indices 0..num_layers-1")
            if key >= MAX_LAYERS:
                raise SteeringError(
                    f"layers: key {show(key)} is beyond the limit layer index < {MAX_LAYERS}; use 0-based decoder layer numbers"
                )
            if not isinstance(layer_spec, LayerSteeringSpec):
                raise SteeringError(f"layers[{key}]: expected a LayerSteeringSpec, got {type(layer_spec).__name__}")
            try:
                layer_spec.validate()
            except SteeringError as exc:
                raise SteeringError(f"layers[{key}].{exc}") from exc
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
        if list(layers) != sorted(layers):
            self.layers = dict(sorted(layers.items()))

    # -- convenience -------------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int | None:
        return self.metadata.hidden_size

    @property
    def model_id(self) -> str | None:
        return self.metadata.model_id

    @classmethod
    def single(
        cls, layer: int, vector: torch.Tensor, scale: float = 1.0, *, skip_first_tokens: int = 0, **metadata: Any
    ) -> SteeringSpec:
        """A spec that adds ``scale * vector`` at one layer (from position ``skip_first_tokens`` on)."""
        try:
            layer_spec = LayerSteeringSpec(vector=vector, scale=scale)
        except SteeringError as exc:
            raise SteeringError(f"layers[{show(layer)}].{exc}") from exc
        return cls({layer: layer_spec}, SpecMetadata(**metadata), skip_first_tokens)

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
        """A copy whose add scales are multiplied by ``factor`` (caps and ablations unchanged), for sweeps.

        Raises:
            SteeringError: ``factor`` is not a finite number, or a scaled add is beyond the limits of
                :mod:`vectors.limits` (the message names the layer).
        """
        factor = as_scalar(factor, "factor")
        out = self.clone()
        if isinstance(out.layers, dict):
            for index, layer in out.layers.items():
                if isinstance(layer, LayerSteeringSpec) and layer.vector is not None:  # no add: no add scale to sweep
                    try:  # a number before it is multiplied, even if the field was changed since construction
                        layer.scale = as_scalar(layer.scale, "scale") * factor
                    except SteeringError as exc:
                        raise SteeringError(f"layers[{index}].{exc}") from exc
        out.validate()  # the one full check of the new spec
        return out

    def validate_for_model(self, num_layers: int, hidden_size: int) -> None:
        """Check this spec fits a model (and, again, every value: fields may have changed since construction).

        Raises:
            SteeringError: A bad value, a layer index out of range, or the vectors' length differs from ``hidden_size``.
        """
        self.validate()
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
        """Stable sha256 of the steering content (tensors, scalars and ``skip_first_tokens``; not the metadata).

        Identical setups give identical fingerprints; changing any value, scale, bound, layer or
        ``skip_first_tokens`` changes it. Empty layers are ignored, so ``{}`` and ``{3: LayerSteeringSpec()}`` agree.
        ``skip_first_tokens=0`` adds nothing to the hash, so specs (and spec files) from before the field keep their
        fingerprints.
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
        if self.skip_first_tokens:
            h.update(b"S" + struct.pack("<q", self.skip_first_tokens))
        return h.hexdigest()

    # -- files (format in vectors.spec_file) ------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write this spec as one ``.safetensors`` spec file (atomic). Returns the path."""
        target = spec_file.spec_file_path(path)  # the name is checked before anything is serialised
        spec_file.write_spec_file(target, self.to_bytes())
        return target

    @classmethod
    def load(cls, path: str | Path) -> SteeringSpec:
        """Read a spec file written by :meth:`save` (validated; never unpickles)."""
        return cls.from_bytes(spec_file.read_spec_file(path))

    def to_bytes(self) -> bytes:
        """The spec file's bytes (validated first, so every file written can be read back)."""
        self.validate()
        layers = {index: _layer_to_file(layer) for index, layer in self.layers.items()}
        return spec_file.encode_spec_file(layers, self.metadata.to_dict(), self.fingerprint(), self.skip_first_tokens)

    @classmethod
    def from_bytes(cls, data: bytes) -> SteeringSpec:
        """Parse spec-file bytes (as uploaded): the file's checks (:mod:`vectors.spec_file`), then the spec's own.

        Raises:
            SteeringError: Not a spec file, wrong format or version, a malformed or unknown header field, corrupt or
                truncated data, a hash or fingerprint that does not match the content, or bad values (NaN, zero
                directions, magnitudes beyond :mod:`vectors.limits`, ...). The message names the field.
        """
        content = spec_file.decode_spec_file(data)
        metadata = SpecMetadata.from_dict(content.metadata)
        layers = {index: _layer_from_file(index, layer) for index, layer in content.layers.items()}
        spec = cls(layers, metadata, content.skip_first_tokens)
        spec_file.check_fingerprint(content.fingerprint, spec.fingerprint())
        return spec


def _layer_to_file(layer: LayerSteeringSpec) -> dict[str, Any]:
    """One layer as the plain values a spec file stores (see :class:`vectors.spec_file.SpecFileContent`)."""
    cap, abl = layer.projection_cap, layer.ablation
    return {
        "vector": layer.vector,
        "scale": layer.scale,
        "projection_cap": None if cap is None else {"vector": cap.vector, "min": cap.min, "max": cap.max},
        "ablation": None if abl is None else {"vector": abl.vector, "scale": abl.scale},
    }


def _layer_from_file(index: int, plain: dict[str, Any]) -> LayerSteeringSpec:
    """The layer a spec file's plain values describe, checked; errors are prefixed with ``layers[index].``."""
    cap, abl = plain["projection_cap"], plain["ablation"]
    try:
        return LayerSteeringSpec(
            vector=plain["vector"],
            scale=plain["scale"],
            projection_cap=None if cap is None else ProjectionCapSpec(cap["vector"], cap["min"], cap["max"]),
            ablation=None if abl is None else AblationSpec(abl["vector"], abl["scale"]),
        )
    except SteeringError as exc:
        raise SteeringError(f"layers[{index}].{exc}") from exc
