"""Spec dataclasses and the spec file: round-trips, fingerprints and every rejected input."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from vectors import AblationSpec, LayerSteeringSpec, ProjectionCapSpec, SpecMetadata, SteeringError, SteeringSpec, safetensors_io

spec_from_bytes = SteeringSpec.from_bytes

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
    for edge in (SteeringSpec(), SteeringSpec({3: LayerSteeringSpec()}), SteeringSpec({}, SpecMetadata("m", 8, "d"))):
        assert SteeringSpec.from_bytes(edge.to_bytes()) == edge  # every spec that saves also passes the load checks


def test_round_trip_exotic_floats(tmp_path):
    # the extremes a vector may hold: subnormal, smallest normal and limit-sized elements, negative zero
    v = torch.tensor([1e-45, 1.1754944e-38, -9.9e5, 0.1, -0.0, 1 / 3] + [1.0] * (H - 6))
    spec = SteeringSpec({0: LayerSteeringSpec(v, 0.1 + 0.2, ProjectionCapSpec(v, min=1 / 3))})
    assert_same(spec, SteeringSpec.load(spec.save(tmp_path / "x.safetensors")))


def test_header_contents():
    data = full_spec().to_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["sidesteer"])
    assert header["format"] == "sidesteer.steering_spec" and header["version"] == 2 and header["skip_first_tokens"] == 0
    assert header["hidden_size"] == H and header["model_id"] == "tiny"
    assert "hidden_states[L+1]" in header["layer_convention"]
    assert header["op_order"] == ["add", "projection_cap", "ablation"]
    assert set(header["sha256"]) == {
        "layers.2.vector",
        "layers.2.projection_cap.vector",
        "layers.2.ablation.vector",
        "layers.5.vector",
        "layers.7.projection_cap.vector",
        "layers.9.ablation.vector",
    }


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


def layer_entry(index: int, vector: bool = True, scale: float = 1.0) -> dict:
    """A header entry for a layer that adds its canonical tensor (or nothing)."""
    return {"vector": f"layers.{index}.vector" if vector else None, "scale": scale, "projection_cap": None, "ablation": None}


def raw_spec_file(layers: dict, tensors: dict[str, torch.Tensor], **header) -> bytes:
    """Spec-file bytes with a hand-written header: the tensors' true hashes and a placeholder fingerprint."""
    full = {
        "format": "sidesteer.steering_spec",
        "version": 1,
        "layers": layers,
        "fingerprint": "0" * 64,
        "sha256": {name: safetensors_io.tensor_sha256(t) for name, t in tensors.items()},
        **header,
    }
    return safetensors_io.encode(tensors, "sidesteer", full)


def split(data: bytes) -> tuple[dict, dict, bytes]:
    """(outer safetensors header, inner sidesteer header, tensor data) of a spec file."""
    n = int.from_bytes(data[:8], "little")
    outer = json.loads(data[8 : 8 + n])
    return outer, json.loads(outer["__metadata__"]["sidesteer"]), data[8 + n :]


def join(outer: dict | str, tensor_data: bytes, inner: dict | str | None = None) -> bytes:
    """Spec-file bytes from an outer header (a dict, or raw JSON text) and tensor data; ``inner`` replaces the
    sidesteer header (a dict, or raw JSON text)."""
    if inner is not None:
        outer["__metadata__"]["sidesteer"] = inner if isinstance(inner, str) else json.dumps(inner)
    raw = (outer if isinstance(outer, str) else json.dumps(outer)).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + tensor_data


def rewrite_header(data: bytes, edit) -> bytes:
    """Apply ``edit`` to the sidesteer header of a spec file (hashes and fingerprint unchanged)."""
    outer, inner, tensor_data = split(data)
    edit(inner)
    return join(outer, tensor_data, inner)


def test_bad_files(tmp_path):
    good = full_spec().to_bytes()
    nan = {"layers.0.vector": torch.full((H,), float("nan"))}
    cases = {
        "pickle": (pickle.dumps({"vector": [1.0] * H}), "not a valid safetensors file"),
        "torch_save": (None, "not a valid safetensors file"),
        "truncated": (good[: len(good) - 10], "truncated"),
        "tiny": (b"abc", "too short"),
        "json_garbage": ((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"x" * 10, "not JSON"),
        "wrong_format": (rewrite_header(good, lambda h: h.update(format="other")), "format: expected"),
        "wrong_version": (rewrite_header(good, lambda h: h.update(version=99)), "version: spec file version 99"),
        "sha_mismatch": (rewrite_header(good, lambda h: h["sha256"].update({"layers.5.vector": "0" * 64})), "sha256"),
        "missing_tensor": (rewrite_header(good, lambda h: h["layers"]["5"].update(vector="nope")), "does not hold"),
        "cap_no_bound": (
            rewrite_header(good, lambda h: h["layers"]["7"]["projection_cap"].update(max=None)),
            r"layers\[7\].projection_cap: min and max are both None",
        ),
        "nan_tensor": (raw_spec_file({"0": layer_entry(0)}, nan), r"layers\[0\].vector: the vector holds NaN"),
        "matrix": (raw_spec_file({"0": layer_entry(0)}, {"layers.0.vector": torch.ones(2, H)}), "1-D"),
        "negative_layer": (raw_spec_file({"-2": layer_entry(0)}, {"layers.0.vector": torch.ones(H)}), "negative layer"),
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


# -- hostile spec files: every check names its field ---------------------------------------------------------------
def _load_error(data: bytes) -> str:
    with pytest.raises(SteeringError) as info:
        spec_from_bytes(data)
    return str(info.value)


def test_tamper_evidence_fingerprint_and_hashes_are_required_and_checked():
    good = full_spec().to_bytes()
    edited_scale = rewrite_header(good, lambda h: h["layers"]["5"].update(scale=-2.5))
    assert _load_error(edited_scale).startswith(
        "fingerprint: the file's content does not match its recorded fingerprint ("
    ) and _load_error(edited_scale).endswith("...); the file was edited or corrupted; re-export it")
    assert _load_error(rewrite_header(good, lambda h: h.pop("fingerprint"))) == (
        "header: the key 'fingerprint' is missing; the file is corrupt or was not written by sidesteer"
    )
    assert _load_error(rewrite_header(good, lambda h: h["sha256"].pop("layers.5.vector"))) == (
        "sha256: no hash is recorded for tensor 'layers.5.vector'; every tensor needs one, re-export the file"
    )
    flipped = bytearray(good)
    flipped[-1] ^= 0x01  # the last float of the data section
    outer, _, _ = split(good)
    last = max((k for k in outer if k != "__metadata__"), key=lambda k: outer[k]["data_offsets"][1])
    assert _load_error(bytes(flipped)) == (
        f"sha256[{last!r}]: the tensor's bytes do not match its recorded sha256; the file was edited or corrupted; re-export it"
    )
    # metadata is not content: editing the description keeps the file loadable
    renamed = spec_from_bytes(rewrite_header(good, lambda h: h.update(description="renamed")))
    assert renamed.metadata.description == "renamed" and renamed.fingerprint() == full_spec().fingerprint()


def test_every_stored_tensor_is_named_by_exactly_its_own_field():
    v = torch.randn(576, generator=torch.Generator().manual_seed(0))
    # One stored tensor named by 2000 layers: refused before any tensor is built (it used to be cloned per layer).
    shared = raw_spec_file({str(i): {**layer_entry(i), "vector": "layers.0.vector"} for i in range(2000)}, {"layers.0.vector": v})
    assert _load_error(shared) == (
        "layers[1].vector: names tensor 'layers.0.vector', but this field's tensor is 'layers.1.vector'; the file is corrupt"
    )
    cap_is_add = raw_spec_file(
        {"0": {**layer_entry(0), "projection_cap": {"vector": "layers.0.vector", "min": None, "max": 1.0}}},
        {"layers.0.vector": v},
    )
    assert _load_error(cap_is_add).startswith(
        "layers[0].projection_cap.vector: names tensor 'layers.0.vector', but this field's tensor is 'layers.0.projection_cap.vector'"
    )
    foreign_name = raw_spec_file({"0": {**layer_entry(0), "vector": "t"}}, {"t": v})
    assert _load_error(foreign_name).startswith(
        "layers[0].vector: names tensor 't', but this field's tensor is 'layers.0.vector'"
    )
    unreferenced = raw_spec_file({"0": layer_entry(0)}, {"layers.0.vector": v, "layers.3.vector": v.clone()})
    assert _load_error(unreferenced) == (
        "tensors: the file holds tensor 'layers.3.vector', which no layer names; the file was edited or is corrupt"
    )


def test_layer_keys_are_canonical_ascii_integers():
    v = torch.ones(H)
    for key in ["+8", "08", " 8", "8 ", "8\n", "\u0668", "\uff18", "8.0", "1e3", "0x8", "", "eight"]:
        data = raw_spec_file({key: layer_entry(8)}, {"layers.8.vector": v})
        assert _load_error(data) == (
            f"layers: key {key!r} is not a layer number; keys are plain decimal integers such as '8' (the file is corrupt)"
        ), key
    for key in ["10000", "9" * 30, "9" * 5000]:
        data = raw_spec_file({key: layer_entry(8)}, {"layers.8.vector": v})
        assert _load_error(data).startswith("layers: key ") and "is beyond the limit layer index < 10000" in _load_error(data)
    assert spec_from_bytes(SteeringSpec.single(9999, v).to_bytes()).active_layers() == [9999]


def test_duplicate_json_keys_are_refused():
    good = full_spec().to_bytes()
    outer, inner, tensor_data = split(good)
    layers_text = json.dumps(inner["layers"])
    twice = layers_text.replace('{"2": ', '{"5": ' + json.dumps(inner["layers"]["5"]) + ', "2": ', 1)
    inner_text = json.dumps({**inner, "layers": "LAYERS"}).replace('"LAYERS"', twice)
    assert _load_error(join(outer, tensor_data, inner_text)) == (
        "spec file: the 'sidesteer' metadata: key '5' appears twice in one JSON object; the file was edited or is corrupt"
    )
    scale_twice = json.dumps(inner).replace('"scale": -2.0', '"scale": -2.0, "scale": 1.0', 1)
    assert "key 'scale' appears twice" in _load_error(join(split(good)[0], tensor_data, scale_twice))
    outer_text = json.dumps(outer)
    entry = json.dumps(outer["layers.5.vector"])
    outer_twice = outer_text.replace('"layers.5.vector": ', f'"layers.5.vector": {entry}, "layers.5.vector": ', 1)
    assert _load_error(join(outer_twice, tensor_data)) == (
        "spec file: the safetensors header: key 'layers.5.vector' appears twice in one JSON object; the file was edited or is corrupt"
    )


def test_header_size_and_depth_are_bounded():
    good = full_spec().to_bytes()
    outer, inner, tensor_data = split(good)
    deep_inner = json.dumps({**inner, "description": "DEEP"}).replace('"DEEP"', "[" * 100_000 + "]" * 100_000)
    assert _load_error(join(outer, tensor_data, deep_inner)) == (
        "spec file: the 'sidesteer' metadata nests 100001 levels deep, beyond the limit of 64; the file is corrupt or hostile"
    )
    deep_outer = json.dumps({**outer, "x": "DEEP"}).replace('"DEEP"', '{"a": ' * 5000 + "1" + "}" * 5000)
    assert "the safetensors header nests 5001 levels deep, beyond the limit of 64" in _load_error(join(deep_outer, tensor_data))
    big_header = join(outer, tensor_data, json.dumps({**inner, "description": "x" * (2 * 1024 * 1024)}))
    assert _load_error(big_header) == (
        f"spec file: the safetensors header is {int.from_bytes(big_header[:8], 'little')} bytes, beyond the limit of 1048576; "
        "the file is corrupt or hostile"
    )
    # and no save path writes a file that loading would refuse
    big = full_spec()
    big.metadata.description = "x" * (2 * 1024 * 1024)
    with pytest.raises(
        SteeringError, match=r"^metadata: the file's header would be \d+ bytes, over the 1048576-byte limit of readers"
    ):
        big.to_bytes()


def _edit_outer(data: bytes, edit, tensor_data: bytes | None = None) -> bytes:
    outer, _, old_data = split(data)
    edit(outer)
    return join(outer, old_data if tensor_data is None else tensor_data)


def test_tensor_table_is_checked_before_any_tensor_is_built():
    spec = SteeringSpec({0: LayerSteeringSpec(torch.ones(H)), 1: LayerSteeringSpec(torch.full((H,), 2.0))})
    good = spec.to_bytes()
    size = H * 4
    cases = [
        (lambda o: o["layers.0.vector"].update(dtype="F16"), None, "tensor 'layers.0.vector': dtype 'F16' is not 'F32'"),
        (lambda o: o["layers.0.vector"].update(dtype="F64"), None, "tensor 'layers.0.vector': dtype 'F64' is not 'F32'"),
        (
            lambda o: o["layers.0.vector"].update(shape=[0], data_offsets=[0, 0]),
            None,
            "tensor 'layers.0.vector': shape [0] is empty",
        ),
        (lambda o: o["layers.0.vector"].update(shape=[70000]), None, "shape [70000] is beyond the limit hidden_size <= 65536"),
        (lambda o: o["layers.0.vector"].update(shape=["16"]), None, "shape ['16'] is not a list of sizes"),
        (lambda o: o["layers.0.vector"].update(shape=[4, 4]), None, "shape [4, 4] is not 1-D"),
        (
            lambda o: o["layers.0.vector"].update(data_offsets=[0, 2**70]),
            None,
            "run past the end of the data (128 bytes): the file is truncated",
        ),
        (lambda o: o["layers.0.vector"].update(data_offsets=[-64, 0]), None, "data_offsets [-64, 0] are not 0 <= begin <= end"),
        (
            lambda o: o["layers.0.vector"].update(data_offsets=[0, 1.5]),
            None,
            "data_offsets [0, 1.5] is not a [begin, end] pair of integers",
        ),
        (
            lambda o: o["layers.0.vector"].update(data_offsets=[0, 60]),
            None,
            "data_offsets [0, 60] span 60 bytes but shape [16] of float32 needs 64",
        ),
        (lambda o: o["layers.1.vector"].update(data_offsets=[0, size]), None, "data_offsets overlaps the tensor before it"),
        (
            lambda o: o["layers.1.vector"].update(data_offsets=[size + 4, 2 * size + 4]),
            bytes(2 * size + 4),
            "data_offsets leaves a gap before it",
        ),
        (lambda o: None, bytes(2 * size + 8), "8 bytes after the last tensor belong to no tensor"),
        (
            lambda o: o["layers.0.vector"].update(extra=1),
            None,
            "tensor 'layers.0.vector': expected an object with keys ['data_offsets', 'dtype', 'shape']",
        ),
        (lambda o: o.update({"__metadata__": {"sidesteer": 5}}), None, "__metadata__['sidesteer'] is not a string"),
        (lambda o: o.update({"__metadata__": [1]}), None, "__metadata__ is not a JSON object"),
    ]
    for edit, tensor_data, message in cases:
        error = _load_error(_edit_outer(good, edit, tensor_data))
        assert error.startswith("spec file: ") and message in error, (message, error)


MALFORMED_FIELDS = [
    (lambda h: h["layers"]["7"].update(projection_cap=[1, 2]), "layers[7].projection_cap: expected a JSON object, got [1, 2]"),
    (lambda h: h["layers"]["7"].update(projection_cap="cap"), "layers[7].projection_cap: expected a JSON object, got 'cap'"),
    (lambda h: h["layers"]["7"].update(projection_cap=3), "layers[7].projection_cap: expected a JSON object, got 3"),
    (lambda h: h["layers"]["9"].update(ablation=[]), "layers[9].ablation: expected a JSON object, got []"),
    (lambda h: h["layers"]["5"].update(scale="2"), "layers[5].scale: expected a number, got '2'; pass a finite float"),
    (lambda h: h["layers"]["5"].update(scale=True), "layers[5].scale: expected a number, got True"),
    (lambda h: h["layers"]["5"].update(scale=[1.0]), "layers[5].scale: expected a number, got [1.0]"),
    (
        lambda h: h["layers"]["5"].update(scale=10**400),
        "layers[5].scale: an integer of 1329 bits is not finite; pass a finite float",
    ),
    (lambda h: h["layers"]["5"].update(scale=float("inf")), "layers[5].scale: inf is not finite"),
    (lambda h: h["layers"]["5"].update(scale=float("nan")), "layers[5].scale: nan is not finite"),
    (lambda h: h["layers"]["5"].update(scale=None), "layers[5].scale: expected a number, got None"),
    (lambda h: h["layers"]["5"].pop("scale"), "layers[5]: the key 'scale' is missing"),
    (lambda h: h["layers"]["5"].update(bias=1), "layers[5]: unknown key 'bias'"),
    (lambda h: h["layers"]["5"].update(vector=5), "layers[5].vector: names tensor 5, which the file does not hold"),
    (lambda h: h["layers"].update({"5": []}), "layers[5]: expected a JSON object, got []"),
    (lambda h: h["layers"]["7"]["projection_cap"].update(min="0"), "layers[7].projection_cap.min: expected a number, got '0'"),
    (lambda h: h["layers"]["7"]["projection_cap"].update(max={}), "layers[7].projection_cap.max: expected a number, got {}"),
    (lambda h: h["layers"]["7"]["projection_cap"].pop("min"), "layers[7].projection_cap: the key 'min' is missing"),
    (lambda h: h["layers"]["9"]["ablation"].update(scale="0"), "layers[9].ablation.scale: expected a number, got '0'"),
    (lambda h: h.update(description=5), "metadata.description: expected a string, got 5"),
    (lambda h: h.update(model_id=["m"]), "metadata.model_id: expected a string or None, got ['m']"),
    (lambda h: h.update(hidden_size="16"), "metadata.hidden_size: '16' is not a positive integer <= 65536"),
    (lambda h: h.update(hidden_size=16.0), "metadata.hidden_size: 16.0 is not a positive integer"),
    (lambda h: h.update(hidden_size=True), "metadata.hidden_size: True is not a positive integer"),
    (lambda h: h.update(hidden_size=10**30), "metadata.hidden_size: an integer of 100 bits is not a positive integer"),
    (lambda h: h.update(version="1"), "version: spec file version '1' is not supported"),
    (lambda h: h.update(version=1.0), "version: spec file version 1.0 is not supported"),
    (lambda h: h.update(version=True), "version: spec file version True is not supported"),
    (lambda h: h.update(format=None), "format: expected 'sidesteer.steering_spec', got None"),
    (lambda h: h.update(layers=[]), "layers: expected an object of layer index -> ops, got []"),
    (lambda h: h.update(layers="x"), "layers: expected an object of layer index -> ops, got 'x'"),
    (lambda h: h.update(sha256=[]), "sha256: expected an object of tensor name -> hex digest, got []"),
    (lambda h: h["sha256"].update({"layers.5.vector": "xyz"}), "sha256['layers.5.vector']: 'xyz' is not a sha256 hex digest"),
    (
        lambda h: h["sha256"].update({"layers.6.vector": "0" * 64}),
        "sha256: records tensor 'layers.6.vector', which the file does not hold",
    ),
    (lambda h: h.update(fingerprint=5), "fingerprint: 5 is not a sha256 hex digest"),
    (
        lambda h: h.update(op_order=["ablation", "add", "projection_cap"]),
        "op_order: ['ablation', 'add', 'projection_cap'] is not sidesteer's order",
    ),
    (lambda h: h.update(layer_convention=3), "layer_convention: expected a string, got 3"),
    (lambda h: h.update(extra={}), "header: unknown key 'extra'"),
]


def test_malformed_header_fields_raise_steering_error_naming_the_field():
    good = full_spec().to_bytes()
    for edit, message in MALFORMED_FIELDS:
        error = _load_error(rewrite_header(good, edit))
        assert error.startswith(message), (message, error)
    outer, _, tensor_data = split(good)
    assert (
        _load_error(join(outer, tensor_data, "[1, 2]"))
        == "spec file: the 'sidesteer' metadata is not a JSON object; the file is corrupt"
    )


def test_scaled_checks_the_new_spec_once(monkeypatch):
    calls = []
    real = SteeringSpec.validate
    monkeypatch.setattr(SteeringSpec, "validate", lambda s: calls.append(id(s)) or real(s))
    spec = SteeringSpec({2: LayerSteeringSpec(torch.ones(8), 1.5), 3: LayerSteeringSpec(ablation=AblationSpec(torch.ones(8)))})
    calls.clear()
    out = spec.scaled(-2.0)
    assert calls == [id(out)] and out.layers[2].scale == -3.0 and out.layers[3].scale == 1.0
    spec.layers[2].scale = "x"
    with pytest.raises(SteeringError, match=r"^layers\[2\]\.scale: expected a number, got 'x'"):
        spec.scaled(2.0)
