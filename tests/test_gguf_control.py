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
    layer_to_llamacpp,
    llamacpp_to_layer,
)
from vectors.gguf_reader import GGUFArray, parse_gguf


def _vec(seed: int, n: int = 8) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_round_trip_bit_exact_with_scale_baked_in(tmp_path: Path) -> None:
    spec = SteeringSpec({4: LayerSteeringSpec(vector=_vec(0), scale=2.5), 1: LayerSteeringSpec(vector=_vec(1))})
    path = export_gguf_control_vector(spec, tmp_path / "cv.gguf")
    back = import_gguf_control_vector(path, model_id="m/x")
    assert back.active_layers() == [1, 4]
    assert torch.equal(back.layers[4].vector, _vec(0) * torch.tensor(2.5))
    assert torch.equal(back.layers[1].vector, _vec(1))
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
    assert [t.name for t in reader.tensors] == ["direction.4"]  # sidesteer layer 4 = output of block 4 = direction.4
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
    for n in (3, 7):  # repeng's export_gguf writes direction.{layer} for the block it hooks
        writer.add_tensor(f"direction.{n}", np.full(8, n, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    spec = import_gguf_control_vector(path)
    assert spec.active_layers() == [3, 7]
    assert torch.equal(spec.layers[3].vector, torch.full((8,), 3.0))
    assert torch.equal(spec.layers[7].vector, torch.full((8,), 7.0))
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
        ({"direction.0": np.ones(8, dtype=np.float32)}, "llama.cpp has no layer 0"),
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
            + re.escape("llama.cpp layer numbers start at 1 and end at 9999"),
        ):
            import_gguf_control_vector_bytes(data)
    for name in ("direction.10000", "direction.10001"):  # sidesteer layers end at MAX_LAYERS - 1 = 9999
        with pytest.raises(
            SteeringError,
            match=re.escape(f"control vector: tensor '{name}': llama.cpp layer numbers start at 1 and end at 9999"),
        ):
            import_gguf_control_vector_bytes(gguf_file([ARCH], [ti(name.encode(), [8])], bytes(32)))
    assert import_gguf_control_vector_bytes(gguf_file([ARCH], [ti(b"direction.9999", [8])], bytes(32))).active_layers() == [9999]


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
    assert spec.active_layers() == [1, 3]
    assert torch.equal(spec.layers[3].vector, torch.arange(8, dtype=torch.float32))
    assert torch.equal(spec.layers[1].vector, torch.full((8,), -0.5))


# -- llama.cpp's numbering: golden files and its loader's arithmetic -------------------------------------------------
N_LAYER, N_EMBD = 30, 576  # the default model, SmolLM2-135M


def golden_control_vector(directions: dict[str, np.ndarray], hint: str = "llama") -> bytes:
    """A control vector written byte by byte (not by the ``gguf`` package sidesteer exports with), as llama.cpp reads it."""
    kvs = [
        ARCH,
        kv(b"controlvector.model_hint", 8, gstr(hint.encode())),
        kv(b"controlvector.layer_count", 4, struct.pack("<I", len(directions))),
    ]
    infos, data = [], b""
    for name, values in directions.items():
        raw = np.asarray(values, dtype="<f4").tobytes()
        infos.append(ti(name.encode(), [len(values)], 0, len(data)))
        data += raw + bytes(-len(raw) % 32)
    return gguf_file(kvs, infos, data)


def llamacpp_steered_blocks(data: bytes, n_layer: int) -> dict[int, np.ndarray]:
    """The vector llama.cpp adds to each 0-based block's output for a control-vector file, step by step as its source.

    common/common.cpp ``common_control_vector_load_one``: N is parsed from ``direction.N``; N = 0 is an error; the
    buffer grows to ``n_embd * N`` floats and layer N's floats go to offset ``n_embd * (N - 1)``.
    src/llama-adapter.cpp ``llama_adapter_cvec::apply``: ``tensors[0]`` is null ("there's never a tensor for layer
    0"); for ``il = 1 .. n_layer - 1`` it copies offset ``n_embd * (il - 1)`` into ``tensors[il]`` when the buffer
    reaches that far; ``build_cvec(cur, il)`` adds ``tensors[il]`` to the output of block ``il``.
    """
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:  # gguf's own reader, not sidesteer's bounded one
        f.write(data)
        f.flush()
        reader = gguf.GGUFReader(f.name)
        tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    n_embd = len(next(iter(tensors.values())))
    buffer = np.zeros(0, dtype=np.float32)
    for name, values in tensors.items():
        n = int(name.removeprefix("direction."))
        assert n > 0, "llama.cpp refuses direction.0"
        if buffer.size < n_embd * n:
            buffer = np.concatenate([buffer, np.zeros(n_embd * n - buffer.size, dtype=np.float32)])
        buffer[n_embd * (n - 1) : n_embd * n] = values
    steered = {}
    for il in range(1, n_layer):
        off = n_embd * (il - 1)
        if off + n_embd <= buffer.size and buffer[off : off + n_embd].any():
            steered[il] = buffer[off : off + n_embd]
    return steered


def _floats(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(N_EMBD).astype(np.float32)


def test_golden_llamacpp_file_imports_to_the_blocks_llamacpp_steers() -> None:
    golden = golden_control_vector({"direction.1": _floats(1), "direction.29": _floats(29)})
    assert sorted(llamacpp_steered_blocks(golden, N_LAYER)) == [1, 29]  # llama.cpp: outputs of blocks 1 and 29
    spec = import_gguf_control_vector_bytes(golden)
    assert spec.active_layers() == [1, 29] and spec.hidden_size == N_EMBD
    assert torch.equal(spec.layers[1].vector, torch.from_numpy(_floats(1)))
    assert torch.equal(spec.layers[29].vector, torch.from_numpy(_floats(29)))
    assert spec.layers[1].scale == spec.layers[29].scale == 1.0


def test_export_writes_the_numbers_llamacpp_applies_at_those_blocks() -> None:
    spec = SteeringSpec({layer: LayerSteeringSpec(torch.from_numpy(_floats(layer)), 0.5 * layer) for layer in (1, 8, 29)})
    data = export_gguf_control_vector_bytes(spec)
    assert [t.name for t in parse_gguf(data).tensors] == ["direction.1", "direction.8", "direction.29"]
    steered = llamacpp_steered_blocks(data, N_LAYER)  # the last block (29 = n_layer - 1) is no longer dropped
    assert sorted(steered) == [1, 8, 29]
    for layer in (1, 8, 29):
        want = (torch.from_numpy(_floats(layer)) * torch.tensor(0.5 * layer)).numpy()
        assert np.array_equal(steered[layer], want)


def test_export_of_layer_0_names_the_layer_and_the_fix(tmp_path: Path) -> None:
    spec = SteeringSpec({0: LayerSteeringSpec(vector=_vec(0)), 3: LayerSteeringSpec(vector=_vec(1))})
    message = (
        "layers[0]: llama.cpp control vectors cannot steer block 0's output (direction.N steers 0-based block N, and "
        "llama.cpp has no slot for N = 0); move the vector to layer 1 or later, or save a sidesteer spec file instead"
    )
    with pytest.raises(SteeringError, match="^" + re.escape(message) + "$"):
        export_gguf_control_vector(spec, tmp_path / "cv.gguf")
    assert not (tmp_path / "cv.gguf").exists()


def test_import_of_direction_0_is_refused() -> None:
    golden = golden_control_vector({"direction.0": _floats(0), "direction.1": _floats(1)})
    message = (
        "control vector: tensor 'direction.0': llama.cpp has no layer 0 (direction.N steers the output of 0-based "
        "block N, and llama.cpp's loader refuses direction.0); the file is malformed: drop that tensor"
    )
    with pytest.raises(SteeringError, match="^" + re.escape(message) + "$"):
        import_gguf_control_vector_bytes(golden)


def test_golden_round_trip_keeps_layers_and_values() -> None:
    directions = {"direction.2": _floats(2), "direction.15": _floats(15), "direction.29": _floats(29)}
    spec = import_gguf_control_vector_bytes(golden_control_vector(directions))
    again = export_gguf_control_vector_bytes(spec)
    assert [t.name for t in parse_gguf(again).tensors] == list(directions)
    assert {k: v.tolist() for k, v in llamacpp_steered_blocks(again, N_LAYER).items()} == {
        int(name.removeprefix("direction.")): values.tolist() for name, values in directions.items()
    }
    back = import_gguf_control_vector_bytes(again)
    assert back.active_layers() == [2, 15, 29]
    assert all(torch.equal(back.layers[i].vector, spec.layers[i].vector) for i in (2, 15, 29))


def test_convention_functions_are_the_identity_from_block_1() -> None:
    assert [layer_to_llamacpp(i) for i in (1, 8, 29)] == [1, 8, 29]
    assert [llamacpp_to_layer(n) for n in (1, 8, 29)] == [1, 8, 29]
    with pytest.raises(SteeringError, match=re.escape("layers[0]: llama.cpp control vectors cannot steer block 0's")):
        layer_to_llamacpp(0)
    with pytest.raises(SteeringError, match=re.escape("direction.N: N = 0, but llama.cpp control vectors start at direction.1")):
        llamacpp_to_layer(0)
