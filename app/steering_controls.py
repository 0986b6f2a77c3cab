"""What the Compare tab's steering controls say, as one value: :class:`SteeringControls`.

Every handler that steers (compare, regenerate, sweep, both exports, the projection trace, copy to the editor) takes
the same controls as API parameters: ``vector, layer, scale`` (quick row 1), ``steering_mode``, ``editor``, the
session's vectors, ``vector_2, layer_2, scale_2`` ... ``scale_4`` (quick rows 2-4) and ``skip_first_tokens``. The
parameters stay spelled out in each handler's signature (Gradio builds the API page and ``gradio_client``'s keywords
from it); :meth:`SteeringControls.from_args` gathers them into one value, which
:meth:`app.context.AppContext.spec` turns into the checked spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.quick_rows import MAX_QUICK_ROWS, ROW_FIELDS, QuickRow, quick_field, quick_rows
from app.spec_editor import SessionVectors

__all__ = ["MORE_ROW_FIELDS", "SteeringControls"]

# The API fields of quick rows 2..: vector_2, layer_2, scale_2, vector_3, ... scale_4 (in the handlers' order).
MORE_ROW_FIELDS = tuple(quick_field(name, number) for number in range(2, MAX_QUICK_ROWS + 1) for name in ROW_FIELDS)


@dataclass(frozen=True)
class SteeringControls:
    """The steering controls of one request, as the page or an API call sent them (unchecked).

    Attributes:
        vector: Quick row 1's vector name.
        layer: Quick row 1's layer (0-based decoder block).
        scale: Quick row 1's scale.
        steering_mode: "quick" (the vector rows) or "editor" (the spec editor's rows).
        editor: The spec editor's rows.
        session: This browser session's own vectors (``file:`` and ``session:`` names).
        more_rows: Quick rows 2.. as ``(vector_2, layer_2, scale_2, vector_3, ...)``; a row without a vector is off.
        skip_first_tokens: Leading positions left unsteered; None or "" = the page's default for the spec.
    """

    vector: str | None
    layer: Any
    scale: Any
    steering_mode: str = "quick"
    editor: Any = None
    session: SessionVectors | None = None
    more_rows: tuple[Any, ...] = ()
    skip_first_tokens: Any = 0

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> SteeringControls:
        """The controls among a handler's arguments, by API name (pass the handler's ``locals()``).

        A field the handler does not take gets its default: quick mode, no editor, rows 2.. off, every token steered.
        """
        return cls(
            vector=args["vector"],
            layer=args["layer"],
            scale=args["scale"],
            steering_mode=args.get("steering_mode", "quick"),
            editor=args.get("editor"),
            session=args.get("session"),
            more_rows=tuple(args.get(field) for field in MORE_ROW_FIELDS),
            skip_first_tokens=args.get("skip_first_tokens", 0),
        )

    def quick_rows(self) -> list[QuickRow]:
        """Every quick row (row 1 and rows 2..), as sent."""
        return quick_rows(self.vector, self.layer, self.scale, self.more_rows)
