"""How a model is steered: one ``SteerableModel`` API, a transformers backend, a vLLM backend and a llama.cpp backend.

The backend contract is :mod:`engine.backend` (with the request values of :mod:`engine.generation`); the seed's
stateful API on top of it is :mod:`engine.stateful`.

The vLLM and llama.cpp backends are imported lazily (``from engine import VLLMSteerModel``, ``LlamaCppSteerModel``)
so that the transformers backend works without vLLM or llama-cpp-python installed. (The llama.cpp names are not in
``__all__`` yet: the ``sidesteer`` facade mirrors it, see tests/test_install.py.)
"""

from __future__ import annotations

from typing import Any

from engine.errors import EngineDeadError
from engine.extraction import mean_difference
from engine.generation import Generation, GenerationConfig, RequestLimits, StreamEvent
from engine.hf_backend import HFSteerModel, QwenSteerModel
from engine.stateful import SteerableModel

__all__ = [
    "EngineDeadError",
    "Generation",
    "GenerationConfig",
    "HFSteerModel",
    "QwenSteerModel",
    "RequestLimits",
    "SteerableModel",
    "StreamEvent",
    "VLLMSteerModel",
    "VLLMSteeringConfig",
    "mean_difference",
]


def __getattr__(name: str) -> Any:
    if name in ("VLLMSteerModel", "VLLMSteeringConfig"):
        from engine import vllm_backend

        return getattr(vllm_backend, name)
    if name in ("LlamaCppSteerModel", "LlamaCppWithFallback"):
        from engine import llamacpp_backend

        return getattr(llamacpp_backend, name)
    raise AttributeError(name)
