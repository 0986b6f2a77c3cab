"""Safe, atomic safetensors I/O shared by the spec file and the registry.

Reading never unpickles anything: the bytes must be a well-formed safetensors container (8-byte little-endian
header length, JSON header, raw tensor data), checked before any tensor is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vectors.errors import SteeringError

MAX_FILE_BYTES = 64 * 1024 * 1024  # a spec for a 70B model (8192 hidden x 80 layers x 3 ops fp32) is ~8 MB


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
    """Serialise float32 tensors plus a JSON header stored under ``metadata_key`` in the safetensors metadata."""
    return st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={metadata_key: json.dumps(header, sort_keys=True)})


def read_limited(path: str | Path, what: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read a file after checking it exists and is at most ``max_bytes``."""
    p = Path(path)
    if not p.is_file():
        raise SteeringError(f"{what}: no file at {str(p)!r}; check the path")
    size = p.stat().st_size
    if size > max_bytes:
        raise SteeringError(f"{what}: file is {size} bytes, over the {max_bytes}-byte limit; is it really a steering file?")
    return p.read_bytes()


def decode(data: bytes, metadata_key: str, what: str, max_bytes: int = MAX_FILE_BYTES) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Parse safetensors bytes and return ``(header, tensors)``.

    Raises:
        SteeringError: The bytes are over the limit, not safetensors (e.g. a pickle), truncated, or lack the header.
    """
    if len(data) > max_bytes:
        raise SteeringError(f"{what}: {len(data)} bytes is over the {max_bytes}-byte limit; is it really a steering file?")
    if len(data) < 8:
        raise SteeringError(f"{what}: {len(data)} bytes is too short to be a safetensors file; the file is truncated or of another kind")
    header_len = int.from_bytes(data[:8], "little")
    if header_len <= 1 or 8 + header_len > len(data):
        raise SteeringError(
            f"{what}: not a valid safetensors file (header length {header_len} for {len(data)} bytes): truncated, or "
            "another format such as a pickled .pt renamed to .safetensors; export it again as safetensors"
        )
    try:
        raw_header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SteeringError(f"{what}: the safetensors header is not JSON ({exc}); the file is corrupt or of another format") from exc
    if not isinstance(raw_header, dict):
        raise SteeringError(f"{what}: the safetensors header is not a JSON object; the file is corrupt")
    meta = raw_header.get("__metadata__") or {}
    if metadata_key not in meta:
        raise SteeringError(
            f"{what}: safetensors metadata has no {metadata_key!r} entry; this is not a sidesteer file of that kind "
            "(import raw vectors through the registry or GGUF import instead)"
        )
    try:
        header = json.loads(meta[metadata_key])
    except json.JSONDecodeError as exc:
        raise SteeringError(f"{what}: the {metadata_key!r} metadata is not valid JSON ({exc}); the file is corrupt") from exc
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error type for truncated/overlapping data
        raise SteeringError(f"{what}: tensor data is unreadable ({exc}); the file is truncated or corrupt") from exc
    if not isinstance(header, dict):
        raise SteeringError(f"{what}: the {metadata_key!r} metadata is not a JSON object; the file is corrupt")
    return header, tensors
