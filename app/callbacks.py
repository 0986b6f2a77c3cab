"""Thin handlers behind every button: parse the inputs, make one engine or registry call, format the result.

Handlers raise :class:`~vectors.SteeringError` for bad input; :mod:`app.errors` turns it into ``gr.Error`` where the
UI wires them up. Steering always travels with the request (``steering=[None, spec]``): no handler changes the
engine's global steering state, so concurrent users never see each other's specs.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from app.sides import SIDES, Pane
from app.spec_editor import Rows, VectorSource, rows_to_spec, spec_to_rows
from engine import GenerationConfig, SteerableModel, mean_difference
from engine.base import Prompt
from vectors import (
    SpecMetadata,
    SteeringError,
    SteeringSpec,
    VectorRegistry,
    export_gguf_control_vector,
    import_gguf_control_vector,
)
from vectors.registry import VectorEntry

REGISTRY_COLUMNS = ["name", "model", "hidden size", "suggested layer", "suggested scale", "norm", "method", "description"]
SWEEP_COLUMNS = ["scale factor", "tokens", "completion"]
MAX_SWEEP_SCALES = 16
SPEC_SUFFIXES = (".safetensors", ".gguf")
CompareOutput = tuple[str, ...]


def _int(value: Any, field: str, minimum: int = 0) -> int:
    """An integer from a slider or number box (which may send ``8.0``)."""
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


def parse_scales(text: str) -> list[float]:
    """``"-2, -1, 0, 1, 2"`` -> ``[-2.0, -1.0, 0.0, 1.0, 2.0]``.

    Raises:
        SteeringError: Empty, not numbers, not finite, or more than :data:`MAX_SWEEP_SCALES` values.
    """
    parts = [p for p in str(text or "").replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    if not parts:
        raise SteeringError("scales: no values; type comma-separated numbers such as -2, -1, 0, 1, 2")
    if len(parts) > MAX_SWEEP_SCALES:
        raise SteeringError(f"scales: {len(parts)} values; a sweep takes at most {MAX_SWEEP_SCALES}")
    try:
        scales = [float(p) for p in parts]
    except ValueError as exc:
        raise SteeringError(f"scales: {text!r} holds something that is not a number ({exc}); use e.g. -2, -1, 0, 1, 2") from exc
    if not all(math.isfinite(s) for s in scales):
        raise SteeringError(f"scales: {text!r} holds a non-finite value; use finite numbers")
    return scales


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


class Callbacks:
    """The app's handlers, bound to one engine, one registry and one export folder.

    Args:
        engine: The steerable model (any backend).
        registry: Where named vectors live.
        export_dir: Private folder for exported files (Gradio copies them into its cache to serve them).
        registry_writable: Allow creating and deleting registry vectors (off for public demos).
    """

    def __init__(self, engine: SteerableModel, registry: VectorRegistry, export_dir: Path, *, registry_writable: bool = True) -> None:
        self.engine = engine
        self.registry = registry
        self.export_dir = Path(export_dir)
        self.registry_writable = registry_writable

    # -- shared parsing ---------------------------------------------------------------------------------------------
    def fits(self, entry: VectorEntry) -> bool:
        """True when the vector can steer the loaded model (same hidden size, suggested layer in range)."""
        layer_ok = entry.suggested_layer is None or entry.suggested_layer < self.engine.num_layers
        return entry.hidden_size == self.engine.hidden_size and layer_ok

    def fitting_vectors(self) -> list[VectorEntry]:
        """Registry vectors that fit the loaded model."""
        return [e for e in self.registry.list(hidden_size=self.engine.hidden_size) if self.fits(e)]

    def current_spec(self, vector: str | None, layer: Any, scale: Any, steering_mode: str, editor: Any, imported: dict | None, description: str = "") -> SteeringSpec:
        """The spec the controls describe: quick mode (one vector) or the multi-layer editor; checked against the model."""
        metadata = SpecMetadata(model_id=self.engine.model_id, hidden_size=self.engine.hidden_size, description=description)
        if steering_mode == "editor":
            spec = rows_to_spec(editor, VectorSource(self.registry, imported or {}), metadata)
        elif steering_mode == "quick":
            if not vector:
                raise SteeringError("vector: none selected; pick a registry vector (or create one on the Registry tab)")
            layer_index = _int(layer, "layer")
            entry = self.registry.get(vector)
            metadata.description = description or f"{entry.name} at layer {layer_index}, scale {float(scale):g}"
            spec = SteeringSpec.single(layer_index, entry.vector, float(scale), **metadata.to_dict())
        else:
            raise SteeringError(f"steering_mode: {steering_mode!r} is not 'quick' or 'editor'")
        return self.engine.validate_spec(spec)

    def config(self, n: int, max_new_tokens: Any, temperature: Any, top_p: Any, seed: Any) -> GenerationConfig:
        """Sampling settings with one shared seed for all ``n`` rows: baseline and steered draw the same random numbers."""
        base = random.randrange(2**31) if seed is None or seed == "" else _int(seed, "seed")
        return GenerationConfig(
            max_new_tokens=_int(max_new_tokens, "max_new_tokens", 1),
            temperature=float(temperature),
            top_p=float(top_p),
            seed=base,
            seeds=[base] * n,
        )

    # -- Compare and Sweep -----------------------------------------------------------------------------------------
    def compare(
        self,
        prompt: str,
        system_prompt: str,
        vector: str | None,
        layer: float,
        scale: float,
        max_new_tokens: float,
        temperature: float,
        top_p: float,
        seed: float | None,
        raw_completion: bool,
        steering_mode: str,
        editor: Any,
        imported: dict | None = None,
    ) -> Iterator[CompareOutput]:
        """Generate the baseline and the steered completion of one prompt in one batch, streaming both.

        Args:
            prompt: User message (chat mode) or the text to complete (raw mode).
            system_prompt: Optional system message (chat mode only).
            vector: Registry vector name (quick mode).
            layer: 0-based decoder layer to steer (quick mode).
            scale: Multiplier of the vector (quick mode).
            max_new_tokens: Tokens to generate per side.
            temperature: 0 = greedy.
            top_p: Nucleus sampling mass.
            seed: Shared by both sides, so only the steering differs; empty = random.
            raw_completion: Complete raw text instead of applying the chat template.
            steering_mode: "quick" (vector/layer/scale) or "editor" (the multi-layer spec table).
            editor: Spec editor rows (layer, vector, scale, cap vector, cap min, cap max, ablation vector, ablation scale).

        Returns:
            Baseline text, steered text, baseline stats, steered stats (streamed; the last yield is final).
        """
        request = build_prompt(prompt, system_prompt, raw_completion)
        spec = self.current_spec(vector, layer, scale, steering_mode, editor, imported)
        config = self.config(len(SIDES), max_new_tokens, temperature, top_p, seed)
        panes = [Pane() for _ in SIDES]
        stream = self.engine.generate_stream([request] * len(SIDES), config, steering=[spec if side.steered else None for side in SIDES])
        try:
            for event in stream:
                panes[event.index].push(event)
                yield tuple(p.text for p in panes) + tuple(p.stats() for p in panes)
        finally:
            stream.close()  # on Stop, Gradio drops this generator: closing the stream ends the engine request
        yield tuple(p.text for p in panes) + tuple(p.stats(stopped=True) for p in panes)

    def sweep(
        self,
        prompt: str,
        system_prompt: str,
        vector: str | None,
        layer: float,
        scale: float,
        max_new_tokens: float,
        temperature: float,
        top_p: float,
        seed: float | None,
        raw_completion: bool,
        steering_mode: str,
        editor: Any,
        scales: str,
        imported: dict | None = None,
    ) -> Rows:
        """Run the current setup at several scale factors in one batch (one row per factor, same seed for all).

        Args:
            scales: Comma-separated factors that multiply every add scale of the setup, e.g. "-2, -1, 0, 1, 2".

        Returns:
            Rows of (scale factor, tokens, completion).
        """
        request = build_prompt(prompt, system_prompt, raw_completion)
        factors = parse_scales(scales)
        spec = self.current_spec(vector, layer, scale, steering_mode, editor, imported)
        config = self.config(len(factors), max_new_tokens, temperature, top_p, seed)
        outputs = self.engine.generate([request] * len(factors), config, steering=[spec.scaled(f) for f in factors])
        return [[factor, out.num_tokens, out.text] for factor, out in zip(factors, outputs, strict=True)]

    # -- spec files ------------------------------------------------------------------------------------------------
    def _export_path(self, spec: SteeringSpec, stem: str, suffix: str) -> Path:
        folder = self.export_dir / uuid.uuid4().hex  # one folder per export: concurrent exports never collide
        folder.mkdir(parents=True)
        return folder / f"{stem}-{spec.fingerprint()[:12]}{suffix}"

    def export_spec(self, vector: str | None, layer: float, scale: float, steering_mode: str, editor: Any, description: str, imported: dict | None = None) -> str:
        """Export the current steering setup as a sidesteer spec file (.safetensors).

        Returns:
            Path of the spec file to download.
        """
        spec = self.current_spec(vector, layer, scale, steering_mode, editor, imported, description or "")
        return str(spec.save(self._export_path(spec, "spec", ".safetensors")))

    def export_gguf(self, vector: str | None, layer: float, scale: float, steering_mode: str, editor: Any, description: str, imported: dict | None = None) -> str:
        """Export the current setup's add vectors as a llama.cpp control vector (.gguf; layer L becomes direction.L+1).

        Returns:
            Path of the GGUF file to download.
        """
        spec = self.current_spec(vector, layer, scale, steering_mode, editor, imported, description or "")
        return str(export_gguf_control_vector(spec, self._export_path(spec, "control-vector", ".gguf")))

    def import_spec(self, file: str | None, imported: dict | None = None) -> tuple[str, Rows, dict[str, torch.Tensor], str]:
        """Load a spec file (.safetensors) or llama.cpp control vector (.gguf) into the spec editor.

        The file is validated against the loaded model first; a bad file raises and changes nothing.

        Args:
            file: The uploaded file.

        Returns:
            Steering mode ("editor"), the editor rows, and a status line.
        """
        if not file:
            raise SteeringError("file: nothing uploaded; choose a .safetensors spec file or a .gguf control vector")
        path = Path(file)
        if path.suffix.lower() not in SPEC_SUFFIXES:
            raise SteeringError(f"file: {path.name!r} is neither a .safetensors spec file nor a .gguf control vector; pick one of those")
        if path.suffix.lower() == ".gguf":
            spec = import_gguf_control_vector(path, model_id=self.engine.model_id)
        else:
            spec = SteeringSpec.load(path)
        self.engine.validate_spec(spec)
        rows, vectors = spec_to_rows(spec, self.fitting_vectors())
        status = f"Imported **{path.name}**: {len(rows)} layer(s), fingerprint `{spec.fingerprint()[:12]}`"
        if spec.model_id and spec.model_id != self.engine.model_id:
            status += f" (made for `{spec.model_id}`, loaded model is `{self.engine.model_id}`)"
        if spec.metadata.description:
            status += f"; {spec.metadata.description}"
        return "editor", rows, vectors, status

    def quick_to_editor(self, vector: str | None, layer: float, scale: float) -> tuple[str, Rows]:
        """Copy the quick-mode setup into the spec editor (to add more layers or ops)."""
        spec = self.current_spec(vector, layer, scale, "quick", None, None)
        return "editor", spec_to_rows(spec, self.fitting_vectors())[0]

    # -- registry --------------------------------------------------------------------------------------------------
    def list_vectors(self) -> Rows:
        """Registry vectors that fit the loaded model.

        Returns:
            Rows of (name, model, hidden size, suggested layer, suggested scale, norm, method, description).
        """
        return [
            [e.name, e.model_id or "", e.hidden_size, e.suggested_layer, e.suggested_scale, round(e.norm, 3), e.method, e.description]
            for e in self.fitting_vectors()
        ]

    @staticmethod
    def _public(entry: VectorEntry) -> dict[str, Any]:
        """Entry metadata without the server-side path (never show clients the server's file system)."""
        details = entry.to_dict()
        details.pop("path", None)
        return details

    def vector_names(self) -> list[str]:
        return [e.name for e in self.fitting_vectors()]

    def vector_details(self, name: str | None) -> dict[str, Any]:
        """All metadata of one registry vector."""
        if not name:
            return {}
        return self._public(self.registry.get(name))

    def vector_defaults(self, name: str | None, layer: float, scale: float) -> tuple[int, float]:
        """Quick-mode layer and scale for a vector: its suggested layer and ``extra.suggested_scale`` when set."""
        if not name:
            return _int(layer, "layer"), float(scale)
        entry = self.registry.get(name)
        suggested_layer = entry.suggested_layer if entry.suggested_layer is not None else _int(layer, "layer")
        return suggested_layer, entry.suggested_scale if entry.suggested_scale is not None else float(scale)

    def _check_writable(self) -> None:
        if not self.registry_writable:
            raise SteeringError("registry: this app serves a read-only registry; start it without --read-only-registry to edit")

    def delete_vector(self, name: str | None) -> str:
        """Delete a registry vector.

        Returns:
            A status line.
        """
        self._check_writable()
        if not name:
            raise SteeringError("name: no vector selected; pick the vector to delete")
        self.registry.remove(name)
        return f"Deleted **{name}**."

    def create_vector(self, name: str, description: str, layer: float, positive_prompts: str, negative_prompts: str, suggested_scale: float | None, overwrite: bool) -> dict[str, Any]:
        """Make a vector from contrastive prompts (mean activation difference at a layer) and save it in the registry.

        Args:
            name: Registry name (letters, digits, '.', '_', '-').
            description: What steering with it does.
            layer: 0-based decoder layer to read activations at (also its suggested layer).
            positive_prompts: One prompt per line showing the concept.
            negative_prompts: One prompt per line showing its opposite.
            suggested_scale: Stored as extra.suggested_scale (quick mode's default scale); 0 or empty for none.
            overwrite: Replace a vector of the same name.

        Returns:
            The new vector's metadata.
        """
        self._check_writable()
        layer_index = _int(layer, "layer")
        positive, negative = _lines(positive_prompts), _lines(negative_prompts)
        self.registry.path_for(name)  # fail on a bad name before the forward passes
        vector = mean_difference(self.engine, positive, negative, layer_index)
        extra: dict[str, Any] = {"num_positive": len(positive), "num_negative": len(negative)}
        if suggested_scale not in (None, "", 0):  # a scale of 0 steers nothing, so 0 means "no suggestion"
            extra["suggested_scale"] = float(suggested_scale)
        entry = self.registry.add(
            name,
            vector,
            description=description or "",
            model_id=self.engine.model_id,
            suggested_layer=layer_index,
            method="mean-diff",
            overwrite=bool(overwrite),
            extra=extra,
        )
        return self._public(entry)

    def engine_info(self) -> dict[str, Any]:
        """Backend, model, number of layers, hidden size, and how many registry vectors fit."""
        return {**self.engine.info(), "registry": self.registry.root.name, "vectors_fitting": len(self.fitting_vectors())}
