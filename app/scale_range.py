"""The scale slider's range, step and default, derived from the vector and the residual stream it is added to.

A steering vector's effect depends on how long ``scale * vector`` is next to the residual stream at that layer, not
on the scale alone: the shipped vectors of the default model steer well at 1-3 while their norms differ twofold.
So the slider spans the scales up to where the added vector is as long as the residual (``residual / vector``,
rounded up to 1, 2 or 5 x 10^k, and at least twice the suggested scale), in 100 steps, and a note beside it says
what the current scale means: ``2.0 = about 0.51x the residual norm at layer 8``.

"The residual norm at layer L" is the norm of the mean output residual stream at L (the first token, an attention
sink, left out), as :meth:`engine.SteerableModel.mean_activations` gives it: recorded when a vector is created
(``extra["residual_norm"]`` at its suggested layer), else measured once on :data:`REFERENCE_PROMPTS`. It is about
0.8x the mean per-token norm on the default model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "DEFAULT_RATIO",
    "FALLBACK_DEFAULT",
    "FALLBACK_SPAN",
    "REFERENCE_PROMPTS",
    "ScaleRange",
    "nice_ceil",
    "scale_note",
    "scale_range",
]

# Default scale of a vector without a suggested scale: the added vector is 0.4x the residual (the shipped vectors'
# suggested scales give 0.35-0.6x on the default model).
DEFAULT_RATIO = 0.4
FALLBACK_SPAN = 10.0  # +-10 when nothing is known about the residual stream
FALLBACK_DEFAULT = 1.0  # the vector as made (a mean difference is on the residual's own scale)
STEPS = 100  # slider steps from 0 to the span
# Neutral chat prompts the app measures the residual norm of every layer on, once, for vectors without a record.
REFERENCE_PROMPTS = (
    "Tell me about your weekend.",
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "How do I bake bread?",
)


@dataclass(frozen=True)
class ScaleRange:
    """A scale slider's settings: ``-span..span`` in steps of ``step``, starting at ``default``."""

    span: float
    step: float
    default: float

    @property
    def minimum(self) -> float:
        return -self.span


def nice_ceil(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k that is >= ``value`` (``value > 0``): 3.96 -> 5, 8.5 -> 10, 0.3 -> 0.5."""
    exponent = math.floor(math.log10(value))
    for mantissa in (1, 2, 5, 10):
        nice = round(mantissa * 10.0**exponent, 12)
        if nice >= value * (1 - 1e-12):
            return nice
    return round(10.0 ** (exponent + 1), 12)  # unreachable: mantissa 10 always fits


def _snap(value: float, step: float, span: float) -> float:
    return round(max(-span, min(span, round(value / step) * step)), 10)


def scale_range(vector_norm: float, residual_norm: float | None, suggested_scale: float | None) -> ScaleRange:
    """Range, step and default of the scale slider for one vector at one layer.

    Args:
        vector_norm: L2 norm of the vector.
        residual_norm: Norm of the mean residual stream at the layer; None when unknown.
        suggested_scale: The vector's suggested scale (registry metadata); None when it has none.

    Returns:
        With a residual norm: span = nice_ceil(max(residual/vector, 2 x |suggested|)), default = the suggested scale,
        else 0.4 x residual/vector. Without one: span = nice_ceil(4 x |suggested|) (10 without a suggestion either),
        default = the suggested scale (else 1). The step is span/100; the default is snapped to it.
    """
    suggested = suggested_scale if suggested_scale not in (None, 0) else None
    if residual_norm and residual_norm > 0 and vector_norm > 0:
        unit = residual_norm / vector_norm  # the scale at which the added vector is as long as the residual
        span = nice_ceil(max(unit, 2 * abs(suggested or 0.0)))
        default = suggested if suggested is not None else DEFAULT_RATIO * unit
    elif suggested is not None:
        span, default = nice_ceil(4 * abs(suggested)), suggested
    else:
        span, default = FALLBACK_SPAN, FALLBACK_DEFAULT
    step = round(span / STEPS, 12)
    return ScaleRange(span=span, step=step, default=_snap(default, step, span))


def scale_note(scale: float, vector_norm: float, residual_norm: float | None, layer: int) -> str:
    """What ``scale`` means at ``layer``: ``2 = about 0.51x the residual norm at layer 8`` (or that it is unknown)."""
    if not residual_norm or residual_norm <= 0:
        return f"relation to the residual norm at layer {layer} unknown (no record for this vector); generic range"
    ratio = abs(scale) * vector_norm / residual_norm
    return f"{scale:g} = about {ratio:.2g}x the residual norm at layer {layer}"
