"""The worker's per-token slot index, driven by fake scheduler outputs (no vLLM engine needed)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.vllm_slots import SLOT_ARG, WorkerSteering


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
    return SimpleNamespace(
        req_id=rid, sampling_params=SimpleNamespace(extra_args={SLOT_ARG: slot} if slot else None), num_computed_tokens=0
    )


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


def _payload(hidden: int, seed: int, cap: bool = True) -> dict[str, object]:
    g = np.random.default_rng(seed)
    vec = lambda: g.standard_normal(hidden).astype("<f4").tobytes()  # noqa: E731

    def unit() -> bytes:
        v = g.standard_normal(hidden)
        return (v / np.linalg.norm(v)).astype("<f4").tobytes()

    return {
        "add": vec(),
        "cap_dir": unit() if cap else np.zeros(hidden, "<f4").tobytes(),
        "cap_min": -1.5 if cap else float("-inf"),
        "cap_max": 2.0 if cap else float("inf"),
        "abl_dir": unit(),
        "abl_scale": 0.25,
    }


def _extension(state: WorkerSteering):
    from engine.vllm_extension import SteeringWorkerExtension

    ext = SteeringWorkerExtension()
    ext.model_runner = SimpleNamespace(_sidesteer=state)
    return ext


@pytest.mark.parametrize("staging_bytes", [64 << 20, 1])  # one chunk, and one slot per chunk
def test_write_slots_fills_every_layer_and_leaves_other_slots_alone(monkeypatch, staging_bytes):
    import engine.vllm_slots as slots

    monkeypatch.setattr(slots, "STAGING_BYTES", staging_bytes)
    state = _state()
    ext = _extension(state)
    before = {layer: {k: v.clone() for k, v in t.tensors().items()} for layer, t in state.tables.items()}
    writes = [(2, {0: _payload(8, 1)}), (4, {0: _payload(8, 2), 2: _payload(8, 3, cap=False)}), (1, {2: _payload(8, 4)})]
    assert ext.steer_write_slots(writes)
    for slot, layers in writes:
        for layer in (0, 2):
            table = state.tables[layer]
            want = layers.get(layer)
            for name in ("add", "cap_dir", "abl_dir"):
                got = getattr(table, name)[slot].numpy()
                expect = np.frombuffer(want[name], "<f4") if want else np.zeros(8, np.float32)
                np.testing.assert_array_equal(got, expect)
            for name, none in (("cap_min", float("-inf")), ("cap_max", float("inf")), ("abl_scale", 1.0)):
                assert float(getattr(table, name)[slot]) == (want[name] if want else none)
    for layer, t in state.tables.items():  # row 0 and slot 3 untouched
        for name, tensor in t.tensors().items():
            assert torch.equal(tensor[0], before[layer][name][0]) and torch.equal(tensor[3], before[layer][name][3])
    assert ext.steer_read_slot(1).keys() == {2}


def test_bad_slot_writes_change_nothing():
    state = _state()
    ext = _extension(state)
    ext.steer_write_slots([(1, {0: _payload(8, 1)})])
    before = {layer: {k: v.clone() for k, v in t.tensors().items()} for layer, t in state.tables.items()}
    short = _payload(8, 2)
    short["add"] = np.zeros(7, "<f4").tobytes()
    huge = (np.ones(8) * 1e37).astype("<f4").tobytes()  # every element finite, the norm far past the limit
    cases = {
        "slot 1 layer 0.add has 7 floats, expected 8": [(2, {0: _payload(8, 3)}), (1, {0: short})],
        "slot 5 out of range 1..4": [(2, {0: _payload(8, 3)}), (5, {0: _payload(8, 3)})],
        r"layers \[1\] are not hooked": [(2, {1: _payload(8, 3)})],
        "slot 2 layer 0.abl_dir must be float32 bytes": [(2, {0: {**_payload(8, 3), "abl_dir": 0.0}})],
        # Payloads that bypass the driver's checks never reach the tables every request reads.
        r"slot 2 layer 0.add: holds NaN or Inf": [(2, {0: {**_payload(8, 3), "add": np.full(8, np.inf, "<f4").tobytes()}})],
        r"slot 2 layer 0.cap_dir: holds NaN or Inf": [
            (2, {0: {**_payload(8, 3), "cap_dir": np.full(8, np.nan, "<f4").tobytes()}})
        ],
        r"slot 2 layer 0.add: norm 2.83e\+37 is beyond the limit 1e\+06": [(2, {0: {**_payload(8, 3), "add": huge}})],
        r"slot 2 layer 0.abl_dir: norm .* is neither 1": [(2, {0: {**_payload(8, 3), "abl_dir": np.ones(8, "<f4").tobytes()}})],
        r"slot 2 layer 0.cap_max: nan is beyond": [
            (2, {0: {**_payload(8, 3), "cap_min": float("-inf"), "cap_max": float("nan")}})
        ],
        r"slot 2 layer 0.cap_min: 1e\+38 is beyond": [(2, {0: {**_payload(8, 3), "cap_min": 1e38, "cap_max": float("inf")}})],
        r"slot 2 layer 0.abl_scale: nan is beyond": [(2, {0: {**_payload(8, 3), "abl_scale": float("nan")}})],
        r"slot 2 layer 0: cap_min 2.0 > cap_max -1.5": [(2, {0: {**_payload(8, 3), "cap_min": 2.0, "cap_max": -1.5}})],
        "slot True out of range": [(True, {0: _payload(8, 3)})],
    }
    for message, writes in cases.items():
        with pytest.raises(ValueError, match=message):
            ext.steer_write_slots(writes)
        for layer, t in state.tables.items():
            for name, tensor in t.tensors().items():
                assert torch.equal(tensor, before[layer][name]), (message, layer, name)


def test_repeated_and_reordered_batches_give_the_right_index():
    """Decode steps reuse the last step's slot array only while the request order is unchanged."""
    state = _state()
    _step(state, new=[_new("a", 1), _new("b", 0), _new("c", 3)], batch=[("a", 2), ("b", 2), ("c", 2)])
    index = _step(state, batch=[("a", 1), ("b", 1), ("c", 1)])
    assert index[:4].tolist() == [1, 0, 3, 0]
    index = _step(state, batch=[("a", 1), ("b", 1), ("c", 1)])
    assert index[:4].tolist() == [1, 0, 3, 0]
    index = _step(state, batch=[("c", 1), ("a", 1), ("b", 1)])  # the runner condensed / reordered its batch
    assert index[:4].tolist() == [3, 1, 0, 0]
    index = _step(state, new=[_new("d", 2)], batch=[("c", 1), ("a", 1), ("b", 1)])  # d waits; order unchanged
    assert index[:4].tolist() == [3, 1, 0, 0]
    index = _step(state, finished=["a"], batch=[("c", 2), ("b", 1), ("d", 3)])
    assert index[:7].tolist() == [3, 3, 0, 2, 2, 2, 0]


def test_steady_decode_steps_skip_the_upload_and_changes_upload_again():
    """Same requests, same order, same token counts: the device already holds the index, so nothing is copied."""
    state = _state()
    _step(state, new=[_new("a", 1), _new("b", 0)], batch=[("a", 3), ("b", 2)])
    index = _step(state, batch=[("a", 1), ("b", 1)])
    uploads = state.uploads
    for _ in range(3):
        index = _step(state, batch=[("a", 1), ("b", 1)])
    assert state.uploads == uploads and index[:3].tolist() == [1, 0, 0]
    index = _step(state, batch=[("a", 2), ("b", 1)])  # a chunk of a different size: a different index
    assert state.uploads == uploads + 1 and index[:4].tolist() == [1, 1, 0, 0]
    index = _step(state, batch=[("b", 1), ("a", 1)])  # reordered
    assert state.uploads == uploads + 2 and index[:3].tolist() == [0, 1, 0]
    # the index went back to zeros while nothing was steered; the same batch steered again must upload again
    _step(state, new=[_new("a", 0)], batch=[("b", 1), ("a", 1)])
    assert state.n_steered == 0 and not state.slot_index.any()
    index = _step(state, new=[_new("a", 1)], batch=[("b", 1), ("a", 1)])
    assert index[:3].tolist() == [0, 1, 0]
    uploads = state.uploads
    index = _step(state, batch=[("b", 1), ("a", 1)])
    assert state.uploads == uploads and index[:3].tolist() == [0, 1, 0]


def test_requests_finished_in_a_step_without_tokens_are_forgotten():
    """vLLM announces the last finished requests in a step that schedules no tokens; the runners return before
    preparing inputs there, so the bookkeeping must run from execute_model (it once leaked every such request as a
    live steered one, and every later unsteered step took the steered path)."""
    from engine.vllm_patches import _wrap_execute_model

    class Runner:
        def __init__(self, state: WorkerSteering) -> None:
            self._sidesteer = state

        def execute_model(self, scheduler_output, intermediate_tensors=None):
            if not scheduler_output.total_num_scheduled_tokens:
                return "empty"  # what vLLM's runners do: no input preparation for an empty step
            batch = scheduler_output.num_scheduled_tokens
            self._sidesteer.update(scheduler_output, list(batch), np.array(list(batch.values()), dtype=np.int64))
            return "ran"

    _wrap_execute_model(Runner)
    _wrap_execute_model(Runner)  # idempotent: wrapped once
    wrapped = Runner.execute_model
    assert wrapped._sidesteer_wrapped and wrapped.__name__ == "execute_model"
    assert not getattr(wrapped.__wrapped__, "_sidesteer_wrapped", False)  # wraps the original, not a wrapper
    state = _state()
    runner = Runner(state)

    def out(new=(), finished=(), batch=None):
        batch = batch or {}
        return SimpleNamespace(
            scheduled_new_reqs=list(new),
            finished_req_ids=set(finished),
            num_scheduled_tokens=batch,
            total_num_scheduled_tokens=sum(batch.values()),
        )

    assert runner.execute_model(out(new=[_new("s", 2), _new("u", 0)], batch={"s": 3, "u": 2})) == "ran"
    assert state.n_steered == 1 and state.slot_index[:5].tolist() == [2, 2, 2, 0, 0]
    calls = state.update_calls
    assert runner.execute_model(out(finished=["s", "u"])) == "empty"
    assert state.n_steered == 0 and state.req_slots == {} and state.update_calls == calls
    runner.execute_model(out(new=[_new("v", 0)], batch={"v": 4}))  # unsteered traffic: fast path, index cleared once
    assert not state.slot_index.any() and state.n_steered == 0 and state.req_slots == {"v": 0}
