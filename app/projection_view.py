"""Where did steering act? A per-token plot of a projection trace under the steered pane.

:func:`projection_html` draws an :class:`~engine.projection_trace.ProjectionTrace` as an inline SVG (no plotting
library): the projection onto the steering direction at the traced layer before the layer's ops (grey, dashed) and
after them (blue), the cap's bounds, and a red ring on every token the cap clamped. Each token is a ``<g>`` with its
values in ``data-*`` attributes and a hover title. :func:`attach_projection_view` adds the "Where did steering act?"
accordion with its "Trace projection" button, wired as the page event and the ``trace_projection`` API endpoint.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from typing import Any

import gradio as gr

from app.callbacks import Callbacks
from app.context import build_prompt
from app.events import on_page_and_api
from app.steering_controls import SteeringControls
from engine.projection_trace import ProjectionTrace
from vectors import SteeringError

__all__ = ["ProjectionView", "attach_projection_view", "projection_html", "projection_svg", "trace_handler"]

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 30  # plot margins in px: room for the y labels and the x labels
PRE_COLOR, POST_COLOR, CLAMP_COLOR, BOUND_COLOR = "#9ca3af", "#2563eb", "#dc2626", "#f59e0b"
MAX_TOKEN_LABELS = 48  # more tokens than this: no x labels (they would overlap); the hover titles still name them
OP_NAMES = {"add": "the add vector", "projection_cap": "the cap direction", "ablation": "the ablation direction"}
HELP = (
    "Runs the last steered completion once more, teacher-forced (one forward over prompt + completion), and plots per "
    "token the projection of the residual stream onto the steering direction at the steered layer: **before** the "
    "layer's ops (grey, dashed) and **after** them (blue). For a projection cap, red rings mark the tokens it clamped. "
    "The trace uses the current steering controls: change them after generating and it traces the new setup."
)
EMPTY_OUTPUT = "steered output: it is empty; click Generate first, then trace the steered completion"


def trace_layer_index(value: Any) -> int | None:
    """The layer to trace from the box (text on the page, a number from the API); None when empty.

    Raises:
        SteeringError: Not a whole number.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise SteeringError(f"trace layer: {value!r} is not a number; type a 0-based decoder layer or leave it empty") from exc
    if not number.is_integer():
        raise SteeringError(f"trace layer: {value} is not a whole number; use a 0-based decoder layer")
    return int(number)


def _fmt(value: float) -> str:
    """A value as shown in the data attributes and titles (6 significant digits)."""
    return f"{value:.6g}"


def projection_svg(trace: ProjectionTrace, include_prompt: bool = False) -> str:
    """The trace as an inline SVG line plot.

    Args:
        trace: The projection trace.
        include_prompt: Plot the prompt's tokens too (a light band marks them); otherwise the completion only (all
            tokens when the completion is empty).

    Returns:
        An ``<svg>`` element. Every plotted token is a ``<g class="token">`` with ``data-index`` (position in the
        sequence), ``data-token``, ``data-pre``, ``data-post`` and ``data-clamped``; the two lines are
        ``<polyline class="pre">`` and ``<polyline class="post">``; cap bounds are ``<line class="bound">``.
    """
    n_all = len(trace.token_ids)
    start = 0 if include_prompt or trace.prompt_len >= n_all else trace.prompt_len
    idx = list(range(start, n_all))
    values = [trace.pre[i] for i in idx] + [trace.post[i] for i in idx]
    bounds = [b for b in (trace.cap_min, trace.cap_max) if b is not None and math.isfinite(b)]
    low, high = min(values + bounds), max(values + bounds)
    if high - low < 1e-9:
        low, high = low - 1.0, high + 1.0
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = len(idx)

    def x(k: int) -> float:
        return LEFT + (k + 0.5) * pw / n

    def y(v: float) -> float:
        return TOP + (high - v) / (high - low) * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="projection-plot" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" aria-label="projection per token, before and after steering">',
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#d1d5db"/>',
    ]
    if include_prompt and 0 < trace.prompt_len < n_all:
        band = x(trace.prompt_len - start) - pw / n / 2 - LEFT
        parts.append(f'<rect class="prompt-band" x="{LEFT}" y="{TOP}" width="{band:.1f}" height="{ph}" fill="#f3f4f6"/>')
    for label, v in (("max", high), ("min", low)):
        parts.append(
            f'<text class="axis-{label}" x="{LEFT - 4}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">{_fmt(v)}</text>'
        )
    for v in bounds:
        parts.append(
            f'<line class="bound" data-value="{_fmt(v)}" x1="{LEFT}" x2="{LEFT + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            f'stroke="{BOUND_COLOR}" stroke-dasharray="6 3"/>'
        )
    for cls, series, color, dash in (
        ("pre", trace.pre, PRE_COLOR, ' stroke-dasharray="4 3"'),
        ("post", trace.post, POST_COLOR, ""),
    ):
        points = " ".join(f"{x(k):.1f},{y(series[i]):.1f}" for k, i in enumerate(idx))
        parts.append(f'<polyline class="{cls}" points="{points}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>')
    for k, i in enumerate(idx):
        clamped = bool(trace.clamped[i]) if trace.clamped is not None else False
        token = trace.tokens[i]
        title = f"#{i} {token!r}: before {_fmt(trace.pre[i])}, after {_fmt(trace.post[i])}" + (", clamped" if clamped else "")
        ring = (
            f'<circle class="clamped" cx="{x(k):.1f}" cy="{y(trace.post[i]):.1f}" r="4.5" fill="none" stroke="{CLAMP_COLOR}" stroke-width="2"/>'
            if clamped
            else ""
        )
        label = (
            f'<text x="{x(k):.1f}" y="{HEIGHT - 8}" text-anchor="middle" font-size="10">{html.escape(token.strip() or "·")}</text>'
            if n <= MAX_TOKEN_LABELS
            else ""
        )
        parts.append(
            f'<g class="token" data-index="{i}" data-token="{html.escape(token, quote=True)}" data-pre="{_fmt(trace.pre[i])}" '
            f'data-post="{_fmt(trace.post[i])}" data-clamped="{int(clamped)}"><title>{html.escape(title)}</title>'
            f'<circle cx="{x(k):.1f}" cy="{y(trace.post[i]):.1f}" r="2" fill="{POST_COLOR}"/>{ring}{label}</g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def summary(trace: ProjectionTrace) -> str:
    """One line: layer, direction, how far the ops moved the completion's tokens, and how many the cap clamped."""
    done = list(range(trace.prompt_len, len(trace.token_ids))) or list(range(len(trace.token_ids)))
    shift = sum(trace.post[i] - trace.pre[i] for i in done) / len(done)
    text = (
        f"Layer {trace.layer}, projection onto {OP_NAMES[trace.op]}: {len(done)} completion tokens, mean change "
        f"{shift:+.4g} (before → after)"
    )
    if trace.clamped is not None:
        bounds = (
            f"[{'-∞' if trace.cap_min is None else _fmt(trace.cap_min)}, {'∞' if trace.cap_max is None else _fmt(trace.cap_max)}]"
        )
        text += f"; the cap {bounds} clamped {sum(trace.clamped[i] for i in done)} of them"
    if trace.skip_first_tokens:
        text += f"; the first {trace.skip_first_tokens} positions are left unsteered"
    return text + f". Spec {trace.spec_fingerprint[:12]}."


def projection_html(trace: ProjectionTrace, include_prompt: bool = False) -> str:
    """The summary line, a legend and :func:`projection_svg`, as one HTML fragment for ``gr.HTML``."""
    legend = (
        f'<span style="color:{PRE_COLOR}">- - before the ops</span> &nbsp; '
        f'<span style="color:{POST_COLOR}">—— after the ops</span>'
        + (f' &nbsp; <span style="color:{CLAMP_COLOR}">◯ clamped</span>' if trace.clamped is not None else "")
        + (f' &nbsp; <span style="color:{BOUND_COLOR}">- - cap bounds</span>' if trace.clamped is not None else "")
    )
    return (
        f'<div class="projection-view"><p class="projection-summary">{html.escape(summary(trace))}</p>'
        f'<p class="projection-legend" style="font-size:12px">{legend}</p>{projection_svg(trace, include_prompt)}</div>'
    )


def trace_handler(cb: Callbacks) -> Callable[..., tuple[str, dict[str, Any]]]:
    """The "Trace projection" handler: the spec of the current controls, traced on the steered pane's text."""

    def trace_projection(
        prompt: str,
        system_prompt: str,
        raw_completion: bool,
        steered_text: str,
        trace_layer: str | None,
        include_prompt: bool,
        vector: str | None,
        layer: float,
        scale: float,
        steering_mode: str,
        editor: Any,
        session: dict[str, Any] | None = None,
        vector_2: str | None = None,
        layer_2: float = 0,
        scale_2: float = 1.0,
        vector_3: str | None = None,
        layer_3: float = 0,
        scale_3: float = 1.0,
        vector_4: str | None = None,
        layer_4: float = 0,
        scale_4: float = 1.0,
        skip_first_tokens: float | None = 0,
    ) -> tuple[str, dict[str, Any]]:
        """Trace where steering acted on the steered completion.

        Args:
            prompt: User message (chat mode) or the text that was completed (raw mode).
            system_prompt: Optional system message (chat mode only).
            raw_completion: The prompt was completed raw (no chat template).
            steered_text: The steered completion to trace (re-tokenised).
            trace_layer: Layer to trace (0-based decoder layer); empty = the spec's first steered layer.
            include_prompt: Plot the prompt's tokens too.
            vector: The steering controls from here on, as for /compare (the same spec as the compare call that
                made the steered completion when they are the same values).
            skip_first_tokens: Leading positions left unsteered, as for /compare: 0 = every position (the default);
                empty = what the page picks (1 with a cap or ablation, else 0).

        Returns:
            The plot (HTML) and the trace's values (layer, op, tokens, pre, post, clamped, ...).
        """
        if not steered_text:
            raise SteeringError(EMPTY_OUTPUT)
        controls = SteeringControls.from_args(locals())
        request = build_prompt(prompt, system_prompt, raw_completion)
        spec = cb.spec(controls)
        trace = cb.engine.trace_projection(request, steered_text, spec, layer=trace_layer_index(trace_layer))
        return projection_html(trace, bool(include_prompt)), trace.to_dict()

    return trace_projection


class ProjectionView:
    """The components :func:`attach_projection_view` made (for tests and further wiring)."""

    def __init__(self, accordion: Any, trace_layer: Any, include_prompt: Any, button: Any, plot: Any, data: Any, event: Any):
        self.accordion, self.trace_layer, self.include_prompt = accordion, trace_layer, include_prompt
        self.button, self.plot, self.data, self.event = button, plot, data, event


def attach_projection_view(
    cb: Callbacks,
    *,
    prompt: Any,
    system_prompt: Any,
    raw_completion: Any,
    steered_text: Any,
    steering_inputs: list[Any],
    **event_kwargs: Any,
) -> ProjectionView:
    """Add the "Where did steering act?" accordion here (call inside ``gr.Blocks``, under the steered pane).

    Args:
        cb: The app's callbacks (engine, registry, limits).
        prompt: The prompt textbox.
        system_prompt: The system prompt textbox.
        raw_completion: The raw-completion checkbox.
        steered_text: The steered pane's textbox.
        steering_inputs: The steering controls in /compare's order: ``vector, layer, scale, steering_mode, editor``,
            the session's vectors (``gr.State``), then quick rows 2-4 (vector, layer, scale each) and
            ``skip_first_tokens``.
        **event_kwargs: Event settings (e.g. the engine's ``concurrency_id``/``concurrency_limit``).

    Returns:
        The view's components; the button is the page event and the ``trace_projection`` API endpoint.
    """
    with gr.Accordion("Where did steering act?", open=False, elem_id="projection-accordion") as accordion:
        gr.Markdown(HELP)
        with gr.Row():
            # a text box: an empty gr.Number is sent as 0 by the page, which would trace layer 0 instead of the first
            # steered layer
            trace_layer = gr.Textbox(
                value="", label="Layer to trace (empty = first steered layer)", max_lines=1, elem_id="projection-layer"
            )
            include_prompt = gr.Checkbox(value=False, label="Include prompt tokens", elem_id="projection-include-prompt")
            button = gr.Button("Trace projection", elem_id="projection-trace")
        plot = gr.HTML(label="Projection plot", elem_id="projection-plot")
        data = gr.JSON(label="Projection trace", visible=False, elem_id="projection-data")
    event = on_page_and_api(
        [button.click],
        trace_handler(cb),
        [prompt, system_prompt, raw_completion, steered_text, trace_layer, include_prompt, *steering_inputs],
        [plot, data],
        api_name="trace_projection",
        **event_kwargs,
    )
    return ProjectionView(accordion, trace_layer, include_prompt, button, plot, data, event)
