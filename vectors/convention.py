"""The layer-index convention, stated once.

A layer index ``L`` is the 0-based index of a decoder block. Every steering op at layer ``L`` acts on the
*output* residual stream of block ``L``: what transformers returns as ``hidden_states[L + 1]`` (the same
convention as steering-vectors and repeng).

llama.cpp control vectors use the same index: ``direction.N`` is added to the output of 0-based block ``N``, so
sidesteer layer ``L`` is ``direction.L``. llama.cpp's loader (``common_control_vector_load_one``) refuses
``direction.0`` and ``llama_adapter_cvec::apply`` has no tensor for block 0, so block 0's output has no llama.cpp
slot: sidesteer layer 0 cannot be exported and ``direction.0`` is refused on import. (repeng's ``export_gguf``
writes ``direction.{layer}`` for the block it hooks, too.) Convert with :func:`llamacpp_to_layer` /
:func:`layer_to_llamacpp`, which raise on that missing slot.

Inside one layer the ops run in a fixed order: add ``scale * vector``, then the projection cap, then the ablation.
"""

from __future__ import annotations

from vectors.errors import SteeringError, show

LAYER_CONVENTION = "0-based decoder layer; ops act on the layer's output residual stream (hf hidden_states[L+1])"
OP_ORDER = ("add", "projection_cap", "ablation")
# The first block llama.cpp can steer: its control-vector buffer starts at block 1, block 0 has no tensor.
FIRST_LLAMACPP_LAYER = 1


def llamacpp_to_layer(n: int) -> int:
    """Map a llama.cpp control-vector layer number (``direction.N``: the output of 0-based block ``N``) to a sidesteer
    layer index, which is the same number.

    Raises:
        SteeringError: ``n`` is below 1 (llama.cpp has no ``direction.0``: block 0's output cannot be steered there).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < FIRST_LLAMACPP_LAYER:
        raise SteeringError(
            f"direction.N: N = {show(n)}, but llama.cpp control vectors start at direction.1 (direction.N steers the "
            "output of 0-based block N, and llama.cpp has no slot for block 0); drop that tensor or renumber the file"
        )
    return n


def layer_to_llamacpp(layer: int) -> int:
    """Map a sidesteer layer index to the llama.cpp control-vector layer number (``direction.{layer}``).

    Raises:
        SteeringError: ``layer`` is 0 (or negative): llama.cpp has no control-vector slot for block 0's output.
    """
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < FIRST_LLAMACPP_LAYER:
        raise SteeringError(
            f"layers[{show(layer)}]: llama.cpp control vectors cannot steer block 0's output (direction.N steers 0-based "
            "block N, and llama.cpp has no slot for N = 0); move the vector to layer 1 or later, or save a sidesteer "
            "spec file instead"
        )
    return layer
