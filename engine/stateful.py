"""The stateful API of the original design on top of the backend contract: :class:`SteerableModel`.

The driver-side steering *state* (what ``set_layer_vector`` & co. change) is a :class:`~vectors.SteeringSpec` kept
here; backends never hold global steering. A generate call with ``steering=None`` runs with the state as it is when
the call starts, so a state change cannot leak into a request already running, and two callers passing their own
specs never see each other's steering. Every change is checked where it enters and is copy-on-write: a refused
change leaves the state untouched.

Names and call shapes follow the seed, so code written for it runs unchanged: ``set_target_layer(layer_idx)`` +
``set_vector(v)``, ``set_layer_vector(layer_idx, vector)``, ``set_layer_projection_cap(layer_idx, vector,
cap_below=..., cap_above=...)``, ``set_layer_ablation(layer_idx, vector, scale=...)``, ``generate`` with HF-style
keywords or a vLLM ``SamplingParams`` (see :mod:`engine.seed_calls`), and ``chat(messages)``.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from engine.backend import SteerableBackend
from engine.generation import ChatMessage, Generation, GenerationConfig, Prompt, SteeringArg, StreamEvent
from engine.seed_calls import generation_config
from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SteeringError, SteeringSpec
from vectors.spec import as_scalar

__all__ = ["SteerableModel"]


class SteerableModel(SteerableBackend):
    """A steerable model with the seed's stateful steering API (see the module docstring).

    Layer indices are 0-based decoder blocks; ops act on the block's output residual stream
    (transformers ``hidden_states[L + 1]``).
    """

    def __init__(self, model_id: str, tokenizer: Any, num_layers: int, hidden_size: int) -> None:
        super().__init__(model_id, tokenizer, num_layers, hidden_size)
        self._state = SteeringSpec({}, self._metadata())
        self._state_lock = threading.RLock()
        self._target_layer: int | None = None

    def _default_steering(self) -> SteeringSpec | None:
        with self._state_lock:
            return self._state  # never changed in place: every change builds a new state

    # -- steering state -------------------------------------------------------------------------------------------
    def _set_state(self, layers: dict[int, LayerSteeringSpec], description: str) -> None:
        """Install a new state from checked layers without checking them again (callers hold the lock)."""
        state = copy.copy(self._state)  # a shallow copy: the old state object stays as running calls saw it
        state.layers = dict(sorted(layers.items()))
        state.metadata = self._metadata(description)
        self._state = state

    def _update_layer(self, layer: int, **changes: Any) -> None:
        self._check_layer(layer)
        with self._state_lock:
            current = self._state.layers.get(layer, LayerSteeringSpec())
            fields = {
                "vector": current.vector,
                "scale": current.scale,
                "projection_cap": current.projection_cap,
                "ablation": current.ablation,
            }
            fields.update(changes)
            updated = LayerSteeringSpec(**fields)
            self._check_support({layer: updated})
            layers = {**self._state.layers, layer: updated}
            if updated.is_empty():
                del layers[layer]
            self._set_state(layers, self._state.metadata.description)

    def set_layer_vector(self, layer_idx: int, vector: torch.Tensor, scale: float = 1.0) -> None:
        """Add ``scale * vector`` to layer ``layer_idx``'s output residual stream."""
        self._update_layer(layer_idx, vector=self._check_vector(vector, "vector"), scale=as_scalar(scale, "scale"))

    def set_layer_projection_cap(
        self, layer_idx: int, vector: torch.Tensor, cap_below: float | None = None, cap_above: float | None = None
    ) -> None:
        """Clamp the projection onto ``vector``'s unit direction into ``[cap_below, cap_above]`` at ``layer_idx``."""
        cap = ProjectionCapSpec(self._check_vector(vector, "projection_cap.vector", direction=True), cap_below, cap_above)
        self._update_layer(layer_idx, projection_cap=cap)

    def set_layer_ablation(self, layer_idx: int, vector: torch.Tensor, scale: float = 0.0) -> None:
        """Multiply the component along ``vector``'s unit direction by ``scale`` at ``layer_idx``."""
        abl = AblationSpec(self._check_vector(vector, "ablation.vector", direction=True), scale)
        self._update_layer(layer_idx, ablation=abl)

    def clear_layer_vector(self, layer_idx: int) -> None:
        self._update_layer(layer_idx, vector=None, scale=1.0)

    def clear_layer_projection_cap(self, layer_idx: int) -> None:
        self._update_layer(layer_idx, projection_cap=None)

    def clear_layer_ablation(self, layer_idx: int) -> None:
        self._update_layer(layer_idx, ablation=None)

    def clear_all_vectors(self) -> None:
        """Remove every steering op: generation returns to the unsteered model exactly."""
        with self._state_lock:
            self._state = SteeringSpec({}, self._metadata())

    def export_steering_spec(self, description: str = "") -> SteeringSpec:
        """A copy of the current steering state as a spec."""
        with self._state_lock:
            spec = self._state.clone()
        if description:
            spec.metadata.description = description
        return spec

    def apply_steering_spec(self, spec: SteeringSpec) -> None:
        """Replace the steering state with ``spec`` (validated first; on error the state is unchanged)."""
        spec = self.validate_spec(spec).clone()  # the copy is the validated content: it is not checked again
        with self._state_lock:
            self._set_state(spec.layers, spec.metadata.description)

    @contextmanager
    def steering(self, spec: SteeringSpec) -> Iterator[SteerableModel]:
        """Apply ``spec`` inside the block; the previous state comes back on exit, also on error."""
        with self._state_lock:
            previous = self._state
        self.apply_steering_spec(spec)
        try:
            yield self
        finally:
            with self._state_lock:
                self._state = previous

    # -- the seed's single-layer API ------------------------------------------------------------------------------
    def set_target_layer(self, layer_idx: int) -> None:
        """Pick the layer that :meth:`set_vector` steers; a vector already set there moves to the new layer.

        "Moves" means the add (vector and scale) of the old target layer; its cap and ablation, and every other
        layer, stay where they are.
        """
        new = self._check_layer(layer_idx)
        with self._state_lock:
            old = self._target_layer
            current = self._state.layers.get(old) if old is not None else None
            if old is not None and old != new and current is not None and current.vector is not None:
                moved = self._state.layers.get(new, LayerSteeringSpec())
                target = LayerSteeringSpec(current.vector, current.scale, moved.projection_cap, moved.ablation)
                self._check_support({new: target})
                rest = LayerSteeringSpec(None, 1.0, current.projection_cap, current.ablation)
                layers = {**self._state.layers, old: rest, new: target}
                if rest.is_empty():
                    del layers[old]
                self._set_state(layers, self._state.metadata.description)
            self._target_layer = new

    def set_vector(self, vector: torch.Tensor | None, scale: float = 1.0) -> None:
        """Steer the target layer with ``scale * vector`` (None clears its vector); other layers are left as they are."""
        with self._state_lock:
            if self._target_layer is None:
                raise SteeringError("target layer: call set_target_layer(layer_idx) before set_vector(vector)")
            if vector is None:
                self.clear_layer_vector(self._target_layer)
            else:
                self.set_layer_vector(self._target_layer, vector, scale)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Store the active spec as ``steering_spec.safetensors`` plus a small ``sidesteer.json`` in ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        spec = self.export_steering_spec()
        spec.save(out / "steering_spec.safetensors")
        info = {**self.info(), "spec_fingerprint": spec.fingerprint(), "active_layers": spec.active_layers()}
        (out / "sidesteer.json").write_text(json.dumps(info, indent=2) + "\n")
        return out

    # -- the seed's call shapes -----------------------------------------------------------------------------------
    def generate(  # type: ignore[override]
        self,
        prompts: Sequence[Prompt] | Prompt,
        config: GenerationConfig | Any = None,
        *,
        steering: SteeringArg = None,
        sampling_params: Any = None,
        **options: Any,
    ) -> list[Generation]:
        """Generate completions in one batch, each prompt steered by its own spec.

        Args:
            prompts: Raw strings or chat message lists (the chat template is applied), or one of them.
            config: Sampling settings (greedy 64 tokens by default), or a ``vllm.SamplingParams``.
            steering: None (the model's current steering state), one spec for all prompts, or a list with one
                ``SteeringSpec | None`` per prompt (None = unsteered).
            sampling_params: A ``vllm.SamplingParams`` (the seed's vLLM call shape): ``max_tokens``, ``temperature``,
                ``top_p``, ``seed``, ``ignore_eos`` are used; other fields must be at their defaults.
            **options: HF-style keywords instead of ``config``: ``max_new_tokens``, ``temperature``, ``top_p``,
                ``seed``, ``seeds``, ``ignore_eos``, ``do_sample`` (False = greedy).

        Returns:
            One :class:`Generation` per prompt, in order, whatever the call shape (``.text`` is the completion,
            ``.token_ids`` its tokens).

        Raises:
            SteeringError: Bad prompts, config or specs; nothing is changed.
        """
        return super().generate(prompts, generation_config(config, sampling_params, options), steering=steering)

    def generate_stream(  # type: ignore[override]
        self,
        prompts: Sequence[Prompt] | Prompt,
        config: GenerationConfig | Any = None,
        *,
        steering: SteeringArg = None,
        sampling_params: Any = None,
        **options: Any,
    ) -> Iterator[StreamEvent]:
        """Like :meth:`generate` (the same call shapes) but yields :class:`StreamEvent` text increments as tokens
        arrive. Closing the generator stops generation."""
        yield from super().generate_stream(prompts, generation_config(config, sampling_params, options), steering=steering)

    def chat(
        self,
        messages: Sequence[ChatMessage] | str,
        config: GenerationConfig | Any = None,
        *,
        steering: SteeringArg = None,
        sampling_params: Any = None,
        **options: Any,
    ) -> str:
        """The assistant's reply to one conversation, with the chat template applied.

        Args:
            messages: ``[{"role": ..., "content": ...}, ...]``, or one string as a single user message.
            config, steering, sampling_params, options: As for :meth:`generate`.

        Returns:
            The reply text (use :meth:`generate` for token ids and finish reasons).
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if not isinstance(messages, Sequence) or not messages or not all(isinstance(m, dict) for m in messages):
            raise SteeringError(
                f"messages: {messages!r:.80} is not a list of {{'role', 'content'}} messages; pass e.g. "
                "[{'role': 'user', 'content': 'Hi'}]"
            )
        out = self.generate([list(messages)], config, steering=steering, sampling_params=sampling_params, **options)
        return out[0].text
