"""A small, strict GGUF reader for files that strangers wrote (control vectors are uploaded to a shared app).

Layout (little-endian, versions 2 and 3): magic ``GGUF``; uint32 version; uint64 tensor count; uint64 key-value
count; the key-value entries (a string key, a uint32 value type, the value; arrays hold a uint32 item type, a uint64
count and the items); the tensor infos (a string name, uint32 n_dims, n_dims uint64 sizes, uint32 ggml type, uint64
offset); padding to ``general.alignment`` (default 32); the tensor data, each tensor at ``data_start + offset``.
Strings are a uint64 length and that many bytes.

Unlike ``gguf.GGUFReader`` (a numpy memmap that trusts the header), this reader checks every count and length read
from the file against the bytes that remain *before* it allocates or loops: ``n`` items of ``s`` bytes need
``n * s`` bytes, a string of length ``n`` needs ``n`` bytes, and the tensor and key-value counts are bounded by the
remaining bytes over the smallest possible entry. Arrays of fixed-size items are skipped without reading them;
arrays of strings or arrays are walked, within a budget of :data:`MAX_WALKED_ITEMS` items per file and
:data:`MAX_ARRAY_NESTING` levels, and at most :data:`MAX_KV` key-value entries and :data:`MAX_TENSORS` tensor infos
are read. Tensor infos are capped at :data:`MAX_DIMS` dimensions and
:data:`MAX_NAME_BYTES`-byte names (ggml's own limits), and tensors of the plain float and int types must lie inside
the file without overlapping. A hostile file is refused in milliseconds with a :class:`~vectors.SteeringError`
naming the field; nothing here knows about control vectors (see :mod:`vectors.gguf_control`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from vectors.errors import SteeringError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
MAX_ALIGNMENT = 1 << 16
MAX_KEY_BYTES = 65535  # the GGUF spec's limit on key length
MAX_NAME_BYTES = 64  # ggml's GGML_MAX_NAME
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
MAX_ARRAY_NESTING = 8
MAX_KV = 1 << 16  # model files hold ~50 keys, control vectors 3
MAX_TENSORS = 1 << 16  # model files hold hundreds to a few thousand tensors, control vectors one per layer
MAX_WALKED_ITEMS = 1 << 18  # strings/arrays inside arrays walked one by one; a control vector has none


class ValueType(IntEnum):
    """GGUF metadata value types."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


SCALAR_FORMATS: dict[int, str] = {
    ValueType.UINT8: "<B",
    ValueType.INT8: "<b",
    ValueType.UINT16: "<H",
    ValueType.INT16: "<h",
    ValueType.UINT32: "<I",
    ValueType.INT32: "<i",
    ValueType.FLOAT32: "<f",
    ValueType.BOOL: "<B",
    ValueType.UINT64: "<Q",
    ValueType.INT64: "<q",
    ValueType.FLOAT64: "<d",
}
STRING_HEADER = 8  # uint64 length
ARRAY_HEADER = 12  # uint32 item type + uint64 count
MIN_KV_BYTES = STRING_HEADER + 1 + 4 + 1  # non-empty key, type, a 1-byte value
MIN_TENSOR_INFO_BYTES = STRING_HEADER + 1 + 4 + 8 + 4 + 8  # non-empty name, n_dims, one size, type, offset

# ggml types whose size is a whole number of bytes per element (the quantised types use blocks; we never read them).
GGML_TYPE_NAMES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    9: "Q8_1",
    24: "I8",
    25: "I16",
    26: "I32",
    27: "I64",
    28: "F64",
    30: "BF16",
}
GGML_ELEMENT_BYTES = {0: 4, 1: 2, 24: 1, 25: 2, 26: 4, 27: 8, 28: 8, 30: 2}
GGML_F32 = 0


def ggml_type_name(ggml_type: int) -> str:
    """A readable name of a ggml tensor type (``"F32"``, or ``"type 99"`` for unknown ones)."""
    return GGML_TYPE_NAMES.get(ggml_type, f"type {ggml_type}")


@dataclass(frozen=True)
class GGUFArray:
    """An array value, checked but not materialised (control vectors need no array)."""

    item_type: int
    count: int


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor info. ``shape`` is in numpy order (GGUF stores the fastest-varying dimension first)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    start: int  # absolute byte offsets into the file
    end: int | None  # None for block-quantised types, whose byte size this reader does not compute


@dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF file: metadata values (scalars, strings, :class:`GGUFArray`) and tensor infos."""

    version: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensorInfo]
    alignment: int
    data_start: int


class _Cursor:
    """Reads little-endian values from ``data``, refusing to read past its end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.walked = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def need(self, nbytes: int, field: str) -> None:
        if nbytes > self.remaining:
            raise SteeringError(
                f"{field}: needs {nbytes} bytes but only {self.remaining} remain; the file is truncated or corrupt"
            )

    def unpack(self, fmt: str, field: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, field)
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def skip(self, nbytes: int, field: str) -> None:
        self.need(nbytes, field)
        self.pos += nbytes

    def string(self, field: str, max_bytes: int | None = None) -> str:
        length = self.unpack("<Q", f"{field} length")
        if max_bytes is not None and length > max_bytes:
            raise SteeringError(f"{field}: length {length} is beyond the limit of {max_bytes} bytes; the file is corrupt")
        self.need(length, f"{field} (a string of {length} bytes)")
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SteeringError(f"{field}: not UTF-8 ({exc}); the file is corrupt") from exc

    def count(self, field: str, item_bytes: int, limit: int | None = None) -> int:
        """A uint64 count of items of at least ``item_bytes`` bytes each, checked against the remaining bytes (and
        against ``limit``, for items that are looped over one by one)."""
        n = self.unpack("<Q", field)
        if limit is not None and n > limit:
            raise SteeringError(f"{field}: {n} is beyond the limit of {limit}; the file is too large to be a control vector")
        if n * item_bytes > self.remaining:
            raise SteeringError(
                f"{field}: {n} items need at least {n * item_bytes} bytes but only {self.remaining} remain; the file is "
                "corrupt or hostile"
            )
        return n


def _value_type(cursor: _Cursor, field: str) -> int:
    raw = cursor.unpack("<I", field)
    if raw not in ValueType._value2member_map_:
        raise SteeringError(f"{field}: {raw} is not a GGUF value type (0-12); the file is corrupt")
    return raw


def _value(cursor: _Cursor, vtype: int, field: str, depth: int) -> Any:
    if vtype == ValueType.STRING:
        return cursor.string(field)
    if vtype == ValueType.ARRAY:
        return _array(cursor, field, depth + 1)
    value = cursor.unpack(SCALAR_FORMATS[vtype], field)
    if vtype == ValueType.BOOL:
        if value not in (0, 1):
            raise SteeringError(f"{field}: bool byte {value} is neither 0 nor 1; the file is corrupt")
        return bool(value)
    return value


def _array(cursor: _Cursor, field: str, depth: int) -> GGUFArray:
    if depth > MAX_ARRAY_NESTING:
        raise SteeringError(f"{field}: arrays nest more than {MAX_ARRAY_NESTING} deep; the file is corrupt or hostile")
    item_type = _value_type(cursor, f"{field} item type")
    if item_type in SCALAR_FORMATS:
        size = struct.calcsize(SCALAR_FORMATS[item_type])
        n = cursor.count(f"{field} array length", size)
        cursor.skip(n * size, f"{field} array data")  # fixed-size items: skipped, never looped over
        return GGUFArray(item_type, n)
    n = cursor.count(f"{field} array length", STRING_HEADER if item_type == ValueType.STRING else ARRAY_HEADER)
    cursor.walked += n
    if cursor.walked > MAX_WALKED_ITEMS:
        raise SteeringError(
            f"{field}: arrays of strings or arrays hold over {MAX_WALKED_ITEMS} items in all; the file is too large to "
            "be a control vector"
        )
    for i in range(n):
        if item_type == ValueType.STRING:
            cursor.skip(cursor.unpack("<Q", f"{field}[{i}] length"), f"{field}[{i}]")
        else:
            _array(cursor, f"{field}[{i}]", depth + 1)
    return GGUFArray(item_type, n)


def _tensor_info(cursor: _Cursor, index: int) -> tuple[str, tuple[int, ...], int, int]:
    field = f"tensor_infos[{index}]"
    name = cursor.string(f"{field}.name", MAX_NAME_BYTES)
    n_dims = cursor.unpack("<I", f"{field}.n_dims")
    if not 1 <= n_dims <= MAX_DIMS:
        raise SteeringError(f"{field} {name!r}: n_dims {n_dims} is not 1..{MAX_DIMS}; the file is corrupt")
    dims = [cursor.unpack("<Q", f"{field} {name!r}.dims[{d}]") for d in range(n_dims)]
    if 0 in dims:
        raise SteeringError(f"{field} {name!r}: a dimension is 0; the file is corrupt")
    ggml_type = cursor.unpack("<I", f"{field} {name!r}.type")
    offset = cursor.unpack("<Q", f"{field} {name!r}.offset")
    return name, tuple(reversed(dims)), ggml_type, offset


def parse_gguf(data: bytes) -> GGUFFile:
    """Parse and check a GGUF file's header, metadata and tensor infos (the tensor data is not read).

    Args:
        data: The whole file.

    Returns:
        The parsed file.

    Raises:
        SteeringError: Not GGUF, an unsupported version, or any count, length, type, name or offset that the file's
            size does not allow; the message names the field (``"kv[2] 'general.architecture'"``, ...).
    """
    cursor = _Cursor(bytes(data))
    magic = cursor.data[:4]
    if magic != MAGIC:
        raise SteeringError(f"magic: {magic!r} is not {MAGIC!r}; this is not a GGUF file")
    cursor.skip(4, "magic")
    version = cursor.unpack("<I", "version")
    if version not in VERSIONS:
        if int.from_bytes(version.to_bytes(4, "little"), "big") in VERSIONS:
            raise SteeringError("version: this is a big-endian GGUF file, which is not supported; convert it to little-endian")
        raise SteeringError(f"version: GGUF version {version} is not supported (only {VERSIONS}); re-export the file")
    tensor_count = cursor.count("tensor_count", MIN_TENSOR_INFO_BYTES, MAX_TENSORS)
    kv_count = cursor.count("kv_count", MIN_KV_BYTES, MAX_KV)
    metadata: dict[str, Any] = {}
    for i in range(kv_count):
        key = cursor.string(f"kv[{i}].key", MAX_KEY_BYTES)
        field = f"kv[{i}] {key[:80]!r}"
        if key in metadata:
            raise SteeringError(f"{field}: the key appears twice; the file is corrupt")
        metadata[key] = _value(cursor, _value_type(cursor, f"{field} type"), field, 0)
    alignment = metadata.get(ALIGNMENT_KEY, DEFAULT_ALIGNMENT)
    if (
        isinstance(alignment, bool)
        or not isinstance(alignment, int)
        or not 0 < alignment <= MAX_ALIGNMENT
        or alignment & (alignment - 1)
    ):
        raise SteeringError(f"{ALIGNMENT_KEY}: {alignment!r} is not a power of two up to {MAX_ALIGNMENT}; the file is corrupt")
    infos = [_tensor_info(cursor, i) for i in range(tensor_count)]
    data_start = -(-cursor.pos // alignment) * alignment
    data_len = len(cursor.data) - data_start
    tensors: list[GGUFTensorInfo] = []
    seen: set[str] = set()
    for i, (name, shape, ggml_type, offset) in enumerate(infos):
        field = f"tensor_infos[{i}] {name!r}"
        if name in seen:
            raise SteeringError(f"{field}: the tensor name appears twice; the file is corrupt")
        seen.add(name)
        if offset % alignment:
            raise SteeringError(f"{field}.offset: {offset} is not a multiple of the alignment {alignment}; the file is corrupt")
        end = None
        if ggml_type in GGML_ELEMENT_BYTES:
            elements = 1
            for d in shape:
                elements *= d
            nbytes = elements * GGML_ELEMENT_BYTES[ggml_type]
            if offset + nbytes > data_len:
                raise SteeringError(
                    f"{field}: {nbytes} bytes of data at offset {offset} run past the end of the file (data section of "
                    f"{max(data_len, 0)} bytes); the file is truncated or corrupt"
                )
            end = data_start + offset + nbytes
        tensors.append(GGUFTensorInfo(name, shape, ggml_type, data_start + offset, end))
    extents = sorted((t.start, t.end, t.name) for t in tensors if t.end is not None)
    for (_, end_a, name_a), (start_b, _, name_b) in zip(extents, extents[1:], strict=False):
        if start_b < end_a:
            raise SteeringError(f"tensor_infos: the data of {name_b!r} overlaps that of {name_a!r}; the file is corrupt")
    return GGUFFile(version, metadata, tensors, alignment, data_start)
