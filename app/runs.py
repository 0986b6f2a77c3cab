"""Which comparison is current in each browser session: a new Generate supersedes (cancels) the running one.

Gradio drops a click on a button whose event is still pending unless the event allows several submissions; the
Compare event does, and the stream of an older run stops at its next token once a newer run of the same session
has started (its generator closes the engine request, so the engine is free for the new run at once).

Stop ends a session's runs here (:meth:`RunTracker.stop`): it closes each run's engine stream itself. Gradio's cancel
only drops the handler's generator, and a dropped generator caught in a reference cycle (the cancelled task's
exception traceback) is closed by the garbage collector, minutes later: until then its stream held the engine (the
transformers backend's lock), and the next comparison waited. Each session's latest run also leaves its stats lines
here (:meth:`RunTracker.show`), so that Stop writes the final "stopped" lines from the server's own counts, after every
update the stream sent: the browser never sees "generating…" again after them.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

StatsView = Callable[[bool], tuple[str, ...]]  # stopped -> the stats lines of the run's panes
SESSIONS_REMEMBERED = 4096  # stats views kept (one per session, oldest dropped first)
CLOSE_RETRY_S = 0.05  # a stream busy in a step (on the cancelled handler's thread) is closed once the step is done


@dataclass(frozen=True)
class Run:
    """One comparison of one session."""

    session: str
    number: int


class RunTracker:
    """The latest run per session, how many runs of each session are still streaming, and the latest run's stats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._counter = itertools.count(1)
        self._latest: dict[str, int] = {}
        self._active: dict[str, dict[int, Callable[[], object] | None]] = {}  # session -> run number -> its closer
        self._views: OrderedDict[str, StatsView] = OrderedDict()
        self._stoppers: dict[str, threading.Event] = {}  # session -> its running stopper's done event (stop_soon)
        self._stop_upto: dict[str, int] = {}  # session -> the newest run number a Stop asked to end

    def start(self, session: str) -> Run:
        """Register a new run of ``session``; every earlier run of it is superseded from now on."""
        with self._lock:
            run = Run(session, next(self._counter))
            self._latest[session] = run.number
            self._active.setdefault(session, {})[run.number] = None
            return run

    def closes_with(self, run: Run, close: Callable[[], object]) -> None:
        """How :meth:`stop` ends ``run``: e.g. its engine stream's ``close``."""
        with self._lock:
            if run.number in self._active.get(run.session, {}):
                self._active[run.session][run.number] = close

    def is_current(self, run: Run) -> bool:
        """False once a newer run of the same session has started."""
        with self._lock:
            return self._latest.get(run.session) == run.number

    def finish(self, run: Run) -> None:
        """The run's stream ended (finished, stopped, superseded or failed); a second call changes nothing."""
        with self._lock:
            active = self._active.get(run.session, {})
            active.pop(run.number, None)
            if not active:
                self._active.pop(run.session, None)
                if self._latest.get(run.session) == run.number:
                    self._latest.pop(run.session, None)  # nothing left to remember for this session
                self._idle.notify_all()

    def active(self, run: Run) -> bool:
        """False once the run finished or :meth:`stop` ended it."""
        with self._lock:
            return run.number in self._active.get(run.session, {})

    def streaming(self, session: str) -> bool:
        """Whether a run of ``session`` is still streaming."""
        with self._lock:
            return bool(self._active.get(session))

    def wait_idle(self, session: str, timeout: float) -> bool:
        """Wait until no run of ``session`` streams.

        Returns:
            False when a run still streams after ``timeout`` seconds.
        """
        with self._lock:
            return self._idle.wait_for(lambda: not self._active.get(session), timeout)

    def stop(self, session: str, timeout: float, upto: int | None = None) -> bool:
        """End the runs of ``session`` up to run number ``upto`` (None: every run it has now): close each one's stream
        (which frees the engine at once) and mark it finished.

        A stream in the middle of a step (its handler's thread is computing a token, or waiting for the engine behind
        other users' runs) cannot be closed from here until the step is done: it is tried again every
        :data:`CLOSE_RETRY_S` for up to ``timeout`` seconds. A run that has no stream yet (still in Gradio's queue)
        is left to Gradio's cancel. Runs started after the Stop that asked for this are never touched; a later
        :meth:`stop_soon` of the session while this one waits raises ``upto`` (one stopper per session).

        Returns:
            Whether the session has no run left.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            if upto is None:
                upto = max(self._active.get(session, {}), default=0)
        while True:
            with self._lock:
                upto = max(upto, self._stop_upto.get(session, 0))
                active = self._active.get(session, {})
                runs = [(Run(session, n), close) for n, close in active.items() if close is not None and n <= upto]
            busy = False
            for run, close in runs:
                try:
                    close()
                except ValueError:  # "generator already executing": a step is running on another thread
                    busy = True
                    continue
                self.finish(run)
            if not busy or time.monotonic() >= deadline:
                return not self.streaming(session)
            time.sleep(CLOSE_RETRY_S)

    def stop_soon(self, session: str, timeout: float) -> threading.Event:
        """:meth:`stop` on a thread of its own (a stream waiting for the engine may take minutes to close).

        One thread per session: a Stop clicked while the session's stopper still waits raises what that stopper ends
        (every run the session has now) instead of starting another, so repeated clicks cannot pile up threads.

        Returns:
            An event set once the session's stopper has returned.
        """
        with self._lock:
            self._stop_upto[session] = max(self._stop_upto.get(session, 0), max(self._active.get(session, {}), default=0))
            running = self._stoppers.get(session)
            if running is not None:
                return running
            done = self._stoppers[session] = threading.Event()

        def stopper() -> None:
            handled = 0
            try:
                while True:
                    with self._lock:
                        upto = self._stop_upto.get(session, 0)
                        if upto <= handled:  # no Stop asked for more since the last pass: this stopper ends
                            self._stoppers.pop(session, None)
                            self._stop_upto.pop(session, None)
                            return
                    self.stop(session, timeout, upto)
                    handled = upto
            finally:
                with self._lock:  # also after an error: a stale entry would swallow every later Stop
                    if self._stoppers.get(session) is done:
                        self._stoppers.pop(session, None)
                        self._stop_upto.pop(session, None)
                done.set()

        threading.Thread(target=stopper, name="sidesteer-stop", daemon=True).start()
        return done

    def show(self, run: Run, view: StatsView) -> None:
        """Remember how to draw the stats lines of ``run``, the session's latest run."""
        with self._lock:
            if self._latest.get(run.session) != run.number:
                return  # superseded already: the newer run's view counts
            self._views.pop(run.session, None)
            self._views[run.session] = view
            while len(self._views) > SESSIONS_REMEMBERED:
                self._views.popitem(last=False)

    def view(self, session: str) -> StatsView | None:
        """How to draw the stats lines of the session's latest run (None: no run yet, or forgotten)."""
        with self._lock:
            return self._views.get(session)

    def forget(self, session: str) -> None:
        """Drop the session's stats view (a new chat cleared the panes)."""
        with self._lock:
            self._views.pop(session, None)
