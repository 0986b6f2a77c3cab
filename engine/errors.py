"""Engine-side errors (the steering errors themselves live in :mod:`vectors.errors`)."""

from __future__ import annotations

from vectors import SteeringError


class EngineDeadError(SteeringError):
    """The engine behind a backend died while a call was running (or before it started).

    The vLLM backend rebuilds its engine on the next call (``VLLMSteeringConfig.auto_restart``); a caller can retry.
    """
