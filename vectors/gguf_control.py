"""llama.cpp control vectors: GGUF files with ``general.architecture = "controlvector"``.

The layout is the one repeng writes and llama.cpp's ``--control-vector`` reads: string ``controlvector.model_hint``,
uint32 ``controlvector.layer_count`` and one float32 tensor ``direction.N`` of ``hidden_size`` floats per layer.
``direction.N`` is added to the output of 0-based block ``N``, exactly sidesteer's layer ``N`` (see
:mod:`vectors.convention`): layer 4 is ``direction.4``. llama.cpp has no slot for block 0, so layer 0 cannot be
exported and ``direction.0`` is refused. A control vector only *adds* to the residual stream: projection caps and
ablations have no place in it, and a direction's scale is baked into the tensor. Nor can it leave positions unsteered:
llama.cpp adds a control vector at every position, so a spec with ``skip_first_tokens > 0`` is refused on export
rather than exported with a different meaning.

Import never trusts the file: it is parsed by the bounded reader of :mod:`vectors.gguf_reader` (not by
``gguf.GGUFReader``, which loops over whatever counts a header declares), and only canonical ``direction.N`` tensors
(ASCII digits, no leading zeros, ``1 <= N < MAX_LAYERS``, see :data:`~vectors.limits.MAX_LAYERS`) of float32 and shape ``[hidden]``
are accepted, their values within the limits of :mod:`vectors.limits`. Export uses the ``gguf`` package's writer, as
repeng and llama.cpp do, and round-trips bit-exactly.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from vectors.convention import layer_to_llamacpp, llamacpp_to_layer
from vectors.errors import SteeringError, show
from vectors.gguf_reader import GGML_F32, GGUFTensorInfo, ggml_type_name, parse_gguf
from vectors.limits import MAX_HIDDEN_SIZE, MAX_LAYERS
from vectors.safetensors_io import MAX_FILE_BYTES, atomic_write_bytes, read_limited
from vectors.spec import LayerSteeringSpec, SpecMetadata, SteeringSpec

ARCHITECTURE = "controlvector"
MODEL_HINT_KEY = f"{ARCHITECTURE}.model_hint"
LAYER_COUNT_KEY = f"{ARCHITECTURE}.layer_count"
# ASCII digits, no leading zeros: "direction.05" or "direction.٥" would alias "direction.5".
TENSOR_PATTERN = re.compile(r"direction\.([1-9][0-9]*|0)")


def export_gguf_control_vector_bytes(spec: SteeringSpec, *, model_hint: str | None = None) -> bytes:
    """Serialise the add-vectors of ``spec`` as llama.cpp control-vector GGUF bytes.

    Each layer ``L`` with a vector becomes ``direction.{L} = scale * vector`` (float32): llama.cpp adds
    ``direction.N`` to the output of 0-based block ``N``, as sidesteer's layer ``N`` does.

    Args:
        spec: A spec holding only add-vectors.
        model_hint: ``controlvector.model_hint``; defaults to the spec's ``model_id``, else ``"unknown"`` (repeng writes
            the model type, e.g. ``"llama"``; llama.cpp ignores it).

    Returns:
        The GGUF file's bytes.

    Raises:
        SteeringError: The spec has projection caps or ablations, ``skip_first_tokens > 0`` (llama.cpp steers every
            position), an add-vector at layer 0 (llama.cpp has no slot for block 0), or no add-vector at all.
    """
    import gguf

    if not isinstance(spec, SteeringSpec):
        raise SteeringError(f"spec: expected a SteeringSpec, got {type(spec).__name__}")
    spec.validate()  # fields may have changed since the spec was built
    if spec.skip_first_tokens:
        raise SteeringError(
            f"skip_first_tokens: {spec.skip_first_tokens} cannot be exported: llama.cpp control vectors steer every "
            "position; set skip_first_tokens=0 to export the add vectors (they then steer the first positions too), "
            "or save a sidesteer spec file instead"
        )
    directions: dict[int, np.ndarray] = {}
    for index, layer in spec.layers.items():
        if layer.projection_cap is not None or layer.ablation is not None:
            op = "projection cap" if layer.projection_cap is not None else "ablation"
            raise SteeringError(
                f"layers[{index}]: has a {op}, but llama.cpp control vectors hold only add vectors; remove caps and "
                "ablations (or save a sidesteer spec file instead)"
            )
        if layer.vector is not None:
            # Scale in float32, as the engine does; GGUF has no per-tensor scale.
            directions[layer_to_llamacpp(index)] = (
                (layer.vector * torch.tensor(layer.scale, dtype=torch.float32)).numpy().astype(np.float32)
            )
    if not directions:
        raise SteeringError("spec: no layer has an add vector; a control vector needs at least one direction")
    # GGUFWriter drops empty strings, and repeng's reader needs the key: never write "".
    hint = model_hint or spec.metadata.model_id or "unknown"
    fd, tmp = tempfile.mkstemp(prefix="sidesteer-cv-", suffix=".gguf")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
        writer.add_string(MODEL_HINT_KEY, hint)
        writer.add_uint32(LAYER_COUNT_KEY, len(directions))
        for number, tensor in sorted(directions.items()):
            writer.add_tensor(f"direction.{number}", tensor)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return Path(tmp).read_bytes()
    finally:
        Path(tmp).unlink(missing_ok=True)


def export_gguf_control_vector(spec: SteeringSpec, path: str | Path, *, model_hint: str | None = None) -> Path:
    """Write the add-vectors of ``spec`` as a llama.cpp control vector at ``path`` (atomic). Returns the path.

    Raises:
        SteeringError: See :func:`export_gguf_control_vector_bytes`; also a path not ending in ``.gguf``.
    """
    p = Path(path)
    if p.suffix != ".gguf":
        raise SteeringError(f"path: control vectors end in .gguf, got {p.name!r}; rename it")
    atomic_write_bytes(p, export_gguf_control_vector_bytes(spec, model_hint=model_hint))
    return p


def import_gguf_control_vector(path: str | Path, *, model_id: str | None = None) -> SteeringSpec:
    """Read a llama.cpp control vector into a spec: ``direction.N`` -> layer ``N`` add vector, scale 1.0.

    Args:
        path: The ``.gguf`` file.
        model_id: Recorded as the spec's ``model_id`` (the file's ``model_hint`` goes into the description).

    Returns:
        The spec (never unpickles; the file is parsed by the bounded reader of :mod:`vectors.gguf_reader`).

    Raises:
        SteeringError: Missing/oversized file, not a control vector, or bad tensors (dtype, shape, NaN/Inf, naming,
            ``direction.0``, magnitudes beyond :mod:`vectors.limits`).
    """
    what = "control vector"
    return _read_gguf(read_limited(path, what), f"{Path(path).name!r}", what, model_id)


def import_gguf_control_vector_bytes(data: bytes, *, model_id: str | None = None) -> SteeringSpec:
    """:func:`import_gguf_control_vector` on uploaded bytes."""
    what = "control vector"
    if not isinstance(data, bytes | bytearray):
        raise SteeringError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_FILE_BYTES:
        raise SteeringError(f"{what}: {len(data)} bytes is over the {MAX_FILE_BYTES}-byte limit; is it really a control vector?")
    return _read_gguf(bytes(data), "the upload", what, model_id)


def _direction(tensor: GGUFTensorInfo, data: bytes, what: str) -> tuple[int, torch.Tensor]:
    """The sidesteer layer and the float32 ``[hidden]`` vector of one ``direction.N`` tensor."""
    where = f"{what}: tensor {tensor.name!r}"
    match = TENSOR_PATTERN.fullmatch(tensor.name)
    if not match:
        raise SteeringError(f"{what}: unexpected tensor {tensor.name!r}; control vectors hold only 'direction.N' tensors")
    if match.group(1) == "0":
        raise SteeringError(
            f"{where}: llama.cpp has no layer 0 (direction.N steers the output of 0-based block N, and llama.cpp's loader "
            "refuses direction.0); the file is malformed: drop that tensor"
        )
    if len(match.group(1)) > len(str(MAX_LAYERS)) or not 1 <= int(match.group(1)) < MAX_LAYERS:
        raise SteeringError(f"{where}: llama.cpp layer numbers start at 1 and end at {MAX_LAYERS - 1}; the file is malformed")
    if tensor.ggml_type != GGML_F32:
        raise SteeringError(f"{where} has type {ggml_type_name(tensor.ggml_type)}, expected F32; re-export it as float32")
    if len(tensor.shape) != 1:
        raise SteeringError(f"{where} has shape {tensor.shape}, expected one dimension (hidden_size)")
    (hidden,) = tensor.shape
    if hidden > MAX_HIDDEN_SIZE:
        raise SteeringError(
            f"{where} has {hidden} floats, beyond the limit hidden_size <= {MAX_HIDDEN_SIZE}; the file is malformed"
        )
    vector = torch.from_numpy(np.frombuffer(data, dtype="<f4", count=hidden, offset=tensor.start).astype(np.float32))  # [hidden]
    return llamacpp_to_layer(int(match.group(1))), vector


def _read_gguf(data: bytes, name: str, what: str, model_id: str | None) -> SteeringSpec:
    try:
        parsed = parse_gguf(data)
    except SteeringError as exc:
        raise SteeringError(
            f"{what}: {name} is not a readable GGUF file: {exc}; export it again with llama.cpp or repeng"
        ) from exc

    def string_field(key: str) -> str | None:
        value = parsed.metadata.get(key)
        return value if isinstance(value, str) else None

    arch = string_field("general.architecture")
    if arch != ARCHITECTURE:
        raise SteeringError(
            f"{what}: general.architecture is {show(arch)}, expected {ARCHITECTURE!r}; this GGUF is a model or another "
            "kind of file, not a llama.cpp control vector"
        )
    hint = string_field(MODEL_HINT_KEY) or ""
    layers: dict[int, LayerSteeringSpec] = {}
    for tensor in parsed.tensors:
        layer, vector = _direction(tensor, data, what)
        try:
            layers[layer] = LayerSteeringSpec(vector=vector, scale=1.0)
        except SteeringError as exc:
            raise SteeringError(f"{what}: tensor {tensor.name!r} (layers[{layer}]).{exc}") from exc
    if not layers:
        raise SteeringError(f"{what}: the file holds no direction tensors; nothing to steer with")
    description = f"llama.cpp control vector (model_hint {show(hint)})" if hint else "llama.cpp control vector"
    try:
        return SteeringSpec(layers, SpecMetadata(model_id=model_id, description=description))
    except SteeringError as exc:
        raise SteeringError(f"{what}: {exc}") from exc
