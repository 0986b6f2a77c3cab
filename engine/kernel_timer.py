"""GPU kernel time inside vLLM workers: a measurement that host-side noise cannot reach (benchmarks only).

Wall-clock throughput of a small model on a fast GPU is dominated by Python on the host (scheduling, output
processing), which varies by +-10% from one call to the next. The sum of the durations of the kernels a worker ran
during a call is measured by the GPU itself (CUPTI, through ``torch.profiler``), kernels replayed inside CUDA graphs
included, so comparing it between an engine with steering hooks and one without shows what the hooks cost the GPU
to well under 1%.

This module imports nothing of the steering extension: a plain ``vllm.LLM`` can load it as its
``worker_extension_cls`` and stay a no-steering baseline (no hooks, no runner wrappers).
"""

from __future__ import annotations

from typing import Any


def summarize_kernels(events: Any, top: int = 12) -> dict[str, Any]:
    """Total device time (microseconds), count and the ``top`` most expensive kernels of profiler averages."""
    from torch.autograd import DeviceType

    rows = []
    for event in events:
        if getattr(event, "device_type", None) != DeviceType.CUDA:
            continue
        total = float(getattr(event, "self_device_time_total", 0.0) or getattr(event, "device_time_total", 0.0))
        rows.append((event.key, total, int(event.count)))
    rows.sort(key=lambda r: -r[1])
    return {
        "kernel_us": sum(r[1] for r in rows),
        "launches": sum(r[2] for r in rows),
        "top": [{"name": name[:120], "us": us, "count": count} for name, us, count in rows[:top]],
    }


class KernelTimerExtension:
    """Worker methods (``collective_rpc``) that sum the GPU time of every kernel run between begin and end."""

    def steer_kernel_time_begin(self) -> bool:
        from torch.profiler import ProfilerActivity, profile

        if getattr(self, "_sidesteer_profiler", None) is not None:
            raise RuntimeError("sidesteer: kernel timing already running in this worker")
        prof = profile(activities=[ProfilerActivity.CUDA], record_shapes=False, with_stack=False)
        prof.start()
        self._sidesteer_profiler = prof
        return True

    def steer_kernel_time_end(self, top: int = 12) -> dict[str, Any]:
        import torch

        prof = getattr(self, "_sidesteer_profiler", None)
        if prof is None:
            raise RuntimeError("sidesteer: kernel timing was not started in this worker")
        torch.cuda.synchronize()
        prof.stop()
        self._sidesteer_profiler = None
        return summarize_kernels(prof.key_averages(), top)
