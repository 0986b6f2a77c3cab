"""llama.cpp control vectors: bit-exact round-trips, layer numbering, rejected inputs."""

from __future__ import annotations

import re
import signal
import struct
from contextlib import contextmanager
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
from vectors.gguf_reader import GGUFArray, parse_gguf


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
    assert (
        back.fingerprint()
        == SteeringSpec(
            {i: LayerSteeringSpec(vector=ls.vector * torch.tensor(ls.scale)) for i, ls in spec.layers.items()}
        ).fingerprint()
    )


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


# -- the bounded GGUF reader: hostile files fail fast, naming the field ---------------------------------------------
class _Deadline(BaseException):  # not an Exception: no "except Exception" in the code under test may swallow it
    pass


@contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging or eating memory for minutes) when the block runs longer than ``seconds``."""

    def fire(signum, frame):
        raise _Deadline(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def gstr(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def kv(key: bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def ti(name: bytes, dims: list[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    return (
        gstr(name)
        + struct.pack("<I", len(dims))
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


ARCH = kv(b"general.architecture", 8, gstr(b"controlvector"))


def gguf_file(
    kvs: list[bytes],
    infos: list[bytes] = (),
    data: bytes = b"",
    *,
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
) -> bytes:
    head = b"GGUF" + struct.pack(
        "<IQQ", version, len(infos) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    body = head + b"".join(kvs) + b"".join(infos)
    return body + bytes(-len(body) % 32) + data


HOSTILE = {
    "issue_49_bytes": (
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv(b"a", 9, struct.pack("<IQ", 0, 2**62)),
        "kv[0] 'a' array length: 4611686018427387904 items need at least 4611686018427387904 bytes but only 0 remain",
    ),
    "string_array": (
        gguf_file([kv(b"a", 9, struct.pack("<IQ", 8, 2**62))]),
        "kv[0] 'a' array length: 4611686018427387904 items need at least 36893488147419103232 bytes",
    ),
    "nested_arrays": (
        gguf_file([kv(b"a", 9, struct.pack("<IQ", 9, 1) * 12 + struct.pack("<IQ", 0, 0))]),
        "arrays nest more than 8 deep",
    ),
    "kv_count": (gguf_file([ARCH], n_kv=2**15), "kv_count: 32768 items need at least 458752 bytes but only 72 remain"),
    "tensor_count": (
        gguf_file([ARCH], n_tensors=2**15),
        "tensor_count: 32768 items need at least 1081344 bytes but only 80 remain",
    ),
    "tensor_limit": (gguf_file([ARCH], n_tensors=2**63), "tensor_count: 9223372036854775808 is beyond the limit of 65536"),
    "kv_limit": (gguf_file([], [], bytes(14 * 70_000), n_kv=70_000), "kv_count: 70000 is beyond the limit of 65536"),
    "key_length": (
        gguf_file([struct.pack("<Q", 2**63) + bytes(16)]),
        "kv[0].key: length 9223372036854775808 is beyond the limit of 65535 bytes",
    ),
    "string_length": (
        gguf_file([gstr(b"general.architecture") + struct.pack("<IQ", 8, 2**40)]),
        "kv[0] 'general.architecture' (a string of 1099511627776 bytes): needs 1099511627776 bytes",
    ),
    "value_type": (gguf_file([kv(b"x", 99, b"")]), "kv[0] 'x' type: 99 is not a GGUF value type (0-12)"),
    "bool": (gguf_file([ARCH, kv(b"x", 7, b"\x02")]), "kv[1] 'x': bool byte 2 is neither 0 nor 1"),
    "duplicate_key": (gguf_file([ARCH, ARCH]), "kv[1] 'general.architecture': the key appears twice"),
    "bad_utf8_key": (gguf_file([kv(b"\xff\xfe", 4, b"\x00" * 4)]), "kv[0].key: not UTF-8"),
    "version_1": (gguf_file([ARCH], version=1), "version: GGUF version 1 is not supported (only (2, 3))"),
    "big_endian": (gguf_file([ARCH], version=3 << 24), "version: this is a big-endian GGUF file, which is not supported"),
    "alignment_3": (
        gguf_file([ARCH, kv(b"general.alignment", 4, struct.pack("<I", 3))]),
        "general.alignment: 3 is not a power of two up to 65536",
    ),
    "alignment_string": (
        gguf_file([ARCH, kv(b"general.alignment", 8, gstr(b"32"))]),
        "general.alignment: '32' is not a power of two",
    ),
    "n_dims": (
        gguf_file([ARCH], [gstr(b"direction.1") + struct.pack("<I", 2**31)]),
        "tensor_infos[0] 'direction.1': n_dims 2147483648 is not 1..4",
    ),
    "zero_dim": (gguf_file([ARCH], [ti(b"direction.1", [0])]), "tensor_infos[0] 'direction.1': a dimension is 0"),
    "huge_dim": (
        gguf_file([ARCH], [ti(b"direction.1", [2**60])]),
        "tensor_infos[0] 'direction.1': 4611686018427387904 bytes of data at offset 0 run past the end of the file",
    ),
    "truncated_data": (
        gguf_file([ARCH], [ti(b"direction.1", [8])], bytes(16)),
        "tensor_infos[0] 'direction.1': 32 bytes of data at offset 0 run past the end of the file (data section of 16 bytes)",
    ),
    "misaligned": (
        gguf_file([ARCH], [ti(b"direction.1", [8], offset=4)], bytes(64)),
        "tensor_infos[0] 'direction.1'.offset: 4 is not a multiple of the alignment 32",
    ),
    "overlap": (
        gguf_file([ARCH], [ti(b"direction.1", [16]), ti(b"direction.2", [16], offset=32)], bytes(96)),
        "tensor_infos: the data of 'direction.2' overlaps that of 'direction.1'",
    ),
    "duplicate_tensor": (
        gguf_file([ARCH], [ti(b"direction.1", [8]), ti(b"direction.1", [8], offset=32)], bytes(64)),
        "tensor_infos[1] 'direction.1': the tensor name appears twice",
    ),
    "long_name": (
        gguf_file([ARCH], [ti(b"d" * 65, [8])], bytes(32)),
        "tensor_infos[0].name: length 65 is beyond the limit of 64 bytes",
    ),
    "walk_budget": (
        gguf_file([kv(b"a", 9, struct.pack("<IQ", 8, 2**18 + 1) + bytes(8 * (2**18 + 1)))]),
        "kv[0] 'a': arrays of strings or arrays hold over 262144 items in all",
    ),
    "truncated_header": (b"GGUF" + struct.pack("<I", 3) + b"\x01", "tensor_count: needs 8 bytes but only 1 remain"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_gguf_fails_fast_naming_the_field(name: str) -> None:
    data, message = HOSTILE[name]
    assert name != "issue_49_bytes" or len(data) == 49
    with deadline(5.0), pytest.raises(SteeringError) as info:
        import_gguf_control_vector_bytes(data)
    assert str(info.value).startswith("control vector: the upload is not a readable GGUF file: ")
    assert message in str(info.value)


def test_foreign_direction_names_and_huge_layer_numbers_rejected() -> None:
    for name in ("direction.05", "direction.+5", "direction.\u0665", "direction.5 ", "direction.99999999999999999999"):
        data = gguf_file([ARCH], [ti(name.encode(), [8])], bytes(32))
        with pytest.raises(
            SteeringError,
            match=re.escape(f"control vector: unexpected tensor {name!r}")
            + "|"
            + re.escape("llama.cpp layer numbers start at 1 and end at 10000"),
        ):
            import_gguf_control_vector_bytes(data)
    with pytest.raises(
        SteeringError,
        match=re.escape("control vector: tensor 'direction.10001': llama.cpp layer numbers start at 1 and end at 10000"),
    ):
        import_gguf_control_vector_bytes(gguf_file([ARCH], [ti(b"direction.10001", [8])], bytes(32)))


def test_every_gguf_value_type_parses_and_gguf_writer_files_import(tmp_path: Path) -> None:
    path = tmp_path / "all-types.gguf"
    writer = gguf.GGUFWriter(path, "controlvector")
    writer.add_custom_alignment(64)
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 2)
    for add, key, value in [
        (writer.add_uint8, "t.u8", 255),
        (writer.add_int8, "t.i8", -128),
        (writer.add_uint16, "t.u16", 65535),
        (writer.add_int16, "t.i16", -32768),
        (writer.add_int32, "t.i32", -(2**31)),
        (writer.add_float32, "t.f32", 0.5),
        (writer.add_bool, "t.bool", True),
        (writer.add_uint64, "t.u64", 2**64 - 1),
        (writer.add_int64, "t.i64", -(2**63)),
        (writer.add_float64, "t.f64", 1 / 3),
        (writer.add_string, "t.str", "héllo"),
    ]:
        add(key, value)
    writer.add_array("t.ints", [1, 2, 3])
    writer.add_array("t.strs", ["a", "bc", "d"])
    writer.add_array("t.nested", [[1, 2], [3]])
    writer.add_tensor("direction.3", np.arange(8, dtype=np.float32))
    writer.add_tensor("direction.1", np.full(8, -0.5, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    parsed = parse_gguf(path.read_bytes())
    assert parsed.version == 3 and parsed.alignment == 64 and parsed.data_start % 64 == 0
    meta = parsed.metadata
    assert (meta["t.u8"], meta["t.i8"], meta["t.u16"], meta["t.i16"], meta["t.i32"]) == (255, -128, 65535, -32768, -(2**31))
    assert (meta["t.f32"], meta["t.bool"], meta["t.u64"], meta["t.i64"], meta["t.f64"], meta["t.str"]) == (
        0.5,
        True,
        2**64 - 1,
        -(2**63),
        1 / 3,
        "héllo",
    )
    assert (meta["t.ints"], meta["t.strs"], meta["t.nested"]) == (GGUFArray(5, 3), GGUFArray(8, 3), GGUFArray(9, 2))
    assert [(t.name, t.shape, t.ggml_type, t.end - t.start) for t in parsed.tensors] == [
        ("direction.3", (8,), 0, 32),
        ("direction.1", (8,), 0, 32),
    ]
    spec = import_gguf_control_vector(path)
    assert spec.active_layers() == [0, 2]
    assert torch.equal(spec.layers[2].vector, torch.arange(8, dtype=torch.float32))
    assert torch.equal(spec.layers[0].vector, torch.full((8,), -0.5))
