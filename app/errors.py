"""The one place where steering errors become messages in the browser (and in API responses).

Every handler is wired through :func:`user_errors`: a :class:`~vectors.SteeringError` (bad vector name, layer out of
range, corrupt upload, ...) turns into a ``gr.Error`` carrying the same message, so the page shows a toast and a
``gradio_client`` caller gets an ``AppError`` with the text. Other exceptions are bugs and stay as they are.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from vectors import SteeringError

F = TypeVar("F", bound=Callable[..., Any])

ERROR_TITLE = "Steering error"


def as_gr_error(exc: SteeringError) -> gr.Error:
    """The ``gr.Error`` shown for ``exc`` (its message names the field, the value and the fix)."""
    return gr.Error(str(exc), title=ERROR_TITLE)


def user_errors(fn: F) -> F:
    """Wrap a handler (plain function or generator) so that ``SteeringError`` surfaces as ``gr.Error``.

    ``functools.wraps`` keeps the signature and docstring, which Gradio reads for its API page.
    """
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except SteeringError as exc:
                raise as_gr_error(exc) from exc

        return generator  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SteeringError as exc:
            raise as_gr_error(exc) from exc

    return wrapper  # type: ignore[return-value]
