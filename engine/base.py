"""The one engine API: :class:`SteerableModel`, shared by the transformers and the vLLM backend.

The driver-side steering *state* (what ``set_layer_vector`` & co. change) is a :class:`~vectors.SteeringSpec` kept
here; backends never hold global steering. Every generate call resolves its per-prompt specs (the state, one spec
for all, or one per prompt) and the backend steers each request by its own spec. So a state change cannot leak into
a request already running, and two callers with different specs never see each other's steering.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SpecMetadata, SteeringError, SteeringSpec
from vectors.spec import as_scalar, as_vector

ChatMessage = dict[str, str]
Prompt = str | Sequence[ChatMessage]
SteeringArg = SteeringSpec | Sequence[SteeringSpec | None] | None
FinishReason = Literal["stop", "length", "abort"]
EngineStatus = Literal["ready", "restarting", "dead"]
CHARS_PER_TOKEN_LIMIT = 32  # a prompt string longer than this many characters per allowed token is refused untokenised


@dataclass
class RequestLimits:
    """Per-call limits, checked before any work starts (one shared engine: a huge request must not stall the others).

    ``None`` means no limit beyond the model's context length, which is always enforced (prompt tokens plus
    ``max_new_tokens`` must fit). The library's default is no extra limit (rollouts batch thousands of prompts); the
    app sets its own (see ``app/limits.py``).

    Args:
        max_prompt_tokens: Tokens per prompt.
        max_new_tokens: ``GenerationConfig.max_new_tokens`` of one call.
        max_prompts: Prompts in one call.
    """

    max_prompt_tokens: int | None = None
    max_new_tokens: int | None = None
    max_prompts: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_prompt_tokens", "max_new_tokens", "max_prompts"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise SteeringError(f"limits.{name}: {value!r} is not a positive integer or None; pass e.g. 1024")


@dataclass
class GenerationConfig:
    """Sampling settings for one generate call.

    Args:
        max_new_tokens: Tokens to generate per prompt (>= 1).
        temperature: 0 means greedy decoding.
        top_p: Nucleus sampling mass in (0, 1].
        seed: Base seed; prompt ``i`` samples with ``seed + i`` so results do not depend on batch composition.
        ignore_eos: Keep generating past end-of-sequence (fixed output lengths, for benchmarks).
        seeds: One seed per prompt of the call, replacing ``seed + i`` (rollouts fix a seed per record, whatever
            batch it lands in). Its length must equal the number of prompts.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    ignore_eos: bool = False
    seeds: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise SteeringError(f"max_new_tokens: {self.max_new_tokens!r} is not a positive integer; pass e.g. 64")
        self.temperature = as_scalar(self.temperature, "temperature")
        if self.temperature < 0:
            raise SteeringError(f"temperature: {self.temperature} is negative; use 0 for greedy or a positive value")
        self.top_p = as_scalar(self.top_p, "top_p")
        if not 0 < self.top_p <= 1:
            raise SteeringError(f"top_p: {self.top_p} is outside (0, 1]; use 1.0 to disable nucleus sampling")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise SteeringError(f"seed: {self.seed!r} is not a non-negative integer; pass e.g. 0 or None")
        if self.seeds is not None:
            if isinstance(self.seeds, (str, bytes)) or not isinstance(self.seeds, Sequence):
                raise SteeringError(f"seeds: {self.seeds!r:.80} is not a list of integers; pass one seed per prompt or None")
            bad = [s for s in self.seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63]
            if bad:
                raise SteeringError(f"seeds: {bad[0]!r} is not an integer in [0, 2**63); pass one non-negative int per prompt")
            self.seeds = tuple(self.seeds)

    def seed_for(self, index: int) -> int | None:
        """The seed of prompt ``index``: ``seeds[index]`` when given, else ``seed + index``."""
        if self.seeds is not None:
            return self.seeds[index]
        return None if self.seed is None else self.seed + index

    def check_num_prompts(self, num_prompts: int) -> None:
        """Refuse ``seeds`` of the wrong length for a call with ``num_prompts`` prompts."""
        if self.seeds is not None and len(self.seeds) != num_prompts:
            raise SteeringError(f"seeds: {len(self.seeds)} seeds for {num_prompts} prompts; pass one seed per prompt")


@dataclass
class Generation:
    """One completion."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_token_ids: list[int] = field(default_factory=list)
    spec_fingerprint: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class StreamEvent:
    """A streamed text increment for prompt ``index``; ``finished`` marks its last event."""

    index: int
    delta: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: FinishReason | None = None


class SteerableModel(abc.ABC):
    """A causal LM that can be steered per request. Subclasses implement the ``_`` methods.

    Layer indices are 0-based decoder blocks; ops act on the block's output residual stream
    (transformers ``hidden_states[L + 1]``).
    """

    backend: str = "abstract"

    def __init__(self, model_id: str, tokenizer: Any, num_layers: int, hidden_size: int) -> None:
        self.model_id = model_id
        self.tokenizer = tokenizer
        self._num_layers = num_layers
        self._hidden_size = hidden_size
        self._state = SteeringSpec({}, self._metadata())
        self._state_lock = threading.RLock()
        self._target_layer: int | None = None
        self.limits = RequestLimits()

    # -- facts ----------------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    @property
    def context_length(self) -> int:
        """Tokens a request may hold in all (prompt + new tokens)."""
        return self._context_length()

    def _context_length(self) -> int:
        return 1 << 62  # backends override with the model's (or engine's) real limit

    def status(self) -> EngineStatus:
        """``"ready"``; the vLLM backend also reports ``"restarting"`` (rebuilding after its engine died) or ``"dead"``."""
        return "ready"

    def _check_num_prompts(self, num_prompts: int) -> None:
        limit = self.limits.max_prompts
        if limit is not None and num_prompts > limit:
            raise SteeringError(f"prompts: {num_prompts} prompts in one call is over the limit of {limit}; split the call")

    def check_request(self, prompt_ids: Sequence[Sequence[int]], config: GenerationConfig) -> None:
        """Refuse a call that breaks :attr:`limits` or the context length, before any work starts.

        Raises:
            SteeringError: Names the prompt, both numbers and the limit.
        """
        limits, context = self.limits, self.context_length
        self._check_num_prompts(len(prompt_ids))
        if limits.max_new_tokens is not None and config.max_new_tokens > limits.max_new_tokens:
            raise SteeringError(
                f"max_new_tokens: {config.max_new_tokens} is over the limit of {limits.max_new_tokens}; ask for fewer tokens"
            )
        for index, ids in enumerate(prompt_ids):
            n = len(ids)
            if limits.max_prompt_tokens is not None and n > limits.max_prompt_tokens:
                raise SteeringError(
                    f"prompts[{index}]: {n} prompt tokens is over the limit of {limits.max_prompt_tokens}; shorten the prompt"
                )
            if n + config.max_new_tokens > context:
                raise SteeringError(
                    f"prompts[{index}]: {n} prompt tokens + {config.max_new_tokens} max_new_tokens = {n + config.max_new_tokens} "
                    f"is over the context length of {context} tokens; shorten the prompt or lower max_new_tokens"
                )

    def info(self) -> dict[str, Any]:
        """Backend, model id, number of layers, hidden size."""
        return {"backend": self.backend, "model": self.model_id, "num_layers": self.num_layers, "hidden_size": self.hidden_size}

    def _metadata(self, description: str = "") -> SpecMetadata:
        return SpecMetadata(model_id=self.model_id, hidden_size=self._hidden_size, description=description)

    # -- validation -----------------------------------------------------------------------------------------------
    def _check_layer(self, layer: Any) -> int:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise SteeringError(f"layer: {layer!r} is not an int; use a 0-based decoder layer 0..{self.num_layers - 1}")
        if not 0 <= layer < self.num_layers:
            raise SteeringError(
                f"layer: {layer} is out of range for a model with {self.num_layers} layers; use 0..{self.num_layers - 1}"
            )
        return layer

    def _check_vector(self, vector: Any, field_name: str, *, direction: bool = False) -> torch.Tensor:
        v = as_vector(vector, field_name, direction=direction)
        if v.numel() != self.hidden_size:
            raise SteeringError(
                f"{field_name}: length {v.numel()} does not match the model's hidden_size {self.hidden_size}; "
                "use a vector made for this model"
            )
        return v

    def validate_spec(self, spec: SteeringSpec) -> SteeringSpec:
        """Check a spec fits this model and return it.

        Raises:
            SteeringError: Not a SteeringSpec, a layer out of range, or a hidden-size mismatch.
        """
        if not isinstance(spec, SteeringSpec):
            raise SteeringError(f"steering: expected a SteeringSpec, got {type(spec).__name__}; build one or load a spec file")
        spec.validate_for_model(self.num_layers, self.hidden_size)
        for index, layer in spec.layers.items():
            if layer.hidden_sizes() - {self.hidden_size}:
                raise SteeringError(
                    f"layers[{index}]: vector length {sorted(layer.hidden_sizes())} does not match the model's hidden_size "
                    f"{self.hidden_size}; use vectors made for this model"
                )
        return spec

    # -- steering state (driver side; copy-on-write so a failed change leaves it untouched) -----------------------
    def _update_layer(self, layer: int, **changes: Any) -> None:
        self._check_layer(layer)
        with self._state_lock:
            state = self._state.clone()
            current = state.layers.get(layer, LayerSteeringSpec())
            fields = {
                "vector": current.vector,
                "scale": current.scale,
                "projection_cap": current.projection_cap,
                "ablation": current.ablation,
            }
            fields.update(changes)
            state.layers[layer] = LayerSteeringSpec(**fields)
            if state.layers[layer].is_empty():
                del state.layers[layer]
            self._state = SteeringSpec(state.layers, self._metadata(state.metadata.description))

    def set_layer_vector(self, layer: int, vector: torch.Tensor, scale: float = 1.0) -> None:
        """Add ``scale * vector`` to layer ``layer``'s output residual stream."""
        self._update_layer(layer, vector=self._check_vector(vector, "vector"), scale=as_scalar(scale, "scale"))

    def set_layer_projection_cap(
        self, layer: int, vector: torch.Tensor, cap_below: float | None = None, cap_above: float | None = None
    ) -> None:
        """Clamp the projection onto ``vector``'s unit direction into ``[cap_below, cap_above]`` at ``layer``."""
        cap = ProjectionCapSpec(self._check_vector(vector, "projection_cap.vector", direction=True), cap_below, cap_above)
        self._update_layer(layer, projection_cap=cap)

    def set_layer_ablation(self, layer: int, vector: torch.Tensor, scale: float = 0.0) -> None:
        """Multiply the component along ``vector``'s unit direction by ``scale`` at ``layer``."""
        self._update_layer(layer, ablation=AblationSpec(self._check_vector(vector, "ablation.vector", direction=True), scale))

    def clear_layer_vector(self, layer: int) -> None:
        self._update_layer(layer, vector=None, scale=1.0)

    def clear_layer_projection_cap(self, layer: int) -> None:
        self._update_layer(layer, projection_cap=None)

    def clear_layer_ablation(self, layer: int) -> None:
        self._update_layer(layer, ablation=None)

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
        spec = self.validate_spec(spec).clone()
        with self._state_lock:
            self._state = SteeringSpec(spec.layers, self._metadata(spec.metadata.description))

    @contextmanager
    def steering(self, spec: SteeringSpec) -> Iterator[SteerableModel]:
        """Apply ``spec`` inside the block; the previous state comes back on exit, also on error."""
        previous = self.export_steering_spec()
        self.apply_steering_spec(spec)
        try:
            yield self
        finally:
            with self._state_lock:
                self._state = previous

    # the seed's single-layer convenience API
    def set_target_layer(self, layer: int) -> None:
        """Pick the layer that :meth:`set_vector` steers."""
        self._target_layer = self._check_layer(layer)

    def set_vector(self, vector: torch.Tensor | None, scale: float = 1.0) -> None:
        """Steer the target layer with ``vector`` (None clears it); other layers are cleared."""
        if self._target_layer is None:
            raise SteeringError("target layer: call set_target_layer(layer) before set_vector(vector)")
        checked = None if vector is None else self._check_vector(vector, "vector")
        with self._state_lock:
            self.clear_all_vectors()
            if checked is not None:
                self.set_layer_vector(self._target_layer, checked, scale)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Store the active spec as ``steering_spec.safetensors`` plus a small ``sidesteer.json`` in ``directory``."""
        import json

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        spec = self.export_steering_spec()
        spec.save(out / "steering_spec.safetensors")
        info = {**self.info(), "spec_fingerprint": spec.fingerprint(), "active_layers": spec.active_layers()}
        (out / "sidesteer.json").write_text(json.dumps(info, indent=2) + "\n")
        return out

    # -- prompts and specs ----------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a raw string, or of a chat message list with the chat template applied."""
        self._check_prompt_chars(prompt)
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        if (
            isinstance(prompt, Sequence)
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt)
            and prompt
        ):
            ids = self.tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return [int(t) for t in ids]
        raise SteeringError(
            f"prompts: {prompt!r:.80} is neither a string nor a list of {{'role', 'content'}} messages; pass one of those"
        )

    def _check_prompt_chars(self, prompt: Prompt) -> None:
        """Refuse text far too long for the token limit before tokenising it (a megabyte prompt costs CPU time)."""
        limit = self.limits.max_prompt_tokens
        if limit is None:
            return
        if isinstance(prompt, str):
            chars = len(prompt)
        elif isinstance(prompt, Sequence):
            chars = sum(len(m["content"]) for m in prompt if isinstance(m, dict) and isinstance(m.get("content"), str))
        else:
            return
        if chars > limit * CHARS_PER_TOKEN_LIMIT:
            raise SteeringError(f"prompts: {chars} characters is far over the limit of {limit} prompt tokens; shorten the prompt")

    def decode_all(self, sequences: list[list[int]], decode_text: bool = True) -> list[str]:
        """Text of each completion, special tokens skipped: one ``batch_decode`` call where the tokenizer has it (fast
        tokenizers decode a batch in parallel; 1024 x 128 tokens one by one took ~40 ms of a benchmark call).
        ``decode_text=False``: empty strings (callers that want token ids only)."""
        if not decode_text:
            return [""] * len(sequences)
        batch = getattr(self.tokenizer, "batch_decode", None)
        if batch is not None:
            return list(batch(sequences, skip_special_tokens=True))
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in sequences]

    def resolve_steering(self, num_prompts: int, steering: SteeringArg) -> list[SteeringSpec | None]:
        """Per-prompt specs for a call: None -> the current state; one spec -> all; a list -> one each."""
        if steering is None:
            with self._state_lock:
                state = self._state
            specs: list[SteeringSpec | None] = [state] * num_prompts
        elif isinstance(steering, SteeringSpec):
            specs = [self.validate_spec(steering)] * num_prompts
        elif isinstance(steering, Sequence) and not isinstance(steering, (str, bytes)):
            if len(steering) != num_prompts:
                raise SteeringError(
                    f"steering: {len(steering)} specs for {num_prompts} prompts; pass one spec (or None) per prompt"
                )
            checked: dict[int, SteeringSpec] = {}  # id -> validated spec: a batch often repeats one spec object
            for s in steering:
                if s is not None and id(s) not in checked:
                    checked[id(s)] = self.validate_spec(s)
            specs = [None if s is None else checked[id(s)] for s in steering]
        else:
            raise SteeringError(f"steering: {type(steering).__name__} is not a SteeringSpec, a list of them, or None")
        return [None if s is None or s.is_empty() else s for s in specs]

    def _prepare(self, prompts: Sequence[Prompt] | Prompt, config: GenerationConfig | None, steering: SteeringArg):
        if isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], dict)):
            prompts = [prompts]  # type: ignore[list-item]
        prompts = list(prompts)  # type: ignore[arg-type]
        if not prompts:
            raise SteeringError("prompts: the list is empty; pass at least one prompt")
        config = config or GenerationConfig()
        if not isinstance(config, GenerationConfig):
            raise SteeringError(f"config: expected a GenerationConfig, got {type(config).__name__}")
        config.check_num_prompts(len(prompts))
        self._check_num_prompts(len(prompts))  # before tokenising them all
        specs = self.resolve_steering(len(prompts), steering)
        ids = [self.encode_prompt(p) for p in prompts]
        self.check_request(ids, config)
        return ids, config, specs

    def generate(
        self, prompts: Sequence[Prompt] | Prompt, config: GenerationConfig | None = None, *, steering: SteeringArg = None
    ) -> list[Generation]:
        """Generate completions in one batch, each prompt steered by its own spec.

        Args:
            prompts: Raw strings or chat message lists (the chat template is applied), or one of them.
            config: Sampling settings (greedy 64 tokens by default).
            steering: None (the model's current steering state), one spec for all prompts, or a list with one
                ``SteeringSpec | None`` per prompt (None = unsteered).

        Returns:
            One :class:`Generation` per prompt, in order.

        Raises:
            SteeringError: Bad prompts, config or specs; nothing is changed.
        """
        ids, config, specs = self._prepare(prompts, config, steering)
        return self._generate(ids, config, specs)

    def generate_stream(
        self, prompts: Sequence[Prompt] | Prompt, config: GenerationConfig | None = None, *, steering: SteeringArg = None
    ) -> Iterator[StreamEvent]:
        """Like :meth:`generate` but yields :class:`StreamEvent` text increments as tokens arrive.

        Closing the generator stops generation.
        """
        ids, config, specs = self._prepare(prompts, config, steering)
        yield from self._generate_stream(ids, config, specs)

    def generate_token_ids(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        config: GenerationConfig | None = None,
        *,
        steering: SteeringArg = None,
        decode_text: bool = True,
    ) -> list[Generation]:
        """:meth:`generate` on already tokenised prompts (benchmarks, parity tests).

        ``decode_text=False`` leaves every ``Generation.text`` empty: token ids only, as vLLM's ``detokenize=False``
        gives them (a benchmark against plain vLLM must not time ~40 ms of text decoding per 1024 x 128 tokens that
        the baseline does not do).
        """
        config = config or GenerationConfig()
        config.check_num_prompts(len(prompt_token_ids))
        specs = self.resolve_steering(len(prompt_token_ids), steering)
        ids = [list(map(int, p)) for p in prompt_token_ids]
        self.check_request(ids, config)
        return self._generate(ids, config, specs, decode_text=decode_text)

    def mean_activations(self, prompts: Sequence[Prompt], layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Mean output residual stream at each layer: over each prompt's tokens, then over prompts.

        The first token of each prompt (longer than one token) is left out: it is an attention sink with an outsized
        norm in most LMs, which would swamp the mean.

        Unsteered. Returns float32 CPU tensors ``[hidden]``.
        """
        if not prompts:
            raise SteeringError("prompts: the list is empty; pass at least one prompt")
        layer_list = sorted({self._check_layer(layer) for layer in layers})
        ids = [self.encode_prompt(p) for p in prompts]
        self.check_request(ids, GenerationConfig(max_new_tokens=1))
        return self._mean_activations(ids, layer_list)

    # -- backend hooks --------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _generate(
        self, prompt_ids: list[list[int]], config: GenerationConfig, specs: list[SteeringSpec | None], decode_text: bool = True
    ) -> list[Generation]: ...

    def _generate_stream(
        self, prompt_ids: list[list[int]], config: GenerationConfig, specs: list[SteeringSpec | None]
    ) -> Iterator[StreamEvent]:
        for index, gen in enumerate(self._generate(prompt_ids, config, specs)):
            yield StreamEvent(index, gen.text, gen.token_ids, True, gen.finish_reason)

    @abc.abstractmethod
    def _mean_activations(self, prompt_ids: list[list[int]], layers: list[int]) -> dict[int, torch.Tensor]: ...

    def close(self) -> None:  # noqa: B027 - a no-op default; backends with processes override it
        """Release the backend's resources."""


def spec_keys(specs: Sequence[SteeringSpec | None]) -> list[str | None]:
    """Each prompt's spec fingerprint, hashing every distinct spec object once (a batch repeats a few specs)."""
    by_id: dict[int, str] = {}
    keys: list[str | None] = []
    for spec in specs:
        if spec is None:
            keys.append(None)
            continue
        if id(spec) not in by_id:
            by_id[id(spec)] = spec.fingerprint()
        keys.append(by_id[id(spec)])
    return keys


class IncrementalDecoder:
    """Turns a growing list of token ids into text increments without splitting multi-byte characters."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, new_ids: Sequence[int], final: bool = False) -> str:
        self.ids.extend(int(t) for t in new_ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and not final:
            return ""
        delta = text[len(self.text) :] if text.startswith(self.text) else text
        self.text = text
        return delta
