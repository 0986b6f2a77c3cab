"""The shared steering math against hand computations."""

from __future__ import annotations

import torch

from engine.steering_ops import SlotTables, layer_rows, steer_layer_output, steer_rows, write_slot
from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec

H = 8


def test_add_cap_ablate_by_hand():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, H, generator=g, dtype=torch.float64).float()
    v, c, a = (torch.randn(H, generator=g) for _ in range(3))
    layer = LayerSteeringSpec(v, 2.0, ProjectionCapSpec(c, -0.3, 0.2), AblationSpec(a, 0.25))
    out = steer_layer_output(x, layer)
    # by hand, float64
    x64, v64 = x.double(), v.double()
    ch, ah = c.double() / c.double().norm(), a.double() / a.double().norm()
    y = x64 + 2.0 * v64
    p = y @ ch
    y = y + (p.clamp(-0.3, 0.2) - p)[:, None] * ch
    q = y @ ah
    y = y + (0.25 - 1.0) * q[:, None] * ah
    assert torch.allclose(out.double(), y, atol=1e-5)
    assert torch.allclose(out.double() @ ah, 0.25 * q, atol=1e-5)


def test_each_op_alone():
    x = torch.randn(4, H)
    v = torch.randn(H)
    assert torch.allclose(steer_layer_output(x, LayerSteeringSpec(v, -1.5)), x - 1.5 * v)
    d = torch.zeros(H)
    d[0] = 2.0  # unit direction e0
    capped = steer_layer_output(x, LayerSteeringSpec(projection_cap=ProjectionCapSpec(d, max=0.1)))
    assert torch.allclose(capped[:, 0], x[:, 0].clamp(max=0.1)) and torch.equal(capped[:, 1:], x[:, 1:])
    lower = steer_layer_output(x, LayerSteeringSpec(projection_cap=ProjectionCapSpec(d, min=0.5)))
    assert torch.allclose(lower[:, 0], x[:, 0].clamp(min=0.5))
    ablated = steer_layer_output(x, LayerSteeringSpec(ablation=AblationSpec(d, 0.0)))
    assert torch.all(ablated[:, 0] == 0) and torch.equal(ablated[:, 1:], x[:, 1:])
    amplified = steer_layer_output(x, LayerSteeringSpec(ablation=AblationSpec(d, 3.0)))
    assert torch.allclose(amplified[:, 0], 3 * x[:, 0])


def test_slot_zero_is_exact_noop_and_rows_route():
    tables = SlotTables.empty(3, H)
    v1, v2 = torch.randn(H), torch.randn(H)
    write_slot(tables, 1, layer_rows(LayerSteeringSpec(v1), H))
    write_slot(tables, 3, layer_rows(LayerSteeringSpec(v2, 2.0, ablation=AblationSpec(v1, 0.0)), H))
    x = torch.randn(6, H) * 100
    idx = torch.tensor([0, 1, 3, 0, 2, 1])
    out = steer_rows(x, idx, tables)
    assert torch.equal(out[0], x[0]) and torch.equal(out[3], x[3]) and torch.equal(out[4], x[4])  # bit-exact
    assert torch.allclose(out[1], x[1] + v1) and torch.allclose(out[5], x[5] + v1)
    assert torch.allclose(out[2], steer_layer_output(x[2:3], LayerSteeringSpec(v2, 2.0, ablation=AblationSpec(v1, 0.0)))[0])


def test_write_slot_in_place_and_reset():
    tables = SlotTables.empty(2, H)
    ptrs = {k: t.data_ptr() for k, t in tables.tensors().items()}
    write_slot(
        tables, 2, layer_rows(LayerSteeringSpec(torch.ones(H), projection_cap=ProjectionCapSpec(torch.ones(H), max=1.0)), H)
    )
    write_slot(tables, 2, layer_rows(None, H))
    assert {k: t.data_ptr() for k, t in tables.tensors().items()} == ptrs  # never rebound (CUDA-graph replay)
    fresh = SlotTables.empty(2, H)
    for k, t in tables.tensors().items():
        assert torch.equal(t, fresh.tensors()[k])


def test_equivalent_formulations():
    v = torch.randn(H)
    x = torch.randn(3, H)
    assert torch.allclose(steer_layer_output(x, LayerSteeringSpec(v, 2.5)), steer_layer_output(x, LayerSteeringSpec(2.5 * v)))
    # direction scale does not matter for caps and ablations
    c = torch.randn(H)
    a = steer_layer_output(x, LayerSteeringSpec(ablation=AblationSpec(c, 0.5)))
    b = steer_layer_output(x, LayerSteeringSpec(ablation=AblationSpec(7 * c, 0.5)))
    assert torch.allclose(a, b, atol=1e-6)


def test_op_layout_subsets_compute_only_their_ops():
    from engine.steering_ops import steer_rows as rows

    tables = SlotTables.empty(1, H)
    v, d = torch.randn(H), torch.randn(H)
    layer = LayerSteeringSpec(v, 2.0, ProjectionCapSpec(d, max=0.0), AblationSpec(d, 0.0))
    write_slot(tables, 1, layer_rows(layer, H))
    x = torch.randn(4, H)
    idx = torch.ones(4, dtype=torch.long)
    assert torch.allclose(rows(x, idx, tables, frozenset({"add"})), x + 2.0 * v)
    assert torch.equal(rows(x, idx, tables), steer_layer_output(x, layer)) or torch.allclose(
        rows(x, idx, tables), steer_layer_output(x, layer)
    )


def test_steered_stream_stays_finite_and_bounded():
    """Whatever a slot holds, the hook's output is finite and bounded (a NaN/Inf would reach the KV cache and stay
    there after its request ends); rows of slot 0 within the bound are unchanged bit for bit."""
    from engine.steering_ops import STREAM_BOUND, STREAM_BOUND_FP16, stream_bound

    tables = SlotTables.empty(3, 4)
    tables.add[1] = torch.tensor([float("inf"), float("-inf"), float("nan"), 1.0])
    tables.abl_dir[2] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    tables.abl_scale[2] = 1e30  # amplified past float32's range
    x = torch.tensor([[1.5, -2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1e10, 0.0, 0.0, 1.0], [7.0, 8.0, 9.0, 10.0]])
    out = steer_rows(x, torch.tensor([0, 1, 2, 0]), tables)
    assert torch.equal(out[0], x[0]) and torch.equal(out[3], x[3])
    # inf + (-inf) reach the cap's dot product (inf x 0 = NaN): the whole row is NaN, then 0
    assert out[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    # (1e30 - 1) x 1e10 overflows to inf; inf x 0 = NaN in the other channels
    assert out[2].tolist() == [float(torch.tensor(STREAM_BOUND, dtype=torch.float32)), 0.0, 0.0, 0.0]
    assert stream_bound(torch.float16) == STREAM_BOUND_FP16 and stream_bound(torch.bfloat16) == STREAM_BOUND
    fp16 = steer_rows(x, torch.tensor([0, 1, 2, 0]), tables, bound=stream_bound(torch.float16))
    assert torch.isfinite(fp16.to(torch.float16)).all()


def test_positions_below_a_slots_skip_are_left_unsteered():
    """skip_first_tokens: a token whose position is below its slot's skip comes out unchanged bit for bit; every
    other token of the slot is steered as without the mask, at every op."""
    from engine.steering_ops import unsteered_positions

    g = torch.Generator().manual_seed(3)
    v, c, a = (torch.randn(H, generator=g) for _ in range(3))
    layer = LayerSteeringSpec(v, 2.0, ProjectionCapSpec(c, -0.3, 0.2), AblationSpec(a, 0.25))
    tables = SlotTables.empty(3, H)
    write_slot(tables, 1, layer_rows(layer, H, skip_first_tokens=2))
    write_slot(tables, 2, layer_rows(layer, H))  # the same ops, no position skipped
    assert tables.skip.tolist() == [0.0, 2.0, 0.0, 0.0]
    x = torch.randn(7, H, generator=g) * 10
    slots = torch.tensor([1, 1, 1, 2, 2, 0, 1])
    positions = torch.tensor([0, 1, 2, 0, 1, 0, 7])
    assert unsteered_positions(positions, slots, tables)[:, 0].tolist() == [True, True, False, False, False, False, False]
    masked = steer_rows(x, slots, tables, positions=positions)
    plain = steer_rows(x, slots, tables)
    assert torch.equal(masked[:2], x[:2])  # positions 0 and 1 of slot 1
    assert torch.equal(masked[2:], plain[2:])
    want = steer_layer_output(x[2:5], layer)
    assert torch.equal(masked[2:5], want) and not torch.equal(masked[2], x[2])
    assert torch.equal(masked[5], x[5])  # slot 0


def test_layer_rows_carry_the_skip_and_check_rows_refuses_bad_ones():
    import numpy as np
    import pytest

    from engine.steering_ops import ROW_FIELDS, check_rows
    from vectors import SteeringError

    rows = layer_rows(LayerSteeringSpec(torch.ones(H)), H, skip_first_tokens=3)
    assert float(rows["skip"]) == 3.0 and float(layer_rows(None, H, skip_first_tokens=3)["skip"]) == 0.0
    wire = {name: rows[name].numpy() if rows[name].dim() else float(rows[name]) for name in ROW_FIELDS}
    check_rows(wire, "w")
    for bad in (1.5, -1.0, float("nan"), float("inf"), 1048577.0):
        with pytest.raises(SteeringError) as exc:
            check_rows({**wire, "skip": bad}, "slot 1 layer 0")
        assert str(exc.value) == (
            f"slot 1 layer 0.skip: {bad} is not a whole number in 0..1048576; send the spec's skip_first_tokens"
        )
    check_rows({**wire, "skip": 1048576.0, "add": np.zeros(H, np.float32)}, "w")
