"""Activation capture inside vLLM's workers: mean layer outputs of the requests that carry a capture id.

The steering hook calls ``torch.ops.sidesteer.capture`` on every hooked layer's steered stream when the engine was
built with ``capture=True``. The op is opaque to the compiler (a custom op with a fake implementation), so the
compiled graph calls back into Python on every step that does not replay a CUDA graph; outside a capture session it
returns at once. A session (``steer_capture_begin`` .. ``steer_capture_end``) sums, per layer and capture id, the rows
of the scheduled tokens whose request carries that id (the per-token ids come from the slot index update,
:mod:`engine.vllm_slots`). Importing this module registers the op, nothing else.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["CaptureSession", "active_session", "begin_capture", "capture_op", "end_capture"]


class CaptureSession:
    """Per-layer, per-capture-id sums and token counts of one capture (float64, on the host)."""

    def __init__(self, layers: list[int]) -> None:
        self.layers = set(layers)
        self.sums: dict[int, dict[int, np.ndarray]] = {layer: {} for layer in layers}
        self.counts: dict[int, dict[int, int]] = {layer: {} for layer in layers}
        self.token_ids = np.full(0, -1, dtype=np.int64)  # capture id per scheduled token (-1 = not captured)

    def accumulate(self, layer: int, x: torch.Tensor) -> None:
        """Add the rows of ``x`` (``[num_tokens, hidden]``) to the sums of their tokens' capture ids."""
        if layer not in self.layers:
            return
        ids = self.token_ids
        n = min(len(ids), x.shape[0])
        if n == 0 or not (ids[:n] >= 0).any():
            return
        rows = x[:n].detach().to("cpu", torch.float64).numpy()
        for cid in np.unique(ids[:n][ids[:n] >= 0]):
            mask = ids[:n] == cid
            total = rows[mask].sum(axis=0)
            cid = int(cid)
            self.sums[layer][cid] = self.sums[layer].get(cid, 0) + total
            self.counts[layer][cid] = self.counts[layer].get(cid, 0) + int(mask.sum())


_ACTIVE: CaptureSession | None = None  # one session per worker process at a time


def active_session() -> CaptureSession | None:
    """The running capture session of this worker, or None."""
    return _ACTIVE


def begin_capture(layers: list[int]) -> None:
    """Start a session over ``layers`` (replaces a running one)."""
    global _ACTIVE
    _ACTIVE = CaptureSession([int(x) for x in layers])


def end_capture() -> dict[int, dict[int, tuple[bytes, int]]]:
    """Stop the session; per layer and capture id: (float64 sum bytes, token count). Empty when none ran."""
    global _ACTIVE
    session, _ACTIVE = _ACTIVE, None
    if session is None:
        return {}
    return {
        layer: {cid: (np.asarray(total, dtype=np.float64).tobytes(), session.counts[layer][cid]) for cid, total in per.items()}
        for layer, per in session.sums.items()
    }


@torch.library.custom_op("sidesteer::capture", mutates_args=("sink",))
def capture_op(x: torch.Tensor, sink: torch.Tensor, layer: int) -> None:
    """Accumulate rows of ``x`` for requests being captured (runs in Python, outside the compiled graph)."""
    session = _ACTIVE
    if session is not None:
        session.accumulate(layer, x)


@capture_op.register_fake
def _capture_fake(x: torch.Tensor, sink: torch.Tensor, layer: int) -> None:
    return None
