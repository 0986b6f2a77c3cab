"""Validate a spec once per model: a spec that passed :meth:`SteerableBackend.validate_spec` and has not changed since
is trusted on its next entry (the app checks a spec when it is built and again hands it to ``generate``; rollouts
send the same variant specs in every batch).

"Not changed" is decided without reading a tensor: the spec's objects (its layer dict, layer specs, ops, tensors) must
be the very same ones, each tensor at the same in-place version counter, and every scalar equal. Any assignment or
in-place write therefore makes the spec be validated again in full.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch

from vectors import SteeringSpec

__all__ = ["SpecSeals"]

MAX_SEALS = 4096  # specs remembered per model; each entry dies with its spec, this only bounds a burst


def _put(parts: list[Any], keep: list[Any], obj: Any) -> None:
    """Record ``obj`` by identity (kept alive in ``keep``, so its id cannot be reused) and, for a tensor, its version."""
    keep.append(obj)
    parts.append(id(obj))
    if isinstance(obj, torch.Tensor):
        # An inference tensor (made under torch.inference_mode) has no version counter: a fresh object never
        # compares equal, so such a spec is validated again on every entry instead of being trusted.
        parts.append(object() if obj.is_inference() else obj._version)  # _version: bumped by every in-place write


def content_token(spec: SteeringSpec) -> tuple[tuple[Any, ...], list[Any]]:
    """``(token, objects)``: equal tokens (with the objects still alive) mean the spec is unchanged."""
    parts: list[Any] = []
    keep: list[Any] = []
    meta = spec.metadata
    _put(parts, keep, spec.layers)
    _put(parts, keep, meta)
    parts += [getattr(meta, "hidden_size", None), getattr(meta, "model_id", None), getattr(spec, "skip_first_tokens", None)]
    for index, layer in spec.layers.items():
        parts.append(index)
        _put(parts, keep, layer)
        _put(parts, keep, getattr(layer, "vector", None))
        parts.append(getattr(layer, "scale", None))
        for op, scalars in (
            (getattr(layer, "projection_cap", None), ("min", "max")),
            (getattr(layer, "ablation", None), ("scale",)),
        ):
            _put(parts, keep, op)
            if op is not None:
                _put(parts, keep, getattr(op, "vector", None))
                parts += [getattr(op, name, None) for name in scalars]
    return tuple(parts), keep


class SpecSeals:
    """The specs one model has validated, each with the content token it had then (weakly held: no spec is kept)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seals: dict[int, tuple[weakref.ref, tuple[Any, ...], list[Any]]] = {}

    def is_sealed(self, spec: SteeringSpec) -> bool:
        """True when ``spec`` was sealed and is unchanged since."""
        with self._lock:
            entry = self._seals.get(id(spec))
        if entry is None or entry[0]() is not spec:
            return False
        token, _ = content_token(spec)
        return token == entry[1]  # a NaN scalar never equals itself: it is validated again (and refused)

    def seal(self, spec: SteeringSpec) -> None:
        """Remember ``spec`` as validated in its current content."""
        key = id(spec)
        token, keep = content_token(spec)

        def forget(_ref: weakref.ref, key: int = key) -> None:
            with self._lock:
                entry = self._seals.get(key)
                if entry is not None and entry[0] is _ref:
                    del self._seals[key]

        ref = weakref.ref(spec, forget)
        with self._lock:
            if len(self._seals) >= MAX_SEALS:
                self._seals.pop(next(iter(self._seals)))  # the oldest: it is merely validated again
            self._seals[key] = (ref, token, keep)
