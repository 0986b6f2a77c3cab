"""Per-request limits of the web app: every visitor shares one engine, so no single request may be unbounded.

Each limit has a command-line flag and an environment variable (Spaces have no command line). Handlers check their
input against :class:`AppLimits` before any work starts; the engine gets the matching
:class:`~engine.RequestLimits` as a second line of defence (``app.py`` sets ``engine.limits``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine import RequestLimits
from vectors import SteeringError

MEGABYTE = 1024 * 1024  # gradio's "16mb" means 16 * 1024 * 1024 bytes


@dataclass(frozen=True)
class LimitOption:
    """How one limit is set and explained: the field of :class:`AppLimits`, its flag, its variable, what it caps."""

    field: str
    help: str
    unit: str

    @property
    def env(self) -> str:
        return f"SIDESTEER_{self.field.upper()}"

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


OPTIONS: tuple[LimitOption, ...] = (
    LimitOption("max_prompt_tokens", "tokens of one prompt (system prompt and chat template included)", "tokens"),
    LimitOption("max_new_tokens", "tokens generated per pane, per sweep row (also the slider's maximum)", "tokens"),
    LimitOption("max_sweep_points", "scale factors in one sweep", "points"),
    LimitOption("max_spec_layers", "rows (layers) in the spec editor and in an imported spec", "layers"),
    LimitOption("max_upload_mb", "size of an uploaded spec file or control vector", "MB"),
    LimitOption("max_prompts", "prompts in each list of 'Create a vector'", "prompts"),
)
_BY_FIELD = {option.field: option for option in OPTIONS}


@dataclass(frozen=True)
class AppLimits:
    """The app's limits (all positive integers).

    Args:
        max_prompt_tokens: Tokens of one prompt after the chat template ($SIDESTEER_MAX_PROMPT_TOKENS).
        max_new_tokens: ``max_new_tokens`` of a compare or sweep ($SIDESTEER_MAX_NEW_TOKENS).
        max_sweep_points: Scale factors in one sweep ($SIDESTEER_MAX_SWEEP_POINTS).
        max_spec_layers: Spec editor rows / imported spec layers ($SIDESTEER_MAX_SPEC_LAYERS).
        max_upload_mb: Upload size in MiB ($SIDESTEER_MAX_UPLOAD_MB).
        max_prompts: Prompts per list when creating a vector ($SIDESTEER_MAX_PROMPTS).
    """

    max_prompt_tokens: int = 1024
    max_new_tokens: int = 512
    max_sweep_points: int = 16
    max_spec_layers: int = 64
    max_upload_mb: int = 16
    max_prompts: int = 64

    def __post_init__(self) -> None:
        for option in OPTIONS:
            value = getattr(self, option.field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SteeringError(
                    f"{option.field}: {value!r} is not a positive integer; set {option.env} (or {option.flag}) to e.g. {getattr(AppLimits, option.field)}"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AppLimits:
        """Limits from ``SIDESTEER_MAX_*`` variables; unset or empty ones keep their defaults.

        Raises:
            SteeringError: A variable that is not a positive integer (the message names it).
        """
        values: dict[str, int] = {}
        for option in OPTIONS:
            raw = environ.get(option.env, "").strip()
            if not raw:
                continue
            try:
                values[option.field] = int(raw)
            except ValueError as exc:
                raise SteeringError(
                    f"{option.env}: {raw!r} is not a whole number; set it to a positive integer such as {getattr(cls, option.field)}"
                ) from exc
        return cls(**values)

    def replace(self, **changes: int) -> AppLimits:
        """A copy with some limits changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * MEGABYTE

    @property
    def max_file_size(self) -> str:
        """The upload limit in the form ``demo.launch(max_file_size=...)`` takes."""
        return f"{self.max_upload_mb}mb"

    def request_limits(self, num_sides: int = 2) -> RequestLimits:
        """The engine-side limits these app limits imply (a sweep sends one prompt per point)."""
        return RequestLimits(
            max_prompt_tokens=self.max_prompt_tokens,
            max_new_tokens=self.max_new_tokens,
            max_prompts=max(self.max_prompts, self.max_sweep_points, num_sides),
        )

    def check(self, limit: str, value: int, field: str, fix: str) -> None:
        """Refuse ``value`` when it is over the limit called ``limit``.

        Args:
            limit: An :class:`AppLimits` field, e.g. ``"max_new_tokens"``.
            value: The request's number.
            field: The input it came from, e.g. ``"max_new_tokens"`` or ``"prompt"``.
            fix: What the user can do, e.g. ``"shorten the prompt"``.

        Raises:
            SteeringError: Names the field, the value, the limit and the variable that raises it.
        """
        maximum = getattr(self, limit)
        if value > maximum:
            option = _BY_FIELD[limit]
            raise SteeringError(
                f"{field}: {value} {option.unit} is over this server's limit of {maximum} {option.unit}; {fix} "
                f"(the operator can raise it with {option.env} or {option.flag})"
            )

    def check_upload(self, path: Path) -> None:
        """Refuse a file larger than :attr:`max_upload_mb` (Gradio refuses most of them before they arrive).

        Raises:
            SteeringError: Names the file, its size, the limit and the variable that raises it.
        """
        size = path.stat().st_size
        if size > self.max_upload_bytes:
            option = _BY_FIELD["max_upload_mb"]
            raise SteeringError(
                f"file: {path.name!r} is {size / MEGABYTE:.1f} MB, over this server's limit of {self.max_upload_mb} MB; "
                f"upload a smaller file (the operator can raise it with {option.env} or {option.flag})"
            )
