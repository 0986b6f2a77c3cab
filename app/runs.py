"""Which comparison is current in each browser session: a new Generate supersedes (cancels) the running one.

Gradio drops a click on a button whose event is still pending unless the event allows several submissions; the
Compare event does, and the stream of an older run stops at its next token once a newer run of the same session
has started (its generator closes the engine request, so the engine is free for the new run at once).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Run:
    """One comparison of one session."""

    session: str
    number: int


class RunTracker:
    """The latest run per session, and how many runs of each session are still streaming."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._latest: dict[str, int] = {}
        self._streaming: dict[str, int] = {}

    def start(self, session: str) -> Run:
        """Register a new run of ``session``; every earlier run of it is superseded from now on."""
        with self._lock:
            run = Run(session, next(self._counter))
            self._latest[session] = run.number
            self._streaming[session] = self._streaming.get(session, 0) + 1
            return run

    def is_current(self, run: Run) -> bool:
        """False once a newer run of the same session has started."""
        with self._lock:
            return self._latest.get(run.session) == run.number

    def finish(self, run: Run) -> None:
        """The run's stream ended (finished, stopped, superseded or failed)."""
        with self._lock:
            left = self._streaming.get(run.session, 1) - 1
            if left > 0:
                self._streaming[run.session] = left
            else:
                self._streaming.pop(run.session, None)
                if self._latest.get(run.session) == run.number:
                    self._latest.pop(run.session, None)  # nothing left to remember for this session

    def streaming(self, session: str) -> bool:
        """Whether a run of ``session`` is still streaming."""
        with self._lock:
            return self._streaming.get(session, 0) > 0
