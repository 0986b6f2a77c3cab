"""The multi-layer spec editor: table rows <-> :class:`~vectors.SteeringSpec`.

One row per layer. Vectors are named, not pasted: a name is a registry vector, a ``file:...`` name standing for a
vector that came in with an imported spec file and is not in the registry, or a ``session:...`` name for a vector
created in read-only mode. The last two live in the browser session's dict of vectors (``gr.State``), never on disk.
Empty cells mean "no such op".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SpecMetadata, SteeringError, SteeringSpec, VectorRegistry
from vectors.registry import VectorEntry

COLUMNS = ["layer", "vector", "scale", "cap vector", "cap min", "cap max", "ablation vector", "ablation scale"]
DATATYPES = ["number", "str", "number", "str", "number", "number", "str", "number"]
# Registry names start with a letter or digit and never hold ':', so these prefixes cannot clash with one.
IMPORTED_PREFIX = "file:"  # a vector from an imported spec file
SESSION_PREFIX = "session:"  # a vector created in read-only mode: it lives in this browser session only
SESSION_PREFIXES = (IMPORTED_PREFIX, SESSION_PREFIX)

Rows = list[list[Any]]
# A browser session's own vectors: ``file:`` names -> tensors, ``session:`` names -> entries with their metadata.
SessionVectors = Mapping[str, "torch.Tensor | VectorEntry"]


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and math.isnan(value))


def _number(value: Any, where: str) -> float | None:
    if _is_blank(value):
        return None
    try:
        out = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError) as exc:
        raise SteeringError(f"{where}: {value!r} is not a number; type a number or leave the cell empty") from exc
    if not math.isfinite(out):
        raise SteeringError(f"{where}: {out} is not finite; type a finite number")
    return out


def _layer(value: Any, where: str) -> int:
    number = _number(value, where)
    if number is None:
        raise SteeringError(f"{where}: the layer is empty; type a 0-based decoder layer number")
    if not number.is_integer() or number < 0:
        raise SteeringError(f"{where}: {value!r} is not a 0-based layer index; type a whole number >= 0")
    return int(number)


def _name(value: Any) -> str | None:
    return None if _is_blank(value) else str(value).strip()


@dataclass
class VectorSource:
    """Resolves vector names for the editor and quick mode: the session's own vectors first, then the registry."""

    registry: VectorRegistry
    imported: SessionVectors

    def get(self, name: str, where: str) -> torch.Tensor:
        """The tensor called ``name``.

        Raises:
            SteeringError: Unknown name (the registry's message lists the available ones).
        """
        entry = self.entry(name, where)
        return entry if isinstance(entry, torch.Tensor) else entry.vector

    def entry(self, name: str, where: str) -> torch.Tensor | VectorEntry:
        """The registry or session entry called ``name`` (a bare tensor for ``file:`` vectors, which have no metadata).

        Raises:
            SteeringError: Unknown name.
        """
        if name.startswith(SESSION_PREFIXES):
            if name in self.imported:
                return self.imported[name]
            if name.startswith(IMPORTED_PREFIX):
                raise SteeringError(f"{where}: {name!r} is not among this session's imported vectors; import the spec file again")
            raise SteeringError(f"{where}: {name!r} is not among this session's vectors; create it again on the Registry tab")
        try:
            return self.registry.get(name)
        except SteeringError as exc:
            raise SteeringError(f"{where}: {exc}") from exc


def count_rows(rows: Any) -> int:
    """Non-empty rows of editor input (checked against the layer limit before any row is parsed)."""
    if isinstance(rows, Mapping):
        rows = rows.get("data") or []
    if rows is None:
        return 0
    if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
        raise SteeringError(f"spec editor: expected a list of rows, got {type(rows).__name__}; send a list of lists")
    return sum(1 for row in rows if not (isinstance(row, Sequence) and all(_is_blank(c) for c in row)))


def rows_to_spec(rows: Any, source: VectorSource, metadata: SpecMetadata | None = None) -> SteeringSpec:
    """Build a spec from editor rows.

    Args:
        rows: List of rows in :data:`COLUMNS` order (as a ``gr.Dataframe(type="array")`` gives them), or a
            ``{"headers": ..., "data": ...}`` dict as API clients send it.
        source: Where vector names are looked up.
        metadata: Model id / description for the spec.

    Returns:
        The spec (not yet checked against a model).

    Raises:
        SteeringError: A bad cell (the message names the row and column), a repeated layer, or no ops at all.
    """
    if isinstance(rows, Mapping):
        rows = rows.get("data") or []
    layers: dict[int, LayerSteeringSpec] = {}
    for number, row in enumerate(rows or [], start=1):
        if not isinstance(row, Sequence) or isinstance(row, (str, bytes)):
            raise SteeringError(f"spec editor row {number}: {row!r:.40} is not a list of cells; send one list per row")
        cells = list(row) + [None] * (len(COLUMNS) - len(row))
        if all(_is_blank(c) for c in cells):
            continue  # the empty row the table keeps for typing
        where = f"spec editor row {number}"
        layer = _layer(cells[0], f"{where}, layer")
        if layer in layers:
            raise SteeringError(f"{where}: layer {layer} appears twice; put all ops of a layer in one row")
        vector_name, cap_name, ablation_name = _name(cells[1]), _name(cells[3]), _name(cells[6])
        scale = _number(cells[2], f"{where}, scale")
        cap = None
        if cap_name is not None:
            cap = ProjectionCapSpec(
                source.get(cap_name, f"{where}, cap vector"),
                _number(cells[4], f"{where}, cap min"),
                _number(cells[5], f"{where}, cap max"),
            )
        elif not (_is_blank(cells[4]) and _is_blank(cells[5])):
            raise SteeringError(f"{where}: cap min/max are set but no cap vector is named; name one or clear the bounds")
        ablation = None
        if ablation_name is not None:
            ablation_scale = _number(cells[7], f"{where}, ablation scale")
            ablation = AblationSpec(
                source.get(ablation_name, f"{where}, ablation vector"), 0.0 if ablation_scale is None else ablation_scale
            )
        vector = None if vector_name is None else source.get(vector_name, f"{where}, vector")
        try:
            layers[layer] = LayerSteeringSpec(
                vector=vector, scale=1.0 if scale is None else scale, projection_cap=cap, ablation=ablation
            )
        except SteeringError as exc:
            raise SteeringError(f"{where}: {exc}") from exc
    spec = SteeringSpec(layers, metadata or SpecMetadata())
    if spec.is_empty():
        raise SteeringError("spec editor: no row holds a vector, cap or ablation; add a row or switch to quick mode")
    return spec


def has_cap_or_ablation(rows: Any) -> bool:
    """Whether any editor row names a cap or an ablation vector (the UI then leaves the first token unsteered)."""
    if isinstance(rows, Mapping):
        rows = rows.get("data") or []
    if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
        return False
    cells = [list(row) + [None] * len(COLUMNS) for row in rows if isinstance(row, Sequence) and not isinstance(row, (str, bytes))]
    return any(not (_is_blank(row[3]) and _is_blank(row[6])) for row in cells)


OPS = ("vector", "cap", "ablation")
NameKey = tuple[int, str]  # (layer, op): which cell of the editor a vector name fills


def names_by_layer(vector: str | None, layer: Any, steering_mode: str, editor: Any) -> dict[NameKey, str]:
    """The vector names the controls use, by (layer, op): what a round trip through a spec file should give back."""
    if steering_mode != "editor":
        return {(int(float(layer)), "vector"): vector} if vector else {}
    if isinstance(editor, Mapping):
        editor = editor.get("data") or []
    names: dict[NameKey, str] = {}
    for row in editor or []:
        cells = list(row) + [None] * len(COLUMNS)
        if _is_blank(cells[0]):
            continue
        index = int(float(cells[0]))
        for op, column in zip(OPS, (1, 3, 6), strict=True):
            if (name := _name(cells[column])) is not None:
                names[(index, op)] = name
    return names


def spec_to_rows(
    spec: SteeringSpec,
    entries: Sequence[VectorEntry] | Mapping[str, torch.Tensor],
    preferred: Mapping[NameKey, str] | None = None,
) -> tuple[Rows, dict[str, torch.Tensor]]:
    """Editor rows for ``spec``; vectors equal to a known vector get its name, others a ``file:`` name.

    Several known vectors may hold the same tensor (``happy`` and ``happy.activation``): the name in ``preferred``
    wins (the name the spec was exported with), else the shortest name, so the base name beats its variants.

    Args:
        spec: The spec to show.
        entries: Registry vectors, or a name -> tensor map, to match tensors against (exact float32 equality).
        preferred: Names by (layer, op) to use when their tensor matches.

    Returns:
        ``(rows, imported)``: the rows, and the ``file:`` name -> tensor map the rows refer to.
    """
    imported: dict[str, torch.Tensor] = {}
    known = list(entries.items()) if isinstance(entries, Mapping) else [(e.name, e.vector) for e in entries]
    preferred = preferred or {}

    def name_for(tensor: torch.Tensor | None, index: int, op: str) -> str | None:
        if tensor is None:
            return None
        matches = [name for name, vector in known if vector.shape == tensor.shape and torch.equal(vector, tensor)]
        if matches:
            wanted = preferred.get((index, op))
            return wanted if wanted in matches else min(matches, key=len)
        name = f"{IMPORTED_PREFIX}L{index}.{op}"
        imported[name] = tensor
        return name

    rows: Rows = []
    for index in spec.active_layers():
        layer = spec.layers[index]
        cap, ablation = layer.projection_cap, layer.ablation
        rows.append(
            [
                index,
                name_for(layer.vector, index, "vector"),
                layer.scale if layer.vector is not None else None,
                name_for(cap.vector if cap else None, index, "cap"),
                cap.min if cap else None,
                cap.max if cap else None,
                name_for(ablation.vector if ablation else None, index, "ablation"),
                ablation.scale if ablation else None,
            ]
        )
    return rows, imported
