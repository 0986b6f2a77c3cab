"""The one error family of sidesteer: every rejected input raises a ``SteeringError``."""

from __future__ import annotations

from typing import Any

SHOWN_CHARS = 60  # error messages quote at most this much of a bad value: hostile inputs can be megabytes


class SteeringError(ValueError):
    """Bad steering input. The message names the field, the value and the fix."""


def show(value: Any) -> str:
    """A short, always-printable rendering of a (possibly hostile) value for an error message.

    ``repr`` alone is not enough: a 10**5000 int cannot be printed at all (Python refuses ints of over 4300
    digits), and a megabyte string would flood the message.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__, or nesting deeper than the interpreter's recursion limit
        return f"a {type(value).__name__}"
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."
