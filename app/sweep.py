"""The Sweep tab's handler: the current setup at several scale factors in one batch, streamed into a grid."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from app.context import AppContext, build_prompt
from app.limits import OPTIONS, AppLimits
from app.sides import Pane
from app.spec_editor import Rows, SessionVectors
from app.steering_controls import SteeringControls
from vectors import SteeringError

__all__ = ["MAX_SWEEP_SCALES", "SWEEP_COLUMNS", "SWEEP_RUNNING", "SweepHandlers", "parse_scales"]

SWEEP_COLUMNS = ["scale factor", "tokens", "completion"]
SWEEP_RUNNING = "running…"  # marks a sweep row whose output has not finished yet
SWEEP_YIELD_EVERY = 8
MAX_SWEEP_SCALES = AppLimits().max_sweep_points
_SWEEP_OPTION = next(o for o in OPTIONS if o.field == "max_sweep_points")


def parse_scales(text: str, max_points: int = MAX_SWEEP_SCALES) -> list[float]:
    """``"-2, -1, 0, 1, 2"`` -> ``[-2.0, -1.0, 0.0, 1.0, 2.0]``.

    Raises:
        SteeringError: Empty, not numbers, not finite, or more than ``max_points`` values.
    """
    parts = [p for p in str(text or "").replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    if not parts:
        raise SteeringError("scales: no values; type comma-separated numbers such as -2, -1, 0, 1, 2")
    if len(parts) > max_points:
        raise SteeringError(
            f"scales: {len(parts)} values; a sweep takes at most {max_points} on this server "
            f"(the operator can raise it with {_SWEEP_OPTION.env} or {_SWEEP_OPTION.flag})"
        )
    try:
        scales = [float(p) for p in parts]
    except ValueError as exc:
        raise SteeringError(f"scales: {text!r} holds something that is not a number ({exc}); use e.g. -2, -1, 0, 1, 2") from exc
    if not all(math.isfinite(s) for s in scales):
        raise SteeringError(f"scales: {text!r} holds a non-finite value; use finite numbers")
    return scales


class SweepHandlers(AppContext):
    """The sweep."""

    def sweep(
        self,
        prompt: str,
        system_prompt: str,
        vector: str | None,
        layer: float,
        scale: float,
        max_new_tokens: float,
        temperature: float,
        top_p: float,
        seed: float | None,
        raw_completion: bool,
        steering_mode: str,
        editor: Any,
        scales: str,
        session: SessionVectors | None = None,
        vector_2: str | None = None,
        layer_2: float = 0,
        scale_2: float = 1.0,
        vector_3: str | None = None,
        layer_3: float = 0,
        scale_3: float = 1.0,
        vector_4: str | None = None,
        layer_4: float = 0,
        scale_4: float = 1.0,
        skip_first_tokens: float | None = 0,
    ) -> Iterator[Rows]:
        """Run the current setup at several scale factors in one batch (one row per factor, same seed for all).

        Streams: every row shows its text so far and ``running`` until it ends; a row is final the moment its scale's
        output finishes, and the yields come as rows finish (and every few tokens in between).

        Args:
            scales: Comma-separated factors that multiply every add scale of the setup, e.g. "-2, -1, 0, 1, 2".
            vector_2: Quick rows 2-4 and skip_first_tokens as for /compare. A sweep is single-turn (no chat history).

        Returns:
            Rows of (scale factor, tokens, completion); the last yield is final (every row done).
        """
        controls = SteeringControls.from_args(locals())
        request = build_prompt(prompt, system_prompt, raw_completion)
        factors = parse_scales(scales, self.limits.max_sweep_points)
        self.check_prompt(request)
        spec = self.spec(controls)
        config = self.config(len(factors), max_new_tokens, temperature, top_p, seed)
        panes = [Pane() for _ in factors]

        def grid() -> Rows:
            return [
                [factor, p.num_tokens, p.text if p.finish_reason else f"{p.text} [{SWEEP_RUNNING}]".lstrip()]
                for factor, p in zip(factors, panes, strict=True)
            ]

        yield grid()
        stream = self.engine.generate_stream([request] * len(factors), config, steering=[spec.scaled(f) for f in factors])
        try:
            for count, event in enumerate(stream, 1):
                panes[event.index].push(event)
                if event.finished or count % SWEEP_YIELD_EVERY == 0:  # a browser update per token per row is too many
                    yield grid()
        finally:
            stream.close()  # Gradio drops this generator on cancel: end the engine request
        yield grid()
