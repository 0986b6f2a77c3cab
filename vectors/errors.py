"""The one error family of sidesteer: every rejected input raises a ``SteeringError``."""

from __future__ import annotations


class SteeringError(ValueError):
    """Bad steering input. The message names the field, the value and the fix."""
