"""Bounded, strict JSON parsing for file headers that strangers wrote.

Python's ``json`` recurses once per nesting level, so a header of a million ``[`` raises ``RecursionError``; it keeps
the last of two equal keys, so ``{"layers": {"8": ..., "8": ...}}`` would silently drop a layer; and it raises
``ValueError`` for integers of over 4300 digits. :func:`loads` checks the nesting depth before parsing (in C-speed
passes over the text), refuses duplicate keys in every object, and turns every failure into a
:class:`~vectors.SteeringError` naming the field.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from vectors.errors import SteeringError

MAX_JSON_DEPTH = 64  # sidesteer headers nest 5 deep; registry "extra" metadata gets the rest

# A JSON string (strings may hold brackets): quote, runs of plain characters and escapes, quote. The quantifiers are
# possessive, and the loop runs per escape, not per character: the plain ``(?:[^"\\]|\\.)*`` keeps backtracking state
# for every character and used ~100 bytes of memory per character of a long string.
_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
# Opening brackets -> 1, closing -> 255 (-1 as int8), everything else -> 0. UTF-8 continuation bytes are >= 0x80,
# so multi-byte characters never look like brackets.
_STEPS = bytes(1 if c in b"[{" else 255 if c in b"]}" else 0 for c in range(256))


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text`` (exact for valid JSON; never parses)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return text.count("[") + text.count("{")  # an upper bound, and below the limit: no need to scan
    steps = np.frombuffer(_STRING.sub('""', text).encode("utf-8").translate(_STEPS), dtype=np.int8)
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


def loads(raw: bytes | str, field_name: str) -> Any:
    """Parse ``raw`` as UTF-8 JSON with bounded depth and no duplicate keys.

    Args:
        raw: The JSON text (bytes are decoded as strict UTF-8).
        field_name: What the text is, for error messages, e.g. ``"spec file: the safetensors header"``.

    Returns:
        The parsed value (objects are dicts).

    Raises:
        SteeringError: Not UTF-8, not JSON, nested deeper than :data:`MAX_JSON_DEPTH`, or an object repeats a key.
    """
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SteeringError(f"{field_name} is not JSON (not UTF-8: {exc}); the file is corrupt or of another format") from exc
    else:
        text = raw
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise SteeringError(
            f"{field_name} nests {depth} levels deep, beyond the limit of {MAX_JSON_DEPTH}; the file is corrupt or hostile"
        )
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except _DuplicateKeyError as exc:
        raise SteeringError(
            f"{field_name}: key {exc.key[:60]!r} appears twice in one JSON object; the file was edited or is corrupt"
        ) from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, ints of over 4300 digits
        raise SteeringError(f"{field_name} is not JSON ({str(exc)[:200]}); the file is corrupt or of another format") from exc
