"""Handlers behind the quick rows' scale sliders: the residual norm a scale relates to, the slider's range and note,
and a vector's default layer and scale (:mod:`app.scale_range` holds the arithmetic)."""

from __future__ import annotations

from typing import Any

import torch

from app.context import AppContext, logger, whole_number
from app.scale_range import REFERENCE_PROMPTS, ScaleRange, scale_note, scale_range
from app.spec_editor import SessionVectors
from vectors.registry import VectorEntry

__all__ = ["ScaleHandlers"]


class ScaleHandlers(AppContext):
    """Scale ranges, notes and defaults of named vectors."""

    def reference_residual_norms(self) -> dict[int, float]:
        """Norm of the mean residual stream at every layer on :data:`~app.scale_range.REFERENCE_PROMPTS`, measured
        once (one unsteered forward pass); empty when the engine cannot (a vLLM engine without activation capture)."""
        with self._residual_lock:
            if self._residual_norms is None:
                prompts = [[{"role": "user", "content": text}] for text in REFERENCE_PROMPTS]
                try:
                    means = self.engine.mean_activations(prompts, list(range(self.engine.num_layers)))
                    self._residual_norms = {layer: float(mean.norm()) for layer, mean in means.items()}
                except Exception as exc:  # the scale note then says "unknown"; nothing else depends on it
                    logger.warning("residual norms: not measured (%s); the scale sliders use generic ranges", exc)
                    self._residual_norms = {}
            return self._residual_norms

    def residual_norm(self, entry: VectorEntry | torch.Tensor, layer: int) -> float | None:
        """The residual norm a scale at ``layer`` relates to: the vector's own record when made at that layer, else
        the reference measurement."""
        if isinstance(entry, VectorEntry) and entry.residual_norm is not None and entry.suggested_layer == layer:
            return entry.residual_norm
        return self.reference_residual_norms().get(layer)

    def _scale_basis(self, name: str, layer: int, session: SessionVectors | None) -> tuple[float, float | None, float | None]:
        """(vector norm, residual norm at ``layer`` or None, suggested scale or None) of a named vector."""
        entry = self.vector_source(session).entry(name, "vector")
        norm = float(entry.norm()) if isinstance(entry, torch.Tensor) else entry.norm
        suggested = None if isinstance(entry, torch.Tensor) else entry.suggested_scale
        return norm, self.residual_norm(entry, layer), suggested

    def scale_controls(self, name: str | None, layer: Any, scale: Any, session: SessionVectors | None) -> tuple[ScaleRange, str]:
        """Range of the scale slider for ``name`` at ``layer``, and the note for ``scale`` (None = its default)."""
        layer_index = whole_number(layer, "layer")
        if not name:
            fallback = scale_range(0.0, None, None)
            return fallback, "pick a vector"
        norm, residual, suggested = self._scale_basis(name, layer_index, session)
        settings = scale_range(norm, residual, suggested)
        value = settings.default if scale is None else float(scale)
        return settings, scale_note(value, norm, residual, layer_index)

    def scale_note(self, name: str | None, layer: Any, scale: Any, session: SessionVectors | None = None) -> str:
        """The note beside a scale slider: what the scale means next to the residual norm at the layer.

        Returns:
            E.g. "2 = about 0.51x the residual norm at layer 8".
        """
        if not name:
            return ""
        return self.scale_controls(name, layer, scale, session)[1]

    def vector_defaults(
        self, name: str | None, layer: float, scale: float, session: SessionVectors | None = None
    ) -> tuple[int, float]:
        """Quick-mode layer and scale for a vector: its suggested layer (else ``layer``) and its default scale.

        The default scale is its suggested scale (``extra.suggested_scale``), else 0.4x the residual norm at the layer
        over the vector's norm (snapped to the slider's step), else ``scale`` when the residual norm is unknown.
        """
        if not name:
            return whole_number(layer, "layer"), float(scale)
        entry = self.vector_source(session).entry(name, "vector")
        suggested_layer = (
            entry.suggested_layer
            if isinstance(entry, VectorEntry) and entry.suggested_layer is not None
            else whole_number(layer, "layer")
        )
        norm, residual, suggested = self._scale_basis(name, suggested_layer, session)
        if suggested is None and residual is None:
            return suggested_layer, float(scale)
        return suggested_layer, scale_range(norm, residual, suggested).default
