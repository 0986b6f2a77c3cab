"""The magnitude limits of vectors.limits hold for every way a spec is built: constructors, whole specs, sweeps,
changed fields, metadata dicts, spec files and GGUF import."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tests.test_spec import full_spec, layer_entry, raw_spec_file, rewrite_header
from vectors import (
    AblationSpec,
    LayerSteeringSpec,
    ProjectionCapSpec,
    SpecMetadata,
    SteeringError,
    SteeringSpec,
    import_gguf_control_vector,
    limits,
)

spec_from_bytes = SteeringSpec.from_bytes

H = 16
UNIT = torch.eye(H)[3]  # norm exactly 1


def test_limit_values():
    assert (limits.MAX_SCALE, limits.MAX_ADD_NORM, limits.MAX_VECTOR_NORM, limits.MAX_CAP_BOUND) == (1e6, 1e6, 1e6, 1e6)
    assert (limits.MAX_ABLATION_SCALE, limits.MAX_HIDDEN_SIZE, limits.MAX_LAYERS) == (1e4, 65536, 10000)


SCALE_1E38 = (
    "scale: 1e+38 is beyond the limit |scale| <= 1e+06 (an add this large only saturates the model); use a scale of about 1-20"
)
BEYOND = [
    (lambda: LayerSteeringSpec(UNIT, scale=1e38), SCALE_1E38),
    (lambda: LayerSteeringSpec(UNIT, scale=-2e6), "scale: -2e+06 is beyond the limit |scale| <= 1e+06"),
    (lambda: LayerSteeringSpec(scale=1e38), SCALE_1E38),
    (lambda: LayerSteeringSpec(UNIT, scale=10**400), "scale: an integer of 1329 bits is not finite; pass a finite float"),
    (
        lambda: LayerSteeringSpec(UNIT * 1000, scale=2000.0),
        "vector: scale * vector has norm 2e+06, beyond the limit |scale * vector| <= 1e+06",
    ),
    (
        lambda: LayerSteeringSpec(torch.full((H,), 3e38)),
        "vector: the vector's norm 1.2e+39 is beyond the limit |vector| <= 1e+06",
    ),
    (lambda: LayerSteeringSpec(UNIT * 2e6), "vector: the vector's norm 2e+06 is beyond the limit |vector| <= 1e+06"),
    (
        lambda: ProjectionCapSpec(torch.full((H,), 3e38), max=1.0),
        "projection_cap.vector: the vector's norm 1.2e+39 is beyond the limit",
    ),
    (lambda: ProjectionCapSpec(UNIT, min=-1e7), "projection_cap.min: -1e+07 is beyond the limit |min| <= 1e+06"),
    (lambda: ProjectionCapSpec(UNIT, max=3e38), "projection_cap.max: 3e+38 is beyond the limit |max| <= 1e+06"),
    (lambda: ProjectionCapSpec(UNIT, max=10**400), "projection_cap.max: an integer of 1329 bits is not finite"),
    (lambda: AblationSpec(torch.full((H,), 3e38)), "ablation.vector: the vector's norm 1.2e+39 is beyond the limit"),
    (lambda: AblationSpec(UNIT, 1e5), "ablation.scale: 100000 is beyond the limit |ablation scale| <= 10000"),
    (lambda: AblationSpec(UNIT, -2e4), "ablation.scale: -20000 is beyond the limit |ablation scale| <= 10000"),
    (lambda: LayerSteeringSpec(torch.ones(70000)), "vector: length 70000 is beyond the limit hidden_size <= 65536"),
    (lambda: SteeringSpec.single(8, UNIT, 1e38), "layers[8]." + SCALE_1E38),
    (lambda: SteeringSpec({10000: LayerSteeringSpec(UNIT)}), "layers: key 10000 is beyond the limit layer index < 10000"),
    (
        lambda: SteeringSpec({10**400: LayerSteeringSpec(UNIT)}),
        "layers: key an integer of 1329 bits is beyond the limit layer index < 10000",
    ),
    (lambda: SpecMetadata(hidden_size=10**30), "metadata.hidden_size: an integer of 100 bits is not a positive integer <= 65536"),
    (lambda: SpecMetadata(model_id=5), "metadata.model_id: expected a string or None, got 5"),
    (lambda: SpecMetadata.from_dict({"description": ["x"]}), "metadata.description: expected a string, got ['x']"),
    (lambda: SpecMetadata.from_dict([1]), "metadata: expected a dict, got list"),
]


@pytest.mark.parametrize("build,message", BEYOND, ids=[m[:40] for _, m in BEYOND])
def test_beyond_the_limits_is_refused_at_construction(build, message):
    with pytest.raises(SteeringError, match="^" + re.escape(message)):
        build()


def test_changed_fields_are_caught_with_the_layer_named():
    spec = full_spec()
    spec.layers[8] = LayerSteeringSpec(torch.ones(H))
    spec.layers[8].scale = 1e38  # a field changed after construction
    with pytest.raises(SteeringError, match="^" + re.escape("layers[8]." + SCALE_1E38)):
        SteeringSpec(spec.layers, spec.metadata)
    with pytest.raises(SteeringError, match="^" + re.escape("layers[8]." + SCALE_1E38)):
        spec.validate_for_model(10, H)  # what the engine runs before it steers with a spec
    spec.layers[8].scale = 1.0
    spec.layers[2].projection_cap.max = float("nan")
    with pytest.raises(SteeringError, match=re.escape("layers[2].projection_cap.max: nan is not finite")):
        spec.validate()
    spec.layers[2].projection_cap.max = 0.5
    spec.layers[9].ablation.vector = torch.full((H,), 3e38)
    with pytest.raises(
        SteeringError, match=re.escape("layers[9].ablation.vector: the vector's norm 1.2e+39 is beyond the limit")
    ):
        spec.validate()


def test_sweeps_revalidate_the_scaled_adds():
    spec = full_spec()
    assert spec.scaled(1e4).layers[5].scale == -2e4
    with pytest.raises(SteeringError, match="^" + re.escape("layers[2].scale: 1.5e+06 is beyond the limit |scale| <= 1e+06")):
        spec.scaled(1e6)
    with pytest.raises(SteeringError, match="^" + re.escape("factor: an integer of 1329 bits is not finite")):
        spec.scaled(10**400)
    big = SteeringSpec.single(3, torch.full((H,), 1000.0))  # norm 4000
    with pytest.raises(SteeringError, match="^" + re.escape("layers[3].vector: scale * vector has norm 4e+06, beyond the limit")):
        big.scaled(1000.0)


def test_spec_files_at_the_limits_load_and_beyond_are_refused():
    layer = LayerSteeringSpec(
        UNIT,
        scale=limits.MAX_SCALE,
        projection_cap=ProjectionCapSpec(UNIT, -limits.MAX_CAP_BOUND, limits.MAX_CAP_BOUND),
        ablation=AblationSpec(UNIT, -limits.MAX_ABLATION_SCALE),
    )
    at_the_limits = SteeringSpec({limits.MAX_LAYERS - 1: layer})
    assert spec_from_bytes(at_the_limits.to_bytes()).fingerprint() == at_the_limits.fingerprint()
    good = full_spec().to_bytes()
    edits = [
        (lambda h: h["layers"]["5"].update(scale=1e38), "layers[5]." + SCALE_1E38),
        (
            lambda h: h["layers"]["7"]["projection_cap"].update(max=1e30),
            "layers[7].projection_cap.max: 1e+30 is beyond the limit |max| <= 1e+06",
        ),
        (
            lambda h: h["layers"]["9"]["ablation"].update(scale=-1e9),
            "layers[9].ablation.scale: -1e+09 is beyond the limit |ablation scale| <= 10000",
        ),
        (lambda h: h.update(hidden_size=2**40), "metadata.hidden_size: 1099511627776 is not a positive integer <= 65536"),
    ]
    for edit, message in edits:
        with pytest.raises(SteeringError, match="^" + re.escape(message)):
            spec_from_bytes(rewrite_header(good, edit))
    huge = raw_spec_file({"3": layer_entry(3)}, {"layers.3.vector": torch.full((H,), 3e38)})
    with pytest.raises(
        SteeringError, match="^" + re.escape("layers[3].vector: the vector's norm 1.2e+39 is beyond the limit |vector| <= 1e+06")
    ):
        spec_from_bytes(huge)


def test_gguf_tensors_beyond_the_limits_are_refused(tmp_path):
    import gguf

    path = tmp_path / "cv.gguf"
    writer = gguf.GGUFWriter(path, "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 1)
    writer.add_tensor("direction.5", np.full(H, 3e38, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        SteeringError,
        match="^"
        + re.escape(
            "control vector: tensor 'direction.5' (layers[5]).vector: the vector's norm 1.2e+39 is beyond the limit |vector| <= 1e+06"
        ),
    ):
        import_gguf_control_vector(path)
