"""The Registry tab: a sortable table of the vectors fitting the model, details, delete (with a confirmation step)
and the create-vector form. Built by :func:`registry_tab` inside :func:`app.ui.build_demo`'s ``gr.Blocks``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.api_inputs import name_inputs, vector_dropdown
from app.callbacks import REGISTRY_COLUMNS, Callbacks
from app.errors import user_errors
from app.events import on_page_and_api
from app.sanitize import escape_markdown

NO_LATEX: list[dict[str, Any]] = []  # status lines show strangers' text: no $$...$$ rendering either
# name, layer, hidden size, norm, scale, description, method, stored, model: short headers, the text gets the room
COLUMN_WIDTHS = ["130px", "70px", "110px", "80px", "75px", "560px", "110px", "90px", "260px"]


def default_new_layer(num_layers: int) -> int:
    """The create form's default layer: a third of the depth, where steering vectors of small LMs work best
    (the shipped vectors of the 30-layer default model use layers 8 and 10)."""
    return max(0, min(num_layers - 1, num_layers // 3))


@dataclass
class RegistryTab:
    """The components other parts of the app update or read."""

    table: gr.Dataframe
    name: gr.Dropdown
    details: gr.JSON


def refresh_choices(cb: Callbacks, session: dict[str, Any], current: str | None, quick: str | None) -> tuple[Any, ...]:
    """Table rows and both vector dropdowns with live choices; a value no longer listed is replaced by a listed one."""
    rows, names = cb.list_vectors(session), cb.vector_names(session)
    return rows, gr.Dropdown(choices=names, value=listed(quick, names)), gr.Dropdown(choices=names, value=listed(current, names))


def listed(value: str | None, names: list[str]) -> str | None:
    """``value`` when it is among ``names``, else the first name (None when there is none)."""
    return value if value in names else (names[0] if names else None)


def registry_tab(
    cb: Callbacks,
    session_vectors: gr.State,
    quick_vector: gr.Dropdown,
    num_layers: int,
    first: str | None,
    engine_bound: dict[str, Any],
) -> RegistryTab:
    """Lay out the Registry tab and wire its events (call inside ``gr.Blocks``).

    ``engine_bound`` holds the concurrency settings shared by every event that runs the model.
    """
    names = cb.vector_names()
    table = gr.Dataframe(
        headers=REGISTRY_COLUMNS,
        type="array",
        wrap=True,
        interactive=False,
        column_widths=COLUMN_WIDTHS,
        max_height=520,
        label="Vectors fitting the loaded model (click a header to sort)",
        elem_id="registry-table",
    )
    refresh = gr.Button("Refresh", size="sm", elem_id="registry-refresh")
    with gr.Row():
        with gr.Column():
            name = vector_dropdown(names, value=first, allow_custom_value=True, label="Vector", elem_id="registry-name")
            details = gr.JSON(label="Details", elem_id="vector-details")
            delete = gr.Button("Delete vector…", variant="stop", elem_id="delete-vector")
            with gr.Group(visible=False, elem_id="delete-confirmation") as confirmation:
                question = gr.Markdown(latex_delimiters=NO_LATEX, elem_id="delete-question")
                with gr.Row():
                    confirm = gr.Button("Yes, delete it", variant="stop", elem_id="delete-confirm")
                    cancel = gr.Button("Cancel", elem_id="delete-cancel")
            status = gr.Markdown(label="Status", latex_delimiters=NO_LATEX, elem_id="registry-status")
        with gr.Column():
            gr.Markdown("### Create a vector\nMean activation difference of two prompt lists (one prompt per line) at a layer.")
            new_name = gr.Textbox(value="", label="Name", placeholder="e.g. polite", elem_id="new-name")
            new_description = gr.Textbox(value="", label="Description", elem_id="new-description")
            new_layer = gr.Slider(
                0,
                num_layers - 1,
                value=default_new_layer(num_layers),
                step=1,
                label="Layer",
                info=f"0-based; about a third of the depth ({default_new_layer(num_layers)} of {num_layers}) usually works",
                elem_id="new-layer",
            )
            with gr.Row():
                positive = gr.Textbox(value="", label="Positive prompts", lines=6, elem_id="positive-prompts")
                negative = gr.Textbox(value="", label="Negative prompts", lines=6, elem_id="negative-prompts")
            new_scale = gr.Number(value=0, label="Suggested scale (0 = none)", elem_id="new-scale")
            overwrite = gr.Checkbox(label="Overwrite an existing vector", value=False, elem_id="overwrite")
            create = gr.Button("Create vector", variant="primary", elem_id="create-vector")
    name_inputs({"layer": new_layer, "suggested_scale": new_scale}, integers=("layer",))

    choices = [table, quick_vector, name]
    refresh_inputs = [session_vectors, name, quick_vector]

    def refresh_fn(session: dict[str, Any], current: str | None, quick: str | None) -> tuple[Any, ...]:
        return refresh_choices(cb, session, current, quick)

    hidden: dict[str, Any] = {"api_visibility": "private", "show_progress": "hidden"}
    refresh.click(user_errors(cb.list_vectors), session_vectors, table, api_name="list_vectors").success(
        user_errors(refresh_fn), refresh_inputs, choices, **hidden
    )
    on_page_and_api(
        [name.change], cb.vector_details, [name, session_vectors], [details], api_name="vector_details", show_progress="hidden"
    )
    name.change(lambda: gr.Group(visible=False), None, confirmation, **hidden)  # a question about another name is void

    def ask(selected: str | None) -> tuple[Any, ...]:
        if not selected:
            return gr.Group(visible=False), "", "Pick the vector to delete first."
        text = f"Delete **{escape_markdown(selected)}**? This cannot be undone."
        return gr.Group(visible=True), text, ""

    def after_delete(session: dict[str, Any], current: str | None, quick: str | None) -> tuple[Any, ...]:
        rows, quick_choice, name_choice = refresh_fn(session, current, quick)
        # (a gr.Dropdown update keeps no readable .value in Gradio 6: pick the shown name the same way again)
        shown = listed(current, cb.vector_names(session))
        return rows, quick_choice, name_choice, cb.vector_details(shown, session), gr.Group(visible=False)

    delete.click(ask, name, [confirmation, question, status], **hidden)
    cancel.click(lambda: (gr.Group(visible=False), "Nothing deleted."), None, [confirmation, status], **hidden)
    on_page_and_api(
        [confirm.click],
        cb.delete_vector,
        [name, session_vectors],
        [status, session_vectors],
        api_name="delete_vector",
        show_progress="hidden",
    ).success(user_errors(after_delete), refresh_inputs, [*choices, details, confirmation], **hidden)
    on_page_and_api(
        [create.click],
        cb.create_vector,
        [new_name, new_description, new_layer, positive, negative, new_scale, overwrite, session_vectors],
        [details, session_vectors],
        api_name="create_vector",
        show_progress="minimal",
        **engine_bound,
    ).success(user_errors(refresh_fn), refresh_inputs, choices, **hidden)
    return RegistryTab(table=table, name=name, details=details)
