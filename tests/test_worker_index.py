"""The worker's per-token slot index, driven by fake scheduler outputs (no vLLM engine needed)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.kernel_timer import summarize_kernels
from engine.vllm_worker import SLOT_ARG, WorkerSteering


class _Layers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(3)])


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = _Layers()


def _state() -> WorkerSteering:
    runner = SimpleNamespace(get_model=_Model, scheduler_config=SimpleNamespace(max_num_batched_tokens=64))
    state = WorkerSteering(runner, {"hidden_size": 8, "max_slots": 4, "layers": [0, 2], "capture": False})
    state.uploads = 0
    real = state._upload

    def counting() -> None:
        state.uploads += 1
        real()

    state._upload = counting
    return state


def _new(rid: str, slot: int) -> SimpleNamespace:
    return SimpleNamespace(req_id=rid, sampling_params=SimpleNamespace(extra_args={SLOT_ARG: slot} if slot else None), num_computed_tokens=0)


def _step(state: WorkerSteering, new=(), finished=(), batch=()) -> np.ndarray:
    out = SimpleNamespace(scheduled_new_reqs=list(new), finished_req_ids=set(finished))
    ids = [rid for rid, _ in batch]
    state.update(out, ids, np.array([n for _, n in batch], dtype=np.int64))
    return state.slot_index.numpy()


def test_index_follows_requests_and_unsteered_steps_skip_the_upload():
    state = _state()
    index = _step(state, new=[_new("a", 0), _new("b", 0)], batch=[("a", 3), ("b", 2)])
    assert state.uploads == 0 and state.n_steered == 0 and not index.any()

    index = _step(state, new=[_new("c", 3)], batch=[("a", 1), ("c", 4), ("b", 1)])
    assert state.uploads == 1 and state.n_steered == 1
    assert index[:8].tolist() == [0, 3, 3, 3, 3, 0, 0, 0] and not index[8:].any()

    index = _step(state, batch=[("a", 1), ("b", 1)])  # c is waiting (not scheduled): its slot stays known
    assert state.uploads == 2 and not index.any() and state.n_steered == 1

    index = _step(state, finished=["c"], batch=[("a", 1), ("b", 1)])
    assert state.n_steered == 0 and not index.any()
    uploads = state.uploads
    _step(state, batch=[("a", 1), ("b", 1)])
    _step(state, finished=["a", "b"])
    assert state.uploads == uploads  # all-zero index already on the device: nothing to copy


def test_dirty_index_is_cleared_once_when_the_last_steered_request_finishes():
    state = _state()
    index = _step(state, new=[_new("s", 2)], batch=[("s", 5)])
    assert index[:5].tolist() == [2] * 5
    index = _step(state, new=[_new("u", 0)], finished=["s"], batch=[("u", 5)])
    assert state.n_steered == 0 and not index.any() and state.uploads == 2
    _step(state, batch=[("u", 1)])
    assert state.uploads == 2


def test_a_request_announced_twice_is_counted_once():
    state = _state()
    _step(state, new=[_new("r", 1)], batch=[("r", 2)])
    _step(state, new=[_new("r", 1)], batch=[("r", 2)])  # e.g. resumed after preemption as a new request
    assert state.n_steered == 1
    _step(state, new=[_new("r", 0)], batch=[("r", 1)])
    assert state.n_steered == 0
    _step(state, finished=["r"])
    assert state.n_steered == 0 and state.req_slots == {}


def test_summarize_kernels_counts_only_device_events():
    from torch.autograd import DeviceType

    def ev(key: str, us: float, count: int, device: DeviceType) -> SimpleNamespace:
        return SimpleNamespace(key=key, self_device_time_total=us, count=count, device_type=device)

    events = [ev("gemm", 300.0, 10, DeviceType.CUDA), ev("cudaLaunchKernel", 999.0, 50, DeviceType.CPU), ev("triton_add", 20.5, 4, DeviceType.CUDA)]
    out = summarize_kernels(events, top=1)
    assert out["kernel_us"] == pytest.approx(320.5)
    assert out["launches"] == 14
    assert out["top"] == [{"name": "gemm", "us": 300.0, "count": 10}]
