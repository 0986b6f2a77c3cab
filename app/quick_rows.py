"""The quick controls' vector rows -> spec editor rows, checked with messages that name the API field.

The Compare tab shows up to :data:`MAX_QUICK_ROWS` rows of (vector, layer, scale); row 1 is the API's ``vector``,
``layer``, ``scale`` and row ``n`` its ``vector_n``, ``layer_n``, ``scale_n``. A row without a vector is off (a
removed row, or an API call that leaves it out). The rows become spec editor rows and go through the editor's
:func:`~app.spec_editor.rows_to_spec`, so the quick controls and the editor build the same spec from the same setup.

Two rows on the same layer are refused (the editor holds one add vector per layer too): pick another layer for one
of them, or build one vector for both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.spec_editor import COLUMNS, Rows, VectorSource
from vectors import SteeringError

__all__ = ["MAX_QUICK_ROWS", "QuickRow", "editor_rows", "quick_field", "quick_rows"]

MAX_QUICK_ROWS = 4
ROW_FIELDS = ("vector", "layer", "scale")


def quick_field(name: str, number: int) -> str:
    """The API field of row ``number`` (1-based): ``vector`` for row 1, ``vector_2`` for row 2, ..."""
    return name if number == 1 else f"{name}_{number}"


@dataclass(frozen=True)
class QuickRow:
    """One row of the quick controls as the page or an API call sent it."""

    number: int
    vector: str | None
    layer: Any
    scale: Any


def quick_rows(vector: str | None, layer: Any, scale: Any, extra: Sequence[Any] = ()) -> list[QuickRow]:
    """Row 1 from ``vector, layer, scale`` and rows 2.. from ``extra`` = ``[vector_2, layer_2, scale_2, vector_3, ...]``."""
    values = [vector, layer, scale, *extra]
    return [QuickRow(i // 3 + 1, *values[i : i + 3]) for i in range(0, len(values) - len(values) % 3, 3)]


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _layer(value: Any, field: str, num_layers: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise SteeringError(f"{field}: {value!r} is not a number; pass a whole number 0..{num_layers - 1}") from exc
    if not number.is_integer() or not 0 <= number < num_layers:
        raise SteeringError(f"{field}: {value!r} is not a layer of this model; pass a whole number 0..{num_layers - 1}")
    return int(number)


def _scale(value: Any, field: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise SteeringError(f"{field}: {value!r} is not a number; pass e.g. 2.0") from exc
    if not math.isfinite(number):
        raise SteeringError(f"{field}: {value!r} is not finite; pass e.g. 2.0")
    return number


def editor_rows(rows: Sequence[QuickRow], source: VectorSource, num_layers: int) -> Rows:
    """Spec editor rows of the active quick rows (those with a vector), in row order.

    Raises:
        SteeringError: Row 1 has no vector, a name is unknown, a layer or scale is bad, or two rows share a layer;
            the message starts with the field (``vector``, ``layer_2``, ...).
    """
    out: Rows = []
    used: dict[int, int] = {}  # layer -> the row that steers it
    for row in rows:
        if _blank(row.vector):
            if row.number == 1:
                raise SteeringError("vector: none selected; pick a registry vector (or create one on the Registry tab)")
            continue
        name = str(row.vector).strip()
        source.get(name, quick_field("vector", row.number))  # an unknown name fails here, named by its field
        layer = _layer(row.layer, quick_field("layer", row.number), num_layers)
        scale = _scale(row.scale, quick_field("scale", row.number))
        if layer in used:
            raise SteeringError(
                f"{quick_field('layer', row.number)}: layer {layer} is already steered by row {used[layer]}; "
                "the quick controls add one vector per layer, so pick another layer for this row"
            )
        used[layer] = row.number
        out.append([layer, name, scale] + [None] * (len(COLUMNS) - 3))
    return out
