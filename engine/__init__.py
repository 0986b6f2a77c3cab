"""How a model is steered: one ``SteerableModel`` API, a transformers backend and a vLLM backend.

The vLLM backend is imported lazily (``from engine import VLLMSteerModel``) so that the transformers backend works
without vLLM installed.
"""

from __future__ import annotations

from typing import Any

from engine.base import Generation, GenerationConfig, RequestLimits, SteerableModel, StreamEvent
from engine.errors import EngineDeadError
from engine.extraction import mean_difference
from engine.hf_backend import HFSteerModel

__all__ = [
    "EngineDeadError",
    "Generation",
    "GenerationConfig",
    "HFSteerModel",
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
