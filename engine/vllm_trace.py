"""The vLLM backend's projection trace: the residual stream before a layer's ops, per token, from the capture RPCs.

The workers' capture (:mod:`engine.vllm_capture`) sums a hooked layer's steered stream per capture id, i.e. per
request; no RPC returns single token rows. So the trace runs every prefix ``ids[:k]`` (``k = 1..n``) as its own
one-token request and takes differences of the sums: in a causal model position ``t`` of a prefix equals position
``t`` of the whole sequence, so ``row t = sum(prefix t+1) - sum(prefix t)``. The backend leaves position 0 out of the
capture of every prefix longer than one token (``SKIP_FIRST_ARG``: the attention sink), so row 0 comes from the
one-token prefix and row 1 is the two-token prefix's sum on its own.

The requests are steered by the spec's layers *below* the traced one and nothing at it: the captured stream at the
traced layer is then exactly what its ops receive (``pre``). ``post`` follows from ``pre`` by the hooks' own math
(:func:`engine.projection_trace.post_rows`); the clamp mask likewise.

Cost: ``n (n + 1) / 2`` prompt tokens for ``n`` tokens (one forward each, batched by the engine): about 5k tokens for a
100-token trace. A per-token capture RPC in the worker extension would make it ``n``; until then this uses only the
RPCs every steering engine has. Rows are float64 sums of float32 rows, so a difference carries the float32 rounding of
the earlier positions (well below 1e-3 of the stream's scale in the tests).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vectors import SteeringError, SteeringSpec

__all__ = ["pre_rows", "rows_from_prefix_sums", "spec_below"]

ROUNDS = 3  # a prefix that ran (partly) inside a replayed CUDA graph is missed by the capture op: run it again


def spec_below(spec: SteeringSpec, layer: int) -> SteeringSpec | None:
    """``spec`` with only its layers below ``layer`` (None when none is left): what steers the stream ``layer`` sees."""
    below = {index: ops for index, ops in spec.layers.items() if index < layer and not ops.is_empty()}
    if not below:
        return None
    out = spec.clone()  # keeps the metadata and skip_first_tokens
    out.layers = {index: out.layers[index] for index in below}
    out.validate()
    return out


def rows_from_prefix_sums(sums: list[np.ndarray]) -> np.ndarray:
    """Per-token rows from the capture sums of the prefixes of lengths ``1..n`` (position 0 left out from length 2).

    Args:
        sums: ``sums[i]`` is the ``[hidden]`` float64 sum captured for the prefix of length ``i + 1``.

    Returns:
        ``[n, hidden]`` float64: row 0 = ``sums[0]``, row 1 = ``sums[1]``, row ``t`` = ``sums[t] - sums[t - 1]``.
    """
    stacked = np.stack(sums)  # [n, hidden]
    rows = stacked.copy()
    rows[2:] = stacked[2:] - stacked[1:-1]
    return rows


def pre_rows(backend: Any, ids: list[int], spec: SteeringSpec, layer: int) -> torch.Tensor:
    """The stream at ``layer`` before its ops, one float32 row per token of ``ids`` (``[len(ids), hidden]``).

    ``backend`` is the :class:`~engine.vllm_backend.VLLMSteerModel` (not imported here: it imports this module).

    Raises:
        SteeringError: Capture is off in this engine, or some prefixes kept running inside replayed CUDA graphs.
    """
    if not backend.config.capture:
        raise SteeringError(
            "capture: activation capture is off, and the vLLM backend traces projections through it; build the engine "
            "with VLLMSteeringConfig(capture=True), or trace with the transformers backend"
        )
    below = spec_below(spec, layer)
    if below is not None:
        below = backend.validate_spec(below)
    prefixes = [ids[: k + 1] for k in range(len(ids))]
    expected = [1] + [k for k in range(1, len(ids))]  # tokens captured per prefix: all but position 0 from length 2
    sums: dict[int, np.ndarray] = {}
    todo = list(range(len(ids)))
    for _round in range(ROUNDS):
        got = backend._capture_round(prefixes, todo, [layer], below).get(layer, {})
        for index in todo:
            entry = got.get(index)
            if entry is not None and entry[1] == expected[index]:
                sums[index] = np.frombuffer(entry[0], dtype=np.float64)
        todo = [index for index in todo if index not in sums]
        if not todo:
            break
    if todo:
        raise SteeringError(
            f"capture: {len(todo)} prefixes of the trace ran (partly) inside replayed CUDA graphs, which skip the capture "
            "op; build the engine with enforce_eager=True, or trace with the transformers backend"
        )
    return torch.from_numpy(rows_from_prefix_sums([sums[i] for i in range(len(ids))])).to(torch.float32)
