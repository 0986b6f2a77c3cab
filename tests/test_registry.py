"""The vector registry: round-trips, filters, bad names, corrupt and foreign files, atomic writes.

Hardening (name and text limits, exclusive creates under races, corrupt-file reports, layered shipped folders) is
tested in ``test_registry_hardening.py``.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import torch

from vectors import SteeringError, VectorEntry, VectorRegistry
from vectors.registry import METADATA_KEY


@pytest.fixture
def registry(tmp_path: Path) -> VectorRegistry:
    return VectorRegistry(tmp_path / "reg")


def test_add_get_round_trip_is_bit_exact(registry: VectorRegistry) -> None:
    vector = torch.randn(16, generator=torch.Generator().manual_seed(0))
    added = registry.add(
        "happy", vector, description="joy", model_id="m/x", suggested_layer=3, method="mean-diff", extra={"suggested_scale": 4.0}
    )
    got = registry.get("happy")
    assert torch.equal(got.vector, vector)
    assert got.vector.dtype == torch.float32
    assert got.to_dict() == added.to_dict()
    assert (got.name, got.description, got.model_id, got.hidden_size, got.suggested_layer, got.method) == (
        "happy",
        "joy",
        "m/x",
        16,
        3,
        "mean-diff",
    )
    assert got.norm == pytest.approx(float(vector.norm()))
    assert got.suggested_scale == 4.0
    assert got.created.endswith("Z")
    assert got.path == registry.root / "happy.safetensors"


def test_entry_dict_round_trip(registry: VectorRegistry) -> None:
    entry = registry.add("v1", torch.arange(4, dtype=torch.float32), suggested_layer=1)
    data = entry.to_dict()
    assert "vector" not in data
    json.dumps(data)  # tables and APIs need plain JSON
    again = VectorEntry.from_dict(data, entry.vector)
    assert again.to_dict() == data


def test_list_names_contains_remove(registry: VectorRegistry) -> None:
    assert registry.list() == [] and registry.names() == []
    registry.add("b", torch.ones(4), model_id="m/a")
    registry.add("a", torch.ones(8), model_id="m/b")
    registry.add("c", torch.ones(4), model_id="m/b")
    assert [e.name for e in registry.list()] == ["a", "b", "c"]
    assert registry.names() == ["a", "b", "c"]
    assert [e.name for e in registry.list(model="m/b")] == ["a", "c"]
    assert [e.name for e in registry.list(hidden_size=4)] == ["b", "c"]
    assert [e.name for e in registry.list(model="m/b", hidden_size=4)] == ["c"]
    assert "a" in registry and "zz" not in registry and "../a" not in registry
    registry.remove("a")
    assert "a" not in registry and registry.names() == ["b", "c"]
    with pytest.raises(SteeringError, match="available: b, c"):
        registry.remove("a")


def test_unknown_name_lists_available(registry: VectorRegistry) -> None:
    registry.add("happy", torch.ones(4))
    with pytest.raises(SteeringError, match=r"name: no vector 'sad'.*available: happy"):
        registry.get("sad")


def test_overwrite_needs_flag(registry: VectorRegistry) -> None:
    registry.add("x", torch.ones(4))
    with pytest.raises(SteeringError, match="overwrite=True"):
        registry.add("x", torch.zeros(4))
    registry.add("x", torch.full((4,), 2.0), overwrite=True)
    assert torch.equal(registry.get("x").vector, torch.full((4,), 2.0))


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 100, "a\\b", "a..b", "/abs", 3, None])
def test_bad_names_rejected(registry: VectorRegistry, bad: object) -> None:
    for call in (lambda: registry.add(bad, torch.ones(4)), lambda: registry.get(bad), lambda: registry.remove(bad)):  # type: ignore[arg-type]
        with pytest.raises(SteeringError, match="name"):
            call()
    assert not (registry.root.parent / "x.safetensors").exists()


@pytest.mark.parametrize("bad", [torch.ones(2, 2), torch.tensor([1.0, float("nan")]), torch.empty(0), "abc"])
def test_bad_vectors_rejected(registry: VectorRegistry, bad: object) -> None:
    with pytest.raises(SteeringError, match="vector"):
        registry.add("v", bad)  # type: ignore[arg-type]
    assert registry.names() == []


def test_corrupt_file_skipped_by_list_and_rejected_by_get(registry: VectorRegistry, caplog: pytest.LogCaptureFixture) -> None:
    registry.add("good", torch.ones(4))
    (registry.root / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with caplog.at_level(logging.WARNING, logger="vectors.registry"):
        entries = registry.list()
    assert [e.name for e in entries] == ["good"]
    assert [r.getMessage() for r in caplog.records if "broken.safetensors" in r.getMessage()] != []
    assert [name for name, _ in registry.problems()] == ["broken.safetensors"]
    with pytest.raises(SteeringError, match="broken"):
        registry.get("broken")


def test_tampered_tensor_fails_checksum(registry: VectorRegistry) -> None:
    entry = registry.add("v", torch.ones(4))
    data = bytearray(entry.path.read_bytes())  # type: ignore[union-attr]
    data[-1] ^= 0x01  # flip a bit of the last float
    entry.path.write_bytes(bytes(data))  # type: ignore[union-attr]
    with pytest.raises(SteeringError, match="sha256"):
        registry.get("v")


def test_pickle_renamed_to_safetensors_rejected(registry: VectorRegistry) -> None:
    registry.root.mkdir(parents=True)
    torch.save({"vector": torch.ones(4)}, registry.root / "evil.safetensors")  # never torch.load it
    with pytest.raises(SteeringError, match="not a valid safetensors file|safetensors"):
        registry.get("evil")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported through logging and problems(), never as a warning
        assert registry.list() == []
    assert [name for name, _ in registry.problems()] == ["evil.safetensors"]


def test_plain_safetensors_without_header_rejected(registry: VectorRegistry) -> None:
    from safetensors.torch import save_file

    registry.root.mkdir(parents=True)
    save_file({"vector": torch.ones(4)}, str(registry.root / "raw.safetensors"))
    with pytest.raises(SteeringError, match=METADATA_KEY):
        registry.get("raw")


def test_renamed_file_rejected(registry: VectorRegistry) -> None:
    entry = registry.add("orig", torch.ones(4))
    entry.path.rename(registry.root / "other.safetensors")  # type: ignore[union-attr]
    with pytest.raises(SteeringError, match="header names it 'orig'"):
        registry.get("other")


def test_atomic_write_leaves_no_temp_files(registry: VectorRegistry) -> None:
    for i in range(3):
        registry.add("v", torch.full((4,), float(i)), overwrite=True)
    registry.add("w", torch.ones(4))
    assert sorted(p.name for p in registry.root.iterdir()) == ["v.safetensors", "w.safetensors"]


def test_file_header_layout(registry: VectorRegistry) -> None:
    from safetensors import safe_open

    entry = registry.add("h", torch.ones(4), model_id="m/x", suggested_layer=2, method="mean-diff")
    with safe_open(str(entry.path), "pt") as fh:
        assert list(fh.keys()) == ["vector"]
        header = json.loads(fh.metadata()[METADATA_KEY])
    assert header["format"] == "sidesteer.vector" and header["version"] == 1
    assert {
        "name",
        "description",
        "model_id",
        "hidden_size",
        "suggested_layer",
        "method",
        "created",
        "norm",
        "sha256",
        "extra",
    } <= set(header)
    assert header["norm"] == pytest.approx(2.0)
