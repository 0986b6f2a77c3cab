"""What a steering setup *is*: spec dataclasses, the spec file, the vector registry and GGUF control vectors.

No model code and no UI here (imports flow ``vectors <- engine <- app``).
"""

from vectors.convention import (
    LAYER_CONVENTION,
    OP_ORDER,
    layer_to_llamacpp,
    llamacpp_to_layer,
)
from vectors.errors import SteeringError
from vectors.gguf_control import (
    export_gguf_control_vector,
    export_gguf_control_vector_bytes,
    import_gguf_control_vector,
    import_gguf_control_vector_bytes,
)
from vectors.registry import VectorEntry, VectorRegistry
from vectors.spec import (
    AblationSpec,
    LayerSteeringSpec,
    ProjectionCapSpec,
    SpecMetadata,
    SteeringSpec,
)

__all__ = [
    "LAYER_CONVENTION",
    "OP_ORDER",
    "AblationSpec",
    "LayerSteeringSpec",
    "ProjectionCapSpec",
    "SpecMetadata",
    "SteeringError",
    "SteeringSpec",
    "VectorEntry",
    "VectorRegistry",
    "export_gguf_control_vector",
    "export_gguf_control_vector_bytes",
    "import_gguf_control_vector",
    "import_gguf_control_vector_bytes",
    "layer_to_llamacpp",
    "llamacpp_to_layer",
]
