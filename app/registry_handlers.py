"""The Registry tab's handlers: list, details, delete and create vectors, and the Engine tab's info."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from app.context import AppContext, whole_number
from app.sanitize import escape_markdown
from app.spec_editor import SESSION_PREFIX, Rows, SessionVectors
from vectors import SteeringError
from vectors.registry import VectorEntry, validate_name

__all__ = ["PREFERRED_DEFAULTS", "READ_ONLY_DELETE", "REGISTRY_COLUMNS", "RegistryHandlers"]

REGISTRY_COLUMNS = ["name", "layer", "hidden size", "norm", "scale", "description", "method", "stored", "model"]
# Shown first by default: vectors that visibly steer the default prompt at their suggested scale.
PREFERRED_DEFAULTS = ("pirate", "happy", "formal")
READ_ONLY_DELETE = (
    "delete: this app serves a read-only registry (public mode: SIDESTEER_READ_ONLY=1 or --read-only-registry), so {name!r} "
    "cannot be deleted; vectors you create here live only in your browser session"
)


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


class RegistryHandlers(AppContext):
    """The registry's vectors (and this session's own) as the page and the API see them."""

    def _stored(self, name: str) -> str:
        if name.startswith(SESSION_PREFIX):
            return "this session"
        return "shipped" if self.registry.is_shipped(name) else "server"

    def list_vectors(self, session: SessionVectors | None = None) -> Rows:
        """Registry vectors (and this session's own) that fit the loaded model.

        Returns:
            Rows of (name, suggested layer, hidden size, norm, suggested scale, description, method, stored, model).
        """
        return [
            [
                name,
                e.suggested_layer,
                e.hidden_size,
                round(e.norm, 2),
                e.suggested_scale,
                e.description,
                e.method,
                self._stored(name),
                e.model_id or "",
            ]
            for name, e in self.known_vectors(session)
        ]

    @staticmethod
    def _public(entry: VectorEntry, name: str | None = None) -> dict[str, Any]:
        """Entry metadata without the server-side path (never show clients the server's file system)."""
        details = entry.to_dict()
        details.pop("path", None)
        if name is not None:
            details["name"] = name
        return details

    def vector_names(self, session: SessionVectors | None = None) -> list[str]:
        """Names of every vector that fits the loaded model (registry first, then this session's)."""
        return [name for name, _ in self.known_vectors(session)]

    def default_vector(self) -> str | None:
        """The vector selected at start: one that visibly steers at its suggested scale when the registry has it."""
        names = self.vector_names()
        return next((n for n in PREFERRED_DEFAULTS if n in names), names[0] if names else None)

    def vector_details(self, name: str | None, session: SessionVectors | None = None) -> dict[str, Any]:
        """All metadata of one registry vector."""
        if not name:
            return {}
        entry = self.vector_source(session).entry(name, "name")
        if isinstance(entry, torch.Tensor):  # from an imported file: no metadata
            return {"name": name, "hidden_size": entry.numel(), "norm": float(entry.norm()), "stored": "this session"}
        return {**self._public(entry, name), "stored": self._stored(name)}

    def delete_vector(self, name: str | None, session: SessionVectors | None = None) -> tuple[str, dict[str, Any]]:
        """Delete a registry vector (or one of this session's own). Refused in read-only mode and for shipped vectors.

        Returns:
            A status line.
        """
        session = dict(session or {})
        if not name:
            raise SteeringError("name: no vector selected; pick the vector to delete")
        if name.startswith(SESSION_PREFIX):
            if session.pop(name, None) is None:
                raise SteeringError(f"name: {name!r} is not among this session's vectors; pick one from the list")
            return f"Removed **{escape_markdown(name)}** from this session.", session
        if self.read_only:
            raise SteeringError(READ_ONLY_DELETE.format(name=name))
        if self.registry.is_shipped(name):
            raise SteeringError(
                f"delete: {name!r} ships with the app (a read-only folder), so it cannot be deleted; only vectors created on this server can"
            )
        self.registry.remove(name)
        return f"Deleted **{escape_markdown(name)}**.", session

    def create_vector(
        self,
        name: str,
        description: str,
        layer: float,
        positive_prompts: str,
        negative_prompts: str,
        suggested_scale: float | None,
        overwrite: bool,
        session: SessionVectors | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Make a vector from contrastive prompts (mean activation difference at a layer) and save it.

        It goes into the registry, or, in read-only mode, into this browser session only (as ``session:<name>``).

        Args:
            name: Registry name (letters, digits, '.', '_', '-').
            description: What steering with it does.
            layer: 0-based decoder layer to read activations at (also its suggested layer).
            positive_prompts: One prompt per line showing the concept.
            negative_prompts: One prompt per line showing its opposite.
            suggested_scale: Stored as extra.suggested_scale (quick mode's default scale); 0 or empty for none.
            overwrite: Replace a vector of the same name.

        Returns:
            The new vector's metadata; ``extra.residual_norm`` is the norm of the mean residual stream of all the
            prompts at the layer (what the scale slider compares the scaled vector with).
        """
        session = dict(session or {})
        layer_index = whole_number(layer, "layer")
        positive, negative = _lines(positive_prompts), _lines(negative_prompts)
        for field, prompts in (("positive_prompts", positive), ("negative_prompts", negative)):
            self.limits.check("max_prompts", len(prompts), field, "use fewer prompts")
        validate_name(name)  # fail on a bad name before the forward passes
        key = SESSION_PREFIX + name
        if self.read_only and key in session and not overwrite:
            raise SteeringError(f"name: {key!r} already exists in this session; tick overwrite or pick another name")
        if not self.read_only and self.registry.is_shipped(name):
            raise SteeringError(f"name: {name!r} is a vector shipped with the app and cannot be replaced; pick another name")
        # mean_difference's two means, kept: their weighted mean's norm is the residual norm the scale slider relates
        # scales to ("2 = about 0.5x the residual norm at layer 8"), recorded at no extra forward pass.
        if not positive or not negative:
            raise SteeringError("prompts: positive_prompts and negative_prompts must both be non-empty")
        pos = self.engine.mean_activations(positive, [layer_index])[layer_index]
        neg = self.engine.mean_activations(negative, [layer_index])[layer_index]
        vector = pos - neg  # = mean_difference(engine, positive, negative, layer)
        residual = (pos * len(positive) + neg * len(negative)) / (len(positive) + len(negative))
        extra: dict[str, Any] = {
            "num_positive": len(positive),
            "num_negative": len(negative),
            "residual_norm": round(float(residual.norm()), 4),
        }
        if suggested_scale not in (None, "", 0):  # a scale of 0 steers nothing, so 0 means "no suggestion"
            extra["suggested_scale"] = float(suggested_scale)
        fields = {
            "description": description or "",
            "model_id": self.engine.model_id,
            "suggested_layer": layer_index,
            "method": "mean-diff",
            "extra": extra,
        }
        if self.read_only:
            session[key] = VectorEntry(name=name, vector=vector, **fields)
            return self._public(session[key], key), session
        entry = self.registry.add(name, vector, overwrite=bool(overwrite), **fields)
        return self._public(entry), session

    def engine_info(self) -> dict[str, Any]:
        """Backend, model, number of layers, hidden size, engine status, registry mode, the limits, how many vectors fit."""
        return {
            **self.engine.info(),
            "status": self.engine.status(),
            "registry": self.registry.root.name,
            "registry_mode": "read-only" if self.read_only else "writable",
            "vectors_fitting": len(self.fitting_vectors()),
            "limits": dataclasses.asdict(self.limits),
        }
