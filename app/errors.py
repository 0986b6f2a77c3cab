"""The one place where errors become messages in the browser (and in API responses).

Every handler is wired through :func:`user_errors`:

* a :class:`~vectors.SteeringError` (bad vector name, layer out of range, corrupt upload, ...) turns into a
  ``gr.Error`` carrying its message, with server paths cut down to their last part (:func:`app.sanitize.redact_paths`);
* an :class:`~engine.EngineDeadError` (the vLLM engine died and is being rebuilt) becomes "engine restarting; try
  again";
* anything else is a bug: it is logged with its traceback under a short id, and the user sees only
  "internal error; the server logged it as <id>" (never a traceback, never a server path).

So the page shows a toast and a ``gradio_client`` caller gets an ``AppError`` with the text.
"""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from app.sanitize import redact_paths
from engine import EngineDeadError
from vectors import SteeringError

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("sidesteer.app")

ERROR_TITLE = "Steering error"
ENGINE_RESTARTING = "engine restarting: the model engine is being rebuilt; try again in a moment"


def as_gr_error(exc: SteeringError) -> gr.Error:
    """The ``gr.Error`` shown for ``exc`` (its message names the field, the value and the fix; no server paths)."""
    return gr.Error(redact_paths(str(exc)), title=ERROR_TITLE)


def to_gr_error(exc: Exception, where: str) -> gr.Error:
    """The ``gr.Error`` users see for any exception raised in handler ``where``; bugs are logged with a traceback."""
    if isinstance(exc, gr.Error):
        return exc  # the app's own message, already meant for users
    if isinstance(exc, EngineDeadError):
        logger.warning("%s: %s", where, exc)
        return gr.Error(ENGINE_RESTARTING, title="Engine restarting")
    if isinstance(exc, SteeringError):
        return as_gr_error(exc)
    error_id = uuid.uuid4().hex[:8]
    logger.error("internal error %s in %s", error_id, where, exc_info=exc)
    return gr.Error(f"internal error; the server logged it as {error_id}", title="Internal error")


def on_errors(fn: F, handle: Callable[[Exception, str], Any]) -> F:
    """Wrap a handler (plain function or generator): an exception goes to ``handle(exc, where)``.

    A plain function returns what ``handle`` returns; a generator simply ends after ``handle`` (which may raise).
    ``functools.wraps`` keeps the signature and docstring, which Gradio reads for its API page.
    """
    where = getattr(fn, "__qualname__", repr(fn))
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                handle(exc, where)

        return generator  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            return handle(exc, where)

    return wrapper  # type: ignore[return-value]


def _raise(exc: Exception, where: str) -> None:
    raise to_gr_error(exc, where) from None


def user_errors(fn: F) -> F:
    """Wrap a handler (plain function or generator) so that every exception surfaces as a safe ``gr.Error``."""
    return on_errors(fn, _raise)
