"""One engine replica on Ray and the driver's view of it; Ray itself is imported only when replicas are asked for.

:class:`Replica` is the body of a Ray actor (the actor class is made with ``ray.remote(Replica)`` by
:class:`rollouts.ray_pool.ReplicaPool`): it builds a steered engine in its own process and generates batches there.
:class:`RemoteModel` is what the driver's :func:`rollouts.run.run_rollouts` sees instead of a local model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from engine.generation import Generation
from engine.stateful import SteerableModel
from rollouts.plan import RolloutSettings, WorkItem
from rollouts.run import RolloutSummary, batch_config, generate_batch
from vectors import SteeringError, SteeringSpec

__all__ = ["RAY_INSTALL_HINT", "RemoteModel", "Replica", "check_replicas", "import_ray", "remote_cause"]

RAY_INSTALL_HINT = "pip install 'sidesteer[ray]'"


def import_ray(replicas: int | None = None) -> Any:
    """The ``ray`` module (an optional dependency), imported on first use.

    Raises:
        SteeringError: Ray is not installed; the message names ``--replicas`` and the install command.
    """
    try:
        import ray
    except ImportError as exc:
        asked = "--replicas" if replicas is None else f"--replicas {replicas}"
        raise SteeringError(
            f"replicas: {asked} runs engine replicas on Ray, which is not installed; {RAY_INSTALL_HINT} "
            "(or drop --replicas to run one engine in this process)"
        ) from exc
    return ray


def check_replicas(replicas: object) -> Any:
    """Check a replica count and return the ``ray`` module.

    Raises:
        SteeringError: Not an integer >= 1, or Ray missing (see :func:`import_ray`).
    """
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise SteeringError(
            f"replicas: {replicas!r} must be an integer >= 1 (engine replicas on Ray); drop --replicas to run one "
            "engine in this process"
        )
    return import_ray(replicas)


class Replica:
    """The body of one Ray actor: a steered engine built in the actor's own process."""

    def __init__(self, factory: Callable[[], SteerableModel]) -> None:
        # vLLM's engine processes fail to initialise CUDA when forked from an actor; spawn starts them cleanly.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        self.model = factory()

    def describe(self) -> dict[str, Any]:
        m = self.model
        return {"model_id": m.model_id, "backend": m.backend, "num_layers": m.num_layers, "hidden_size": m.hidden_size,
                "info": m.info(), "node": os.uname().nodename}  # fmt: skip

    def validate(self, spec: SteeringSpec) -> None:
        self.model.validate_spec(spec)

    def generate(self, batch: list[WorkItem], settings: RolloutSettings) -> tuple[list[Generation], int]:
        """One batch's completions and the number of times the engine died under it and was retried."""
        summary = RolloutSummary()
        generations = generate_batch(self.model, batch, batch_config(batch, settings), settings.engine_retries, summary)
        return generations, summary.engine_retries


def remote_cause(exc: BaseException) -> BaseException:
    """The exception a replica raised, out of Ray's wrappers (``RayTaskError.cause``, ``ActorDiedError.cause``)."""
    seen = 0
    while (inner := getattr(exc, "cause", None)) is not None and isinstance(inner, BaseException) and seen < 5:
        exc, seen = inner, seen + 1
    return exc


class RemoteModel:
    """The driver's stand-in for the replicas' model: what :func:`rollouts.run.run_rollouts` needs to know about it
    (name, backend, shape, info for the manifest), and spec validation done by a live replica."""

    def __init__(self, pool: Any, description: dict[str, Any], replicas: int) -> None:
        self._pool = pool  # a rollouts.ray_pool.ReplicaPool (not imported: ray_pool imports this module)
        self.model_id: str = description["model_id"]
        self.backend: str = description["backend"]
        self.num_layers: int = description["num_layers"]
        self.hidden_size: int = description["hidden_size"]
        self._info = {**description["info"], "replicas": replicas}

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def status(self) -> str:
        return "ready"

    def validate_spec(self, spec: SteeringSpec) -> SteeringSpec:
        pool = self._pool
        if not pool.alive:
            raise SteeringError("replicas: no replica is alive (all died or the pool is closed); rerun the command to resume")
        try:
            pool.ray.get(pool.actors[pool.alive[0]].validate.remote(spec))
        except Exception as exc:
            cause = remote_cause(exc)
            if isinstance(cause, SteeringError):
                raise SteeringError(str(cause)) from None
            raise
        return spec
