"""How a model is steered: one ``SteerableModel`` API, a transformers backend and a vLLM backend.

The backend contract is :mod:`engine.backend` (with the request values of :mod:`engine.generation`); the seed's
stateful API on top of it is :mod:`engine.stateful`.

The vLLM backend is imported lazily (``from engine import VLLMSteerModel``) so that the transformers backend works
without vLLM installed.
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
    raise AttributeError(name)
