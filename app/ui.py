"""Layout and wiring of the web app: :func:`build_demo` turns an engine and a registry into a ``gr.Blocks``.

Every user action is an event with a stable ``api_name`` (the same names in the browser and for ``gradio_client``);
every component a test touches has an ``elem_id``. Handlers live in :mod:`app.callbacks` (one module per concern,
joined in :class:`~app.callbacks.Callbacks`); each one is wrapped by
:func:`app.errors.user_errors` here, the one place steering errors become ``gr.Error``. Actions whose mistakes are
common (a bad vector name, a bad upload) are wired by :func:`app.events.on_page_and_api`: on the page a mistake is a
warning toast that leaves no red "Error" badge on the controls; the API endpoint of the same name still raises.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from app.api_inputs import name_inputs
from app.callbacks import GENERATE_LABEL, RESTART_LABEL, SPEC_SUFFIXES, SWEEP_COLUMNS, Callbacks
from app.chat import chat_views, new_chat
from app.errors import user_errors
from app.events import on_page_and_api
from app.limits import AppLimits
from app.projection_view import attach_projection_view
from app.quick_controls import quick_controls
from app.registry_tab import NO_LATEX, registry_tab
from app.sides import SIDES, WAITING
from app.spec_editor import COLUMNS, DATATYPES, has_cap_or_ablation
from app.stamps import BASELINE_ONLY, STEERED_ONLY, word_diff
from engine import SteerableModel
from vectors import LAYER_CONVENTION, VectorRegistry

ENGINE_CONCURRENCY = 4  # generation events at once; the HF backend serialises them, vLLM batches them
MAX_QUEUE = 64  # waiting events beyond this get "queue is full"
DEFAULT_NEW_TOKENS = 64
# Gradio's cache (uploads, the copies of exports it serves): every 15 min, delete this app's files older than 1 h.
DELETE_CACHE = (900, 3600)

READ_ONLY_MODE = (
    "**Registry: read-only (public mode).** Nobody can change or delete the server's vectors; vectors you create on "
    "the Registry tab live only in this browser session (as `session:` names) and are gone when you close the page."
)
WRITABLE_MODE = (
    "**Registry: writable.** Vectors you create are saved on the server; vectors shipped with the app cannot be deleted."
)

INTRO = (
    "## sidesteer: side-by-side activation steering\n"
    "The same prompt runs **unsteered** and **steered** in one batch with the same seed, so every difference comes "
    "from the steering. **Enter** or **Generate** runs it; pressing it again while it streams restarts it."
)
OVERRIDDEN = "**Quick controls overridden:** the spec editor drives the steering (switch Steering back to Quick to use them)."
SKIP_INFO = (
    "1 when a cap or ablation is used (token 0 is an attention sink whose huge projection a cap or ablation would "
    "wreck), 0 for add-only; set for you when the steering changes"
)
CHAT_INFO = "Each pane continues its own conversation: the steered side from its steered replies, the baseline from its own"
REGENERATE_LABEL = "Regenerate"
# Toasts at the bottom right, narrow: at the top right they covered the steered pane's label and copy button.
CSS = ".toast-wrap { top: auto !important; bottom: 16px !important; max-width: 420px; }"
# Gradio 6 takes css= only in launch(), which app.server owns: add the rule from the page instead.
ADD_CSS = f"() => {{ const s = document.createElement('style'); s.textContent = {CSS!r}; document.head.appendChild(s); }}"

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
    first = cb.default_vector()
    engine_bound: dict[str, Any] = {"concurrency_id": "engine", "concurrency_limit": engine_concurrency}
    hidden: dict[str, Any] = {"api_visibility": "private", "show_progress": "hidden"}

    with gr.Blocks(title="sidesteer", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        # This browser session's own vectors: file:... (from imported spec files) -> tensor, and in read-only mode
        # session:... (created on the Registry tab) -> entry. Never on disk, never seen by another session.
        session_vectors = gr.State({})
        with gr.Row():
            gr.Markdown(INTRO)
            gr.Markdown(READ_ONLY_MODE if cb.read_only else WRITABLE_MODE, elem_id="registry-mode")
        with gr.Tab("Compare", id="compare"):
            with gr.Row():
                with gr.Column(scale=2, min_width=320):
                    prompt = gr.Textbox(
                        label="Prompt (Enter runs it)",
                        lines=1,
                        max_lines=8,
                        value="Tell me about your weekend.",
                        elem_id="prompt",
                    )
                    with gr.Row():
                        generate = gr.Button(GENERATE_LABEL, variant="primary", elem_id="generate", scale=2)
                        stop = gr.Button("Stop", variant="stop", elem_id="stop", scale=1)
                    steering_mode = gr.Radio(
                        [("Quick: vectors", "quick"), ("Spec editor: multi-layer", "editor")],
                        value="quick",
                        label="Steering",
                        elem_id="steering-mode",
                    )
                    overridden = gr.Markdown(OVERRIDDEN, visible=False, elem_id="quick-overridden")
                    quick = quick_controls(cb, names, first, engine.num_layers, session_vectors)
                    vector, layer, scale = quick.first.vector, quick.first.layer, quick.first.scale
                    skip_first_tokens = gr.Number(
                        value=0,  # the API's default: every token steered, as before (the page sets its own on load)
                        precision=0,
                        minimum=0,
                        label="Leave the first N tokens unsteered",
                        info=SKIP_INFO,
                        elem_id="skip-first-tokens",
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
                    with gr.Row():
                        chat_mode = gr.Checkbox(
                            label="Multi-turn chat", value=False, info=CHAT_INFO, elem_id="chat-mode", scale=3
                        )
                        regenerate_button = gr.Button(REGENERATE_LABEL, size="sm", elem_id="regenerate", scale=1, visible=False)
                        new_chat_button = gr.Button("New chat", size="sm", elem_id="new-chat", scale=1)
                    with gr.Accordion("Prompt options and sampling", open=False):
                        system_prompt = gr.Textbox(value="", label="System prompt (optional)", lines=1, elem_id="system-prompt")
                        raw_completion = gr.Checkbox(
                            label="Raw completion (no chat template)", value=False, elem_id="raw-completion"
                        )
                        max_new_tokens = gr.Slider(
                            1,
                            limits.max_new_tokens,
                            value=min(DEFAULT_NEW_TOKENS, limits.max_new_tokens),
                            step=1,
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
                with gr.Column(scale=3):
                    with gr.Row(equal_height=True):
                        texts, stats = [], []
                        for side in SIDES:
                            with gr.Column():
                                texts.append(
                                    gr.Textbox(
                                        label=side.label,
                                        lines=12,
                                        max_lines=30,
                                        interactive=False,
                                        buttons=["copy"],
                                        elem_id=side.elem_id,
                                    )
                                )
                                stats.append(
                                    gr.Markdown(
                                        label=f"{side.key}_stats",
                                        show_label=False,
                                        latex_delimiters=NO_LATEX,
                                        elem_id=side.stats_elem_id,
                                    )
                                )
                    with gr.Row(visible=False, elem_id="conversation") as conversation:
                        chats = [
                            gr.Chatbot(
                                label=f"{side.label}: conversation",
                                height=320,
                                buttons=["copy_all"],
                                elem_id=f"{side.key}-chat",
                            )
                            for side in SIDES
                        ]
                    diff = gr.HighlightedText(
                        label="Word diff: baseline vs steered",
                        color_map={BASELINE_ONLY: "red", STEERED_ONLY: "green"},
                        show_legend=True,
                        elem_id="word-diff",
                    )
                    attach_projection_view(
                        cb,
                        prompt=prompt,
                        system_prompt=system_prompt,
                        raw_completion=raw_completion,
                        steered_text=texts[[side.steered for side in SIDES].index(True)],
                        steering_inputs=[
                            vector,
                            layer,
                            scale,
                            steering_mode,
                            editor,
                            session_vectors,
                            *quick.extra_inputs,
                            skip_first_tokens,
                        ],
                        **engine_bound,
                    )
        with gr.Tab("Sweep", id="sweep"):
            gr.Markdown(
                "Runs the Compare tab's prompt and steering at several **scale factors** (they multiply every add scale) in one batch, same seed for all."
            )
            with gr.Row():
                scales = gr.Textbox(value="-2, -1, 0, 1, 2", label="Scale factors", elem_id="sweep-scales", scale=4)
                sweep_button = gr.Button("Run sweep", variant="primary", elem_id="sweep-run", scale=1)
            sweep_grid = gr.Dataframe(
                headers=SWEEP_COLUMNS,
                label="Sweep results",
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
                    import_status = gr.Markdown(label="Import status", latex_delimiters=NO_LATEX, elem_id="import-status")
        with gr.Tab("Registry", id="registry"):
            registry = registry_tab(cb, session_vectors, vector, engine.num_layers, first, engine_bound)
        with gr.Tab("Engine", id="engine"):
            engine_json = gr.JSON(label="Engine", elem_id="engine-info")
            info_button = gr.Button("Refresh", size="sm", elem_id="engine-refresh")

        # -- wiring ----------------------------------------------------------------------------------------------
        name_inputs(
            {
                **quick.named_inputs(),
                "skip_first_tokens": skip_first_tokens,
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "seed": seed,
                "editor": editor,
                "file": import_file,
            },
            integers=("layer", "layer_2", "layer_3", "layer_4", "skip_first_tokens", "max_new_tokens", "seed"),
            unbounded=("scale", "scale_2", "scale_3", "scale_4"),  # each vector has its own range on the page
        )
        history = gr.State(new_chat())  # each side's conversation (multi-turn chat)
        # after session_vectors, as the handlers take them: rows 2-4, then the leading positions left unsteered
        more = [*quick.extra_inputs, skip_first_tokens]
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

        def streamed_run(triggers: list[Any], fn: Any, inputs: list[Any], api_name: str) -> Any:
            """Wire a run that streams into both panes (compare, regenerate) and its follow-ups; the page event."""
            # A click while a comparison streams starts a new one, which stops the old (trigger_mode="multiple":
            # Gradio would drop the click otherwise); the button says "Restart" meanwhile. Until the first token the
            # stats lines say the run waits for the model (queued behind other users), so the page never looks frozen.
            gr.on(
                triggers,
                lambda: (gr.Button(RESTART_LABEL), *[WAITING] * len(stats)),
                None,
                [generate, *stats],
                trigger_mode="multiple",
                queue=False,
                **hidden,
            )
            event = on_page_and_api(
                triggers, fn, inputs, [*texts, *stats, history], api_name=api_name, trigger_mode="multiple", **engine_bound
            )
            # the label comes last: when it says "Generate" again, the conversations show the run's turn
            event.then(lambda turns: chat_views(turns), history, chats, **hidden).then(
                cb.generate_label, None, generate, **hidden
            )
            return event

        compare_event = streamed_run(
            [generate.click, prompt.submit], cb.compare, [*request, session_vectors, *more, chat_mode, history], "compare"
        )
        compare_event.success(user_errors(word_diff), texts, diff, api_name="word_diff", show_progress="hidden")
        # the same turn again on both panes (multi-turn chat): request less the prompt, which comes from the history
        regenerate_event = streamed_run(
            [regenerate_button.click], cb.regenerate, [*request[1:], session_vectors, *more, history], "regenerate"
        )
        regenerate_event.success(user_errors(word_diff), texts, diff, **hidden)
        # Stop cancels the event; then, queued behind the stream's last update, it closes the session's engine streams
        # (the engine is free at once, not when the garbage collector gets to the dropped generator) and writes the
        # final lines from the server's counts. Only those say "stopped": they reach the page after every update the
        # stream sent, so nothing brings "generating…" back (an immediate rewrite could be overtaken by one).
        stop.click(None, None, None, cancels=[compare_event, regenerate_event], queue=False, **hidden).then(
            cb.stop_stats, stats, stats, **hidden
        ).then(lambda: gr.Button(GENERATE_LABEL), None, generate, **hidden)
        # /vector_defaults for API clients (the page's rows follow their vectors in app.quick_controls)
        gr.Button(visible=False, elem_id="api-vector-defaults").click(
            user_errors(cb.vector_defaults), [vector, layer, scale, session_vectors], [layer, scale], api_name="vector_defaults"
        )
        gr.Button(visible=False, elem_id="api-scale-note").click(
            user_errors(cb.scale_note), [vector, layer, scale, session_vectors], quick.first.note, api_name="scale_note"
        )
        on_page_and_api(
            [new_chat_button.click],
            cb.new_chat,
            None,
            [history, *texts, *stats],
            api_name="new_chat",
            show_progress="hidden",
        ).then(lambda: chat_views(None), None, chats, **hidden)
        for chat in chats:  # a chat's own clear (bin) button starts a new chat on both sides
            chat.clear(cb.new_chat, None, [history, *texts, *stats], **hidden).then(
                lambda: chat_views(None), None, chats, **hidden
            )
        chat_mode.change(
            lambda on: (gr.Row(visible=on), gr.Button(visible=on)), chat_mode, [conversation, regenerate_button], **hidden
        )

        def default_skip(mode: str, rows: Any) -> int:
            return 1 if mode == "editor" and has_cap_or_ablation(rows) else 0

        gr.on([steering_mode.change, editor.change], default_skip, [steering_mode, editor], skip_first_tokens, **hidden)
        demo.load(default_skip, [steering_mode, editor], skip_first_tokens, **hidden)
        on_page_and_api(
            [to_editor.click],
            cb.quick_to_editor,
            [vector, layer, scale, session_vectors, *quick.extra_inputs],
            [steering_mode, editor],
            api_name="quick_to_editor",
            show_progress="hidden",
        )

        def mode_changed(mode: str) -> tuple[Any, ...]:
            on = mode != "editor"
            return (
                gr.Accordion(open=not on),
                gr.Markdown(visible=not on),
                *(type(c)(interactive=on) for c in quick.interactive),  # gr.Dropdown / gr.Slider / gr.Button updates
            )

        steering_mode.change(mode_changed, steering_mode, [editor_accordion, overridden, *quick.interactive], **hidden)
        on_page_and_api(
            [sweep_button.click],
            cb.sweep,
            [*request, scales, session_vectors, *more],
            [sweep_grid],
            api_name="sweep",
            show_progress="minimal",  # the grid stays readable while its rows stream in
            **engine_bound,
        )
        on_page_and_api(
            [export_button.click],
            cb.export_spec,
            [*steering, description, session_vectors, *more],
            [export_file],
            api_name="export_spec",
        )
        on_page_and_api(
            [export_gguf_button.click],
            cb.export_gguf,
            [*steering, description, session_vectors, *more],
            [export_file],
            api_name="export_gguf",
        )
        on_page_and_api(
            [import_file.upload],
            cb.import_spec,
            [import_file, session_vectors],
            [steering_mode, editor, session_vectors, import_status],
            api_name="import_spec",
            show_progress="hidden",
        ).then(lambda: None, None, import_file, **hidden)  # the server deleted the upload: ready for the next file
        info_button.click(user_errors(cb.engine_info), None, engine_json, api_name="engine_info")

        def on_load(session: dict[str, Any], current: str | None, quick: str | None) -> tuple[Any, ...]:
            from app.registry_tab import refresh_choices

            return refresh_choices(cb, session, current, quick)

        demo.load(
            user_errors(on_load), [session_vectors, registry.name, vector], [registry.table, vector, registry.name], **hidden
        )
        # rows 2-4 list the same vectors as row 1: the table changes whenever the list may have (load, create, delete)
        registry.table.change(
            lambda session: tuple(gr.Dropdown(choices=cb.vector_names(session)) for _ in quick.rows[1:]),
            session_vectors,
            [row.vector for row in quick.rows[1:]],
            **hidden,
        )
        demo.load(user_errors(cb.engine_info), None, engine_json, **hidden)
        demo.load(None, js=ADD_CSS, **hidden)
        demo.load(user_errors(cb.vector_details), [registry.name, session_vectors], registry.details, **hidden)

    demo.queue(default_concurrency_limit=engine_concurrency, max_size=max_queue)
    return demo
