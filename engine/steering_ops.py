"""THE steering math: one implementation, used by the transformers hooks and the vLLM worker hooks alike.

Everything here is branch-free tensor math over the full residual stream in float32, driven by *slot tables*: per
layer, row ``s`` of each table holds the ops of steering slot ``s`` and row 0 is "no steering" (add 0, cap
direction 0 with bounds -inf/+inf, ablation direction 0 with scale 1), which changes nothing bit-for-bit. A
per-token slot index picks the row for each token, so one forward can steer every request differently. "Off" is
data (a zero row), never a Python ``if``: vLLM traces hooks once and freezes branches.

Order inside a layer (see :mod:`vectors.convention`): add ``scale * vector``, then clamp the projection onto the
cap direction into ``[min, max]``, then multiply the component along the ablation direction by ``scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vectors import OP_ORDER, LayerSteeringSpec

NO_SLOT = 0  # row 0 of every table: no steering
ROW_FIELDS = ("add", "cap_dir", "cap_min", "cap_max", "abl_dir", "abl_scale")
VECTOR_FIELDS = ("add", "cap_dir", "abl_dir")  # [rows, hidden] tables; the others are [rows]
# The "no steering" value of every field (row 0, and every layer a spec leaves out): changes nothing bit-for-bit.
NO_OP_FILL = {"add": 0.0, "cap_dir": 0.0, "cap_min": float("-inf"), "cap_max": float("inf"), "abl_dir": 0.0, "abl_scale": 1.0}


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
    """

    add: torch.Tensor
    cap_dir: torch.Tensor
    cap_min: torch.Tensor
    cap_max: torch.Tensor
    abl_dir: torch.Tensor
    abl_scale: torch.Tensor

    @classmethod
    def empty(cls, num_slots: int, hidden_size: int, device: torch.device | str = "cpu") -> SlotTables:
        """Tables with ``num_slots`` steerable rows plus row 0, all set to "no steering"."""
        rows = num_slots + 1
        return cls(
            **{
                name: torch.full((rows, hidden_size) if name in VECTOR_FIELDS else (rows,), NO_OP_FILL[name], dtype=torch.float32, device=device)
                for name in ROW_FIELDS
            }
        )

    @property
    def num_rows(self) -> int:
        return int(self.add.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.add.shape[1])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The six tables by name (the same objects: writing into them updates the tables)."""
        return {name: getattr(self, name) for name in ROW_FIELDS}


def layer_rows(layer: LayerSteeringSpec | None, hidden_size: int) -> dict[str, torch.Tensor]:
    """The table row values (float32, CPU) for one layer's ops; ``None`` gives the "no steering" row."""
    rows = {
        name: torch.full((hidden_size,) if name in VECTOR_FIELDS else (), NO_OP_FILL[name], dtype=torch.float32)
        for name in ROW_FIELDS
    }
    if layer is None:
        return rows
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


def steer_rows(x: torch.Tensor, slot_index: torch.Tensor, tables: SlotTables, ops: frozenset[str] = ALL_OPS) -> torch.Tensor:
    """Apply each token's slot ops to the residual stream.

    Args:
        x: ``[num_tokens, hidden]`` residual stream, float32.
        slot_index: ``[num_tokens]`` int64 slot row per token (0 = unsteered).
        tables: The layer's slot tables.
        ops: Which ops this engine computes at all. A *layout* choice fixed when the hooks are installed (vLLM traces
            it once); per-request "off" is always data (row 0), never this argument. Leaving out the cap and the
            ablation drops their two reductions per layer.

    Returns:
        ``[num_tokens, hidden]`` float32 steered stream. Rows with slot 0 equal ``x`` exactly.
    """
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
    return x


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
    return steer_rows(flat, index, tables).to(dtype).reshape(shape)
