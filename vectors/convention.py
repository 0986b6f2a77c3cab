"""The layer-index convention, stated once.

A layer index ``L`` is the 0-based index of a decoder block. Every steering op at layer ``L`` acts on the
*output* residual stream of block ``L``: what transformers returns as ``hidden_states[L + 1]`` (the same
convention as steering-vectors and repeng). llama.cpp control vectors number layers from 1, with ``direction.N``
meaning the output of block ``N - 1``: convert with :func:`llamacpp_to_layer` / :func:`layer_to_llamacpp`.

Inside one layer the ops run in a fixed order: add ``scale * vector``, then the projection cap, then the ablation.
"""

from __future__ import annotations

LAYER_CONVENTION = "0-based decoder layer; ops act on the layer's output residual stream (hf hidden_states[L+1])"
OP_ORDER = ("add", "projection_cap", "ablation")


def llamacpp_to_layer(n: int) -> int:
    """Map a llama.cpp control-vector layer number (1-based, ``direction.N``) to a sidesteer layer index."""
    return n - 1


def layer_to_llamacpp(layer: int) -> int:
    """Map a sidesteer layer index to the llama.cpp control-vector layer number."""
    return layer + 1
