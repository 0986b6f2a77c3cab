"""Input checks that run before any handler: every bad API value is refused with a message naming its field.

Gradio validates some payloads itself (a pydantic model for tables and files, bounds for sliders) and its raw
messages ("1 validation error for DataframeData ...", "Value 40 is greater than maximum value 29") name no field.
:func:`name_inputs` wraps each input component so that those failures become ``gr.Error`` messages of the app's own
form: ``<field>: <value> is not ...; <fix>``.

:class:`VectorDropdown` lists no enum of vector names on the API page: that list would be frozen at start-up (the
API description is built once) and wrong after a vector is created or deleted; ``/list_vectors`` gives the live list.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import gradio as gr

from app.errors import ERROR_TITLE

VECTOR_API_INFO = (
    "name of a vector fitting the loaded model (call /list_vectors for the current names; file:... and session:... "
    "names refer to this session's own vectors)"
)

class VectorDropdown(gr.Dropdown):
    """A vector-name dropdown whose API description is a plain string (no frozen enum of names)."""

    def api_info(self) -> dict[str, Any]:
        return {"type": "string", "description": VECTOR_API_INFO}
    from collections.abc import Callable, Sequence
    from typing import TYPE_CHECKING, Any, Literal

    from gradio.blocks import Block

    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component

def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

def field_error(field: str, message: str) -> gr.Error:
    """The ``gr.Error`` for a bad value of ``field`` (shown as a toast; a ``gradio_client`` caller gets its text)."""
    return gr.Error(f"{field}: {message}", title=ERROR_TITLE)

class _NamedModel:
    """A component's pydantic data model whose validation failures name the field instead of the model class."""

    def __init__(self, model: Any, field: str, expected: str) -> None:
        self._model, self._field, self._expected = model, field, expected

    def model_validate(self, value: Any, **kwargs: Any) -> Any:
        try:
            return self._model.model_validate(value, **kwargs)
        except Exception:
            raise field_error(self._field, f"{_short(value)} is not {self._expected}") from None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # schema, model_fields, ...: the real model's
        return getattr(self._model, name)

def _number_check(component: Any, field: str, integer: bool, bounded: bool = True) -> Callable[[Any], Any]:
    original = component.preprocess
    low, high = (getattr(component, "minimum", None), getattr(component, "maximum", None)) if bounded else (None, None)
    span = f" between {low:g} and {high:g}" if low is not None and high is not None else ""

    def preprocess(payload: Any) -> Any:
        if payload is None:
            return original(payload)
        kind = "a whole number" if integer else "a number"
        if isinstance(payload, bool) or not isinstance(payload, (int, float)) or not math.isfinite(payload):
            raise field_error(field, f"{_short(payload)} is not {kind}; send {kind}{span}")
        if integer and not float(payload).is_integer():
            raise field_error(field, f"{payload!r} is not a whole number; send a whole number{span}")
        if (low is not None and payload < low) or (high is not None and payload > high):
            raise field_error(field, f"{payload!r} is out of range; send {kind}{span}")
        return original(payload) if bounded else float(payload)

    return preprocess

def name_inputs(fields: Mapping[str, Any], integers: tuple[str, ...] = (), unbounded: tuple[str, ...] = ()) -> None:
    """Make every input check of these components raise a field-named ``gr.Error``.

    Args:
        fields: API parameter name -> component (sliders, numbers, tables, files).
        integers: The fields that take whole numbers only (a layer index is never 7.5).
        unbounded: Sliders whose range is the page's hint only (a scale slider's range follows its vector): the API
            takes any finite number there, and the handler checks it.
    """
    for field, component in fields.items():
        if isinstance(component, (gr.Slider, gr.Number)):
            check = _number_check(component, field, field in integers, field not in unbounded)
            component.preprocess = check  # type: ignore[method-assign]
        model = getattr(component, "data_model", None)
        if model is not None:
            expected = (
                "a table ({'headers': [...], 'data': [[...], ...]})"
                if isinstance(component, gr.Dataframe)
                else ("a file (use gradio_client.handle_file(path))")
            )
            component.data_model = _NamedModel(model, field, expected)  # type: ignore[misc]
