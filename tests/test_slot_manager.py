"""The vLLM driver's slot bookkeeping (no engine needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

from engine.vllm_backend import SlotManager  # noqa: E402
from vectors import SteeringError, SteeringSpec  # noqa: E402


def test_identical_specs_share_and_busy_slots_are_never_reused():
    m = SlotManager(2)
    assert m.acquire("a") == (1, True)
    assert m.acquire("a") == (1, False)  # same content, same slot, no upload
    assert m.acquire("b") == (2, True)
    assert m.acquire("c") is None  # both in use: the request waits
    m.release(2)
    assert m.acquire("c") == (2, True)  # idle slot reused (LRU), "b" must be uploaded again later
    assert "b" not in m.by_key and m.in_use() == 2


def test_forgotten_contents_free_the_slot_exactly_once_in_either_order():
    m = SlotManager(2)
    slot, _ = m.acquire("a")
    m.forget("a")  # upload failed while a request held the slot
    assert slot not in m.free
    m.release(slot)
    assert m.free.count(slot) == 1
    slot, _ = m.acquire("b")
    m.release(slot)
    m.forget("b")
    assert m.free.count(slot) == 1 and m.acquire("b")[1] is True


# -- skip_first_tokens in the worker: the hook reads each decoder layer's positions argument (no engine needed) ------
class _PositionsLayer(torch.nn.Module):
    """A vLLM-style decoder layer: ``forward(positions, hidden_states, residual) -> (hidden_states, residual)``."""

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor):
        return hidden_states.clone(), residual.clone()


class _NoPositionsLayer(torch.nn.Module):
    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor):
        return hidden_states.clone(), residual.clone()


def _worker(layer_cls: type, hidden: int = 8):
    from types import SimpleNamespace

    from engine.vllm_slots import WorkerSteering

    class Inner(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList([layer_cls(), layer_cls()])
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # the state reads the device from a parameter

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = Inner()

    model = Model()
    runner = SimpleNamespace(get_model=lambda: model, scheduler_config=SimpleNamespace(max_num_batched_tokens=64))
    state = WorkerSteering(runner, {"hidden_size": hidden, "max_slots": 4, "layers": [0, 1], "capture": False})
    return state, model.model.layers


def _schedule(state, new: dict[str, int], batch: list[tuple[str, int]]) -> None:
    from types import SimpleNamespace

    from engine.vllm_slots import SLOT_ARG

    reqs = [
        SimpleNamespace(req_id=rid, sampling_params=SimpleNamespace(extra_args={SLOT_ARG: slot}), num_computed_tokens=0)
        for rid, slot in new.items()
    ]
    out = SimpleNamespace(scheduled_new_reqs=reqs, finished_req_ids=set())
    state.update(out, [rid for rid, _ in batch], np.array([n for _, n in batch], dtype=np.int64))


def test_worker_hook_leaves_positions_below_the_slots_skip_unsteered():
    from engine.vllm_backend import spec_payload
    from engine.vllm_slots import write_slots

    g = torch.Generator().manual_seed(0)
    add_a, add_b = torch.randn(8, generator=g), torch.randn(8, generator=g)
    spec_a = SteeringSpec.single(0, add_a, 2.0, skip_first_tokens=2)
    spec_b = SteeringSpec.single(0, add_b, 1.0)  # the same layer, every position steered
    state, layers = _worker(_PositionsLayer)
    assert state.positions
    write_slots(state, [(1, spec_payload(spec_a, 8)), (2, spec_payload(spec_b, 8))])
    assert state.tables[0].skip.tolist() == [0.0, 2.0, 0.0, 0.0, 0.0] and state.tables[1].skip.tolist() == [0.0] * 5
    # prefill: request a (3 tokens, positions 0-2), then b (2 tokens, positions 0-1); a chunk of a later prefill of
    # request c (slot 1, positions 1-2: its position 0 ran in an earlier step)
    _schedule(state, {"a": 1, "b": 2, "c": 1}, [("a", 3), ("b", 2), ("c", 2)])
    positions = torch.tensor([0, 1, 2, 0, 1, 1, 2])
    hidden, residual = torch.randn(7, 8, generator=g), torch.randn(7, 8, generator=g)
    out, zero = layers[0](positions, hidden, residual)
    stream = hidden + residual
    want = stream.clone()
    want[[2, 6]] += 2.0 * add_a  # request a and c at positions >= 2
    want[3:5] += add_b  # request b at every position
    assert torch.equal(out, want) and not zero.any()
    # M-RoPE layers pass positions as [3, num_tokens]: the first row counts
    out, _ = layers[0](positions.expand(3, 7), hidden, residual)
    assert torch.equal(out, want)
    # layer 1 holds no ops of either spec: unchanged at every position
    assert torch.equal(layers[1](positions, hidden, residual)[0], stream)


def test_worker_without_positions_reports_it_and_checks_the_skip_it_receives():
    from engine.vllm_backend import spec_payload
    from engine.vllm_slots import write_slots

    state, _ = _worker(_NoPositionsLayer)
    assert not state.positions  # the driver refuses skip_first_tokens > 0 on such an engine
    state, _ = _worker(_PositionsLayer)
    payload = spec_payload(SteeringSpec.single(0, torch.ones(8), skip_first_tokens=1), 8)
    assert payload[0]["skip"] == 1.0
    with pytest.raises(ValueError) as exc:
        write_slots(state, [(1, {0: {**payload[0], "skip": 0.5}})])
    assert str(exc.value) == "slot 1 layer 0.skip: 0.5 is not a whole number in 0..1048576; send the spec's skip_first_tokens"
    assert not state.tables[0].add.any()  # a refused write changes nothing
    old = {name: value for name, value in payload[0].items() if name != "skip"}  # a payload from before the field
    write_slots(state, [(1, {0: old})])
    assert state.tables[0].skip.tolist() == [0.0] * 5 and state.tables[0].add[1].equal(torch.ones(8))


def test_driver_refuses_skip_where_the_workers_see_no_positions():
    from engine import VLLMSteerModel

    model = VLLMSteerModel(start=False)
    spec = SteeringSpec.single(8, torch.ones(model.hidden_size), skip_first_tokens=1)
    model.worker_info = {"positions": False}
    with pytest.raises(SteeringError) as exc:
        model.validate_spec(spec)
    assert str(exc.value) == (
        "skip_first_tokens: 1 needs token positions, which this model's decoder layers do not pass to the steering hooks "
        "on vLLM; use skip_first_tokens=0 or the transformers backend"
    )
    model.worker_info = {"positions": True}
    assert model.validate_spec(spec) is spec
    assert model.validate_spec(SteeringSpec.single(8, torch.ones(model.hidden_size))) is not None
