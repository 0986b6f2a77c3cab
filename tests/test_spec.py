"""Spec dataclasses and the spec file: round-trips, fingerprints and every rejected input."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SpecMetadata, SteeringError, SteeringSpec, safetensors_io
from vectors.spec_file import spec_from_bytes

H = 16


def full_spec(seed: int = 0) -> SteeringSpec:
    g = torch.Generator().manual_seed(seed)
    r = lambda: torch.randn(H, generator=g)  # noqa: E731
    return SteeringSpec(
        {
            2: LayerSteeringSpec(r(), 1.5, ProjectionCapSpec(r(), -0.25, 0.5), AblationSpec(r(), 0.0)),
            5: LayerSteeringSpec(r(), -2.0),
            7: LayerSteeringSpec(projection_cap=ProjectionCapSpec(r(), max=1.0)),
            9: LayerSteeringSpec(ablation=AblationSpec(r(), 3.0)),
        },
        SpecMetadata(model_id="tiny", description="all ops"),
    )


def assert_same(a: SteeringSpec, b: SteeringSpec) -> None:
    assert a.layers.keys() == b.layers.keys()
    for index in a.layers:
        x, y = a.layers[index], b.layers[index]
        assert (x.vector is None) == (y.vector is None)
        if x.vector is not None:
            assert torch.equal(x.vector, y.vector) and x.vector.dtype == y.vector.dtype == torch.float32
        assert x.scale == y.scale
        for op in ("projection_cap", "ablation"):
            p, q = getattr(x, op), getattr(y, op)
            assert (p is None) == (q is None)
            if p is not None:
                assert torch.equal(p.vector, q.vector)
        if x.projection_cap:
            assert (x.projection_cap.min, x.projection_cap.max) == (y.projection_cap.min, y.projection_cap.max)
        if x.ablation:
            assert x.ablation.scale == y.ablation.scale
    assert a.metadata == b.metadata
    assert a.fingerprint() == b.fingerprint()


def test_round_trip_bit_exact(tmp_path):
    spec = full_spec()
    path = spec.save(tmp_path / "s.safetensors")
    loaded = SteeringSpec.load(path)
    assert_same(spec, loaded)
    assert loaded.hidden_size == H
    assert_same(spec, SteeringSpec.from_bytes(spec.to_bytes()))
    assert path.read_bytes() == loaded.to_bytes()  # deterministic bytes
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_round_trip_exotic_floats(tmp_path):
    v = torch.tensor([1e-38, -3.4e38, 0.1, -0.0] + [1.0] * (H - 4))
    spec = SteeringSpec({0: LayerSteeringSpec(v, 0.1 + 0.2, ProjectionCapSpec(v, min=1 / 3))})
    assert_same(spec, SteeringSpec.load(spec.save(tmp_path / "x.safetensors")))


def test_header_contents():
    data = full_spec().to_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["sidesteer"])
    assert header["format"] == "sidesteer.steering_spec" and header["version"] == 1
    assert header["hidden_size"] == H and header["model_id"] == "tiny"
    assert "hidden_states[L+1]" in header["layer_convention"]
    assert header["op_order"] == ["add", "projection_cap", "ablation"]
    assert set(header["sha256"]) == {"layers.2.vector", "layers.2.projection_cap.vector", "layers.2.ablation.vector", "layers.5.vector", "layers.7.projection_cap.vector", "layers.9.ablation.vector"}


def test_fingerprint_stable_and_sensitive():
    a, b = full_spec(), full_spec()
    assert a.fingerprint() == b.fingerprint()
    b.metadata.description = "other words"
    assert a.fingerprint() == b.fingerprint()  # metadata is not content
    edits = [
        lambda c: setattr(c.layers[2], "scale", 1.5000001),
        lambda c: c.layers[2].vector.__setitem__(3, c.layers[2].vector[3] + 1e-6),
        lambda c: setattr(c.layers[2].projection_cap, "max", 0.51),
        lambda c: setattr(c.layers[2].projection_cap, "min", None),
        lambda c: setattr(c.layers[9].ablation, "scale", 2.0),
        lambda c: c.layers.__setitem__(6, c.layers.pop(5)),
    ]
    changes = []
    for edit in edits:
        changed = full_spec()
        edit(changed)
        changes.append(changed)
    fps = {x.fingerprint() for x in changes}
    assert len(fps) == len(changes) and a.fingerprint() not in fps
    assert SteeringSpec({}).fingerprint() == SteeringSpec({3: LayerSteeringSpec()}).fingerprint()


def test_clone_is_deep_and_helpers():
    a = full_spec()
    b = a.clone()
    b.layers[2].vector.add_(1)
    assert not torch.equal(a.layers[2].vector, b.layers[2].vector)
    assert SteeringSpec({}).is_empty() and SteeringSpec({1: LayerSteeringSpec()}).is_empty() and not a.is_empty()
    assert a.active_layers() == [2, 5, 7, 9]
    s = a.scaled(-2.0)
    assert s.layers[5].scale == 4.0 and s.layers[2].scale == -3.0 and s.layers[9].ablation.scale == 3.0
    v = torch.randn(H)
    assert SteeringSpec.single(1, v * 3.0).layers[1].vector.equal(v * 3.0)


BAD_CONSTRUCTIONS = [
    (lambda: LayerSteeringSpec(torch.tensor([1.0, float("nan")])), "NaN"),
    (lambda: LayerSteeringSpec(torch.tensor([1.0, float("inf")])), "NaN or Inf"),
    (lambda: LayerSteeringSpec(torch.ones(2, 3)), "1-D"),
    (lambda: LayerSteeringSpec(torch.ones(0)), "empty"),
    (lambda: LayerSteeringSpec(torch.ones(3), scale=float("nan")), "scale"),
    (lambda: LayerSteeringSpec(torch.ones(3), scale="2"), "scale"),
    (lambda: ProjectionCapSpec(torch.ones(3)), "at least one bound"),
    (lambda: ProjectionCapSpec(torch.ones(3), 2.0, 1.0), "min=2.0 > max=1.0"),
    (lambda: ProjectionCapSpec(torch.zeros(3), max=1.0), "zero norm"),
    (lambda: AblationSpec(torch.zeros(3), 0.0), "zero norm"),
    (lambda: SteeringSpec({-1: LayerSteeringSpec(torch.ones(3))}), "negative layer"),
    (lambda: SteeringSpec({"3": LayerSteeringSpec(torch.ones(3))}), "not an int"),
    (lambda: SteeringSpec({1: LayerSteeringSpec(torch.ones(3)), 2: LayerSteeringSpec(torch.ones(4))}), "different lengths"),
    (lambda: SteeringSpec({1: LayerSteeringSpec(torch.ones(3))}, SpecMetadata(hidden_size=4)), "hidden_size=4"),
    (lambda: SteeringSpec({1: torch.ones(3)}), "LayerSteeringSpec"),
]


@pytest.mark.parametrize("build,message", BAD_CONSTRUCTIONS, ids=[m for _, m in BAD_CONSTRUCTIONS])
def test_bad_construction(build, message):
    with pytest.raises(SteeringError, match=message):
        build()


def test_validate_for_model():
    spec = full_spec()
    spec.validate_for_model(10, H)
    with pytest.raises(SteeringError, match=r"layers\[9\]: layer out of range .* use 0..8"):
        spec.validate_for_model(9, H)
    with pytest.raises(SteeringError, match="hidden_size"):
        spec.validate_for_model(10, H + 1)


def _header_bytes(header: dict, tensors: dict[str, torch.Tensor] | None = None) -> bytes:
    return safetensors_io.encode(tensors or {"t": torch.ones(H)}, "sidesteer", header)


def _rewrite_header(data: bytes, edit) -> bytes:
    n = int.from_bytes(data[:8], "little")
    outer = json.loads(data[8 : 8 + n])
    inner = json.loads(outer["__metadata__"]["sidesteer"])
    edit(inner)
    outer["__metadata__"]["sidesteer"] = json.dumps(inner)
    raw = json.dumps(outer).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + n :]


def test_bad_files(tmp_path):
    good = full_spec().to_bytes()
    cases = {
        "pickle": (pickle.dumps({"vector": [1.0] * H}), "not a valid safetensors file"),
        "torch_save": (None, "not a valid safetensors file"),
        "truncated": (good[: len(good) - 10], "truncated"),
        "tiny": (b"abc", "too short"),
        "json_garbage": ((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"x" * 10, "not JSON"),
        "wrong_format": (_rewrite_header(good, lambda h: h.update(format="other")), "format: expected"),
        "wrong_version": (_rewrite_header(good, lambda h: h.update(version=99)), "version: spec file version 99"),
        "sha_mismatch": (_rewrite_header(good, lambda h: h["sha256"].update({"layers.5.vector": "0" * 64})), "sha256"),
        "missing_tensor": (_rewrite_header(good, lambda h: h["layers"]["5"].update(vector="nope")), "does not hold"),
        "cap_no_bound": (_rewrite_header(good, lambda h: h["layers"]["7"]["projection_cap"].update(max=None)), r"layers\[7\].projection_cap: min and max are both None"),
        "nan_tensor": (_header_bytes({"format": "sidesteer.steering_spec", "version": 1, "layers": {"0": {"vector": "t", "scale": 1.0}}}, {"t": torch.full((H,), float("nan"))}), "NaN"),
        "matrix": (_header_bytes({"format": "sidesteer.steering_spec", "version": 1, "layers": {"0": {"vector": "t", "scale": 1.0}}}, {"t": torch.ones(2, H)}), "1-D"),
        "negative_layer": (_header_bytes({"format": "sidesteer.steering_spec", "version": 1, "layers": {"-2": {"vector": "t", "scale": 1.0}}}), "negative layer"),
        "plain_safetensors": (safetensors_io.st_save({"t": torch.ones(H)}), "no 'sidesteer' entry"),
    }
    torch_path = tmp_path / "model.pt"
    torch.save({"v": torch.ones(H)}, torch_path)
    cases["torch_save"] = (torch_path.read_bytes(), cases["torch_save"][1])
    for name, (data, message) in cases.items():
        with pytest.raises(SteeringError, match=message):
            spec_from_bytes(data)
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(SteeringError, match=message):
            SteeringSpec.load(path)


def test_size_limit_and_paths(tmp_path, monkeypatch):
    path = full_spec().save(tmp_path / "ok.safetensors")
    monkeypatch.setattr(safetensors_io, "MAX_FILE_BYTES", 100)
    from vectors import spec_file

    monkeypatch.setattr(spec_file, "read_limited", lambda p, what: safetensors_io.read_limited(p, what, 100))
    with pytest.raises(SteeringError, match="over the 100-byte limit"):
        SteeringSpec.load(path)
    with pytest.raises(SteeringError, match="no file"):
        SteeringSpec.load(tmp_path / "missing.safetensors")
    with pytest.raises(SteeringError, match=r"end in \.safetensors"):
        full_spec().save(tmp_path / "x.pt")
