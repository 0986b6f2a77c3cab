"""Safe, bounded, atomic safetensors I/O shared by the spec file and the registry.

Reading never unpickles anything and never trusts a size before checking it. The container is parsed here, not by
the safetensors library, so that every count, shape, dtype and offset is checked against the file's own size
*before* any tensor is built: an 8-byte little-endian header length (at most :data:`MAX_HEADER_BYTES`), a JSON
header (strict: bounded depth, no duplicate keys; see :mod:`vectors.strict_json`), then the raw tensor data. Every
tensor must be float32 (``"F32"``) and 1-D, and the tensors' ``data_offsets`` must tile the data section exactly (in
order, no gaps, no overlaps, nothing after the last one), as the safetensors format itself requires. Tensors are
materialised only on request (:meth:`Container.tensor`), so reading a file costs memory of the order of its size.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as st_save

from vectors import strict_json
from vectors.errors import SteeringError, show
from vectors.limits import MAX_HIDDEN_SIZE

MAX_FILE_BYTES = 64 * 1024 * 1024  # a spec for a 70B model (8192 hidden x 80 layers x 3 ops fp32) is ~8 MB
MAX_HEADER_BYTES = 1024 * 1024  # ~2000 tensors' entries; sidesteer headers are a few hundred bytes per tensor
TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})
FLOAT32_BYTES = 4


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's little-endian float32 bytes (the hash both file kinds record per tensor)."""
    return hashlib.sha256(t.to(torch.float32).contiguous().numpy().astype("<f4").tobytes()).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; shared registries and exports must be readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode(tensors: dict[str, torch.Tensor], metadata_key: str, header: dict[str, Any]) -> bytes:
    """Serialise float32 tensors plus a JSON header stored under ``metadata_key`` in the safetensors metadata.

    Raises:
        SteeringError: The file would be refused on reading: its header is over :data:`MAX_HEADER_BYTES` (a very long
            description, say) or nests deeper than :data:`~vectors.strict_json.MAX_JSON_DEPTH`.
    """
    text = json.dumps(header, sort_keys=True)
    if strict_json.json_depth(text) > strict_json.MAX_JSON_DEPTH:
        raise SteeringError(
            f"metadata: nests deeper than {strict_json.MAX_JSON_DEPTH} levels, which no reader accepts; flatten it"
        )
    data = st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={metadata_key: text})
    header_len = int.from_bytes(data[:8], "little")
    if header_len > MAX_HEADER_BYTES:
        raise SteeringError(
            f"metadata: the file's header would be {header_len} bytes, over the {MAX_HEADER_BYTES}-byte limit of readers; "
            "shorten the description or other text, or use fewer layers"
        )
    return data


def read_limited(path: str | Path, what: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read a file after checking it exists and is at most ``max_bytes``."""
    p = Path(path)
    if not p.is_file():
        raise SteeringError(f"{what}: no file at {str(p)!r}; check the path")
    size = p.stat().st_size
    if size > max_bytes:
        raise SteeringError(f"{what}: file is {size} bytes, over the {max_bytes}-byte limit; is it really a steering file?")
    return p.read_bytes()


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry, checked: a float32 vector of ``size`` floats at ``data[start:end]``."""

    name: str
    size: int
    start: int  # absolute offsets into the file's bytes
    end: int


@dataclass(frozen=True)
class Container:
    """A checked safetensors file: string metadata and tensor entries; tensor data is read only on request."""

    data: bytes
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]

    def tensor(self, name: str) -> torch.Tensor:
        """Materialise tensor ``name`` as a new float32 ``[size]`` CPU tensor."""
        info = self.tensors[name]
        return torch.from_numpy(np.frombuffer(self.data, dtype="<f4", count=info.size, offset=info.start).astype(np.float32))

    def sha256(self, name: str) -> str:
        """sha256 of tensor ``name``'s stored bytes (equals :func:`tensor_sha256` of the materialised tensor)."""
        info = self.tensors[name]
        return hashlib.sha256(memoryview(self.data)[info.start : info.end]).hexdigest()

    def metadata_json(self, metadata_key: str, what: str) -> dict[str, Any]:
        """The JSON object stored under ``metadata_key`` (strictly parsed).

        Raises:
            SteeringError: The entry is missing, not JSON or not a JSON object.
        """
        if metadata_key not in self.metadata:
            raise SteeringError(
                f"{what}: safetensors metadata has no {metadata_key!r} entry; this is not a sidesteer file of that kind "
                "(import raw vectors through the registry or GGUF import instead)"
            )
        header = strict_json.loads(self.metadata[metadata_key], f"{what}: the {metadata_key!r} metadata")
        if not isinstance(header, dict):
            raise SteeringError(f"{what}: the {metadata_key!r} metadata is not a JSON object; the file is corrupt")
        return header


def _tensor_info(name: str, entry: Any, data_start: int, data_len: int, what: str) -> TensorInfo:
    where = f"{what}: tensor {name[:80]!r}"
    if not isinstance(entry, dict) or set(entry) != TENSOR_KEYS:
        keys = sorted(entry)[:5] if isinstance(entry, dict) else type(entry).__name__
        raise SteeringError(f"{where}: expected an object with keys {sorted(TENSOR_KEYS)}, got {show(keys)}; the file is corrupt")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype != "F32":
        raise SteeringError(f"{where}: dtype {show(dtype)} is not 'F32'; sidesteer files store float32 vectors, re-export it")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise SteeringError(f"{where}: shape {show(shape)} is not a list of sizes; the file is corrupt")
    if len(shape) != 1:
        raise SteeringError(f"{where}: shape {show(shape)} is not 1-D; sidesteer files store 1-D vectors [hidden_size]")
    size = shape[0]
    if size <= 0:
        raise SteeringError(f"{where}: shape {show(shape)} is empty or negative; a vector holds hidden_size floats")
    if size > MAX_HIDDEN_SIZE:
        raise SteeringError(
            f"{where}: shape {show(shape)} is beyond the limit hidden_size <= {MAX_HIDDEN_SIZE}; the file is corrupt"
        )
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise SteeringError(f"{where}: data_offsets {show(offsets)} is not a [begin, end] pair of integers; the file is corrupt")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise SteeringError(f"{where}: data_offsets {show(offsets)} are not 0 <= begin <= end; the file is corrupt")
    if end > data_len:
        raise SteeringError(
            f"{where}: data_offsets {show(offsets)} run past the end of the data ({data_len} bytes): the file is "
            "truncated or corrupt"
        )
    if end - begin != size * FLOAT32_BYTES:
        raise SteeringError(
            f"{where}: data_offsets {show(offsets)} span {end - begin} bytes but shape {shape} of float32 needs "
            f"{size * FLOAT32_BYTES}; the file is corrupt"
        )
    return TensorInfo(name, size, data_start + begin, data_start + end)


def read_container(data: bytes, what: str, max_bytes: int = MAX_FILE_BYTES) -> Container:
    """Parse and check safetensors bytes without building any tensor.

    Args:
        data: The whole file.
        what: The kind of file, for error messages (``"spec file"``).
        max_bytes: Refuse larger inputs.

    Returns:
        The checked container.

    Raises:
        SteeringError: Over the size limit, not safetensors (e.g. a pickle), a header that is too long, not strict
            JSON or malformed, a tensor that is not a float32 1-D vector, or offsets outside the file, overlapping or
            leaving gaps.
    """
    if not isinstance(data, bytes | bytearray):
        raise SteeringError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise SteeringError(f"{what}: {len(data)} bytes is over the {max_bytes}-byte limit; is it really a steering file?")
    if len(data) < 8:
        raise SteeringError(
            f"{what}: {len(data)} bytes is too short to be a safetensors file; the file is truncated or of another kind"
        )
    header_len = int.from_bytes(data[:8], "little")
    if header_len <= 1 or 8 + header_len > len(data):
        raise SteeringError(
            f"{what}: not a valid safetensors file (header length {header_len} for {len(data)} bytes): truncated, or "
            "another format such as a pickled .pt renamed to .safetensors; export it again as safetensors"
        )
    if header_len > MAX_HEADER_BYTES:
        raise SteeringError(
            f"{what}: the safetensors header is {header_len} bytes, beyond the limit of {MAX_HEADER_BYTES}; the file is corrupt or hostile"
        )
    raw_header = strict_json.loads(data[8 : 8 + header_len], f"{what}: the safetensors header")
    if not isinstance(raw_header, dict):
        raise SteeringError(f"{what}: the safetensors header is not a JSON object; the file is corrupt")
    metadata = raw_header.pop("__metadata__", {})
    if not isinstance(metadata, dict):
        raise SteeringError(f"{what}: __metadata__ is not a JSON object; the file is corrupt")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise SteeringError(f"{what}: __metadata__[{key[:80]!r}] is not a string; the file is corrupt")
    data_start = 8 + header_len
    data_len = len(data) - data_start
    tensors = {name: _tensor_info(name, entry, data_start, data_len, what) for name, entry in raw_header.items()}
    position = data_start  # the tensors must tile the data section exactly
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start != position:
            problem = "overlaps the tensor before it" if info.start < position else "leaves a gap before it"
            raise SteeringError(f"{what}: tensor {info.name[:80]!r}: data_offsets {problem}; the file is corrupt")
        position = info.end
    if position != len(data):
        raise SteeringError(
            f"{what}: {len(data) - position} bytes after the last tensor belong to no tensor; the file is corrupt"
        )
    return Container(data, metadata, tensors)


def decode(
    data: bytes, metadata_key: str, what: str, max_bytes: int = MAX_FILE_BYTES
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Parse safetensors bytes and return ``(header, tensors)`` (every tensor materialised).

    Raises:
        SteeringError: See :func:`read_container`; also a missing or malformed ``metadata_key`` header.
    """
    container = read_container(data, what, max_bytes)
    header = container.metadata_json(metadata_key, what)
    return header, {name: container.tensor(name) for name in container.tensors}
