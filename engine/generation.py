"""The values of one generate call: prompts, sampling settings, per-call limits, and what comes back.

Part of the backend contract (:mod:`engine.backend`): every backend takes a :class:`GenerationConfig` and returns
:class:`Generation` objects (or :class:`StreamEvent` increments).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from vectors import SteeringError, SteeringSpec
from vectors.spec import as_scalar

__all__ = [
    "CHARS_PER_TOKEN_LIMIT",
    "ChatMessage",
    "EngineStatus",
    "FinishReason",
    "Generation",
    "GenerationConfig",
    "IncrementalDecoder",
    "Prompt",
    "RequestLimits",
    "SteeringArg",
    "StreamEvent",
    "spec_keys",
]

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

    @classmethod
    def batch(
        cls,
        texts: Sequence[str],
        token_ids: Sequence[list[int]],
        finish_reasons: Sequence[str | None],
        prompt_ids: Sequence[list[int]],
        spec_fingerprints: Sequence[str | None],
    ) -> list[Generation]:
        """One ``Generation`` per row of a batch (a row with no finish reason ran out of tokens: "length")."""
        rows = zip(texts, token_ids, finish_reasons, prompt_ids, spec_fingerprints, strict=True)
        return [cls(text, ids, reason or "length", prompt, key) for text, ids, reason, prompt, key in rows]  # type: ignore[arg-type]


@dataclass
class StreamEvent:
    """A streamed text increment for prompt ``index``; ``finished`` marks its last event."""

    index: int
    delta: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: FinishReason | None = None


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
