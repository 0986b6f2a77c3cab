"""The vector registry: folders of named steering vectors, one ``<name>.safetensors`` file each.

Each file holds one float32 tensor ``"vector"`` (``[hidden_size]``) and, under the safetensors metadata key
``"sidesteer.vector"``, a JSON header::

    {"format": "sidesteer.vector", "version": 1, "name": ..., "description": ..., "model_id": ...,
     "hidden_size": int, "suggested_layer": int|null, "method": "mean-diff"|"imported"|"gguf"|...,
     "created": ISO-8601 UTC, "norm": float, "sha256": hex of the little-endian float32 bytes, "extra": {...}}

``suggested_layer`` follows :mod:`vectors.convention` (0-based decoder block, output residual stream).

Limits (checked on add *and* on read, so a file written by hand or by an older version obeys them too):

* names: 1-64 (:data:`MAX_NAME_CHARS`) ASCII letters, digits, ``.``, ``_``, ``-``; start with a letter or digit; no
  ``..``, no trailing ``.``, no Windows device name (``CON``, ``PRN``, ``AUX``, ``NUL``, ``COM1``-``COM9``,
  ``LPT1``-``LPT9``, any case, also before an extension as in ``con.x``); matched in full (no trailing newline);
* ``description``: valid UTF-8 text (no lone surrogates), no control characters but tab and line breaks, at most
  :data:`MAX_DESCRIPTION_CHARS`; ``model_id`` (:data:`MAX_MODEL_ID_CHARS`), ``method`` (:data:`MAX_METHOD_CHARS`) and
  ``created`` (:data:`MAX_CREATED_CHARS`): the same on one line;
* ``extra``: a dict that serialises to strict JSON (no NaN/Infinity) of at most :data:`MAX_EXTRA_JSON_CHARS`;
  ``extra["suggested_scale"]``, when present, is a finite number;
* files: at most :data:`MAX_VECTOR_FILE_BYTES`, read with that bound.

Layering: ``VectorRegistry(root, shipped=[...])`` reads ``root`` (the writable user folder) first, then each
read-only shipped folder (e.g. the repo's ``registry/smollm2``); writes go to ``root`` only, a name that a shipped folder
holds cannot be added or removed, and ``read_only=True`` refuses every write (public deploys).

Atomicity: a vector is written to a temp file in ``root`` and moved into place, so a reader never sees half a file;
``add(overwrite=False)`` publishes it with a hard link (or, where the file system has none, an ``O_EXCL`` create),
which fails when the name exists, so of concurrent adds of one name exactly one wins.

Reading never breaks listing: :meth:`VectorRegistry.list` skips a corrupt or invalid file, logs a warning (through
:mod:`logging`, so a warnings-as-errors setting cannot turn it into a crash) and :meth:`VectorRegistry.problems`
reports it; :meth:`VectorRegistry.get` of such a file raises a :class:`SteeringError` naming the file.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import stat
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from vectors.errors import SteeringError
from vectors.safetensors_io import atomic_write_bytes, decode, encode, tensor_sha256
from vectors.spec import as_vector

logger = logging.getLogger(__name__)

VECTOR_FORMAT = "sidesteer.vector"
VECTOR_VERSION = 1
METADATA_KEY = "sidesteer.vector"
TENSOR_NAME = "vector"
SUFFIX = ".safetensors"
MAX_NAME_CHARS = 64
# \A...\Z (and fullmatch): ``$`` would also match before a trailing newline, letting "pirate\n" through.
NAME_PATTERN = re.compile(rf"\A[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_CHARS - 1}}}\Z")
# Windows refuses these file names whatever the case and whatever follows a dot ("con.x" opens the console).
RESERVED_NAMES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))})
MAX_DESCRIPTION_CHARS = 2000
MAX_MODEL_ID_CHARS = 256  # hub ids are at most 96; local checkpoint paths can be longer
MAX_METHOD_CHARS = 64
MAX_CREATED_CHARS = 64
MAX_EXTRA_JSON_CHARS = 16 * 1024  # compact JSON; training stats and prompt-set names, not data
MAX_VECTOR_FILE_BYTES = 4 * 1024 * 1024  # one fp32 vector of 16k floats is 64 KB; anything far larger is not ours
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK, errno.EXDEV})
READ_ONLY_MESSAGE = "registry: this deploy is read-only (SIDESTEER_READ_ONLY); vectors cannot be created or deleted here"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # tab, \n and \r (Windows line ends) stay allowed
_SURROGATE = re.compile("[\ud800-\udfff]")  # only lone ones can occur in a str; they cannot be encoded as UTF-8


def validate_name(name: Any) -> str:
    """Check a registry name (see the module docstring for the rules).

    Args:
        name: The candidate name.

    Returns:
        ``name`` unchanged.

    Raises:
        SteeringError: The name is not a string, is empty, too long, hidden, holds a control character, a path
            separator or ``..``, ends with ``.``, or is a Windows device name.
    """
    if not isinstance(name, str):
        raise SteeringError(f"name: expected a string, got {type(name).__name__}; use e.g. 'happy' or 'formal-v2'")
    rule = (
        f"use 1-{MAX_NAME_CHARS} letters, digits, '.', '_' or '-', starting with a letter or digit (no path separators, "
        "no '..'), e.g. 'happy' or 'formal-v2'"
    )
    if _CONTROL.search(name) or _SURROGATE.search(name):
        raise SteeringError(f"name: {name!r:.80} holds a control or non-text character (e.g. a newline); {rule}")
    if len(name) > MAX_NAME_CHARS:
        raise SteeringError(
            f"name: {name[:20]!r}... is {len(name)} characters, over the {MAX_NAME_CHARS}-character limit; {rule}"
        )
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise SteeringError(f"name: {name!r} is not a valid vector name; {rule}")
    if name.endswith("."):
        raise SteeringError(f"name: {name!r} ends with '.', which Windows drops from file names; end it with a letter or digit")
    if name.split(".", 1)[0].lower() in RESERVED_NAMES:
        raise SteeringError(
            f"name: {name!r} is a reserved device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9, also before an "
            f"extension); pick another name, e.g. '{name.split('.', 1)[0]}-vector'"
        )
    return name


def _check_text(value: Any, field_name: str, limit: int, *, multiline: bool = False) -> str:
    """Check a metadata string: valid UTF-8 text, no control characters (tab/newline only if ``multiline``), capped."""
    if not isinstance(value, str):
        raise SteeringError(f"{field_name}: expected text, got {type(value).__name__}; pass a string")
    bad = _SURROGATE.search(value)
    if bad:
        raise SteeringError(
            f"{field_name}: character {bad.start()} ({bad.group()!r}) is not valid UTF-8 text (a lone surrogate, often "
            "from a mis-decoded file name or byte string); remove it or type the text again"
        )
    bad = (_CONTROL_MULTILINE if multiline else _CONTROL).search(value)
    if bad:
        allowed = "; tab and newline are allowed" if multiline else " and keep it on one line"
        raise SteeringError(f"{field_name}: character {bad.start()} is a control character ({bad.group()!r}); remove it{allowed}")
    if len(value) > limit:
        raise SteeringError(f"{field_name}: {len(value)} characters is over the {limit}-character limit; shorten it")
    return value


def _check_extra(extra: Any) -> dict[str, Any]:
    """Validate ``extra`` and return it normalised through strict JSON (a deep copy with string keys)."""
    if not isinstance(extra, dict):
        raise SteeringError(f"extra: expected a dict of JSON values, got {type(extra).__name__}")
    try:
        # ensure_ascii=False: a lone surrogate anywhere inside must fail the UTF-8 encode below, not hide as \udcff
        text = json.dumps(extra, ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"))
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise SteeringError(
            f"extra: not strict JSON ({type(exc).__name__}: {str(exc)[:120]}); use plain finite numbers, UTF-8 strings, "
            "lists and dicts with string keys"
        ) from exc
    if len(text) > MAX_EXTRA_JSON_CHARS:
        raise SteeringError(
            f"extra: {len(text)} characters of JSON is over the {MAX_EXTRA_JSON_CHARS}-character limit; keep only small metadata"
        )
    normalised = json.loads(text)
    scale = normalised.get("suggested_scale")
    if "suggested_scale" in normalised and (
        isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(_as_float(scale))
    ):
        raise SteeringError(f"extra.suggested_scale: {scale!r:.40} is not a finite number; pass e.g. 4.0 or leave it out")
    return normalised


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # ints beyond float range (JSON allows them)
        return math.inf


def _utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class VectorEntry:
    """One registry vector with its metadata.

    Args:
        name: Registry name (the file stem).
        vector: float32 ``[hidden_size]``.
        description: What steering with it does.
        model_id: The model it was made for (hub id), if known.
        hidden_size: ``vector.numel()``.
        suggested_layer: 0-based decoder layer it works best at, if known.
        method: How it was made: ``"mean-diff"``, ``"imported"``, ``"gguf"``, ...
        created: ISO-8601 UTC timestamp.
        norm: L2 norm of ``vector``.
        path: The file it was read from or written to.
        extra: Free-form JSON metadata, e.g. ``{"suggested_scale": 4.0}``; stored normalised through strict JSON.

    Raises:
        SteeringError: A field breaks the limits of the module docstring (bad name, vector, text or ``extra``).
    """

    name: str
    vector: torch.Tensor
    description: str = ""
    model_id: str | None = None
    hidden_size: int = 0
    suggested_layer: int | None = None
    method: str = "imported"
    created: str = ""
    norm: float = 0.0
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_name(self.name)
        self.vector = as_vector(self.vector, f"vector[{self.name}]")
        self.hidden_size = int(self.vector.numel())
        self.norm = float(self.vector.norm())
        if self.suggested_layer is not None and (
            isinstance(self.suggested_layer, bool) or not isinstance(self.suggested_layer, int) or self.suggested_layer < 0
        ):
            raise SteeringError(
                f"suggested_layer: {self.suggested_layer!r} is not a 0-based layer index; pass an int >= 0 or None"
            )
        if not math.isfinite(self.norm):
            raise SteeringError(f"vector: the norm of {self.name!r} overflows float32; rescale it")
        # Every string reaches the UI of every user: one lone surrogate or NaN here breaks its JSON for all of them.
        self.description = _check_text(
            "" if self.description is None else self.description, "description", MAX_DESCRIPTION_CHARS, multiline=True
        )
        if self.model_id is not None:
            _check_text(self.model_id, "model_id", MAX_MODEL_ID_CHARS)
        if not isinstance(self.method, str) or not self.method:
            raise SteeringError(f"method: {self.method!r:.80} is not a non-empty string; use e.g. 'mean-diff' or 'imported'")
        _check_text(self.method, "method", MAX_METHOD_CHARS)
        self.created = _check_text(self.created, "created", MAX_CREATED_CHARS) or _utc_now()
        self.extra = _check_extra(self.extra)

    @property
    def suggested_scale(self) -> float | None:
        """``extra["suggested_scale"]`` when set."""
        value = self.extra.get("suggested_scale")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def residual_norm(self) -> float | None:
        """``extra["residual_norm"]`` when set (> 0): the norm of the mean residual stream at ``suggested_layer``,
        recorded when the vector was made, which relates a scale to the stream it is added to."""
        value = self.extra.get("residual_norm")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        return float(value) if ok else None

    def to_dict(self) -> dict[str, Any]:
        """Metadata as a plain dict (no tensor), for tables and JSON APIs."""
        return {
            "name": self.name,
            "description": self.description,
            "model_id": self.model_id,
            "hidden_size": self.hidden_size,
            "suggested_layer": self.suggested_layer,
            "method": self.method,
            "created": self.created,
            "norm": self.norm,
            "path": None if self.path is None else str(self.path),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], vector: torch.Tensor) -> VectorEntry:
        """Rebuild an entry from :meth:`to_dict` output plus its tensor (``norm``/``hidden_size`` are recomputed)."""
        return cls(
            name=data.get("name"),  # type: ignore[arg-type]
            vector=vector,
            description=data.get("description") or "",
            model_id=data.get("model_id"),
            suggested_layer=data.get("suggested_layer"),
            method=data.get("method") or "imported",
            created=data.get("created") or "",
            path=None if data.get("path") is None else Path(data["path"]),
            extra=dict(data.get("extra") or {}),
        )

    def header(self) -> dict[str, Any]:
        """The file header (see the module docstring)."""
        return {
            "format": VECTOR_FORMAT,
            "version": VECTOR_VERSION,
            "name": self.name,
            "description": self.description,
            "model_id": self.model_id,
            "hidden_size": self.hidden_size,
            "suggested_layer": self.suggested_layer,
            "method": self.method,
            "created": self.created,
            "norm": self.norm,
            "sha256": tensor_sha256(self.vector),
            "extra": self.extra,
        }

    def to_bytes(self) -> bytes:
        """The registry file's bytes."""
        return encode({TENSOR_NAME: self.vector}, METADATA_KEY, self.header())

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "vector file", path: Path | None = None) -> VectorEntry:
        """Parse and validate registry-file bytes (never unpickles).

        Raises:
            SteeringError: Not a sidesteer vector file, wrong format/version, bad tensor, or a checksum mismatch.
        """
        header, tensors = decode(data, METADATA_KEY, what, max_bytes=MAX_VECTOR_FILE_BYTES)
        if header.get("format") != VECTOR_FORMAT:
            raise SteeringError(
                f"{what}: format is {header.get('format')!r}, expected {VECTOR_FORMAT!r}; this is not a registry vector"
            )
        if header.get("version") != VECTOR_VERSION:
            raise SteeringError(
                f"{what}: version {header.get('version')!r} is not supported (expected {VECTOR_VERSION}); upgrade sidesteer"
            )
        if set(tensors) != {TENSOR_NAME}:
            raise SteeringError(
                f"{what}: expected exactly one tensor {TENSOR_NAME!r}, found {sorted(tensors)}; the file is corrupt"
            )
        vector = tensors[TENSOR_NAME]
        if vector.dtype != torch.float32:
            raise SteeringError(f"{what}: tensor dtype {vector.dtype}, expected float32; re-add the vector through the registry")
        vector = as_vector(vector, f"{what}.vector")
        expected = header.get("sha256")
        if expected is not None and expected != tensor_sha256(vector):
            raise SteeringError(f"{what}: the vector's sha256 does not match its header; the file is corrupt, re-add it")
        hidden = header.get("hidden_size")
        if hidden is not None and hidden != vector.numel():
            raise SteeringError(
                f"{what}: header hidden_size={hidden} but the vector has {vector.numel()} floats; the file is corrupt"
            )
        extra = header.get("extra") or {}
        try:
            return cls(
                name=header.get("name"),  # type: ignore[arg-type]
                vector=vector,
                description=header.get("description") or "",
                model_id=header.get("model_id"),
                suggested_layer=header.get("suggested_layer"),
                method=header.get("method") or "imported",
                created=header.get("created") or "",
                path=path,
                extra=extra,
            )
        except SteeringError as exc:
            raise SteeringError(f"{what}: {exc}") from exc


def _read_bounded(path: Path, what: str, limit: int = MAX_VECTOR_FILE_BYTES) -> bytes:
    """Read at most ``limit`` bytes of a regular file (the bound holds even if the file grows after a ``stat``)."""
    try:
        # O_NONBLOCK: if the file was swapped for a FIFO after listing, opening it must not hang the server
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise SteeringError(f"{what}: not a regular file; remove it from the registry folder")
            data = fh.read(limit + 1)
    except FileNotFoundError as exc:
        raise SteeringError(f"{what}: the file is gone (removed while reading?); refresh the list") from exc
    except OSError as exc:
        raise SteeringError(f"{what}: cannot be read ({exc.strerror or exc}); check the file's permissions") from exc
    if len(data) > limit:
        raise SteeringError(f"{what}: file is over the {limit}-byte limit; is it really a registry vector? Remove it")
    return data


class VectorRegistry:
    """Named vectors in a writable folder plus optional read-only shipped folders, one ``<name>.safetensors`` each.

    Names are looked up in ``root`` first, then in each shipped folder in order; :meth:`list` and :meth:`names` are
    sorted by name. Writes go to ``root`` only. ``VectorRegistry(root)`` is one writable folder.

    Args:
        root: The writable user folder (created on first :meth:`add`; may not exist yet).
        read_only: Refuse :meth:`add` and :meth:`remove` (public deploys).
        shipped: Read-only folders read after ``root``, e.g. the repo's ``registry/smollm2``; their names cannot be
            added (no shadowing) or removed. A folder that does not exist is reported by :meth:`problems`.

    Raises:
        SteeringError: A shipped folder is ``root`` itself.
    """

    def __init__(self, root: str | Path, *, read_only: bool = False, shipped: Sequence[str | Path] = ()) -> None:
        self.root = Path(root).expanduser()
        self.read_only = bool(read_only)
        if isinstance(shipped, (str, Path)):  # one folder, not a sequence of one-letter folders
            shipped = (shipped,)
        folders: list[Path] = []
        for folder in (Path(f).expanduser() for f in shipped):
            if folder.resolve() == self.root.resolve():
                raise SteeringError(f"shipped: {str(folder)!r} is also the writable root; pass a separate user folder as root")
            if folder.resolve() not in {f.resolve() for f in folders}:
                folders.append(folder)
        self.shipped: tuple[Path, ...] = tuple(folders)
        self._logged: set[tuple[str, str]] = set()  # problems already logged, so list() on every page load logs each once

    def __repr__(self) -> str:
        extra = (", read_only=True" if self.read_only else "") + (
            f", shipped={[str(f) for f in self.shipped]!r}" if self.shipped else ""
        )
        return f"VectorRegistry({str(self.root)!r}{extra})"

    @property
    def writable(self) -> bool:
        """Whether :meth:`add` and :meth:`remove` are allowed (not ``read_only``)."""
        return not self.read_only

    @property
    def roots(self) -> tuple[Path, ...]:
        """All folders in look-up order: ``root``, then the shipped folders."""
        return (self.root, *self.shipped)

    def path_for(self, name: str) -> Path:
        """The file of ``name`` in ``root`` (validated; always directly inside ``root``), where :meth:`add` writes it."""
        validate_name(name)
        path = self.root / f"{name}{SUFFIX}"
        if path.resolve().parent != self.root.resolve():
            raise SteeringError(f"name: {name!r} resolves outside the registry folder {str(self.root)!r}; pick a plain name")
        return path

    def _shipped_path(self, name: str) -> Path | None:
        """The first shipped file of a validated ``name``, if any."""
        return next((p for p in (f / f"{name}{SUFFIX}" for f in self.shipped) if p.is_file()), None)

    def _locate(self, name: str) -> tuple[Path, bool] | None:
        """``(file, shipped?)`` of ``name`` (validated here) in look-up order, or None."""
        path = self.path_for(name)
        if path.is_file():
            return path, False
        shipped = self._shipped_path(name)
        return None if shipped is None else (shipped, True)

    def _where(self) -> str:
        return repr(str(self.root)) if not self.shipped else repr([str(f) for f in self.roots])

    def _files(self) -> tuple[dict[str, tuple[Path, bool]], list[tuple[str, str]]]:
        """Visible ``{name: (file, shipped?)}`` sorted by name, and problems found without opening any file."""
        found: dict[str, tuple[Path, bool]] = {}
        problems: list[tuple[str, str]] = []
        for index, folder in enumerate(self.roots):
            shipped = index > 0  # roots[0] is the user's root
            try:
                paths = sorted(folder.iterdir()) if folder.is_dir() else None
            except OSError as exc:
                problems.append(
                    (
                        folder.name,
                        f"registry folder {folder.name!r}: cannot be listed ({exc.strerror or exc}); check its permissions",
                    )
                )
                continue
            if paths is None:
                if shipped:  # a missing user folder is normal (nothing added yet); a missing shipped one is a bad deploy
                    problems.append((folder.name, f"shipped folder {folder.name!r} does not exist; check the shipped path"))
                continue
            for path in paths:
                # hidden files are ours (temp files) or the OS's; not vectors, not problems
                if path.suffix != SUFFIX or path.name.startswith(".") or not path.is_file():
                    continue
                try:
                    validate_name(path.stem)
                except SteeringError as exc:
                    problems.append((path.name, f"registry file {path.name!r}: {exc}; rename the file"))
                    continue
                if path.stem in found:  # the earlier folder wins; say so, since this file is never read
                    winner = found[path.stem][0].parent.name
                    problems.append(
                        (
                            path.name,
                            f"vector {path.stem!r} in {folder.name!r} is hidden by the one of the same name in {winner!r}; rename or remove one of them",
                        )
                    )
                    continue
                found[path.stem] = (path, shipped)
        return dict(sorted(found.items())), problems

    def names(self) -> list[str]:
        """Sorted names of the vector files in all folders (not opened, so corrupt files are included)."""
        return list(self._files()[0])

    def __contains__(self, name: object) -> bool:
        try:
            return self._locate(name) is not None  # type: ignore[arg-type]
        except SteeringError:
            return False

    def __len__(self) -> int:
        return len(self.names())

    def is_shipped(self, name: str) -> bool:
        """Whether the vector ``name`` resolves to a read-only shipped folder (False for unknown or invalid names)."""
        try:
            found = self._locate(name)
        except SteeringError:
            return False
        return found is not None and found[1]

    def _read(self, path: Path, shipped: bool = False) -> VectorEntry:
        what = f"{'shipped ' if shipped else ''}registry vector {path.name!r}"
        try:
            entry = VectorEntry.from_bytes(_read_bounded(path, what), what, path)
        except SteeringError:
            raise
        except Exception as exc:  # json and safetensors parse untrusted bytes: any failure is a corrupt file, not a crash
            raise SteeringError(
                f"{what}: unreadable ({type(exc).__name__}: {str(exc)[:200]}); the file is corrupt, remove it or re-add the vector"
            ) from exc
        if entry.name != path.stem:
            raise SteeringError(f"{what}: the header names it {entry.name!r}; rename the file or re-add the vector")
        return entry

    def _scan(self) -> tuple[list[VectorEntry], list[tuple[str, str]]]:
        """Read every visible file: readable entries sorted by name, and ``(file name, reason)`` for the rest."""
        files, problems = self._files()
        entries: list[VectorEntry] = []
        for path, shipped in files.values():
            try:
                entries.append(self._read(path, shipped))
            except SteeringError as exc:
                problems.append((path.name, str(exc)))
        for file_name, reason in problems:
            if (file_name, reason) not in self._logged:  # a race here only logs twice
                self._logged.add((file_name, reason))
                logger.warning("vector registry %s: skipping %s: %s", self._where(), file_name, reason)
        return entries, problems

    def list(self, model: str | None = None, hidden_size: int | None = None) -> list[VectorEntry]:
        """All readable vectors, sorted by name; a corrupt or invalid file is skipped, logged and left to :meth:`problems`.

        Args:
            model: Keep only vectors whose ``model_id`` equals this.
            hidden_size: Keep only vectors of this length.
        """
        entries, _ = self._scan()
        return [
            e for e in entries if (model is None or e.model_id == model) and (hidden_size is None or e.hidden_size == hidden_size)
        ]

    def problems(self) -> list[tuple[str, str]]:
        """Files that :meth:`list` skips, as ``(file name, reason)``: corrupt, invalid, unreadable or hidden by another.

        The reason is the :class:`SteeringError` message that :meth:`get` would raise; no server paths, only file and
        folder names, so it can be shown to users. Each problem is also logged once as a warning.
        """
        return self._scan()[1]

    def get(self, name: str) -> VectorEntry:
        """The vector called ``name`` (``root`` first, then the shipped folders).

        Raises:
            SteeringError: Bad or unknown name (the message lists the available names), or a corrupt file (named).
        """
        found = self._locate(name)
        if found is None:
            available = ", ".join(self.names()) or "none"
            raise SteeringError(f"name: no vector {name!r} in {self._where()}; available: {available}")
        return self._read(*found)

    def _check_writable(self) -> None:
        if self.read_only:
            raise SteeringError(READ_ONLY_MESSAGE)

    def add(
        self,
        name: str,
        vector: torch.Tensor,
        *,
        description: str = "",
        model_id: str | None = None,
        suggested_layer: int | None = None,
        method: str = "imported",
        overwrite: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> VectorEntry:
        """Store a vector in ``root`` (atomic; race-free when not overwriting) and return its entry.

        Args:
            name: Registry name (see :func:`validate_name`); not one a shipped folder holds.
            vector: 1-D finite vector, stored as float32.
            description: What steering with it does (see the module docstring for the limits of this and the rest).
            model_id: The model it was made for.
            suggested_layer: 0-based decoder layer it works best at.
            method: How it was made (``"mean-diff"``, ``"imported"``, ``"gguf"``, ...).
            overwrite: Replace an existing vector of that name in ``root``.
            extra: Free-form JSON metadata, e.g. ``{"suggested_scale": 4.0}``.

        Raises:
            SteeringError: The registry is read-only; bad name, vector or metadata; the name is shipped; the name is
                taken and ``overwrite`` is False (also when another add of it wins a race); the folder is not writable.
        """
        self._check_writable()
        path = self.path_for(name)
        if self._shipped_path(name) is not None:
            raise SteeringError(f"name: {name!r} is a shipped vector and read-only; pick another name, e.g. '{name[:50]}-2'")
        exists = f"name: a vector {name!r} already exists in {str(self.root)!r}; pass overwrite=True or pick another name"
        if path.exists() and not overwrite:  # early answer only; _create_exclusive below is what makes it race-free
            raise SteeringError(exists)
        entry = VectorEntry(
            name=name,
            vector=vector,
            description=description,
            model_id=model_id,
            suggested_layer=suggested_layer,
            method=method,
            path=path,
            extra=dict(extra or {}),
        )
        data = entry.to_bytes()
        try:
            if overwrite:
                atomic_write_bytes(path, data)
                created = True
            else:
                created = _create_exclusive(path, data)
        except OSError as exc:
            raise SteeringError(
                f"registry: cannot write {path.name!r} in {str(self.root)!r} ({exc.strerror or exc}); check the folder's permissions and free space"
            ) from exc
        if not created:
            raise SteeringError(exists)
        return entry

    def remove(self, name: str) -> None:
        """Delete the vector called ``name`` from ``root``.

        Raises:
            SteeringError: The registry is read-only; bad or unknown name; the vector is shipped; the folder is not
                writable.
        """
        self._check_writable()
        path = self.path_for(name)
        try:
            path.unlink()
            return
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SteeringError(
                f"registry: cannot remove {path.name!r} from {str(self.root)!r} ({exc.strerror or exc}); check the folder's permissions"
            ) from exc
        if self._shipped_path(name) is not None:
            raise SteeringError(
                f"name: {name!r} is a shipped vector and read-only; it comes with the app and cannot be removed here"
            )
        available = ", ".join(self.names()) or "none"
        raise SteeringError(f"name: no vector {name!r} to remove in {self._where()}; available: {available}")


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Write ``data`` as ``path`` only if no such file exists, atomically (readers see no file or the whole file).

    Returns:
        False, writing nothing, when ``path`` exists (e.g. another writer won the race); True when written.

    Raises:
        OSError: The folder is not writable.
    """
    staged = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # hidden + .tmp: never listed
    try:
        atomic_write_bytes(staged, data)
        try:
            os.link(staged, path)  # atomic no-clobber publish: fails with FileExistsError if the name is taken
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
        # No hard links here (some FUSE/SMB mounts): claim the name with O_EXCL, then move the whole file onto it.
        # Readers may briefly see an empty file at the name, which list() reports as corrupt until the move lands.
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return False
        try:
            os.replace(staged, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return True
    finally:
        staged.unlink(missing_ok=True)
