"""What every handler shares: the engine, the registry, the limits, and the parsing of the common inputs.

:class:`AppContext` holds the app's state (one engine, one registry, one export folder, the limits) and turns the
steering controls (:class:`~app.steering_controls.SteeringControls`), the prompt and the sampling settings into the
checked values the engine takes. The handler classes (:mod:`app.compare`, :mod:`app.sweep`, :mod:`app.spec_files`,
:mod:`app.registry_handlers`, :mod:`app.scale_handlers`) build on it; :class:`app.callbacks.Callbacks` joins them.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from app.limits import AppLimits
from app.quick_rows import editor_rows
from app.runs import RunTracker
from app.spec_editor import SessionVectors, VectorSource, count_rows, rows_to_spec
from app.steering_controls import SteeringControls
from app.temp_files import ExportFolder, gradio_upload_dir
from engine import GenerationConfig, SteerableModel
from engine.generation import Prompt
from vectors import SpecMetadata, SteeringError, SteeringSpec, VectorRegistry
from vectors.registry import VectorEntry

__all__ = ["AppContext", "build_prompt", "default_skip", "whole_number"]

logger = logging.getLogger("sidesteer.app")


def whole_number(value: Any, field: str, minimum: int = 0) -> int:
    """An integer from a slider or number box (which may send ``8.0``).

    Raises:
        SteeringError: Not a number, not whole, or below ``minimum``; the message names ``field``.
    """
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise SteeringError(f"{field}: {value!r} is not a number; pass a whole number") from exc
    if not number.is_integer() or number < minimum:
        raise SteeringError(f"{field}: {value!r} is not a whole number >= {minimum}")
    return int(number)


def build_prompt(prompt: str, system_prompt: str | None, raw_completion: bool) -> Prompt:
    """A chat message list (optional system message + user message), or the raw text to complete.

    Raises:
        SteeringError: The prompt is empty.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise SteeringError("prompt: the prompt is empty; type a message (or text to complete)")
    if raw_completion:
        return prompt
    messages = [{"role": "system", "content": system_prompt}] if system_prompt and system_prompt.strip() else []
    return [*messages, {"role": "user", "content": prompt}]


def default_skip(spec: SteeringSpec) -> int:
    """Leading positions the UI leaves unsteered by default: 1 when a cap or ablation is used (position 0, the
    attention sink, has a projection far outside any sensible cap), 0 for add-only specs (today's behaviour)."""
    uses = any(layer.projection_cap is not None or layer.ablation is not None for layer in spec.layers.values())
    return 1 if uses else 0


class AppContext:
    """The app's engine, registry, export folder and limits, with the parsing every handler shares.

    Handlers that take ``session`` get the browser session's own vectors (``gr.State``): ``file:`` vectors of
    imported spec files and, in read-only mode, ``session:`` vectors created on the Registry tab. Those never touch
    the disk and no other session sees them.

    Args:
        engine: The steerable model (any backend).
        registry: Where named vectors live.
        export_dir: Private folder for exported files (Gradio copies them into its cache to serve them).
        registry_writable: Allow creating and deleting registry vectors; also off when ``registry.writable`` is.
        limits: Per-request limits; the defaults when None.
        upload_dir: Gradio's upload cache (uploads inside it are deleted once read); Gradio's own when None.
    """

    def __init__(
        self,
        engine: SteerableModel,
        registry: VectorRegistry,
        export_dir: Path,
        *,
        registry_writable: bool = True,
        limits: AppLimits | None = None,
        upload_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.export_dir = Path(export_dir)
        self.exports = ExportFolder(self.export_dir)
        self.registry_writable = registry_writable and registry.writable
        self.limits = limits or AppLimits()
        self.upload_dir = Path(upload_dir) if upload_dir else gradio_upload_dir()
        self.runs = RunTracker()
        # fingerprint -> {(layer, op): name} of specs this server exported, so that importing one of them gives back
        # the names it was exported with, even where several registry vectors hold the same tensor.
        self.exported_names: dict[str, dict[tuple[int, str], str]] = {}
        self._residual_lock = threading.Lock()
        self._residual_norms: dict[int, float] | None = None  # measured on first use

    @property
    def read_only(self) -> bool:
        """Public mode: the registry is never written; created vectors stay in the browser session."""
        return not self.registry_writable

    # -- vectors ---------------------------------------------------------------------------------------------------
    def fits(self, entry: VectorEntry) -> bool:
        """True when the vector can steer the loaded model (same hidden size, suggested layer in range)."""
        layer_ok = entry.suggested_layer is None or entry.suggested_layer < self.engine.num_layers
        return entry.hidden_size == self.engine.hidden_size and layer_ok

    def fitting_vectors(self) -> list[VectorEntry]:
        """Registry vectors that fit the loaded model."""
        return [e for e in self.registry.list(hidden_size=self.engine.hidden_size) if self.fits(e)]

    def known_vectors(self, session: SessionVectors | None = None) -> list[tuple[str, VectorEntry]]:
        """``(name, entry)`` of every named vector that fits: the registry's, then this session's created ones."""
        own = [(name, e) for name, e in (session or {}).items() if isinstance(e, VectorEntry) and self.fits(e)]
        return [(e.name, e) for e in self.fitting_vectors()] + sorted(own, key=lambda item: item[0])

    def named_tensors(self, session: SessionVectors | None) -> dict[str, torch.Tensor]:
        """Name -> tensor of every named vector that fits (to give an imported spec's tensors their names back)."""
        return {name: entry.vector for name, entry in self.known_vectors(session)}

    def vector_source(self, session: SessionVectors | None) -> VectorSource:
        """Where names resolve: the registry, then this session's own vectors."""
        return VectorSource(self.registry, session or {})

    # -- steering --------------------------------------------------------------------------------------------------
    def spec(self, controls: SteeringControls, description: str = "") -> SteeringSpec:
        """The spec the controls describe, checked against the model.

        Quick mode: one add op per quick row (row 1 = ``vector, layer, scale``, rows 2.. in ``more_rows``), built as
        the spec editor would build the same rows. Editor mode: the editor's rows.

        Args:
            controls: The steering controls; their ``skip_first_tokens`` is the leading positions left unsteered (0
                steers every position); None or "" = the page's default: 1 when a cap or ablation is used (the
                attention sink's huge projection would be clamped or removed), else 0.
            description: Stored in the spec's metadata; in quick mode an empty one describes the rows.
        """
        metadata = SpecMetadata(model_id=self.engine.model_id, hidden_size=self.engine.hidden_size, description=description)
        rows = self.setup_rows(controls)
        if controls.steering_mode == "quick" and not description:
            metadata.description = "; ".join(f"{r[1]} at layer {r[0]}, scale {float(r[2]):g}" for r in rows)
        spec = rows_to_spec(rows, self.vector_source(controls.session), metadata)
        spec.skip_first_tokens = self.skip_first_tokens(controls.skip_first_tokens, spec)
        return self.engine.validate_spec(spec)

    def setup_rows(self, controls: SteeringControls) -> Any:
        """The setup as spec editor rows: the editor's own rows, or the quick rows (names resolved, rows checked).

        Raises:
            SteeringError: An unknown steering mode, too many editor rows, or a bad quick row (named by its field).
        """
        if controls.steering_mode == "editor":
            self.limits.check("max_spec_layers", count_rows(controls.editor), "spec editor", "remove rows")
            return controls.editor
        if controls.steering_mode == "quick":
            return editor_rows(controls.quick_rows(), self.vector_source(controls.session), self.engine.num_layers)
        raise SteeringError(f"steering_mode: {controls.steering_mode!r} is not 'quick' or 'editor'")

    def current_spec(
        self,
        vector: str | None,
        layer: Any,
        scale: Any,
        steering_mode: str,
        editor: Any,
        session: SessionVectors | None,
        description: str = "",
        *,
        extra: Sequence[Any] = (),
        skip_first_tokens: Any = 0,
    ) -> SteeringSpec:
        """:meth:`spec` of the controls given one by one (``extra`` = quick rows 2.. as ``[vector_2, layer_2, ...]``)."""
        controls = SteeringControls(vector, layer, scale, steering_mode, editor, session, tuple(extra), skip_first_tokens)
        return self.spec(controls, description)

    @staticmethod
    def skip_first_tokens(value: Any, spec: SteeringSpec) -> int:
        """The ``skip_first_tokens`` to use: ``value``, or the default for ``spec`` when it is None or ""."""
        if value is None or value == "":
            return default_skip(spec)
        return whole_number(value, "skip_first_tokens")

    # -- prompt and sampling ---------------------------------------------------------------------------------------
    def check_prompt(self, request: Prompt) -> None:
        """Refuse a prompt over the token limit (counted with the chat template) before it reaches the engine."""
        self.limits.check(
            "max_prompt_tokens", len(self.engine.encode_prompt(request)), "prompt", "shorten the prompt or the system prompt"
        )

    def config(self, n: int, max_new_tokens: Any, temperature: Any, top_p: Any, seed: Any) -> GenerationConfig:
        """Sampling settings with one shared seed for all ``n`` rows: baseline and steered draw the same random numbers."""
        base = random.randrange(2**31) if seed is None or seed == "" else whole_number(seed, "seed")
        new_tokens = whole_number(max_new_tokens, "max_new_tokens", 1)
        self.limits.check("max_new_tokens", new_tokens, "max_new_tokens", "ask for fewer tokens")  # the API can send any number
        return GenerationConfig(
            max_new_tokens=new_tokens,
            temperature=float(temperature),
            top_p=float(top_p),
            seed=base,
            seeds=[base] * n,
        )
