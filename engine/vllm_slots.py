"""Steering state of one vLLM worker: slot tables, the per-token slot index and the forward hooks.

Every steerable decoder layer gets a forward hook and persistent slot tables (row 0 = unsteered) when the model
loads (:mod:`engine.vllm_patches` calls :func:`install` right after the runner's ``load_model``, before the first
forward). Each step, the runner wrappers call :meth:`WorkerSteering.admit` (request bookkeeping) and
:meth:`WorkerSteering.update`, which fills the per-token slot index from each request's
``SamplingParams.extra_args[SLOT_ARG]``, LoRA-style. The hook is branch-free tensor math
(:func:`engine.steering_ops.steer_rows`) over buffers that are only ever updated in place, so compiled graphs and
CUDA-graph replay see every change. Slot contents arrive as float32 bytes (:func:`write_slots`). The names shared
with the driver (``CONFIG_KEY``, the ``extra_args`` keys) live here. Importing this module patches nothing.

Positions (``SteeringSpec.skip_first_tokens``): vLLM's decoder layers take the step's token positions as their first
argument (``layer(positions, hidden_states, residual)`` in Llama, Qwen2/3, Gemma2/3: each token's absolute position
in its own request, chunked prefill and prefix hits included). The hook reads them from there, so the compiled graph
and CUDA-graph replay see each step's positions as an input, like the hidden states. A layer whose ``forward`` does
not start with ``positions`` cannot skip positions; :attr:`WorkerSteering.positions` says so and the driver refuses
specs with ``skip_first_tokens > 0`` on such an engine.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

import numpy as np
import torch

from engine.layers import layer_list_at
from engine.steering_ops import ALL_OPS, NO_OP_FILL, ROW_FIELDS, VECTOR_FIELDS, SlotTables, check_rows, steer_rows, stream_bound
from engine.vllm_capture import active_session

__all__ = [
    "CAPTURE_ARG",
    "CONFIG_KEY",
    "SKIP_FIRST_ARG",
    "SLOT_ARG",
    "WorkerSteering",
    "find_vllm_layers",
    "install",
    "read_slot",
    "steering_state",
    "step_positions",
    "takes_positions",
    "write_slots",
]

logger = logging.getLogger("sidesteer.vllm_slots")

CONFIG_KEY = "sidesteer"  # key in vLLM's additional_config (also keys the AOT compile cache)
SLOT_ARG = "sidesteer_slot"  # SamplingParams.extra_args key: the request's steering slot (0 = none)
CAPTURE_ARG = "sidesteer_capture"  # SamplingParams.extra_args key: activation-capture id of the request
SKIP_FIRST_ARG = "sidesteer_capture_skip_first"  # leave the prompt's first token (attention sink) out of the capture
VLLM_LAYER_PATHS = (
    "model.layers",
    "language_model.model.layers",
    "model.language_model.layers",
    "language_model.layers",
    "transformer.h",
)
OPTIONAL_FIELDS = ("skip",)  # wire fields a payload may leave out (their no-op value)
STAGING_BYTES = 64 << 20  # host staging per slot-write chunk
_STATE_ATTR = "_sidesteer"  # the runner attribute that holds its WorkerSteering


def takes_positions(module: torch.nn.Module) -> bool:
    """True when the decoder layer's ``forward`` takes the token positions as its first argument (vLLM's layers)."""
    try:
        params = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "positions"


def step_positions(args: tuple[Any, ...], num_tokens: int) -> torch.Tensor:
    """``[num_tokens]`` positions from a decoder layer's arguments (the first row of M-RoPE's ``[3, num_tokens]``)."""
    positions = args[0]
    if positions.dim() == 2:  # M-RoPE: (temporal, height, width); text tokens carry their position in each row
        positions = positions[0]
    return positions[:num_tokens]


def find_vllm_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder-layer list of a vLLM model (text models and the common multimodal wrappers)."""
    found = layer_list_at(model, VLLM_LAYER_PATHS)
    if found is None:
        raise RuntimeError(f"sidesteer: cannot find decoder layers in {type(model).__name__}")
    return found


class WorkerSteering:
    """Slot tables, the per-token slot index and the hooks of one worker."""

    def __init__(self, runner: Any, cfg: dict[str, Any]) -> None:
        model = runner.get_model()
        inner = getattr(model, "runnable", model)  # FULL cudagraph wrappers keep the module in .runnable
        self.layers_list = find_vllm_layers(inner)
        self.device = next(inner.parameters()).device
        self.hidden_size = int(cfg["hidden_size"])
        self.max_slots = int(cfg["max_slots"])
        self.capture = bool(cfg.get("capture", True))
        self.ops = frozenset(cfg.get("ops", ALL_OPS))  # layout: traced once, never changed per request
        max_tokens = int(runner.scheduler_config.max_num_batched_tokens) + 64
        self.max_tokens = max_tokens
        # Per-token slot row; the hook reads slot_index[:num_tokens]. Updated in place only (CUDA-graph replay).
        self.slot_index = torch.zeros(max_tokens, dtype=torch.long, device=self.device)
        self._host = np.zeros(max_tokens, dtype=np.int64)
        self._pinned: list[torch.Tensor] = []
        self._events: list[Any] = []
        if self.device.type == "cuda":
            self._pinned = [torch.zeros(max_tokens, dtype=torch.long).pin_memory() for _ in range(4)]
            self._events = [None] * 4
        self._ring = 0
        self._index_dirty = False  # slot_index on the device holds a non-zero row somewhere
        self.n_steered = 0  # live requests with a non-zero slot (0: every step's index is all zeros)
        self.update_s = 0.0  # host time spent in update(), and its calls (diagnostics)
        self.update_calls = 0
        self.req_slots: dict[str, int] = {}
        self.req_capture: dict[str, int] = {}
        self._last_ids: list[str] = []  # request order of the last steered step and its slots (decode steps repeat it)
        self._last_slots = np.zeros(0, dtype=np.int64)
        self._last_counts: np.ndarray | None = None  # tokens per request of the index on the device (None: unknown)
        self._admitted: Any = None  # the scheduler output admit() last handled, and what it found
        self._first_here: set[str] = set()
        self._new_here = False
        self.tables: dict[int, SlotTables] = {}
        self.sinks: dict[int, torch.Tensor] = {}
        self.handles = []
        self.positions = True  # every hooked layer reads its token positions (skip_first_tokens works)
        self._reads_positions: dict[int, bool] = {}
        for layer in cfg["layers"]:
            module = self.layers_list[layer]
            if type(module).__name__ == "PPMissingLayer":  # another pipeline rank owns this layer
                continue
            self._reads_positions[layer] = takes_positions(module)
            self.positions = self.positions and self._reads_positions[layer]
            self.tables[layer] = SlotTables.empty(self.max_slots, self.hidden_size, self.device)
            self.sinks[layer] = torch.zeros(1, device=self.device)
            self.handles.append(module.register_forward_hook(self._make_hook(layer)))
        logger.info("sidesteer: hooked %d layers, %d slots, runner %s", len(self.tables), self.max_slots, type(runner).__name__)

    def _make_hook(self, layer: int):
        tables = self.tables[layer]
        slot_index = self.slot_index
        sink = self.sinks[layer]
        capture = self.capture
        ops = self.ops
        reads_positions = self._reads_positions[layer]  # fixed per layer class: a trace-time constant

        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            if isinstance(output, tuple) and len(output) == 2 and output[1] is not None:
                hidden, residual = output  # vLLM layers: the residual stream is hidden + residual
                stream = hidden.to(torch.float32) + residual.to(torch.float32)  # [num_tokens, hidden]
            else:
                hidden, residual = (output[0] if isinstance(output, tuple) else output), None
                stream = hidden.to(torch.float32)
            n = stream.shape[0]
            positions = step_positions(args, n) if reads_positions else None
            steered = steer_rows(stream, slot_index[:n], tables, ops, stream_bound(hidden.dtype), positions)
            if capture:
                torch.ops.sidesteer.capture(steered, sink, layer)
            out = steered.to(hidden.dtype)
            if residual is None:
                return (out, *output[1:]) if isinstance(output, tuple) else out
            # The next layer's fused add+norm sums the two; returning (stream, 0) makes that sum the steered
            # stream exactly. Never write into the inputs: on GPU the fused norm kernel mutates its arguments.
            return out, torch.zeros_like(residual)

        return hook

    # -- per step --------------------------------------------------------------------------------------------
    def admit(self, scheduler_output: Any) -> None:
        """Learn the slots of newly scheduled requests and forget finished ones, for every step the runner gets.

        The runners' ``execute_model`` calls this first, *before* the early return of a step that schedules no
        tokens: vLLM announces the requests that finished last in such an empty step, so bookkeeping that ran only
        in the input preparation kept them as live steered requests forever (every later step then took the steered
        path, and the table grew by one entry per request). Idempotent for one scheduler output.
        """
        if self._admitted is scheduler_output:
            return
        start = time.perf_counter()
        first_here: set[str] = set()  # capture requests whose position-0 token is in this step
        new_reqs = getattr(scheduler_output, "scheduled_new_reqs", ()) or ()
        for new in new_reqs:
            extra = getattr(getattr(new, "sampling_params", None), "extra_args", None) or {}
            slot = int(extra.get(SLOT_ARG, 0))
            self.n_steered += (slot != 0) - (self.req_slots.get(new.req_id, 0) != 0)
            self.req_slots[new.req_id] = slot
            if CAPTURE_ARG in extra:
                self.req_capture[new.req_id] = int(extra[CAPTURE_ARG])
                if extra.get(SKIP_FIRST_ARG) and int(getattr(new, "num_computed_tokens", 0) or 0) == 0:
                    first_here.add(new.req_id)
        for rid in getattr(scheduler_output, "finished_req_ids", ()) or ():
            self.n_steered -= self.req_slots.pop(rid, 0) != 0
            self.req_capture.pop(rid, None)
        self._admitted, self._first_here, self._new_here = scheduler_output, first_here, bool(new_reqs)
        self.update_s += time.perf_counter() - start

    def update(self, scheduler_output: Any, req_ids: list[str], num_scheduled: np.ndarray) -> None:
        """Fill the per-token slot index for one forward (request order = the runner's token order).

        Idempotent for one scheduler output: calling it twice for the same step gives the same index. Its host time
        (with ``admit``'s) adds up in the public counters ``update_s`` / ``update_calls`` (sidesteer's own per-step
        cost; the benchmark's step timer reads them through :func:`steering_state`).
        """
        self.admit(scheduler_output)
        start = time.perf_counter()
        try:
            self._update(req_ids, num_scheduled)
        finally:
            self.update_s += time.perf_counter() - start
            self.update_calls += 1

    def _update(self, req_ids: list[str], num_scheduled: np.ndarray) -> None:
        session = active_session()
        if self.n_steered == 0 and session is None:
            # Nothing steered anywhere: the index must be all zeros, and it already is unless a steered step ran
            # last. Skipping the per-request work keeps unsteered traffic at plain-vLLM host cost.
            if self._index_dirty:
                self._host[:] = 0
                self._upload()
                self._index_dirty = False
            self._last_ids, self._last_counts = [], None
            return
        counts = np.asarray(num_scheduled[: len(req_ids)], dtype=np.int64)
        if not self._new_here and req_ids == self._last_ids:
            slots = self._last_slots  # same requests in the same order, none (re)announced: same slots
            if session is None and self._last_counts is not None and np.array_equal(counts, self._last_counts):
                return  # steady decode: the device already holds exactly this index (updated in place only)
        else:
            slots = np.fromiter((self.req_slots.get(r, 0) for r in req_ids), dtype=np.int64, count=len(req_ids))
            self._last_ids, self._last_slots = list(req_ids), slots
        total = int(counts.sum())
        host = self._host
        host[:total] = np.repeat(slots, counts)
        host[total:] = 0
        if session is not None:
            cids = np.fromiter((self.req_capture.get(r, -1) for r in req_ids), dtype=np.int64, count=len(req_ids))
            token_ids = np.repeat(cids, counts)
            starts = np.cumsum(counts) - counts
            for i, rid in enumerate(req_ids):
                if rid in self._first_here and counts[i] > 0:
                    token_ids[starts[i]] = -1  # position 0 of the prompt
            session.token_ids = token_ids
        self._upload()
        self._last_counts = counts.copy()
        self._index_dirty = bool(slots.any())

    def _upload(self) -> None:
        """Copy the host slot index to the device buffer in place (asynchronously on CUDA)."""
        host = self._host
        if self.device.type == "cuda":
            # Ring of pinned buffers: never overwrite host memory an earlier async copy may still be reading.
            i = self._ring = (self._ring + 1) % len(self._pinned)
            if self._events[i] is not None:
                self._events[i].synchronize()
            self._pinned[i].numpy()[:] = host
            self.slot_index.copy_(self._pinned[i], non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._events[i] = event
        else:
            self.slot_index.copy_(torch.from_numpy(host))


def install(runner: Any) -> WorkerSteering | None:
    """Give ``runner`` its steering state when its config asks for one (``additional_config[CONFIG_KEY]``); once."""
    cfg = (getattr(runner.vllm_config, "additional_config", None) or {}).get(CONFIG_KEY)
    if cfg and steering_state(runner) is None:
        setattr(runner, _STATE_ATTR, WorkerSteering(runner, cfg))
    return steering_state(runner)


def steering_state(runner: Any) -> WorkerSteering | None:
    """The steering state of a model runner (None: an engine without steering, or before ``load_model``).

    The one public way into a worker's state: the extension's RPCs use it, and so does the benchmark's worker
    extension, whose step timer reads the state's public counters ``update_s`` / ``update_calls`` (the timers
    themselves live in ``bench/``, never in the production extension).
    """
    return getattr(runner, _STATE_ATTR, None)


def _bytes_to_rows(payload: dict[str, Any], hidden: int, where: str) -> dict[str, np.ndarray | float]:
    """One layer's wire-format row: float32 arrays for the vector fields, floats for the scalars.

    Checked like the driver checks it (:func:`engine.steering_ops.check_rows`): a payload that bypassed the driver
    must not put NaN, Inf or out-of-limit values into tables every request reads. ``skip`` may be left out (0: every
    position steered, the meaning of a payload from before the field); the driver always sends it.
    """
    rows: dict[str, np.ndarray | float] = {}
    if not isinstance(payload, dict) or not set(ROW_FIELDS) - set(OPTIONAL_FIELDS) <= set(payload) <= set(ROW_FIELDS):
        raise ValueError(
            f"sidesteer: {where} must hold exactly the fields {list(ROW_FIELDS)} ({', '.join(OPTIONAL_FIELDS)} may be left out)"
        )
    for name in ROW_FIELDS:
        value = payload.get(name, NO_OP_FILL[name])
        if isinstance(value, (bytes, bytearray, memoryview)):
            arr = np.frombuffer(value, dtype="<f4")
            if name not in VECTOR_FIELDS or arr.size != hidden:
                raise ValueError(
                    f"sidesteer: {where}.{name} has {arr.size} floats, expected {hidden if name in VECTOR_FIELDS else 'a number'}"
                )
            rows[name] = arr
        else:
            if name in VECTOR_FIELDS or isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"sidesteer: {where}.{name} must be {'float32 bytes' if name in VECTOR_FIELDS else 'a number'}")
            rows[name] = float(value)
    check_rows(rows, where)
    return rows


def write_slots(state: WorkerSteering, writes: list[Any]) -> None:
    """Write several slots in place: ``[(slot, {layer: row payload})]``; the given layers get their rows, every other
    hooked layer the no-op row. Every write is parsed and checked before any table changes, so a bad one leaves the
    tables untouched. On CUDA it returns once the rows are in place (before the requests using them run)."""
    by_slot: dict[int, dict[int, dict[str, Any]]] = {}  # one write per slot (the last wins): index_copy_ needs unique rows
    for slot, layers in writes:
        if isinstance(slot, bool) or not isinstance(slot, int) or not 1 <= slot <= state.max_slots:
            raise ValueError(f"sidesteer: slot {slot!r} out of range 1..{state.max_slots}")
        parsed = {
            int(layer): _bytes_to_rows(rows, state.hidden_size, f"slot {slot} layer {layer}") for layer, rows in layers.items()
        }
        unknown = set(parsed) - set(state.tables)
        if unknown:
            raise ValueError(f"sidesteer: layers {sorted(unknown)} are not hooked in this worker")
        by_slot[int(slot)] = parsed
    _write_rows(state, by_slot)
    if state.device.type == "cuda":
        torch.cuda.synchronize(state.device)


def read_slot(state: WorkerSteering, slot: int) -> dict[int, dict[str, list[float] | float]]:
    """The non-empty layer rows of slot ``slot`` (to verify what the driver wrote)."""
    out: dict[int, dict[str, list[float] | float]] = {}
    for layer, tables in state.tables.items():
        row = {name: getattr(tables, name)[int(slot)].cpu() for name in ROW_FIELDS}
        if any(bool(row[n].abs().sum() > 0) for n in ("add", "cap_dir", "abl_dir")):
            out[layer] = {n: (row[n].tolist() if row[n].dim() else float(row[n])) for n in ROW_FIELDS}
    return out


def _write_rows(state: WorkerSteering, by_slot: dict[int, dict[int, dict[str, Any]]]) -> None:
    """Write whole slots (every hooked layer: its row, or the no-op row) with one host-to-device copy per field and
    chunk and one ``index_copy_`` per layer and field, whatever the number of slots (a 51-scale sweep used to cost
    51 x layers x 6 tiny copies, each a launch, inside the engine's step loop)."""
    layers = sorted(state.tables)
    position = {layer: li for li, layer in enumerate(layers)}
    hidden = state.hidden_size
    slots = sorted(by_slot)
    chunk = max(1, STAGING_BYTES // (len(layers) * hidden * 4 * len(VECTOR_FIELDS)))
    with torch.no_grad():
        for start in range(0, len(slots), chunk):
            part = slots[start : start + chunk]
            host = {
                name: np.full(
                    (len(layers), len(part), hidden) if name in VECTOR_FIELDS else (len(layers), len(part)),
                    NO_OP_FILL[name],
                    dtype=np.float32,
                )
                for name in ROW_FIELDS
            }
            for i, slot in enumerate(part):
                for layer, rows in by_slot[slot].items():  # layers a slot leaves out keep the no-op fill
                    for name in ROW_FIELDS:
                        host[name][position[layer], i] = rows[name]
            index = torch.tensor(part, dtype=torch.long, device=state.device)
            for name in ROW_FIELDS:
                staged = torch.from_numpy(host[name]).to(state.device)
                for li, layer in enumerate(layers):
                    getattr(state.tables[layer], name).index_copy_(0, index, staged[li])
