"""Registry hardening: full-match names, text and ``extra`` limits, race-free exclusive adds, corrupt files reported
(never raised out of ``list()``), and the layered registry (writable user root + read-only shipped folders)."""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from vectors import SteeringError, VectorEntry, VectorRegistry
from vectors import registry as registry_module
from vectors.registry import (
    MAX_DESCRIPTION_CHARS,
    MAX_EXTRA_JSON_CHARS,
    MAX_MODEL_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_VECTOR_FILE_BYTES,
    METADATA_KEY,
    READ_ONLY_MESSAGE,
    validate_name,
)

RULE = (
    "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (no path separators, no '..'), "
    "e.g. 'happy' or 'formal-v2'"
)


def header_of(path: Path) -> dict[str, Any]:
    with safe_open(str(path), "pt") as fh:
        return json.loads(fh.metadata()[METADATA_KEY])


def rewrite(path: Path, target: Path | None = None, **changes: Any) -> Path:
    """Copy the registry file ``path`` to ``target`` (default: in place) with header fields changed, by hand."""
    header = {**header_of(path), **changes}
    with safe_open(str(path), "pt") as fh:
        vector = fh.get_tensor("vector")
    target = target or path
    target.write_bytes(st_save({"vector": vector}, metadata={METADATA_KEY: json.dumps(header)}))
    return target


@pytest.fixture
def registry(tmp_path: Path) -> VectorRegistry:
    return VectorRegistry(tmp_path / "reg")


# -- 1. names ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("pirate\n", f"name: 'pirate\\n' holds a control or non-text character (e.g. a newline); {RULE}"),
        ("pi\rrate", f"name: 'pi\\rrate' holds a control or non-text character (e.g. a newline); {RULE}"),
        ("a\x00b", f"name: 'a\\x00b' holds a control or non-text character (e.g. a newline); {RULE}"),
        ("x\udcff", f"name: 'x\\udcff' holds a control or non-text character (e.g. a newline); {RULE}"),
        ("x" * 65, f"name: {'x' * 20!r}... is 65 characters, over the 64-character limit; {RULE}"),
        ("pirate.", "name: 'pirate.' ends with '.', which Windows drops from file names; end it with a letter or digit"),
        ("v1.", "name: 'v1.' ends with '.', which Windows drops from file names; end it with a letter or digit"),
        ("con", "name: 'con' is a reserved device name on Windows"),
        ("CON", "name: 'CON' is a reserved device name on Windows"),
        ("Aux", "name: 'Aux' is a reserved device name on Windows"),
        ("nul.x", "name: 'nul.x' is a reserved device name on Windows"),
        ("prn.tar.gz", "name: 'prn.tar.gz' is a reserved device name on Windows"),
        ("COM1", "name: 'COM1' is a reserved device name on Windows"),
        ("com9.v2", "name: 'com9.v2' is a reserved device name on Windows"),
        ("lpt1", "name: 'lpt1' is a reserved device name on Windows"),
        ("LPT9.safe", "name: 'LPT9.safe' is a reserved device name on Windows"),
    ],
)
def test_bad_names_rejected_with_reason(registry: VectorRegistry, bad: str, message: str) -> None:
    with pytest.raises(SteeringError) as info:
        validate_name(bad)
    assert str(info.value).startswith(message)
    for call in (lambda: registry.add(bad, torch.ones(4)), lambda: registry.get(bad), lambda: registry.remove(bad)):
        with pytest.raises(SteeringError, match="^name: "):
            call()
    assert bad not in registry and not registry.root.exists()


def test_reserved_name_message_suggests_a_fix_and_near_names_pass(registry: VectorRegistry) -> None:
    with pytest.raises(SteeringError) as info:
        validate_name("con.x")
    assert str(info.value) == (
        "name: 'con.x' is a reserved device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9, also before an "
        "extension); pick another name, e.g. 'con-vector'"
    )
    for good in ("COM10", "com0", "lpt", "conx", "con-vector", "x.con", "aux_1", "happy.activation", "x" * MAX_NAME_CHARS):
        assert validate_name(good) == good
    registry.add("con-vector", torch.ones(4))
    assert registry.names() == ["con-vector"]


def test_file_with_invalid_name_is_reported_not_listed(registry: VectorRegistry) -> None:
    good = registry.add("good", torch.ones(4))
    shutil.copy(good.path, registry.root / "con.safetensors")  # type: ignore[arg-type]
    shutil.copy(good.path, registry.root / "trailing..safetensors")  # type: ignore[arg-type]
    assert registry.names() == ["good"] and "con" not in registry
    assert [e.name for e in registry.list()] == ["good"]
    assert registry.problems() == [
        ("con.safetensors", "registry file 'con.safetensors': " + str(_error(validate_name, "con")) + "; rename the file"),
        (
            "trailing..safetensors",
            "registry file 'trailing..safetensors': " + str(_error(validate_name, "trailing.")) + "; rename the file",
        ),
    ]


def _error(fn: Any, *args: Any) -> SteeringError:
    with pytest.raises(SteeringError) as info:
        fn(*args)
    return info.value


# -- 2. descriptions and other text metadata ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"description": "\udcff"}, "description: character 0 ('\\udcff') is not valid UTF-8 text (a lone surrogate"),
        ({"description": "ok \ud800 then"}, "description: character 3 ('\\ud800') is not valid UTF-8 text"),
        (
            {"description": "x" * (MAX_DESCRIPTION_CHARS + 1)},
            "description: 2001 characters is over the 2000-character limit; shorten it",
        ),
        (
            {"description": "red \x1b[31m"},
            "description: character 4 is a control character ('\\x1b'); remove it; tab and newline are allowed",
        ),
        ({"description": 5}, "description: expected text, got int; pass a string"),
        ({"model_id": "m/\udcff"}, "model_id: character 2 ('\\udcff') is not valid UTF-8 text"),
        ({"model_id": "m/x\n"}, "model_id: character 3 is a control character ('\\n'); remove it and keep it on one line"),
        ({"model_id": "m" * (MAX_MODEL_ID_CHARS + 1)}, "model_id: 257 characters is over the 256-character limit; shorten it"),
        ({"method": "mean\ndiff"}, "method: character 4 is a control character ('\\n'); remove it and keep it on one line"),
        ({"method": "m" * 65}, "method: 65 characters is over the 64-character limit; shorten it"),
        ({"extra": {"note": "\udcff"}}, "extra: not strict JSON (UnicodeEncodeError"),
        ({"extra": {"x": float("nan")}}, "extra: not strict JSON (ValueError: Out of range float values are not JSON compliant)"),
        (
            {"extra": {"x": [float("inf")]}},
            "extra: not strict JSON (ValueError: Out of range float values are not JSON compliant)",
        ),
        ({"extra": {"blob": "x" * MAX_EXTRA_JSON_CHARS}}, "extra: 16395 characters of JSON is over the 16384-character limit"),
        ({"extra": {"suggested_scale": 10**400}}, f"extra.suggested_scale: {str(10**400)[:40]} is not a finite number"),
        ({"extra": {"suggested_scale": "4"}}, "extra.suggested_scale: '4' is not a finite number; pass e.g. 4.0 or leave it out"),
    ],
)
def test_add_refuses_bad_text_metadata(registry: VectorRegistry, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SteeringError) as info:
        registry.add("v", torch.ones(4), **kwargs)
    assert str(info.value).startswith(message)
    assert registry.names() == [] and not registry.root.exists()


def test_text_limits_are_inclusive_and_extra_is_normalised(registry: VectorRegistry) -> None:
    description = "line one\r\nline two\twith a tab " + "d" * (MAX_DESCRIPTION_CHARS - 30)
    assert len(description) == MAX_DESCRIPTION_CHARS
    added = registry.add("v", torch.ones(4), description=description, model_id="m" * MAX_MODEL_ID_CHARS, extra={1: 2.5, 2: "é"})
    assert added.extra == {"1": 2.5, "2": "é"}  # what the file holds, not the caller's int key
    got = registry.get("v")
    assert got.description == description and got.to_dict() == added.to_dict()
    json.dumps(got.to_dict(), allow_nan=False).encode("utf-8")  # strict JSON, valid UTF-8: safe for every UI


def test_entry_refuses_bad_text_too() -> None:
    with pytest.raises(SteeringError, match=r"^description: character 0 \('\\udcff'\) is not valid UTF-8 text"):
        VectorEntry(name="v", vector=torch.ones(4), description="\udcff")
    with pytest.raises(SteeringError, match=r"^created: expected text, got int; pass a string"):
        VectorEntry.from_dict({"name": "v", "created": 5}, torch.ones(4))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"description": "\udcff"}, "description: character 0 ('\\udcff') is not valid UTF-8 text"),
        ({"description": 7}, "description: expected text, got int; pass a string"),
        ({"description": "x" * 5000}, "description: 5000 characters is over the 2000-character limit; shorten it"),
        ({"model_id": ["m"]}, "model_id: expected text, got list; pass a string"),
        ({"created": {"t": 1}}, "created: expected text, got dict; pass a string"),
        ({"extra": {"suggested_scale": 10**400}}, f"extra.suggested_scale: {str(10**400)[:40]} is not a finite number"),
    ],
)
def test_hand_written_bad_metadata_is_skipped_and_reported(
    registry: VectorRegistry, changes: dict[str, Any], reason: str
) -> None:
    registry.add("good", torch.ones(4), description="fine")
    rewrite(registry.add("bad", torch.ones(4)).path, **changes)  # type: ignore[arg-type]
    entries = registry.list()
    assert [e.name for e in entries] == ["good"]
    for entry in entries:  # what the UI does with every listed entry
        json.dumps(entry.to_dict(), ensure_ascii=False, allow_nan=False).encode("utf-8")
        assert entry.suggested_scale is None
    with pytest.raises(SteeringError) as info:
        registry.get("bad")
    assert str(info.value).startswith(f"registry vector 'bad.safetensors': {reason}")
    assert registry.problems() == [("bad.safetensors", str(info.value))]


# -- 3. atomic, race-free writes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("hard_links", [True, False], ids=["link", "no-link-fallback"])
def test_concurrent_adds_of_one_name_have_exactly_one_winner(
    registry: VectorRegistry, monkeypatch: pytest.MonkeyPatch, hard_links: bool
) -> None:
    if not hard_links:  # a file system without hard links: the O_EXCL fallback must be just as exclusive

        def no_link(src: Any, dst: Any, **kwargs: Any) -> None:
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    threads, barrier = 8, threading.Barrier(8)
    results: list[tuple[int, str]] = []

    def add(i: int) -> None:
        barrier.wait()
        try:
            registry.add("same", torch.full((64,), float(i)), description=f"thread {i}")
            results.append((i, "ok"))
        except SteeringError as exc:
            results.append((i, str(exc)))

    for _ in range(5):  # several rounds: one lucky interleaving proves little
        results.clear()
        workers = [threading.Thread(target=add, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        winners = [i for i, r in results if r == "ok"]
        losers = [r for _, r in results if r != "ok"]
        assert len(winners) == 1 and len(losers) == threads - 1
        assert set(losers) == {
            f"name: a vector 'same' already exists in {str(registry.root)!r}; pass overwrite=True or pick another name"
        }
        got = registry.get("same")  # the whole winner's file, never a mix
        assert got.description == f"thread {winners[0]}"
        assert torch.equal(got.vector, torch.full((64,), float(winners[0])))
        assert sorted(p.name for p in registry.root.iterdir()) == ["same.safetensors"]  # no temp files left
        registry.remove("same")


def test_add_into_unwritable_folder_is_a_steering_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("x")
    registry = VectorRegistry(tmp_path / "not-a-folder")
    with pytest.raises(
        SteeringError, match=r"^registry: cannot write 'v.safetensors' in '.*not-a-folder' \(.*\); check the folder's permissions"
    ):
        registry.add("v", torch.ones(4))
    with pytest.raises(SteeringError, match=r"^registry: cannot write 'v.safetensors'"):
        registry.add("v", torch.ones(4), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


# -- 4. corrupt files --------------------------------------------------------------------------------------------


def _raw(header: Any, tail: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + tail


def _corrupt(kind: str, good: Path) -> bytes:
    data = good.read_bytes()
    if kind == "zero-bytes":
        return b""
    if kind == "truncated":
        return data[: len(data) - 5]
    if kind == "random-bytes":
        return bytes(torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8).tolist())
    if kind == "pickle":
        return pickle.dumps({"vector": [1.0, 2.0]})
    if kind == "spec-file":  # a valid safetensors file of another sidesteer kind
        return st_save({"layers.3.add": torch.ones(4)}, metadata={"sidesteer.spec": json.dumps({"format": "sidesteer.spec"})})
    if kind == "plain-safetensors":
        return st_save({"vector": torch.ones(4)})
    if kind == "metadata-not-object":
        return _raw({"__metadata__": 5, "vector": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    if kind == "metadata-value-not-string":
        return _raw(
            {"__metadata__": {METADATA_KEY: 5}, "vector": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4
        )
    if kind == "deep-nesting":
        return st_save({"vector": torch.ones(4)}, metadata={METADATA_KEY: "[" * 100_000 + "]" * 100_000})
    if kind == "huge-integer":
        return st_save(
            {"vector": torch.ones(4)}, metadata={METADATA_KEY: '{"format": "sidesteer.vector", "version": ' + "9" * 5000 + "}"}
        )
    raise AssertionError(kind)


CORRUPT_KINDS = [
    "zero-bytes",
    "truncated",
    "random-bytes",
    "pickle",
    "spec-file",
    "plain-safetensors",
    "metadata-not-object",
    "metadata-value-not-string",
    "deep-nesting",
    "huge-integer",
]


@pytest.mark.parametrize("kind", CORRUPT_KINDS)
def test_corrupt_file_never_breaks_list(registry: VectorRegistry, caplog: pytest.LogCaptureFixture, kind: str) -> None:
    good = registry.add("good", torch.ones(4))
    (registry.root / "broken.safetensors").write_bytes(_corrupt(kind, good.path))  # type: ignore[arg-type]
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="vectors.registry"):
        warnings.simplefilter("error")  # a filterwarnings=error setting must not turn a report into a crash
        assert [e.name for e in registry.list()] == ["good"]
        assert [e.name for e in registry.list(hidden_size=4)] == ["good"]
        problems = registry.problems()
    assert registry.names() == ["broken", "good"]  # names() does not open files
    assert [name for name, _ in problems] == ["broken.safetensors"]
    reason = problems[0][1]
    assert reason.startswith("registry vector 'broken.safetensors': ")
    with pytest.raises(SteeringError) as info:
        registry.get("broken")
    assert str(info.value) == reason
    logged = [r for r in caplog.records if r.name == "vectors.registry"]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING  # two list() calls and problems(): logged once
    assert f"skipping broken.safetensors: {reason}" in logged[0].getMessage()


def test_oversized_file_is_reported(registry: VectorRegistry) -> None:
    registry.add("good", torch.ones(4))
    with open(registry.root / "huge.safetensors", "wb") as fh:
        fh.truncate(MAX_VECTOR_FILE_BYTES + 10)  # sparse: costs no disk
    assert [e.name for e in registry.list()] == ["good"]
    message = f"registry vector 'huge.safetensors': file is over the {MAX_VECTOR_FILE_BYTES}-byte limit; is it really a registry vector? Remove it"
    assert registry.problems() == [("huge.safetensors", message)]
    with pytest.raises(SteeringError) as info:
        registry.get("huge")
    assert str(info.value) == message


def test_unexpected_parser_error_is_reported_not_raised(registry: VectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    registry.add("good", torch.ones(4))

    def broken_decode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(registry_module, "decode", broken_decode)
    assert registry.list() == []
    message = "registry vector 'good.safetensors': unreadable (RuntimeError: parser bug); the file is corrupt, remove it or re-add the vector"
    assert registry.problems() == [("good.safetensors", message)]
    with pytest.raises(SteeringError) as info:
        registry.get("good")
    assert str(info.value) == message


def test_unreadable_file_is_reported(registry: VectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    registry.add("good", torch.ones(4))
    registry.add("locked", torch.ones(4))
    real_open = os.open

    def deny(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith("locked.safetensors"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    assert [e.name for e in registry.list()] == ["good"]
    assert registry.problems() == [
        (
            "locked.safetensors",
            "registry vector 'locked.safetensors': cannot be read (Permission denied); check the file's permissions",
        )
    ]


# -- 5. layered registry -----------------------------------------------------------------------------------------


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    folder = tmp_path / "shipped"
    plain = VectorRegistry(folder)
    plain.add("pirate", torch.full((4,), 2.0), description="arr", model_id="m/x")
    plain.add("happy", torch.ones(8), model_id="m/y")
    return folder


def test_plain_registry_is_one_writable_folder(tmp_path: Path) -> None:
    registry = VectorRegistry(tmp_path / "reg")
    assert (registry.roots, registry.shipped, registry.writable, registry.read_only) == ((tmp_path / "reg",), (), True, False)
    assert repr(registry) == f"VectorRegistry({str(tmp_path / 'reg')!r})"
    registry.add("v", torch.ones(4))
    assert not registry.is_shipped("v") and registry.names() == ["v"]


def test_layered_lookup_sees_root_then_shipped(tmp_path: Path, shipped: Path) -> None:
    root = tmp_path / "user"
    registry = VectorRegistry(root, shipped=[shipped])
    assert registry.roots == (root, shipped) and registry.writable
    assert repr(registry) == f"VectorRegistry({str(root)!r}, shipped={[str(shipped)]!r})"
    assert registry.names() == ["happy", "pirate"] and len(registry) == 2 and not root.exists()
    mine = registry.add("mine", torch.ones(4), model_id="m/x")
    assert mine.path == root / "mine.safetensors" and sorted(p.name for p in shipped.iterdir()) == [
        "happy.safetensors",
        "pirate.safetensors",
    ]
    assert registry.names() == ["happy", "mine", "pirate"] and len(registry) == 3
    assert [(e.name, e.path) for e in registry.list()] == [
        ("happy", shipped / "happy.safetensors"),
        ("mine", root / "mine.safetensors"),
        ("pirate", shipped / "pirate.safetensors"),
    ]
    assert [e.name for e in registry.list(model="m/x")] == ["mine", "pirate"]
    assert registry.get("pirate").description == "arr" and registry.get("pirate").path == shipped / "pirate.safetensors"
    assert "pirate" in registry and "mine" in registry and "nope" not in registry and "../pirate" not in registry
    assert [registry.is_shipped(n) for n in ("pirate", "happy", "mine", "nope", "../pirate", 3)] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]  # type: ignore[list-item]
    with pytest.raises(SteeringError) as info:
        registry.get("sad")
    assert str(info.value) == f"name: no vector 'sad' in {[str(root), str(shipped)]!r}; available: happy, mine, pirate"
    registry.remove("mine")
    assert registry.names() == ["happy", "pirate"] and registry.problems() == []


def test_shipped_names_cannot_be_added_or_removed(tmp_path: Path, shipped: Path) -> None:
    registry = VectorRegistry(tmp_path / "user", shipped=[shipped])
    before = {p.name: p.read_bytes() for p in shipped.iterdir()}
    for overwrite in (False, True):
        with pytest.raises(SteeringError) as info:
            registry.add("pirate", torch.zeros(4) + 1, overwrite=overwrite)
        assert str(info.value) == "name: 'pirate' is a shipped vector and read-only; pick another name, e.g. 'pirate-2'"
    with pytest.raises(SteeringError) as info:
        registry.remove("pirate")
    assert str(info.value) == "name: 'pirate' is a shipped vector and read-only; it comes with the app and cannot be removed here"
    with pytest.raises(SteeringError, match=r"^name: no vector 'nope' to remove in .*; available: happy, pirate$"):
        registry.remove("nope")
    assert {p.name: p.read_bytes() for p in shipped.iterdir()} == before and not (tmp_path / "user").exists()


def test_read_only_registry_refuses_every_write(tmp_path: Path, shipped: Path) -> None:
    root = tmp_path / "user"
    VectorRegistry(root).add("mine", torch.ones(4))
    registry = VectorRegistry(root, read_only=True, shipped=[shipped])
    assert not registry.writable and registry.read_only
    assert (
        READ_ONLY_MESSAGE == "registry: this deploy is read-only (SIDESTEER_READ_ONLY); vectors cannot be created or deleted here"
    )
    for call in (
        lambda: registry.add("new", torch.ones(4)),
        lambda: registry.add("mine", torch.ones(4), overwrite=True),
        lambda: registry.remove("mine"),
        lambda: registry.remove("pirate"),
    ):
        with pytest.raises(SteeringError) as info:
            call()
        assert str(info.value) == READ_ONLY_MESSAGE
    assert registry.names() == ["happy", "mine", "pirate"] and torch.equal(registry.get("mine").vector, torch.ones(4))
    assert sorted(p.name for p in root.iterdir()) == ["mine.safetensors"]


def test_user_file_hides_a_shipped_one_and_is_reported(tmp_path: Path, shipped: Path) -> None:
    root = tmp_path / "user"
    root.mkdir()
    rewrite(shipped / "pirate.safetensors", root / "pirate.safetensors", description="mine now")  # e.g. shipped later
    registry = VectorRegistry(root, shipped=[shipped])
    assert registry.get("pirate").description == "mine now" and not registry.is_shipped("pirate")
    assert [e.name for e in registry.list()] == ["happy", "pirate"]
    assert registry.problems() == [
        (
            "pirate.safetensors",
            "vector 'pirate' in 'shipped' is hidden by the one of the same name in 'user'; rename or remove one of them",
        )
    ]
    registry.remove("pirate")  # removes the user's copy, which uncovers the shipped one
    assert registry.is_shipped("pirate") and registry.get("pirate").description == "arr"


def test_shipped_folder_arguments(tmp_path: Path, shipped: Path) -> None:
    root = tmp_path / "user"
    assert VectorRegistry(root, shipped=str(shipped)).shipped == (shipped,)  # one folder, not one per character
    assert VectorRegistry(root, shipped=[shipped, str(shipped)]).shipped == (shipped,)
    with pytest.raises(SteeringError) as info:
        VectorRegistry(shipped, shipped=[shipped])
    assert str(info.value) == f"shipped: {str(shipped)!r} is also the writable root; pass a separate user folder as root"
    missing = VectorRegistry(root, shipped=[tmp_path / "gone", shipped])
    assert missing.names() == ["happy", "pirate"]
    assert missing.problems() == [("gone", "shipped folder 'gone' does not exist; check the shipped path")]


def test_corrupt_shipped_file_is_reported_as_shipped(tmp_path: Path, shipped: Path) -> None:
    (shipped / "broken.safetensors").write_bytes(b"")
    registry = VectorRegistry(tmp_path / "user", shipped=[shipped])
    assert [e.name for e in registry.list()] == ["happy", "pirate"]
    [(name, reason)] = registry.problems()
    assert name == "broken.safetensors" and reason.startswith("shipped registry vector 'broken.safetensors': ")
