"""llama.cpp control vectors: GGUF files with ``general.architecture = "controlvector"``.

The layout is the one repeng writes and llama.cpp's ``--control-vector`` reads: string ``controlvector.model_hint``,
uint32 ``controlvector.layer_count`` and one float32 tensor ``direction.N`` of ``hidden_size`` floats per layer.
``N`` is 1-based and means the output of block ``N - 1`` (see :mod:`vectors.convention`), so sidesteer layer 4 is
``direction.5``. A control vector only *adds* to the residual stream: projection caps and ablations have no place
in it, and a direction's scale is baked into the tensor.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from vectors.convention import layer_to_llamacpp, llamacpp_to_layer
from vectors.errors import SteeringError
from vectors.safetensors_io import MAX_FILE_BYTES, atomic_write_bytes, read_limited
from vectors.spec import LayerSteeringSpec, SpecMetadata, SteeringSpec, as_vector

ARCHITECTURE = "controlvector"
MODEL_HINT_KEY = f"{ARCHITECTURE}.model_hint"
LAYER_COUNT_KEY = f"{ARCHITECTURE}.layer_count"
TENSOR_PATTERN = re.compile(r"^direction\.(\d+)$")


def export_gguf_control_vector_bytes(spec: SteeringSpec, *, model_hint: str | None = None) -> bytes:
    """Serialise the add-vectors of ``spec`` as llama.cpp control-vector GGUF bytes.

    Each layer ``L`` with a vector becomes ``direction.{L+1} = scale * vector`` (float32).

    Args:
        spec: A spec holding only add-vectors.
        model_hint: ``controlvector.model_hint``; defaults to the spec's ``model_id``, else ``"unknown"`` (repeng writes
            the model type, e.g. ``"llama"``; llama.cpp ignores it).

    Returns:
        The GGUF file's bytes.

    Raises:
        SteeringError: The spec has projection caps or ablations, or no add-vector at all.
    """
    import gguf

    if not isinstance(spec, SteeringSpec):
        raise SteeringError(f"spec: expected a SteeringSpec, got {type(spec).__name__}")
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
            directions[layer_to_llamacpp(index)] = (layer.vector * torch.tensor(layer.scale, dtype=torch.float32)).numpy().astype(np.float32)
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
    """Read a llama.cpp control vector into a spec: ``direction.N`` -> layer ``N-1`` add vector, scale 1.0.

    Args:
        path: The ``.gguf`` file.
        model_id: Recorded as the spec's ``model_id`` (the file's ``model_hint`` goes into the description).

    Returns:
        The spec (never unpickles; tensors are checked before use).

    Raises:
        SteeringError: Missing/oversized file, not a control vector, or bad tensors (dtype, shape, NaN/Inf, naming).
    """
    what = "control vector"
    read_limited(path, what)  # existence and size check before the GGUF reader maps the file
    return _read_gguf(Path(path), what, model_id)


def import_gguf_control_vector_bytes(data: bytes, *, model_id: str | None = None) -> SteeringSpec:
    """:func:`import_gguf_control_vector` on uploaded bytes."""
    what = "control vector"
    if not isinstance(data, (bytes, bytearray)):
        raise SteeringError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_FILE_BYTES:
        raise SteeringError(f"{what}: {len(data)} bytes is over the {MAX_FILE_BYTES}-byte limit; is it really a control vector?")
    fd, tmp = tempfile.mkstemp(prefix="sidesteer-cv-", suffix=".gguf")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return _read_gguf(Path(tmp), what, model_id)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _read_gguf(path: Path, what: str, model_id: str | None) -> SteeringSpec:
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError/struct errors/IndexError on foreign or truncated files
        raise SteeringError(f"{what}: {path.name!r} is not a readable GGUF file ({exc}); export it again with llama.cpp or repeng") from exc

    def string_field(key: str) -> str | None:
        field = reader.get_field(key)
        if field is None:
            return None
        try:
            value = field.contents()
        except Exception as exc:
            raise SteeringError(f"{what}: metadata {key!r} is unreadable ({exc}); the file is corrupt") from exc
        return value if isinstance(value, str) else None

    arch = string_field("general.architecture")
    if arch != ARCHITECTURE:
        raise SteeringError(
            f"{what}: general.architecture is {arch!r}, expected {ARCHITECTURE!r}; this GGUF is a model or another "
            "kind of file, not a llama.cpp control vector"
        )
    hint = string_field(MODEL_HINT_KEY) or ""
    layers: dict[int, LayerSteeringSpec] = {}
    for tensor in reader.tensors:
        match = TENSOR_PATTERN.match(tensor.name)
        if not match:
            raise SteeringError(f"{what}: unexpected tensor {tensor.name!r}; control vectors hold only 'direction.N' tensors")
        number = int(match.group(1))
        if number < 1:
            raise SteeringError(f"{what}: tensor {tensor.name!r}: llama.cpp layer numbers start at 1; the file is malformed")
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise SteeringError(f"{what}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, expected F32; re-export it as float32")
        if len(tensor.shape) != 1:
            raise SteeringError(f"{what}: tensor {tensor.name!r} has shape {tuple(int(d) for d in tensor.shape)}, expected one dimension (hidden_size)")
        layer = llamacpp_to_layer(number)
        if layer in layers:
            raise SteeringError(f"{what}: tensor {tensor.name!r} appears twice; the file is malformed")
        vector = torch.from_numpy(np.array(tensor.data, dtype=np.float32, copy=True).reshape(-1))  # [hidden]
        layers[layer] = LayerSteeringSpec(vector=as_vector(vector, f"{what}.{tensor.name}"), scale=1.0)
    if not layers:
        raise SteeringError(f"{what}: the file holds no direction tensors; nothing to steer with")
    description = f"llama.cpp control vector (model_hint {hint!r})" if hint else "llama.cpp control vector"
    try:
        return SteeringSpec(layers, SpecMetadata(model_id=model_id, description=description))
    except SteeringError as exc:
        raise SteeringError(f"{what}: {exc}") from exc
