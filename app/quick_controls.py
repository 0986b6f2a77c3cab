"""The Compare tab's quick controls: up to four vector rows, each with its own layer and scale, added and removed
with one click. Built by :func:`quick_controls` inside :func:`app.ui.build_demo`'s ``gr.Blocks``.

Every row is laid out at start and hidden until added (a fixed set of components keeps the API's parameters fixed:
``vector, layer, scale`` for row 1, ``vector_2, layer_2, scale_2`` ... for the others); removing a row hides it and
clears its vector, which turns the row off. Each scale slider's range, step and default follow its vector
(:mod:`app.scale_range`), with a note saying what the scale means next to the residual norm at the layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.api_inputs import vector_dropdown
from app.callbacks import Callbacks
from app.errors import user_errors
from app.events import page_errors
from app.quick_rows import MAX_QUICK_ROWS, quick_field

__all__ = ["QuickControls", "QuickRowControls", "quick_controls", "row_elem_id"]

SNAP_LAYER = "(v) => Math.min({high}, Math.max(0, Math.round(Number(v) || 0)))"  # no 7.5 or 99 in the layer box


def row_elem_id(name: str, number: int) -> str:
    """``vector`` for row 1 (the ids the page always had), ``vector-2`` for row 2, ..."""
    return name if number == 1 else f"{name}-{number}"


@dataclass
class QuickRowControls:
    """One row's components."""

    number: int
    box: gr.Group
    vector: gr.Dropdown
    layer: gr.Slider
    scale: gr.Slider
    note: gr.Markdown
    remove: gr.Button | None


@dataclass
class QuickControls:
    """The rows, the add button and which rows are shown."""

    rows: list[QuickRowControls]
    add: gr.Button
    shown: gr.State

    @property
    def first(self) -> QuickRowControls:
        return self.rows[0]

    @property
    def extra_inputs(self) -> list[Any]:
        """Rows 2.. as handler inputs: ``vector_2, layer_2, scale_2, vector_3, ...``."""
        return [c for row in self.rows[1:] for c in (row.vector, row.layer, row.scale)]

    @property
    def interactive(self) -> list[Any]:
        """Everything the spec editor's mode disables."""
        rows = [c for row in self.rows for c in (row.vector, row.layer, row.scale, row.remove) if c is not None]
        return [*rows, self.add]

    def named_inputs(self) -> dict[str, Any]:
        """API field name -> layer/scale component of every row (for :func:`app.api_inputs.name_inputs`)."""
        return {quick_field(n, row.number): getattr(row, n) for row in self.rows for n in ("layer", "scale")}


def quick_controls(
    cb: Callbacks, names: list[str], first: str | None, num_layers: int, session_vectors: gr.State
) -> QuickControls:
    """Lay out the quick rows and wire their own events (call inside ``gr.Blocks``; row 1's API twin is the caller's)."""
    top = num_layers - 1
    rows = []
    for number in range(1, MAX_QUICK_ROWS + 1):
        name = first if number == 1 else None
        layer, _ = cb.vector_defaults(name, num_layers // 3, 1.0) if name else (num_layers // 3, 1.0)
        settings, note = cb.scale_controls(name, layer, None, {})
        suffix = "" if number == 1 else f" {number}"
        with gr.Group(visible=number == 1, elem_id=row_elem_id("quick-row", number)) as box:
            vector = vector_dropdown(
                names,
                value=name,
                allow_custom_value=True,
                label=f"Vector{suffix}",
                elem_id=row_elem_id("vector", number),
                info="Registry vectors that fit the loaded model" if number == 1 else None,
            )
            with gr.Row():
                layer_slider = gr.Slider(
                    0, top, value=layer, step=1, label=f"Layer{suffix} (0-{top})", elem_id=row_elem_id("layer", number)
                )
                scale_slider = gr.Slider(
                    settings.minimum,
                    settings.span,
                    value=settings.default,
                    step=settings.step,
                    label=f"Scale{suffix}",
                    elem_id=row_elem_id("scale", number),
                )
            note_md = gr.Markdown(
                note if name else "", label=f"scale note{suffix}", show_label=False, elem_id=row_elem_id("scale-note", number)
            )
            remove = None if number == 1 else gr.Button(f"Remove vector {number}", size="sm", elem_id=f"remove-row-{number}")
        rows.append(QuickRowControls(number, box, vector, layer_slider, scale_slider, note_md, remove))
    add = gr.Button("+ Add a vector", size="sm", elem_id="add-row")
    shown = gr.State([True] + [False] * (MAX_QUICK_ROWS - 1))
    controls = QuickControls(rows, add, shown)
    _wire(cb, controls, top, session_vectors)
    return controls


def _wire(cb: Callbacks, controls: QuickControls, top: int, session_vectors: gr.State) -> None:
    hidden: dict[str, Any] = {"api_visibility": "private", "show_progress": "hidden"}

    def row_defaults(name: str | None, layer: Any, scale: Any, session: dict[str, Any]) -> tuple[Any, ...]:
        if not name:  # a removed row: nothing to follow
            return gr.skip(), gr.skip(), ""
        new_layer, new_scale = cb.vector_defaults(name, layer, scale, session)
        settings, _ = cb.scale_controls(name, new_layer, None, session)
        value = max(settings.minimum, min(settings.span, new_scale))
        note = cb.scale_note(name, new_layer, value, session)
        slider = gr.Slider(minimum=settings.minimum, maximum=settings.span, step=settings.step, value=value)
        return new_layer, slider, note

    def note(name: str | None, layer: Any, scale: Any, session: dict[str, Any]) -> str:
        return cb.scale_note(name, layer, scale, session) if name else ""

    for row in controls.rows:
        inputs = [row.vector, row.layer, row.scale, session_vectors]
        row.vector.change(page_errors(row_defaults, 3), inputs, [row.layer, row.scale, row.note], **hidden)
        row.layer.change(None, row.layer, row.layer, js=SNAP_LAYER.format(high=top), **hidden)
        for control in (row.layer, row.scale):
            control.change(page_errors(note, 1), inputs, row.note, queue=False, **hidden)

    boxes = [row.box for row in controls.rows]
    vectors = [row.vector for row in controls.rows]
    followers = [c for row in controls.rows for c in (row.layer, row.scale, row.note)]

    def add(shown: list[bool], session: dict[str, Any], *current: Any) -> tuple[Any, ...]:
        shown, names_now, values_now = list(shown), current[: len(shown)], current[len(shown) :]
        unchanged = [gr.skip()] * (3 * len(shown))
        if all(shown):
            return shown, *[gr.skip()] * (2 * len(shown)), *unchanged, gr.Button(visible=False)
        number = shown.index(False)
        shown[number] = True
        # the new row starts with a vector no other row uses, and shows that vector's layer, scale and note at
        # once: a hidden row's own values (layer 10, scale 1) never appear next to another vector's name
        names = cb.vector_names(session)
        unused = next((n for n in names if n not in names_now), names[0] if names else None)
        layer, scale = values_now[2 * number : 2 * number + 2]
        defaults = row_defaults(unused, layer, scale, session)
        groups = [gr.Group(visible=True) if i == number else gr.skip() for i in range(len(shown))]
        values = [unused if i == number else gr.skip() for i in range(len(shown))]
        follow = unchanged[: 3 * number] + list(defaults) + unchanged[3 * number + 3 :]
        return shown, *groups, *values, *follow, gr.Button(visible=not all(shown))

    layers_and_scales = [c for row in controls.rows for c in (row.layer, row.scale)]
    controls.add.click(
        user_errors(add),
        [controls.shown, session_vectors, *vectors, *layers_and_scales],
        [controls.shown, *boxes, *vectors, *followers, controls.add],
        **hidden,
    )
    for row in controls.rows[1:]:

        def remove(shown: list[bool], index: int = row.number - 1) -> tuple[Any, ...]:
            shown = list(shown)
            shown[index] = False
            return shown, gr.Group(visible=False), None, gr.Button(visible=True)

        if row.remove is None:  # row 1 stays
            continue
        row.remove.click(remove, controls.shown, [controls.shown, row.box, row.vector, controls.add], **hidden)
