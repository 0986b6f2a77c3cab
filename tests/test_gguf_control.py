"""llama.cpp control vectors: bit-exact round-trips, layer numbering, rejected inputs."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from vectors import (
    AblationSpec,
    LayerSteeringSpec,
    ProjectionCapSpec,
    SteeringError,
    SteeringSpec,
    export_gguf_control_vector,
    export_gguf_control_vector_bytes,
    import_gguf_control_vector,
    import_gguf_control_vector_bytes,
)


def _vec(seed: int, n: int = 8) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_round_trip_bit_exact_with_scale_baked_in(tmp_path: Path) -> None:
    spec = SteeringSpec({4: LayerSteeringSpec(vector=_vec(0), scale=2.5), 0: LayerSteeringSpec(vector=_vec(1))})
    path = export_gguf_control_vector(spec, tmp_path / "cv.gguf")
    back = import_gguf_control_vector(path, model_id="m/x")
    assert back.active_layers() == [0, 4]
    assert torch.equal(back.layers[4].vector, _vec(0) * torch.tensor(2.5))
    assert torch.equal(back.layers[0].vector, _vec(1))
    assert all(layer.scale == 1.0 for layer in back.layers.values())
    assert back.model_id == "m/x" and back.hidden_size == 8
    # the equivalent formulations agree: the file's vectors at scale 1 steer like the original spec
    assert back.fingerprint() == SteeringSpec({i: LayerSteeringSpec(vector=ls.vector * torch.tensor(ls.scale)) for i, ls in spec.layers.items()}).fingerprint()


def test_layer_numbering_matches_llamacpp(tmp_path: Path) -> None:
    spec = SteeringSpec.single(4, _vec(2), 1.0, model_id="m/x")
    path = export_gguf_control_vector(spec, tmp_path / "cv.gguf")
    reader = gguf.GGUFReader(path)
    assert [t.name for t in reader.tensors] == ["direction.5"]  # sidesteer layer 4 = output of block 4 = direction.5
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "m/x"
    assert reader.get_field("controlvector.layer_count").contents() == 1
    assert reader.tensors[0].tensor_type == gguf.GGMLQuantizationType.F32


def test_bytes_round_trip() -> None:
    spec = SteeringSpec.single(2, _vec(3), -1.5)
    back = import_gguf_control_vector_bytes(export_gguf_control_vector_bytes(spec))
    assert torch.equal(back.layers[2].vector, _vec(3) * torch.tensor(-1.5))


def test_reads_repeng_style_file(tmp_path: Path) -> None:
    path = tmp_path / "repeng.gguf"
    writer = gguf.GGUFWriter(path, "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 2)
    for n in (3, 7):
        writer.add_tensor(f"direction.{n}", np.full(8, n, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    spec = import_gguf_control_vector(path)
    assert spec.active_layers() == [2, 6]
    assert torch.equal(spec.layers[6].vector, torch.full((8,), 7.0))
    assert "llama" in spec.metadata.description


@pytest.mark.parametrize(
    "layer",
    [
        LayerSteeringSpec(vector=_vec(0), projection_cap=ProjectionCapSpec(_vec(1), max=1.0)),
        LayerSteeringSpec(ablation=AblationSpec(_vec(1), 0.0)),
    ],
)
def test_caps_and_ablations_rejected(tmp_path: Path, layer: LayerSteeringSpec) -> None:
    with pytest.raises(SteeringError, match="only add vectors"):
        export_gguf_control_vector(SteeringSpec({3: layer}), tmp_path / "cv.gguf")
    assert not (tmp_path / "cv.gguf").exists()


def test_empty_spec_rejected(tmp_path: Path) -> None:
    with pytest.raises(SteeringError, match="at least one direction"):
        export_gguf_control_vector(SteeringSpec(), tmp_path / "cv.gguf")


def _write(path: Path, arch: str, tensors: dict[str, np.ndarray]) -> Path:
    writer = gguf.GGUFWriter(path, arch)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_non_controlvector_gguf_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "model.gguf", "llama", {"token_embd.weight": np.ones((4, 8), dtype=np.float32)})
    with pytest.raises(SteeringError, match="general.architecture is 'llama'"):
        import_gguf_control_vector(path)


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"direction.1": np.ones(8, dtype=np.float16)}, "expected F32"),
        ({"direction.1": np.ones((2, 4), dtype=np.float32)}, "one dimension"),
        ({"direction.1": np.array([1.0, np.nan], dtype=np.float32)}, "NaN"),
        ({"direction.0": np.ones(8, dtype=np.float32)}, "start at 1"),
        ({"bias.1": np.ones(8, dtype=np.float32)}, "unexpected tensor"),
        ({"direction.1": np.ones(8, dtype=np.float32), "direction.2": np.ones(4, dtype=np.float32)}, "different lengths"),
        ({}, "no direction tensors"),
    ],
)
def test_bad_control_vectors_rejected(tmp_path: Path, tensors: dict[str, np.ndarray], match: str) -> None:
    path = _write(tmp_path / "cv.gguf", "controlvector", tensors)
    with pytest.raises(SteeringError, match=match):
        import_gguf_control_vector(path)


@pytest.mark.parametrize("data", [b"", b"GGUF", b"not a gguf file at all" * 10])
def test_garbage_bytes_rejected(data: bytes) -> None:
    with pytest.raises(SteeringError, match="control vector"):
        import_gguf_control_vector_bytes(data)


def test_pickle_rejected(tmp_path: Path) -> None:
    path = tmp_path / "evil.gguf"
    torch.save({"direction.1": torch.ones(8)}, path)  # never torch.load it
    with pytest.raises(SteeringError, match="not a readable GGUF"):
        import_gguf_control_vector(path)


def test_missing_file_and_bad_suffix(tmp_path: Path) -> None:
    with pytest.raises(SteeringError, match="no file"):
        import_gguf_control_vector(tmp_path / "nope.gguf")
    with pytest.raises(SteeringError, match=r"\.gguf"):
        export_gguf_control_vector(SteeringSpec.single(0, _vec(0)), tmp_path / "cv.bin")
