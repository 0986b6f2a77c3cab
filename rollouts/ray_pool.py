"""Data-parallel rollouts on Ray: engine replicas pull batches from a driver, which alone writes the records.

A :class:`ReplicaPool` starts ``replicas`` Ray actors, each building its own steered engine with the caller's
``factory`` (one GPU, or one tensor-parallel group of GPUs, each). :meth:`ReplicaPool.results` is a
:class:`rollouts.run.BatchRunner`: it keeps a queue of the run's batches, gives each replica ``in_flight`` of them
at a time, and yields every finished batch to :func:`rollouts.run.run_rollouts`, which appends and fsyncs it like a
single-engine run. Only the driver writes, so no record is written twice.

Records do not depend on the replica: every record carries its own seed (:func:`rollouts.plan.record_seed`) and
batches are the same lists of work items as in a single-engine run, so the same seeds give the same records.

A replica that dies (its actor process is gone, or its engine stays dead after the backend's own retries) is dropped
and the batches it had in flight go back to the front of the queue, for the survivors. When none survive, the run
stops with :class:`vectors.SteeringError`; every finished batch is on disk, and the same command resumes.

Multi-node is the same code against an existing cluster (``address``): ``sidesteer`` must be importable on every
node (the same environment and checkout path everywhere).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from engine.errors import EngineDeadError
from engine.generation import Generation
from engine.stateful import SteerableModel
from rollouts.plan import RolloutSettings, WorkItem
from rollouts.replica import RemoteModel, Replica, check_replicas, remote_cause
from rollouts.run import RolloutSummary
from vectors import SteeringError

__all__ = ["ReplicaPool"]

log = logging.getLogger("sidesteer.rollouts")


class ReplicaPool:
    """``replicas`` steered engines on a Ray cluster, and the driver's queue that feeds them (a ``BatchRunner``).

    Use as a context manager: closing kills the replicas, and shuts Ray down if the pool started it.

    Args:
        factory: Builds one replica's model; called inside each actor, so it must be picklable (a module-level
            function or a ``functools.partial`` of one).
        replicas: Number of engine replicas (>= 1).
        address: An existing Ray cluster (``ray://...`` or ``host:port``); None starts a local one (or uses the one
            this process already started).
        gpus: GPUs per replica on a cluster that has GPUs (the tensor-parallel size); none on a cluster without.
        num_cpus: CPUs per replica (None: 1 with GPUs, else the cluster's free CPUs shared out over the replicas).
        in_flight: Batches a replica holds at once (2: the next one waits on the replica while one runs).

    Raises:
        SteeringError: A bad count, Ray missing, or a replica that could not build its model.
    """

    def __init__(self, factory: Callable[[], SteerableModel], replicas: int, *, address: str | None = None,
                 gpus: int = 1, num_cpus: float | None = None, in_flight: int = 2) -> None:  # fmt: skip
        ray = check_replicas(replicas)
        if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1:
            raise SteeringError(f"in_flight: {in_flight!r} must be an integer >= 1")
        self.ray = ray
        self.in_flight = in_flight
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            # A local cluster needs no dashboard; an existing one keeps its own settings.
            ray.init(address=address, **({} if address else {"include_dashboard": False}))
        total, free = ray.cluster_resources(), ray.available_resources()
        on_gpu = total.get("GPU", 0) > 0
        if num_cpus is None:  # CPU replicas share out the free cores (torch threads follow: Ray sets OMP_NUM_THREADS)
            num_cpus = 1 if on_gpu else max(1, int(free.get("CPU", 1)) // replicas)
        need = {"GPU": replicas * gpus if on_gpu else 0, "CPU": replicas * num_cpus}
        short = {k: (v, total.get(k, 0)) for k, v in need.items() if v > total.get(k, 0)}
        if short:  # Ray would wait forever for resources the cluster does not have
            raise SteeringError(
                f"replicas: {replicas} replicas need {', '.join(f'{v:g} {k}s' for k, (v, _) in short.items())}; the Ray "
                f"cluster has {', '.join(f'{have:g} {k}s' for k, (_, have) in short.items())}: ask for fewer --replicas "
                "(or a smaller --tensor-parallel-size), or add nodes"
            )
        actor = ray.remote(Replica).options(num_gpus=gpus if on_gpu else 0, num_cpus=num_cpus, max_restarts=0,
                                            scheduling_strategy="SPREAD")  # fmt: skip
        self.actors: list[Any] = [actor.remote(factory) for _ in range(replicas)]
        self.alive = list(range(replicas))
        self.done = [0] * replicas  # batches each replica finished
        try:
            descriptions = self._describe_all()
        except BaseException:
            self.close()
            raise
        first = descriptions[0]
        self.model = RemoteModel(self, first, replicas)
        log.info("%d replicas of %s (%s) on %s", replicas, first["model_id"], first["backend"],
                 sorted({d["node"] for d in descriptions}))  # fmt: skip

    def _describe_all(self) -> list[dict[str, Any]]:
        descriptions = []
        for index, actor in enumerate(self.actors):
            try:
                descriptions.append(self.ray.get(actor.describe.remote()))
            except Exception as exc:
                cause = remote_cause(exc)
                raise SteeringError(f"replicas: replica {index} could not build its model: {cause}") from exc
        shapes = {(d["model_id"], d["num_layers"], d["hidden_size"]) for d in descriptions}
        if len(shapes) > 1:
            raise SteeringError(f"replicas: the replicas built different models {sorted(shapes)}; use one --model")
        return descriptions

    def __enter__(self) -> ReplicaPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill the replicas; shut Ray down if this pool started it."""
        for actor in self.actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors, self.alive = [], []
        if self._started_ray and self.ray.is_initialized():
            self.ray.shutdown()

    def _lose(self, replica: int, why: BaseException, summary: RolloutSummary) -> None:
        if replica not in self.alive:
            return
        self.alive.remove(replica)
        summary.replicas_lost += 1
        log.warning("replica %d died (%s); %d left", replica, str(why).splitlines()[0][:300], len(self.alive))
        try:
            self.ray.kill(self.actors[replica], no_restart=True)
        except Exception:
            pass

    def results(self, batches: list[list[WorkItem]], settings: RolloutSettings,
                summary: RolloutSummary) -> Generator[tuple[list[WorkItem], list[Generation]], None, None]:  # fmt: skip
        """Run ``batches`` on the replicas and yield each finished batch with its completions, as they finish.

        Raises:
            SteeringError: Every replica died (what finished so far was yielded; a rerun resumes), or a replica
                refused a batch's input.
        """
        ray, exceptions = self.ray, self.ray.exceptions
        queue: deque[list[WorkItem]] = deque(batches)
        pending: dict[Any, tuple[int, list[WorkItem]]] = {}  # object ref -> (replica, batch)
        load = dict.fromkeys(range(len(self.actors)), 0)
        while queue or pending:
            for replica in self.alive:
                while queue and load[replica] < self.in_flight:
                    batch = queue.popleft()
                    pending[self.actors[replica].generate.remote(batch, settings)] = (replica, batch)
                    load[replica] += 1
            if not pending:
                raise SteeringError(
                    f"replicas: all {len(self.actors)} replicas died; {len(queue)} batches are not done (the finished "
                    "ones are written); rerun the same command to resume"
                )
            [ref], _ = ray.wait(list(pending), num_returns=1)
            replica, batch = pending.pop(ref)
            load[replica] -= 1
            try:
                generations, retries = ray.get(ref)
            except exceptions.RayActorError as exc:  # the actor process is gone
                self._lose(replica, exc, summary)
            except exceptions.RayTaskError as exc:
                cause = remote_cause(exc)
                if isinstance(cause, SteeringError):
                    raise SteeringError(str(cause)) from None
                if not isinstance(cause, EngineDeadError):
                    raise
                self._lose(replica, cause, summary)  # its engine stayed dead after the backend's retries
            else:
                summary.engine_retries += retries
                self.done[replica] += 1
                yield batch, generations
                continue
            queue.appendleft(batch)  # the lost replica's batch goes first to a survivor
            summary.requeued += 1
