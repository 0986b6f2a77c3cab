"""The steered engine's worker extension in the benchmark: steering plus the timing RPCs.

The benchmark names this class (:data:`bench.engines.STEERED`) in
``VLLMSteeringConfig(engine_kwargs={"worker_extension_cls": ...})``; the plain engine gets
:class:`bench.kernel_timer.KernelTimerExtension` alone. vLLM imports this module only inside the steered engine's
workers (the driver names the class by a string and never imports it): importing :mod:`engine.vllm_extension`
applies sidesteer's runner patches there, exactly as the production extension does.
"""

from __future__ import annotations

from bench.kernel_timer import KernelTimerExtension
from engine.vllm_extension import SteeringWorkerExtension
from engine.vllm_slots import steering_state

__all__ = ["BenchSteeringExtension"]


class BenchSteeringExtension(SteeringWorkerExtension, KernelTimerExtension):
    """:class:`~engine.vllm_extension.SteeringWorkerExtension` with the kernel timer, step timer and host profiler."""

    def _steer_update_counters(self) -> tuple[float, int] | None:
        """Host time and calls of the steering state's per-step ``admit`` + ``update`` (one update per step that runs
        the model), from its public counters."""
        state = steering_state(self.model_runner)  # type: ignore[attr-defined]
        return None if state is None else (state.update_s, state.update_calls)
