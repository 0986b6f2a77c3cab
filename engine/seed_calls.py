"""The call shapes of the original design's ``generate``: HF-style keywords and a vLLM ``SamplingParams``.

Code written for the seed calls ``model.generate(prompts, max_new_tokens=256, temperature=0.7, top_p=0.9)`` (the
transformers backend) or ``model.generate(prompts, SamplingParams(...))`` (the vLLM backend). Both map to one
:class:`~engine.generation.GenerationConfig` here; what comes back is always a ``list[Generation]``.
"""

from __future__ import annotations

from typing import Any

from engine.generation import GenerationConfig
from vectors import SteeringError

__all__ = ["HF_KEYWORDS", "generation_config", "is_sampling_params"]

HF_KEYWORDS = ("max_new_tokens", "temperature", "top_p", "seed", "seeds", "ignore_eos", "do_sample")
# SamplingParams fields this engine does not implement, with the value that means "off" (anything else is refused
# rather than silently ignored).
UNSUPPORTED_SAMPLING = {
    "n": (1,),
    "top_k": (0, -1, None),
    "min_p": (0, 0.0, None),
    "presence_penalty": (0, 0.0, None),
    "frequency_penalty": (0, 0.0, None),
    "repetition_penalty": (1, 1.0, None),
    "stop": (None, [], ()),
    "logprobs": (None,),
}


def is_sampling_params(value: Any) -> bool:
    """True for a ``vllm.SamplingParams`` (checked by name: vLLM need not be installed to call the HF backend)."""
    return type(value).__name__ == "SamplingParams" and hasattr(value, "max_tokens") and hasattr(value, "top_p")


def from_sampling_params(params: Any) -> GenerationConfig:
    """The :class:`GenerationConfig` of a ``vllm.SamplingParams`` (``max_tokens``, ``temperature``, ``top_p``,
    ``seed``, ``ignore_eos``).

    Raises:
        SteeringError: ``max_tokens`` is None, or a field this engine does not implement is set.
    """
    for name, off in UNSUPPORTED_SAMPLING.items():
        value = getattr(params, name, None)
        if value not in off:
            raise SteeringError(
                f"sampling_params.{name}: {value!r} is not supported by sidesteer's generate; leave it at its default"
                + (" and repeat the prompt n times instead" if name == "n" else "")
            )
    if params.max_tokens is None:
        raise SteeringError("sampling_params.max_tokens: None (until the context ends) is not supported; pass e.g. 256")
    return GenerationConfig(
        max_new_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        seed=params.seed,
        ignore_eos=bool(params.ignore_eos),
    )


def generation_config(config: Any, sampling_params: Any, options: dict[str, Any]) -> GenerationConfig | None:
    """One config from whichever shape a call used: a :class:`GenerationConfig` or a ``SamplingParams`` (as the
    second argument or ``sampling_params=``), or HF-style keywords (:data:`HF_KEYWORDS`); None for the defaults.

    HF keywords fill a :class:`GenerationConfig` (its defaults for the rest); ``do_sample=False`` means greedy, and
    ``do_sample=True`` without a temperature samples at temperature 1.0, as transformers does.

    Raises:
        SteeringError: An unknown keyword, or two shapes at once.
    """
    unknown = sorted(set(options) - set(HF_KEYWORDS))
    if unknown:
        raise SteeringError(
            f"generate: unknown keyword {unknown[0]!r}; pass a GenerationConfig, a vllm SamplingParams, or the keywords "
            f"{', '.join(HF_KEYWORDS)}"
        )
    if is_sampling_params(config):
        config, sampling_params = None, config
    shapes = [name for name, given in (("config", config), ("sampling_params", sampling_params)) if given is not None]
    if options:
        shapes.append("keywords " + ", ".join(sorted(options)))
    if len(shapes) > 1:
        raise SteeringError(f"generate: got {' and '.join(shapes)}; pass the sampling settings in one of these ways only")
    if sampling_params is not None:
        if not is_sampling_params(sampling_params):
            raise SteeringError(f"sampling_params: expected a vllm SamplingParams, got {type(sampling_params).__name__}")
        return from_sampling_params(sampling_params)
    if options:
        fields = dict(options)
        do_sample = fields.pop("do_sample", None)
        if do_sample is False:
            fields["temperature"] = 0.0
        elif do_sample is True:
            fields.setdefault("temperature", 1.0)
        return GenerationConfig(**fields)
    return config
