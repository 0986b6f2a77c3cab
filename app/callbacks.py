"""Thin handlers behind every button, joined in one object: :class:`Callbacks`.

Each concern has its own module; :class:`Callbacks` is the one object :func:`app.ui.build_demo` wires up:

* :mod:`app.context`: the engine, registry and limits, and the parsing every handler shares (prompt, sampling, and
  the steering controls -> a checked spec via :class:`~app.steering_controls.SteeringControls`);
* :mod:`app.compare`: the streamed comparison, multi-turn chat (new chat, regenerate) and Stop;
* :mod:`app.sweep`: the scale sweep;
* :mod:`app.spec_files`: export and import of spec files and GGUF control vectors, quick rows -> spec editor;
* :mod:`app.registry_handlers`: list, details, delete and create vectors, engine info;
* :mod:`app.scale_handlers`: the scale sliders' ranges, notes and defaults;
* the projection trace's handler lives with its view in :mod:`app.projection_view`.

Handlers raise :class:`~vectors.SteeringError` for bad input; :mod:`app.errors` turns it into ``gr.Error`` where the
UI wires them up.
"""

from __future__ import annotations

from app.compare import CHAT_NEEDS_TEMPLATE, ENGINE_DEAD, GENERATE_LABEL, RESTART_LABEL, CompareHandlers, CompareOutput
from app.context import AppContext, build_prompt, default_skip
from app.registry_handlers import PREFERRED_DEFAULTS, READ_ONLY_DELETE, REGISTRY_COLUMNS, RegistryHandlers
from app.scale_handlers import ScaleHandlers
from app.spec_files import SPEC_SUFFIXES, SpecFileHandlers
from app.sweep import MAX_SWEEP_SCALES, SWEEP_COLUMNS, SWEEP_RUNNING, SweepHandlers, parse_scales

__all__ = [
    "CHAT_NEEDS_TEMPLATE",
    "ENGINE_DEAD",
    "GENERATE_LABEL",
    "MAX_SWEEP_SCALES",
    "PREFERRED_DEFAULTS",
    "READ_ONLY_DELETE",
    "REGISTRY_COLUMNS",
    "RESTART_LABEL",
    "SPEC_SUFFIXES",
    "SWEEP_COLUMNS",
    "SWEEP_RUNNING",
    "AppContext",
    "Callbacks",
    "CompareOutput",
    "build_prompt",
    "default_skip",
    "parse_scales",
]


class Callbacks(CompareHandlers, SweepHandlers, SpecFileHandlers, RegistryHandlers, ScaleHandlers):
    """The app's handlers, bound to one engine, one registry, one export folder and the app's limits.

    Takes :class:`~app.context.AppContext`'s arguments (engine, registry, export folder; registry_writable, limits,
    upload_dir).
    """
