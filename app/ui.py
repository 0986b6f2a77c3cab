"""Layout and wiring of the web app: :func:`build_demo` turns an engine and a registry into a ``gr.Blocks``.

Every user action is an event with a stable ``api_name`` (the same names in the browser and for ``gradio_client``);
every component a test touches has an ``elem_id``. Handlers live in :mod:`app.callbacks`; each one is wrapped by
:func:`app.errors.user_errors` here, the one place steering errors become ``gr.Error``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from app.callbacks import REGISTRY_COLUMNS, SPEC_SUFFIXES, SWEEP_COLUMNS, Callbacks
from app.errors import user_errors
from app.limits import AppLimits
from app.sides import SIDES
from app.spec_editor import COLUMNS, DATATYPES
from engine import SteerableModel
from vectors import LAYER_CONVENTION, VectorRegistry

ENGINE_CONCURRENCY = 4  # generation events at once; the HF backend serialises them, vLLM batches them
MAX_QUEUE = 64  # waiting events beyond this get "queue is full"
SCALE_RANGE = 20.0
DEFAULT_NEW_TOKENS = 64
# Gradio's cache (uploads, the copies of exports it serves): every 15 min, delete this app's files older than 1 h.
DELETE_CACHE = (900, 3600)
NO_LATEX: list[dict[str, Any]] = []  # status lines show strangers' text: no $$...$$ rendering either

READ_ONLY_MODE = (
    "**Registry: read-only (public mode).** Nobody can change or delete the server's vectors; vectors you create on "
    "the Registry tab live only in this browser session (as `session:` names) and are gone when you close the page."
)
WRITABLE_MODE = (
    "**Registry: writable.** Vectors you create are saved on the server; vectors shipped with the app cannot be deleted."
)

INTRO = """# sidesteer: side-by-side activation steering
Type a prompt, pick a steering vector (or build a multi-layer spec), press **Generate**: the same prompt runs
**unsteered** and **steered** in one batch with the same seed, so every difference comes from the steering.
"""

EDITOR_HELP = (
    "One row per layer. Name vectors from the registry, `file:...` names from an imported spec, or `session:...` names "
    "created in this session (read-only mode). "
    "`cap min`/`cap max` clamp the projection onto the cap vector's direction; the ablation scale multiplies the "
    f"component along the ablation vector's direction (0 removes it). Layers: {LAYER_CONVENTION}."
)


def build_demo(
    engine: SteerableModel,
    registry: VectorRegistry,
    *,
    export_dir: str | Path | None = None,
    registry_writable: bool = True,
    limits: AppLimits | None = None,
    upload_dir: str | Path | None = None,
    engine_concurrency: int = ENGINE_CONCURRENCY,
    max_queue: int = MAX_QUEUE,
) -> gr.Blocks:
    """Build the sidesteer app.

    Args:
        engine: The steerable model (transformers or vLLM backend).
        registry: The vector registry the app lists and edits (read-only mode when ``registry.writable`` is False).
        export_dir: Private folder for exported files; a fresh temp folder when None.
        registry_writable: Allow creating and deleting registry vectors (off: read-only mode, as for public Spaces).
        limits: Per-request limits (the max tokens slider follows ``limits.max_new_tokens``); the defaults when None.
            Launch with the same limits: ``launch_kwargs(limits=...)`` sets the upload size.
        upload_dir: Gradio's upload cache, where uploads are deleted once read; Gradio's own when None.
        engine_concurrency: Generation events (compare, sweep, create) run at once; the rest wait in the queue.
        max_queue: Queue size; further requests are refused with "queue is full".

    Returns:
        The ``gr.Blocks`` app, queued; launch it with ``demo.launch(**app.launch_kwargs(...))``.
    """
    limits = limits or AppLimits()
    export_dir = Path(export_dir) if export_dir else Path(tempfile.mkdtemp(prefix="sidesteer-exports-"))
    cb = Callbacks(
        engine,
        registry,
        export_dir,
        registry_writable=registry_writable,
        limits=limits,
        upload_dir=Path(upload_dir) if upload_dir else None,
    )
    names = cb.vector_names()
    first = names[0] if names else None
    default_layer, default_scale = cb.vector_defaults(first, engine.num_layers // 2, 4.0)
    engine_bound: dict[str, Any] = {"concurrency_id": "engine", "concurrency_limit": engine_concurrency}

    with gr.Blocks(title="sidesteer", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        # This browser session's own vectors: file:... (from imported spec files) -> tensor, and in read-only mode
        # session:... (created on the Registry tab) -> entry. Never on disk, never seen by another session.
        session_vectors = gr.State({})
        gr.Markdown(INTRO)
        gr.Markdown(READ_ONLY_MODE if cb.read_only else WRITABLE_MODE, elem_id="registry-mode")
        with gr.Tab("Compare", id="compare"):
            with gr.Row():
                with gr.Column(scale=2, min_width=320):
                    system_prompt = gr.Textbox(value="", label="System prompt (optional)", lines=1, elem_id="system-prompt")
                    prompt = gr.Textbox(label="Prompt", lines=3, value="Tell me about your weekend.", elem_id="prompt")
                    raw_completion = gr.Checkbox(label="Raw completion (no chat template)", value=False, elem_id="raw-completion")
                    steering_mode = gr.Radio(
                        [("Quick: one vector", "quick"), ("Spec editor: multi-layer", "editor")],
                        value="quick",
                        label="Steering",
                        elem_id="steering-mode",
                    )
                    with gr.Group():
                        vector = gr.Dropdown(
                            names,
                            value=first,
                            allow_custom_value=True,
                            label="Vector",
                            elem_id="vector",
                            info="Registry vectors that fit the loaded model",
                        )
                        layer = gr.Slider(
                            0, engine.num_layers - 1, value=default_layer, step=1, precision=0, label="Layer", elem_id="layer"
                        )
                        scale = gr.Slider(
                            -SCALE_RANGE, SCALE_RANGE, value=default_scale, step=0.1, label="Scale", elem_id="scale"
                        )
                    with gr.Accordion(
                        "Spec editor (multi-layer)", open=False, elem_id="spec-editor-accordion"
                    ) as editor_accordion:
                        gr.Markdown(EDITOR_HELP)
                        editor = gr.Dataframe(
                            headers=COLUMNS,
                            datatype=DATATYPES,
                            type="array",
                            row_count=1,
                            interactive=True,
                            label="Spec",
                            elem_id="spec-editor",
                        )
                        to_editor = gr.Button("Copy quick setup into the editor", size="sm", elem_id="quick-to-editor")
                    with gr.Accordion("Sampling", open=False):
                        max_new_tokens = gr.Slider(
                            1,
                            limits.max_new_tokens,
                            value=min(DEFAULT_NEW_TOKENS, limits.max_new_tokens),
                            step=1,
                            precision=0,
                            label="Max new tokens",
                            elem_id="max-new-tokens",
                        )
                        temperature = gr.Slider(
                            0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)", elem_id="temperature"
                        )
                        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p", elem_id="top-p")
                        seed = gr.Number(
                            value=0, precision=0, minimum=0, label="Seed (shared by both sides; empty = random)", elem_id="seed"
                        )
                    with gr.Row():
                        generate = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop = gr.Button("Stop", variant="stop", elem_id="stop")
                with gr.Column(scale=3):
                    with gr.Row(equal_height=True):
                        texts, stats = [], []
                        for side in SIDES:
                            with gr.Column():
                                texts.append(
                                    gr.Textbox(label=side.label, lines=14, max_lines=30, interactive=False, elem_id=side.elem_id)
                                )
                                stats.append(gr.Markdown(label=f"{side.key}_stats", show_label=False, elem_id=side.stats_elem_id))
        with gr.Tab("Sweep", id="sweep"):
            gr.Markdown(
                "Runs the Compare tab's prompt and steering at several **scale factors** (they multiply every add scale) in one batch, same seed for all."
            )
            with gr.Row():
                scales = gr.Textbox(value="-2, -1, 0, 1, 2", label="Scale factors", elem_id="sweep-scales", scale=4)
                sweep_button = gr.Button("Run sweep", variant="primary", elem_id="sweep-run", scale=1)
            sweep_grid = gr.Dataframe(
                headers=SWEEP_COLUMNS,
                type="array",
                wrap=True,
                interactive=False,
                column_widths=["10%", "8%", "82%"],
                elem_id="sweep-grid",
            )
        with gr.Tab("Spec files", id="spec-files"):
            with gr.Row():
                with gr.Column():
                    gr.Markdown(
                        "### Export\nThe current Compare setup as a sidesteer spec file, or its add vectors as a llama.cpp control vector."
                    )
                    description = gr.Textbox(value="", label="Description (stored in the file)", elem_id="export-description")
                    with gr.Row():
                        export_button = gr.Button("Export spec (.safetensors)", elem_id="export-spec")
                        export_gguf_button = gr.Button("Export GGUF control vector", elem_id="export-gguf")
                    export_file = gr.File(label="Download", interactive=False, elem_id="export-file")
                with gr.Column():
                    gr.Markdown(
                        "### Import\nA spec file or GGUF control vector: validated against the loaded model, then loaded into the spec editor."
                    )
                    import_file = gr.File(label="Upload", file_types=list(SPEC_SUFFIXES), type="filepath", elem_id="import-file")
                    import_status = gr.Markdown(latex_delimiters=NO_LATEX, elem_id="import-status")
        with gr.Tab("Registry", id="registry"):
            registry_table = gr.Dataframe(
                headers=REGISTRY_COLUMNS,
                type="array",
                wrap=True,
                interactive=False,
                label="Vectors fitting the loaded model",
                elem_id="registry-table",
            )
            refresh = gr.Button("Refresh", size="sm", elem_id="registry-refresh")
            with gr.Row():
                with gr.Column():
                    registry_name = gr.Dropdown(
                        names, value=first, allow_custom_value=True, label="Vector", elem_id="registry-name"
                    )
                    details = gr.JSON(label="Details", elem_id="vector-details")
                    delete = gr.Button("Delete vector", variant="stop", elem_id="delete-vector")
                    registry_status = gr.Markdown(latex_delimiters=NO_LATEX, elem_id="registry-status")
                with gr.Column():
                    gr.Markdown(
                        "### Create a vector\nMean activation difference of two prompt lists (one prompt per line) at a layer."
                    )
                    new_name = gr.Textbox(value="", label="Name", placeholder="e.g. polite", elem_id="new-name")
                    new_description = gr.Textbox(value="", label="Description", elem_id="new-description")
                    new_layer = gr.Slider(
                        0,
                        engine.num_layers - 1,
                        value=engine.num_layers // 2,
                        step=1,
                        precision=0,
                        label="Layer",
                        elem_id="new-layer",
                    )
                    with gr.Row():
                        positive = gr.Textbox(value="", label="Positive prompts", lines=6, elem_id="positive-prompts")
                        negative = gr.Textbox(value="", label="Negative prompts", lines=6, elem_id="negative-prompts")
                    new_scale = gr.Number(value=0, label="Suggested scale (0 = none)", elem_id="new-scale")
                    overwrite = gr.Checkbox(label="Overwrite an existing vector", value=False, elem_id="overwrite")
                    create = gr.Button("Create vector", variant="primary", elem_id="create-vector")
        with gr.Tab("Engine", id="engine"):
            engine_json = gr.JSON(label="Engine", elem_id="engine-info")
            info_button = gr.Button("Refresh", size="sm", elem_id="engine-refresh")

        # -- wiring ----------------------------------------------------------------------------------------------
        steering = [vector, layer, scale, steering_mode, editor]
        request = [
            prompt,
            system_prompt,
            vector,
            layer,
            scale,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            raw_completion,
            steering_mode,
            editor,
        ]

        @user_errors
        def refresh_choices(session: dict[str, Any]) -> tuple[Any, ...]:
            rows, names = cb.list_vectors(session), cb.vector_names(session)
            return rows, gr.Dropdown(choices=names), gr.Dropdown(choices=names)

        choices = [registry_table, vector, registry_name]
        compare_event = gr.on(
            [generate.click, prompt.submit],
            user_errors(cb.compare),
            inputs=[*request, session_vectors],
            outputs=[*texts, *stats],
            api_name="compare",
            **engine_bound,
        )
        stop.click(None, cancels=[compare_event])
        vector.change(
            user_errors(cb.vector_defaults), [vector, layer, scale, session_vectors], [layer, scale], api_name="vector_defaults"
        )
        to_editor.click(
            user_errors(cb.quick_to_editor),
            [vector, layer, scale, session_vectors],
            [steering_mode, editor],
            api_name="quick_to_editor",
        )
        steering_mode.change(
            lambda mode: gr.Accordion(open=mode == "editor"), steering_mode, editor_accordion, api_visibility="private"
        )
        sweep_button.click(
            user_errors(cb.sweep), [*request, scales, session_vectors], sweep_grid, api_name="sweep", **engine_bound
        )
        export_button.click(
            user_errors(cb.export_spec), [*steering, description, session_vectors], export_file, api_name="export_spec"
        )
        export_gguf_button.click(
            user_errors(cb.export_gguf), [*steering, description, session_vectors], export_file, api_name="export_gguf"
        )
        import_file.upload(
            user_errors(cb.import_spec),
            [import_file, session_vectors],
            [steering_mode, editor, session_vectors, import_status],
            api_name="import_spec",
        )
        refresh.click(user_errors(cb.list_vectors), session_vectors, registry_table, api_name="list_vectors").success(
            refresh_choices, session_vectors, choices, api_visibility="private"
        )
        registry_name.change(user_errors(cb.vector_details), [registry_name, session_vectors], details, api_name="vector_details")
        delete.click(
            user_errors(cb.delete_vector),
            [registry_name, session_vectors],
            [registry_status, session_vectors],
            api_name="delete_vector",
        ).success(refresh_choices, session_vectors, choices, api_visibility="private")
        create.click(
            user_errors(cb.create_vector),
            [new_name, new_description, new_layer, positive, negative, new_scale, overwrite, session_vectors],
            [details, session_vectors],
            api_name="create_vector",
            **engine_bound,
        ).success(refresh_choices, session_vectors, choices, api_visibility="private")
        info_button.click(user_errors(cb.engine_info), None, engine_json, api_name="engine_info")
        demo.load(refresh_choices, session_vectors, choices, api_visibility="private")
        demo.load(user_errors(cb.engine_info), None, engine_json, api_visibility="private")
        demo.load(user_errors(cb.vector_details), [registry_name, session_vectors], details, api_visibility="private")

    demo.queue(default_concurrency_limit=engine_concurrency, max_size=max_queue)
    return demo
