"""The backend contract: :class:`SteerableBackend`, what every backend (transformers, vLLM) implements and shares.

A backend takes token ids, a :class:`~engine.generation.GenerationConfig` and one validated spec (or None) per prompt,
and returns :class:`~engine.generation.Generation` objects; it holds no steering state of its own. This class owns
everything in front of that: prompt encoding, the request limits, and the one validation of a spec where it enters
(``validate_spec``; a spec validated before and unchanged since is trusted, see :mod:`engine.spec_check`). Backends
implement ``_generate``, ``_mean_activations`` and, to stream token by token, ``_generate_stream``; they may add
their own checks of a spec in ``_check_support``. The stateful API of the original design sits on top of this in
:mod:`engine.stateful`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from engine.generation import (
    CHARS_PER_TOKEN_LIMIT,
    EngineStatus,
    Generation,
    GenerationConfig,
    Prompt,
    RequestLimits,
    SteeringArg,
    StreamEvent,
)
from engine.projection_trace import ProjectionTrace, TraceOp, trace_projection
from engine.spec_check import SpecSeals
from vectors import LayerSteeringSpec, SpecMetadata, SteeringError, SteeringSpec
from vectors.spec import as_vector

__all__ = ["SteerableBackend"]


class SteerableBackend(abc.ABC):
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
        self._seals = SpecSeals()
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

    def info(self) -> dict[str, Any]:
        """Backend, model id, number of layers, hidden size."""
        return {"backend": self.backend, "model": self.model_id, "num_layers": self.num_layers, "hidden_size": self.hidden_size}

    def _metadata(self, description: str = "") -> SpecMetadata:
        return SpecMetadata(model_id=self.model_id, hidden_size=self._hidden_size, description=description)

    # -- request checks -------------------------------------------------------------------------------------------
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

    # -- spec validation: once, where a spec enters ---------------------------------------------------------------
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

    def _check_support(self, layers: Mapping[int, LayerSteeringSpec]) -> None:  # noqa: B027 - optional hook
        """Backend-specific checks of already valid layers (the vLLM backend: hooked layers, compiled ops)."""

    def validate_spec(self, spec: SteeringSpec) -> SteeringSpec:
        """Check a spec fits this model and return it (the same object).

        This is the one validation of a spec entering the engine (``generate*``, ``apply_steering_spec``,
        ``steering``, ``upload`` call it); the backends trust what it passed. A spec this model validated before and
        that is unchanged since (same objects, no in-place writes, equal scalars) is not checked again.

        Raises:
            SteeringError: Not a SteeringSpec, a bad value, a layer out of range, a hidden-size mismatch, or an op or
                layer this backend cannot steer.
        """
        if not isinstance(spec, SteeringSpec):
            raise SteeringError(f"steering: expected a SteeringSpec, got {type(spec).__name__}; build one or load a spec file")
        if self._seals.is_sealed(spec):
            return spec
        spec.validate_for_model(self.num_layers, self.hidden_size)
        for index, layer in spec.layers.items():
            if layer.hidden_sizes() - {self.hidden_size}:
                raise SteeringError(
                    f"layers[{index}]: vector length {sorted(layer.hidden_sizes())} does not match the model's hidden_size "
                    f"{self.hidden_size}; use vectors made for this model"
                )
        self._check_support(spec.layers)
        self._seals.seal(spec)
        return spec

    def _default_steering(self) -> SteeringSpec | None:
        """The spec of a call that passes ``steering=None`` (the stateful API returns its state)."""
        return None

    def resolve_steering(self, num_prompts: int, steering: SteeringArg) -> list[SteeringSpec | None]:
        """Per-prompt specs for a call: None -> the default (the current state); one spec -> all; a list -> one each."""
        if steering is None:
            specs: list[SteeringSpec | None] = [self._default_steering()] * num_prompts
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

    # -- prompts --------------------------------------------------------------------------------------------------
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

    # -- the calls ------------------------------------------------------------------------------------------------
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

    # -- what a backend implements --------------------------------------------------------------------------------
    @abc.abstractmethod
    def _generate(
        self, prompt_ids: list[list[int]], config: GenerationConfig, specs: list[SteeringSpec | None], decode_text: bool = True
    ) -> list[Generation]:
        """Generate for tokenised prompts, prompt ``i`` steered by ``specs[i]`` (validated; None = unsteered)."""

    def _generate_stream(
        self, prompt_ids: list[list[int]], config: GenerationConfig, specs: list[SteeringSpec | None]
    ) -> Iterator[StreamEvent]:
        for index, gen in enumerate(self._generate(prompt_ids, config, specs)):
            yield StreamEvent(index, gen.text, gen.token_ids, True, gen.finish_reason)

    @abc.abstractmethod
    def _mean_activations(self, prompt_ids: list[list[int]], layers: list[int]) -> dict[int, torch.Tensor]:
        """Unsteered mean output residual stream per layer (see :meth:`mean_activations`)."""

    def close(self) -> None:  # noqa: B027 - a no-op default; backends with processes override it
        """Release the backend's resources."""

    # -- where did steering act? ----------------------------------------------------------------------------------
    def trace_projection(
        self,
        prompt: Prompt | Sequence[int],
        completion: str | Sequence[int],
        spec: SteeringSpec,
        layer: int | None = None,
        op: TraceOp | None = None,
    ) -> ProjectionTrace:
        """Per-token projection onto the steering direction at ``layer``, before and after the layer's ops.

        One teacher-forced forward over ``prompt + completion`` (see :mod:`engine.projection_trace`).

        Args:
            prompt: Token ids, a raw string or chat messages (encoded as :meth:`generate` encodes them).
            completion: The steered completion's token ids (exact), or its text (re-tokenised).
            spec: The spec that produced the completion.
            layer: The layer to trace; None = the spec's first steered layer.
            op: "add", "projection_cap" or "ablation": whose direction; None = the layer's first op.

        Returns:
            A :class:`~engine.projection_trace.ProjectionTrace`; for a cap, its ``clamped`` mask.

        Raises:
            SteeringError: A bad spec or layer, an empty prompt, a request over the limits, or a backend that cannot
                trace.
        """
        return trace_projection(self, prompt, completion, spec, layer, op)

    def _trace_rows(self, ids: list[int], spec: SteeringSpec, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stream at ``layer`` before its ops (``[len(ids), hidden]``) and after them (None: the backend leaves
        it to :func:`engine.projection_trace.post_rows`), for one forward over ``ids`` steered by ``spec``."""
        raise SteeringError(f"trace: the {self.backend} backend cannot trace projections; use the transformers backend")
