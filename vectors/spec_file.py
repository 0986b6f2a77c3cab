"""The spec file: one ``.safetensors`` file holding a whole :class:`SteeringSpec`.

Tensors are float32 1-D vectors with canonical names, one per op that has a vector: ``layers.{L}.vector``,
``layers.{L}.projection_cap.vector`` and ``layers.{L}.ablation.vector``. The safetensors metadata key ``"sidesteer"``
holds a JSON header::

    {"format": "sidesteer.steering_spec", "version": 2, "model_id": ..., "hidden_size": ...,
     "layer_convention": ..., "op_order": [...], "description": ..., "skip_first_tokens": int,
     "layers": {"L": {"vector": name|null, "scale": float,
                      "projection_cap": {"vector": name, "min": float|null, "max": float|null}|null,
                      "ablation": {"vector": name, "scale": float}|null}},
     "sha256": {tensor name: hex digest of its little-endian float32 bytes},
     "fingerprint": SteeringSpec.fingerprint() of the content}

Versions: 2 (written since ``SteeringSpec.skip_first_tokens``) adds the required key ``skip_first_tokens``; version 1
files (no such key) are still read, as ``skip_first_tokens = 0``, which is what they meant: every position steered.
A version this sidesteer does not know is refused (a newer file may hold fields it would silently drop).

Reading is strict, because spec files are shared between strangers (an upload in the app is read by a server many
people use). Everything is checked before a tensor is built (see :mod:`vectors.safetensors_io`): every key of the
header is known and has the right type, layer keys are canonical decimal integers (``"8"``, not ``"08"``, ``"+8"``
or ``"٨"``) below :data:`~vectors.limits.MAX_LAYERS`, each field names exactly its canonical tensor, and every
stored tensor is named by exactly one field (so a file cannot make one tensor count for thousands of layers).

Tamper evidence: the ``sha256`` of every tensor and the ``fingerprint`` are required and checked on every load, and a
file whose content does not match them is refused (always; there is no opt-out). An edited file is almost always a
corrupted one, and the few legitimate edits (a new scale, say) are one ``SteeringSpec.save`` away. Metadata
(``model_id``, ``description``) is not covered by the fingerprint and may be edited freely.

This module knows the file, not the spec type: it turns plain layer values into bytes and checked bytes back into
plain values (:class:`SpecFileContent`). :meth:`SteeringSpec.save`, :meth:`~SteeringSpec.load`,
:meth:`~SteeringSpec.to_bytes` and :meth:`~SteeringSpec.from_bytes` in :mod:`vectors.spec` build on it, so imports
run one way: ``vectors.spec -> vectors.spec_file``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vectors.convention import LAYER_CONVENTION, OP_ORDER
from vectors.errors import SteeringError, show
from vectors.limits import MAX_LAYERS
from vectors.safetensors_io import Container, atomic_write_bytes, encode, read_container, read_limited, tensor_sha256

SPEC_FORMAT = "sidesteer.steering_spec"
SPEC_VERSION = 2  # the version written
READ_VERSIONS = (1, 2)  # the versions read; 1 has no skip_first_tokens (read as 0)
METADATA_KEY = "sidesteer"
WHAT = "spec file"

REQUIRED_KEYS = frozenset({"format", "version", "layers", "sha256", "fingerprint"})
OPTIONAL_KEYS = frozenset({"model_id", "hidden_size", "description", "layer_convention", "op_order"})
KEYS_SINCE = {2: frozenset({"skip_first_tokens"})}  # required from that version on
LAYER_KEYS = frozenset({"vector", "scale", "projection_cap", "ablation"})
CAP_KEYS = frozenset({"vector", "min", "max"})
ABLATION_KEYS = frozenset({"vector", "scale"})
# ASCII digits only ([0-9], not \d, which also matches e.g. Arabic-Indic digits), no sign, no leading zeros.
LAYER_KEY = re.compile(r"0|[1-9][0-9]*")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def tensor_name(index: int, op: str) -> str:
    """The canonical tensor name of a layer's op: ``op`` is ``"vector"``, ``"projection_cap"`` or ``"ablation"``."""
    return f"layers.{index}.vector" if op == "vector" else f"layers.{index}.{op}.vector"


@dataclass(frozen=True)
class SpecFileContent:
    """A spec file whose structure, tensor references and hashes are checked; its values are not checked yet.

    ``layers`` maps a layer index to a plain layer, as :func:`encode_spec_file` takes it: ``{"vector": tensor or
    None, "scale": ..., "projection_cap": {"vector": tensor, "min": ..., "max": ...} or None, "ablation":
    {"vector": tensor, "scale": ...} or None}`` (float32 tensors read from the file, in place of tensor names).
    """

    layers: dict[int, dict[str, Any]]
    metadata: dict[str, Any]  # model_id, hidden_size, description, as stored
    fingerprint: str  # as recorded; see check_fingerprint
    skip_first_tokens: Any = 0  # as stored (version 2), or 0 (version 1); the spec checks the value


def encode_spec_file(
    layers: Mapping[int, Mapping[str, Any]], metadata: Mapping[str, Any], fingerprint: str, skip_first_tokens: int = 0
) -> bytes:
    """Spec-file bytes (format version :data:`SPEC_VERSION`) from plain, already validated values.

    Args:
        layers: Layer index -> plain layer, in the form of :attr:`SpecFileContent.layers`.
        metadata: ``model_id``, ``hidden_size`` and ``description``.
        fingerprint: ``SteeringSpec.fingerprint()`` of the content.
        skip_first_tokens: ``SteeringSpec.skip_first_tokens``.
    """
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, Any] = {}
    for index, layer in layers.items():
        entry: dict[str, Any] = {"vector": None, "scale": layer["scale"], "projection_cap": None, "ablation": None}
        if layer["vector"] is not None:
            entry["vector"] = name = tensor_name(index, "vector")
            tensors[name] = layer["vector"]
        cap, abl = layer["projection_cap"], layer["ablation"]
        if cap is not None:
            name = tensor_name(index, "projection_cap")
            tensors[name] = cap["vector"]
            entry["projection_cap"] = {"vector": name, "min": cap["min"], "max": cap["max"]}
        if abl is not None:
            name = tensor_name(index, "ablation")
            tensors[name] = abl["vector"]
            entry["ablation"] = {"vector": name, "scale": abl["scale"]}
        entries[str(index)] = entry
    header = {
        "format": SPEC_FORMAT,
        "version": SPEC_VERSION,
        "model_id": metadata["model_id"],
        "hidden_size": metadata["hidden_size"],
        "description": metadata["description"],
        "skip_first_tokens": skip_first_tokens,
        "layer_convention": LAYER_CONVENTION,
        "op_order": list(OP_ORDER),
        "layers": entries,
        "sha256": {name: tensor_sha256(t) for name, t in tensors.items()},
        "fingerprint": fingerprint,
    }
    return encode(tensors, METADATA_KEY, header)


def spec_file_path(path: str | Path) -> Path:
    """``path`` as a :class:`~pathlib.Path`, after checking that it names a ``.safetensors`` file."""
    p = Path(path)
    if p.suffix != ".safetensors":
        raise SteeringError(f"path: spec files end in .safetensors, got {p.name!r}; rename it")
    return p


def write_spec_file(path: Path, data: bytes) -> None:
    """Write spec-file bytes to ``path`` atomically (a reader never sees half a file)."""
    atomic_write_bytes(path, data)


def read_spec_file(path: str | Path) -> bytes:
    """The bytes of the spec file at ``path``, after checking it exists and is within the size limit."""
    return read_limited(path, WHAT)


def _check_keys(obj: Any, required: frozenset[str], optional: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SteeringError(f"{where}: expected a JSON object, got {show(obj)}; the file is corrupt")
    missing = sorted(required - set(obj))
    if missing:
        raise SteeringError(f"{where}: the key {missing[0]!r} is missing; the file is corrupt or was not written by sidesteer")
    for key in obj:
        if key not in required | optional:
            raise SteeringError(f"{where}: unknown key {show(key)}; the file was edited or was not written by sidesteer")
    return obj


def _layer_index(key: str) -> int:
    if re.fullmatch(r"-[0-9]+", key):
        raise SteeringError(f"layers: key {show(key)} is a negative layer index; use 0-based indices 0..num_layers-1")
    if not LAYER_KEY.fullmatch(key):
        raise SteeringError(
            f"layers: key {show(key)} is not a layer number; keys are plain decimal integers such as '8' (the file is corrupt)"
        )
    if len(key) > len(str(MAX_LAYERS)) or int(key) >= MAX_LAYERS:
        raise SteeringError(f"layers: key {show(key)} is beyond the limit layer index < {MAX_LAYERS}; the file is corrupt")
    return int(key)


def _reference(container: Container, name: Any, index: int, op: str, where: str) -> str:
    """Check that field ``where`` names the tensor it must: stored in the file, and the canonical one."""
    if not isinstance(name, str) or name not in container.tensors:
        raise SteeringError(f"{where}: names tensor {show(name)}, which the file does not hold; the file is corrupt")
    expected = tensor_name(index, op)
    if name != expected:
        raise SteeringError(f"{where}: names tensor {show(name)}, but this field's tensor is {expected!r}; the file is corrupt")
    return name


def _parse_layers(raw_layers: Any, container: Container) -> dict[int, dict[str, Any]]:
    """Check the layer entries' structure and tensor references; returns index -> entry (not yet values)."""
    if not isinstance(raw_layers, dict):
        raise SteeringError(f"layers: expected an object of layer index -> ops, got {show(raw_layers)}; the file is corrupt")
    entries: dict[int, dict[str, Any]] = {}
    referenced: set[str] = set()
    for key, raw in raw_layers.items():
        index = _layer_index(key)
        where = f"layers[{index}]"
        entry = _check_keys(raw, LAYER_KEYS, frozenset(), where)
        if entry["vector"] is not None:
            referenced.add(_reference(container, entry["vector"], index, "vector", f"{where}.vector"))
        for op, keys in (("projection_cap", CAP_KEYS), ("ablation", ABLATION_KEYS)):
            if entry[op] is not None:
                sub = _check_keys(entry[op], keys, frozenset(), f"{where}.{op}")
                referenced.add(_reference(container, sub["vector"], index, op, f"{where}.{op}.vector"))
        entries[index] = entry
    for name in container.tensors:
        if name not in referenced:
            raise SteeringError(
                f"tensors: the file holds tensor {name[:80]!r}, which no layer names; the file was edited or is corrupt"
            )
    return entries


def _check_hashes(hashes: Any, container: Container) -> None:
    if not isinstance(hashes, dict):
        raise SteeringError(f"sha256: expected an object of tensor name -> hex digest, got {show(hashes)}; the file is corrupt")
    for name, digest in hashes.items():
        if name not in container.tensors:
            raise SteeringError(f"sha256: records tensor {name[:80]!r}, which the file does not hold; the file is corrupt")
        if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
            raise SteeringError(f"sha256[{name!r}]: {show(digest)} is not a sha256 hex digest; the file is corrupt")
    for name in container.tensors:
        if name not in hashes:
            raise SteeringError(f"sha256: no hash is recorded for tensor {name!r}; every tensor needs one, re-export the file")
        if container.sha256(name) != hashes[name]:
            raise SteeringError(
                f"sha256[{name!r}]: the tensor's bytes do not match its recorded sha256; the file was edited or corrupted; "
                "re-export it"
            )


def _plain_layer(entry: dict[str, Any], container: Container) -> dict[str, Any]:
    """A checked layer entry with its tensors read from the file in place of their names."""

    def tensor(name: str | None) -> torch.Tensor | None:
        return None if name is None else container.tensor(name)

    cap, abl = entry["projection_cap"], entry["ablation"]
    return {
        "vector": tensor(entry["vector"]),
        "scale": entry["scale"],
        "projection_cap": None if cap is None else {"vector": tensor(cap["vector"]), "min": cap["min"], "max": cap["max"]},
        "ablation": None if abl is None else {"vector": tensor(abl["vector"]), "scale": abl["scale"]},
    }


def decode_spec_file(data: bytes) -> SpecFileContent:
    """Parse spec-file bytes and check everything about the file; the values are the spec's to check.

    Raises:
        SteeringError: Not a spec file, wrong format or version, a malformed or unknown header field, corrupt or
            truncated data, or a hash that does not match its tensor. The message names the field.
    """
    container = read_container(data, WHAT)
    header = container.metadata_json(METADATA_KEY, WHAT)
    if header.get("format") != SPEC_FORMAT:
        raise SteeringError(
            f"format: expected {SPEC_FORMAT!r}, got {show(header.get('format'))}; this is not a sidesteer spec file"
        )
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in READ_VERSIONS:
        raise SteeringError(
            f"version: spec file version {show(version)} is not supported (this sidesteer reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}); upgrade sidesteer or re-export"
        )
    since = frozenset().union(*(keys for v, keys in KEYS_SINCE.items() if version >= v))
    _check_keys(header, REQUIRED_KEYS | since, OPTIONAL_KEYS, "header")
    if not isinstance(header.get("layer_convention", ""), str):
        raise SteeringError(f"layer_convention: expected a string, got {show(header['layer_convention'])}; the file is corrupt")
    if header.get("op_order", list(OP_ORDER)) != list(OP_ORDER):
        raise SteeringError(
            f"op_order: {show(header['op_order'])} is not sidesteer's order {list(OP_ORDER)}; the file is corrupt"
        )
    fingerprint = header["fingerprint"]
    if not isinstance(fingerprint, str) or not SHA256_HEX.fullmatch(fingerprint):
        raise SteeringError(f"fingerprint: {show(fingerprint)} is not a sha256 hex digest; the file is corrupt, re-export it")
    entries = _parse_layers(header["layers"], container)
    _check_hashes(header["sha256"], container)
    return SpecFileContent(
        layers={index: _plain_layer(entry, container) for index, entry in entries.items()},
        metadata={
            "model_id": header.get("model_id"),
            "hidden_size": header.get("hidden_size"),
            "description": header.get("description"),
        },
        fingerprint=fingerprint,
        skip_first_tokens=header.get("skip_first_tokens", 0),
    )


def check_fingerprint(recorded: str, content: str) -> None:
    """Refuse a file whose content's fingerprint is not the one it recorded (an edited or corrupted file)."""
    if content != recorded:
        raise SteeringError(
            f"fingerprint: the file's content does not match its recorded fingerprint ({recorded[:12]}..., content "
            f"{content[:12]}...); the file was edited or corrupted; re-export it"
        )
