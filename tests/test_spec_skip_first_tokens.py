"""``SteeringSpec.skip_first_tokens``: validation, fingerprint, the spec file (version 2, version 1 read as 0), GGUF."""

from __future__ import annotations

import pytest
import torch

from tests.test_spec import full_spec, rewrite_header, split
from vectors import (
    LayerSteeringSpec,
    ProjectionCapSpec,
    SpecMetadata,
    SteeringError,
    SteeringSpec,
    export_gguf_control_vector,
    export_gguf_control_vector_bytes,
)
from vectors.spec import MAX_SKIP_FIRST_TOKENS

BAD_VALUES = [
    (
        "1",
        "skip_first_tokens: expected a whole number of positions, got '1'; pass an int such as 1 (leave the first token, "
        "the attention sink, unsteered) or 0 (steer every position)",
    ),
    (True, "skip_first_tokens: expected a whole number of positions, got True; pass an int"),
    (1.0, "skip_first_tokens: expected a whole number of positions, got 1.0; pass an int"),
    (None, "skip_first_tokens: expected a whole number of positions, got None; pass an int"),
    (
        -1,
        "skip_first_tokens: -1 is negative; pass 0 (steer every position) or the number of leading positions to leave "
        "unsteered, such as 1",
    ),
    (
        MAX_SKIP_FIRST_TOKENS + 1,
        f"skip_first_tokens: {MAX_SKIP_FIRST_TOKENS + 1} is beyond the limit skip_first_tokens <= {MAX_SKIP_FIRST_TOKENS}; "
        "pass the number of leading prompt positions to leave unsteered, such as 1",
    ),
    (10**400, "skip_first_tokens: an integer of 1329 bits is beyond the limit skip_first_tokens <= 1048576"),
]


def cap_spec(skip: int = 0) -> SteeringSpec:
    return SteeringSpec(
        {3: LayerSteeringSpec(projection_cap=ProjectionCapSpec(torch.ones(4), -1.0, 1.0))}, skip_first_tokens=skip
    )


def test_default_is_zero_and_values_are_kept():
    assert SteeringSpec().skip_first_tokens == 0 and full_spec().skip_first_tokens == 0
    assert cap_spec(1).skip_first_tokens == 1
    assert SteeringSpec({}, SpecMetadata(), MAX_SKIP_FIRST_TOKENS).skip_first_tokens == MAX_SKIP_FIRST_TOKENS
    single = SteeringSpec.single(2, torch.ones(4), 2.0, skip_first_tokens=1, model_id="m")
    assert single.skip_first_tokens == 1 and single.model_id == "m"
    assert cap_spec(2).clone().skip_first_tokens == 2
    assert SteeringSpec.single(1, torch.ones(4), skip_first_tokens=3).scaled(2.0).skip_first_tokens == 3


@pytest.mark.parametrize("value,message", BAD_VALUES, ids=[repr(v)[:20] for v, _ in BAD_VALUES])
def test_bad_values_are_refused_naming_the_field(value, message):
    with pytest.raises(SteeringError) as exc:
        SteeringSpec({}, skip_first_tokens=value)
    assert str(exc.value).startswith(message)
    spec = cap_spec()
    spec.skip_first_tokens = value  # changed after construction: validate() and every later check catch it
    with pytest.raises(SteeringError) as exc:
        spec.validate()
    assert str(exc.value).startswith(message)


def test_fingerprint_covers_skip_and_keeps_older_fingerprints():
    # The fingerprint of a spec without skip_first_tokens, as the code before the field computed it: spec files
    # (which record it) and prefix-cache salts from then stay valid.
    spec = SteeringSpec({3: LayerSteeringSpec(torch.arange(4.0), 2.0, ProjectionCapSpec(torch.ones(4), -1.0, 1.0))})
    assert spec.fingerprint() == "085954549f808683687137ddb36b70f3bb55f9ae37a0d696fd1115eb60bb92e6"
    fingerprints = {cap_spec(n).fingerprint() for n in (0, 1, 2, MAX_SKIP_FIRST_TOKENS)}
    assert len(fingerprints) == 4
    assert cap_spec(1).fingerprint() == cap_spec(1).fingerprint()
    assert SteeringSpec({}, skip_first_tokens=1) == SteeringSpec({}, skip_first_tokens=1)
    assert SteeringSpec({}, skip_first_tokens=1) != SteeringSpec({}, skip_first_tokens=0)


def test_spec_file_version_2_round_trips_the_field(tmp_path):
    spec = full_spec()
    spec.skip_first_tokens = 3
    data = spec.to_bytes()
    _, header, _ = split(data)
    assert header["version"] == 2 and header["skip_first_tokens"] == 3
    loaded = SteeringSpec.load(spec.save(tmp_path / "s.safetensors"))
    assert loaded.skip_first_tokens == 3 and loaded.fingerprint() == spec.fingerprint()
    assert loaded.to_bytes() == data
    assert split(full_spec().to_bytes())[1]["skip_first_tokens"] == 0


def test_version_1_file_reads_as_zero():
    def as_version_1(header: dict) -> None:
        header["version"] = 1
        del header["skip_first_tokens"]

    old = rewrite_header(full_spec().to_bytes(), as_version_1)
    loaded = SteeringSpec.from_bytes(old)
    assert loaded.skip_first_tokens == 0 and loaded.fingerprint() == full_spec().fingerprint()


FILE_ERRORS = [
    (
        lambda h: h.update(version=3),
        "version: spec file version 3 is not supported (this sidesteer reads versions 1, 2); upgrade sidesteer or re-export",
    ),
    (lambda h: h.pop("skip_first_tokens"), "header: the key 'skip_first_tokens' is missing"),
    (lambda h: h.update(version=1), "header: unknown key 'skip_first_tokens'; the file was edited"),
    (lambda h: h.update(skip_first_tokens="1"), "skip_first_tokens: expected a whole number of positions, got '1'"),
    (lambda h: h.update(skip_first_tokens=1.0), "skip_first_tokens: expected a whole number of positions, got 1.0"),
    (lambda h: h.update(skip_first_tokens=-2), "skip_first_tokens: -2 is negative"),
    (lambda h: h.update(skip_first_tokens=2), "fingerprint: the file's content does not match its recorded fingerprint"),
]


@pytest.mark.parametrize("edit,message", FILE_ERRORS, ids=[m[:40] for _, m in FILE_ERRORS])
def test_spec_file_errors_name_the_field(edit, message):
    spec = full_spec()
    spec.skip_first_tokens = 1
    with pytest.raises(SteeringError) as exc:
        SteeringSpec.from_bytes(rewrite_header(spec.to_bytes(), edit))
    assert str(exc.value).startswith(message)


def test_gguf_export_refuses_skipped_positions(tmp_path):
    spec = SteeringSpec.single(3, torch.ones(4), 2.0, skip_first_tokens=1)
    message = (
        "skip_first_tokens: 1 cannot be exported: llama.cpp control vectors steer every position; set "
        "skip_first_tokens=0 to export the add vectors (they then steer the first positions too), or save a sidesteer "
        "spec file instead"
    )
    with pytest.raises(SteeringError) as exc:
        export_gguf_control_vector_bytes(spec)
    assert str(exc.value) == message
    with pytest.raises(SteeringError, match="^skip_first_tokens: 1 cannot be exported"):
        export_gguf_control_vector(spec, tmp_path / "cv.gguf")
    assert not (tmp_path / "cv.gguf").exists()
    spec.skip_first_tokens = 0
    assert export_gguf_control_vector_bytes(spec)[:4] == b"GGUF"
