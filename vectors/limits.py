"""Magnitude limits on steering values, defined once and enforced wherever a spec is built.

The physics behind the numbers: the residual stream of open LLMs has a per-token L2 norm of about 1 to 1e3 (it grows
with depth and model size), and the "massive activations" a few channels carry reach about 1e4. Steering works at
that scale: useful add vectors have norms of a few to a few hundred, projection caps bound projections of that size,
and an ablation scale is a small factor (0 removes a component, 1 keeps it). A value far beyond these numbers steers
nothing more: an add of norm 1e6 swamps every token and only saturates the model, and larger values overflow the
fp16/bf16 arithmetic downstream (fp16 ends at 65504) into Inf and NaN. So a spec is refused, with a
:class:`~vectors.SteeringError` naming the layer, the field and the limit, when any of these is exceeded:

* :data:`MAX_SCALE`: ``|scale|`` of an add.
* :data:`MAX_ADD_NORM`: the L2 norm of ``scale * vector``, i.e. what is actually added.
* :data:`MAX_VECTOR_NORM`: the L2 norm of any stored vector (directions are normalised before use, but their float32
  norm must still be finite: float32 elements like ``3e38`` are finite while their norm overflows).
* :data:`MAX_CAP_BOUND`: ``|min|`` and ``|max|`` of a projection cap.
* :data:`MAX_ABLATION_SCALE`: ``|scale|`` of an ablation.

Two size limits keep hostile files from asking for huge allocations or loops: :data:`MAX_HIDDEN_SIZE` (the widest
open models have hidden sizes of 16384-18432) and :data:`MAX_LAYERS` (the deepest have ~130 decoder layers), so a
layer index is at most ``MAX_LAYERS - 1``.
"""

from __future__ import annotations

MAX_SCALE = 1e6
MAX_ADD_NORM = 1e6
MAX_VECTOR_NORM = 1e6
MAX_CAP_BOUND = 1e6
MAX_ABLATION_SCALE = 1e4
MAX_HIDDEN_SIZE = 65536
MAX_LAYERS = 10000
