"""Events wired twice: once for the page, where a bad value is a warning toast, and once as the API endpoint.

A handler that raises ``gr.Error`` leaves Gradio's red "Error" badge over every output component (Layer and Scale
after an unknown vector name): it covers the controls and stays until that same event succeeds again. On the page a
mistake is therefore a warning toast and the outputs keep their values (:func:`page_errors`); ``gradio_client``
callers still get an ``AppError`` with the same message from the twin endpoint that :func:`on_page_and_api` wires to
a hidden trigger under the stable ``api_name``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from app.errors import on_errors, to_gr_error, user_errors

__all__ = ["on_page_and_api", "page_errors"]


def page_errors(fn: Callable[..., Any], n_outputs: int) -> Callable[..., Any]:
    """Wrap a page handler: any exception becomes a warning toast and its ``n_outputs`` outputs are left unchanged.

    Args:
        fn: The handler (plain function or generator; a generator just ends).
        n_outputs: How many output components the event has (each gets ``gr.skip()`` on failure).

    Returns:
        The wrapped handler, with ``fn``'s signature.
    """
    unchanged = tuple(gr.skip() for _ in range(n_outputs)) if n_outputs != 1 else gr.skip()

    def warn(exc: Exception, where: str) -> Any:
        error = to_gr_error(exc, where)
        gr.Warning(error.message, title=error.title or "Warning")
        return unchanged

    return on_errors(fn, warn)


def on_page_and_api(
    triggers: Sequence[Any],
    fn: Callable[..., Any],
    inputs: list[Any],
    outputs: list[Any],
    *,
    api_name: str,
    **kwargs: Any,
) -> Any:
    """Wire ``fn`` for the page (private, errors as warnings) and as the public endpoint ``api_name`` (errors raise).

    Call inside ``gr.Blocks``. The endpoint hangs on a hidden button: the same inputs and outputs, so the API page and
    ``gradio_client`` calls are unchanged.

    Args:
        triggers: The page events (e.g. ``[button.click, textbox.submit]``).
        fn: The handler, unwrapped.
        inputs: Input components.
        outputs: Output components.
        api_name: The endpoint's stable name.
        **kwargs: Further event settings (concurrency, progress, trigger mode), given to both events.

    Returns:
        The page event's dependency, to chain ``.then``/``.success`` on or to cancel.
    """
    api_trigger = gr.Button(visible=False, elem_id=f"api-{api_name.replace('_', '-')}")
    api_trigger.click(user_errors(fn), inputs, outputs, api_name=api_name, **kwargs)
    page_fn = page_errors(fn, len(outputs))
    return gr.on(triggers, page_fn, inputs, outputs, api_visibility="private", **kwargs)
