"""Where did steering act? The per-token projection onto the steering direction at one layer, before and after its ops.

One teacher-forced forward over ``prompt + completion`` gives, at the traced layer ``L`` (0-based decoder block, output
residual stream = transformers ``hidden_states[L + 1]``), each token's residual stream *before* the layer's ops
(``pre``, with every earlier layer of the spec already applied) and *after* them (``post``). Both are projected onto
the unit direction of one of the layer's ops. For a projection cap, ``clamped`` marks the tokens whose cap input lay
outside ``[min, max]``.

Backends supply the rows (:meth:`engine.backend.SteerableBackend._trace_rows`): the transformers backend captures
``pre`` and ``post`` with forward hooks around its steering hook; the vLLM backend captures ``pre`` only and ``post``
comes from :func:`post_rows`, the same :func:`engine.steering_ops.steer_layer_output` math its worker hooks run. The
clamp mask is recomputed from ``pre`` with the same math (the cap's input is ``pre`` after the add).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from engine.generation import GenerationConfig, Prompt
from engine.steering_ops import steer_layer_output
from vectors import OP_ORDER, LayerSteeringSpec, SteeringError, SteeringSpec

__all__ = ["ProjectionTrace", "TraceOp", "clamped_mask", "post_rows", "trace_direction", "trace_projection"]

TraceOp = Literal["add", "projection_cap", "ablation"]


@dataclass(frozen=True)
class ProjectionTrace:
    """Per-token projections of the residual stream onto a steering direction at one layer.

    Attributes:
        layer: The traced layer (0-based decoder block, its output residual stream).
        op: Whose direction the projection is onto: the add vector's, the cap's or the ablation's (unit length).
        token_ids: Prompt then completion token ids (the forward's input, in order).
        tokens: Each token decoded on its own (special tokens kept).
        prompt_len: How many of the tokens are the prompt; the rest are the completion.
        pre: Projection of the stream before the layer's ops (earlier layers of the spec applied).
        post: Projection after the layer's ops (what the next layer reads).
        clamped: Per token, whether the layer's projection cap changed it; None when the layer has no cap.
        skip_first_tokens: The spec's count of leading positions left unsteered (their ``post`` equals ``pre``).
        cap_min: The cap's lower bound (None: none or no cap).
        cap_max: The cap's upper bound (None: none or no cap).
        spec_fingerprint: The traced spec's fingerprint (as stamped on the steered pane).
    """

    layer: int
    op: TraceOp
    token_ids: list[int]
    tokens: list[str]
    prompt_len: int
    pre: list[float]
    post: list[float]
    clamped: list[bool] | None
    skip_first_tokens: int
    cap_min: float | None
    cap_max: float | None
    spec_fingerprint: str

    @property
    def num_clamped(self) -> int:
        """Tokens the cap clamped (0 without a cap)."""
        return sum(self.clamped or [])

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready), for the API."""
        return asdict(self)


def trace_direction(layer: LayerSteeringSpec, op: TraceOp | None = None) -> tuple[TraceOp, torch.Tensor]:
    """The op whose direction is traced and that unit direction (float32 ``[hidden]``).

    Args:
        layer: One layer of a spec.
        op: "add", "projection_cap" or "ablation"; None = the first op the layer has, in the order they apply.

    Raises:
        SteeringError: ``op`` is unknown or the layer does not have it.
    """
    present: dict[str, torch.Tensor] = {}
    if layer.vector is not None and float(layer.vector.norm()) > 0:
        present["add"] = layer.vector.to(torch.float32) / layer.vector.to(torch.float32).norm()
    if layer.projection_cap is not None:
        present["projection_cap"] = layer.projection_cap.direction.to(torch.float32)
    if layer.ablation is not None:
        present["ablation"] = layer.ablation.direction.to(torch.float32)
    if op is None:
        if not present:
            raise SteeringError("layer: it has no op with a direction (an add of a zero vector); trace another layer")
        op = next(name for name in OP_ORDER if name in present)  # type: ignore[assignment]
    if op not in OP_ORDER:
        raise SteeringError(f"op: {op!r} is not one of {', '.join(OP_ORDER)}")
    if op not in present:
        raise SteeringError(f"op: the layer has no {op}; trace one of {', '.join(present) or 'none'}")
    return op, present[op]  # type: ignore[return-value]


def post_rows(pre: torch.Tensor, layer: LayerSteeringSpec, skip_first_tokens: int = 0) -> torch.Tensor:
    """The stream after ``layer``'s ops from the stream before them (``[n, hidden]`` rows at positions ``0..n-1``,
    float32): the hooks' math; rows at positions below ``skip_first_tokens`` stay as they are."""
    post = steer_layer_output(pre.to(torch.float32), layer)
    post[:skip_first_tokens] = pre[:skip_first_tokens].to(torch.float32)
    return post


def clamped_mask(pre: torch.Tensor, layer: LayerSteeringSpec, skip_first_tokens: int = 0) -> list[bool] | None:
    """Per row, whether the layer's projection cap clamps it (its input, ``pre`` after the add, is out of bounds).

    Rows are positions ``0..n-1``; those below ``skip_first_tokens`` are never steered, so never clamped. Returns None
    when the layer has no cap.
    """
    cap = layer.projection_cap
    if cap is None:
        return None
    x = pre.to(torch.float32)
    if layer.vector is not None:  # the cap acts on the stream after the add, computed by the same function
        x = steer_layer_output(x, LayerSteeringSpec(vector=layer.vector, scale=layer.scale))
    proj = x @ cap.direction.to(torch.float32)  # [n]
    low = proj < cap.min if cap.min is not None else torch.zeros_like(proj, dtype=torch.bool)
    high = proj > cap.max if cap.max is not None else torch.zeros_like(proj, dtype=torch.bool)
    mask = low | high
    mask[:skip_first_tokens] = False
    return [bool(v) for v in mask.tolist()]


def _token_ids(value: Any, field_name: str) -> list[int] | None:
    """``value`` as a list of token ids, or None when it is not a sequence of ints."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return None
    if not value:
        return []
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return None
    if any(t < 0 for t in value):
        raise SteeringError(f"{field_name}: token ids must be >= 0; got {min(value)}")
    return [int(t) for t in value]


def _decode_tokens(backend: Any, ids: list[int]) -> list[str]:
    tok = backend.tokenizer
    batch = getattr(tok, "batch_decode", None)
    if batch is not None:
        return list(batch([[i] for i in ids], skip_special_tokens=False))
    return [tok.decode([i], skip_special_tokens=False) for i in ids]


def trace_projection(
    backend: Any,  # an engine.backend.SteerableBackend (which imports this module: no import back)
    prompt: Prompt | Sequence[int],
    completion: str | Sequence[int],
    spec: SteeringSpec,
    layer: int | None = None,
    op: TraceOp | None = None,
) -> ProjectionTrace:
    """Trace one steered completion (the body of :meth:`engine.backend.SteerableBackend.trace_projection`).

    Args:
        backend: The engine.
        prompt: Token ids, a raw string or chat messages (encoded as ``generate`` encodes them).
        completion: The steered completion's token ids, or its text (tokenised without special tokens; a text may
            tokenise differently from the sampled ids).
        spec: The spec that produced the completion.
        layer: The layer to trace; None = the spec's first steered layer.
        op: Whose direction to project onto; None = the layer's first op.

    Raises:
        SteeringError: A bad spec, a layer without ops, an empty prompt, a request over the limits.
    """
    spec = backend.validate_spec(spec)
    active = spec.active_layers()
    if not active:
        raise SteeringError("spec: it has no op at any layer; nothing steers, so there is nothing to trace")
    if layer is None:
        layer = active[0]
    layer = backend._check_layer(layer)
    if layer not in active:
        raise SteeringError(f"layer: {layer} has no op in the spec; trace one of its steered layers {active}")
    traced_op, direction = trace_direction(spec.layers[layer], op)
    prompt_ids = _token_ids(prompt, "prompt")
    if prompt_ids is None:
        prompt_ids = backend.encode_prompt(prompt)  # type: ignore[arg-type]
    if not prompt_ids:
        raise SteeringError("prompt: it has no tokens; pass non-empty text")
    completion_ids = _token_ids(completion, "completion")
    if completion_ids is None:
        if isinstance(completion, str):
            completion_ids = list(backend.tokenizer(completion, add_special_tokens=False)["input_ids"]) if completion else []
        else:
            raise SteeringError(f"completion: {completion!r:.80} is neither text nor a list of token ids; pass one of those")
    # The limits of the generate call that produced it: prompt tokens, new tokens, context length.
    backend.check_request([prompt_ids], GenerationConfig(max_new_tokens=max(1, len(completion_ids))))
    ids = prompt_ids + completion_ids
    skip = spec.skip_first_tokens  # positions 0..skip-1 of the sequence are left unsteered (both backends)
    pre, post = backend._trace_rows(ids, spec, layer)
    if post is None:
        post = post_rows(pre, spec.layers[layer], skip)
    direction = direction.to(pre.device)
    return ProjectionTrace(
        layer=layer,
        op=traced_op,
        token_ids=ids,
        tokens=_decode_tokens(backend, ids),
        prompt_len=len(prompt_ids),
        pre=(pre.to(torch.float32) @ direction).tolist(),
        post=(post.to(torch.float32) @ direction).tolist(),
        clamped=clamped_mask(pre, spec.layers[layer], skip),
        skip_first_tokens=skip,
        cap_min=None if spec.layers[layer].projection_cap is None else spec.layers[layer].projection_cap.min,
        cap_max=None if spec.layers[layer].projection_cap is None else spec.layers[layer].projection_cap.max,
        spec_fingerprint=spec.fingerprint(),
    )
