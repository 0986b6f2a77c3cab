"""The two panes of the Compare tab, described once: every pane is built and filled by one loop over :data:`SIDES`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from engine import StreamEvent


@dataclass(frozen=True)
class Side:
    """One pane: what it shows and whether its request carries the spec."""

    key: str
    label: str
    steered: bool

    @property
    def elem_id(self) -> str:
        return f"{self.key}-output"

    @property
    def stats_elem_id(self) -> str:
        return f"{self.key}-stats"


SIDES: tuple[Side, ...] = (
    Side("baseline", "Baseline (unsteered)", steered=False),
    Side("steered", "Steered", steered=True),
)

# While the vLLM engine rebuilds itself after its process died (``engine.status() == "restarting"``).
ENGINE_RESTARTING_WAIT = "engine restarting — your request will run when it is back"
ENGINE_RESTARTING_RETRY = "engine restarting — your request did not run; press Generate again in a moment"
ENGINE_RESTARTING_STATS = "engine restarting…"
GENERATING = "generating…"
STOPPED = "stopped"
# From the click until the first token: the request waits in the queue or for the engine (other users' runs).
WAITING = "waiting for the model…"


def notice(text: str, stats: str) -> tuple[str, ...]:
    """The same message in every pane and every stats line (one compare output)."""
    return (text,) * len(SIDES) + (stats,) * len(SIDES)


@dataclass
class Pane:
    """What one pane has received so far from the stream."""

    started: float = field(default_factory=time.perf_counter)
    text: str = ""
    num_tokens: int = 0
    elapsed: float = 0.0
    finish_reason: str | None = None

    def push(self, event: StreamEvent) -> None:
        """Add a stream event's text; ``token_ids`` are the row's ids so far."""
        self.text += event.delta
        self.num_tokens = len(event.token_ids)
        self.elapsed = time.perf_counter() - self.started
        if event.finished:
            self.finish_reason = event.finish_reason

    def stats(self, stopped: bool = False) -> str:
        """One line: tokens, seconds, tokens per second and why it ended."""
        rate = self.num_tokens / self.elapsed if self.elapsed > 0 else 0.0
        state = {"stop": "finished", "length": "hit max tokens", "abort": "aborted"}.get(
            self.finish_reason or "", STOPPED if stopped else GENERATING
        )
        return f"{self.num_tokens} tokens · {self.elapsed:.1f} s · {rate:.1f} tok/s · {state}"
