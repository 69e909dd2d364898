"""Executors: where the independent units of `quantlm run`, `quantlm sweep` and the LightGBM
walk-forward folds run.

An executor has one method that matters, `map(fn, items) -> list`, which returns `fn(item)` for every
item **in input order**, whatever order the units finish in, and raises the first failing unit's
exception (in input order) as itself.

- `ProcessExecutor(jobs)`: jobs=1 runs the units one after the other in this process (what
  `quantlm run` does by default); jobs > 1 runs them in that many worker processes started with the
  "spawn" method (safe with LightGBM / numba / torch threads), so `fn` and the items must pickle.
- `RayExecutor(address, num_cpus, num_gpus)`: every unit is one Ray task with `num_cpus` CPUs and
  `num_gpus` GPUs reserved; inside the task torch uses `max(1, int(num_cpus))` threads
  (`torch.set_num_threads`, `OMP_NUM_THREADS`). Without an address quantlm starts a local Ray
  (`local_cpus` CPUs, default all) and shuts it down in `close()`; with one (`auto`, `HOST:PORT`,
  `ray://...`) it connects to that cluster and leaves it running. A Ray already initialised in this
  process (e.g. by a test or a notebook) is used as it is and left running. Ray is imported only
  here, with usage statistics off (`RAY_USAGE_STATS_ENABLED=0`) and no dashboard: nothing reaches the
  network beyond the cluster itself.

Determinism: units get their seeds from their item (the workflow's seed, fold and variant), never
from a global random state, so a unit gives the same result in any process. Torch CPU kernels can
round differently with another thread count: results are bit-identical between executors when the
units run with the same number of threads (e.g. `OMP_NUM_THREADS=1` and `evaluate.ray.num_cpus: 1`).

On a cluster the units read the store and write their stage folders on the paths the driver gives
them, so the store and the run folder must be on a filesystem every node mounts at the same path.

`make_executor(section)` builds one from a run config's `evaluate` section (`executor`, `jobs`,
`ray`); the units of `quantlm run` themselves live in `quantlm.workflow.units`.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

EXECUTORS = ("process", "ray")

T = TypeVar("T")
R = TypeVar("R")


class ExecutorError(ValueError):
    """An executor that cannot start (e.g. Ray missing); shown to CLI users as a plain message."""

    user_facing = True


class RaySection(BaseModel):
    """`evaluate.ray` of a run config: where Ray runs and what each unit (task) reserves.

    address: None = start a local Ray owned by quantlm (shut down at the end), else a cluster address
    (`auto` on a node of a running cluster, `HOST:6379`, `ray://HOST:10001`); num_cpus / num_gpus:
    CPUs / GPUs reserved per task (fractions allowed); local_cpus: CPUs of the local Ray quantlm starts
    (None = all of this machine's).
    """

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    local_cpus: int | None = Field(None, ge=1)


class Executor(Protocol):
    """Runs `fn` over items; results in input order."""

    name: str

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]: ...

    def close(self) -> None: ...


class ProcessExecutor:
    """Units in this process (jobs=1) or in `jobs` spawned worker processes."""

    name = "process"

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise ExecutorError(f"jobs must be >= 1, got {jobs}")
        self.jobs = int(jobs)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """[fn(item) for item in items], in parallel processes when jobs > 1 and there are >= 2 items."""
        items = list(items)
        if self.jobs == 1 or len(items) <= 1:
            return [fn(item) for item in items]
        try:
            pickle.dumps(fn)
        except Exception as e:
            raise ValueError(f"a unit must be picklable to run in worker processes (a module-level function): {e}") from e
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(self.jobs, len(items)), mp_context=context) as pool:
            return list(pool.map(fn, items))

    def close(self) -> None:
        """Nothing to release (worker pools live only inside `map`)."""

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def import_ray():
    """The `ray` module, imported with usage statistics off; a clear error when it is not installed."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as e:
        raise ExecutorError("the ray executor needs Ray: pip install 'quantlm[ray]' (or pip install ray), "
                            "or use --executor process") from e
    return ray


def task_threads(num_cpus: float) -> int:
    """Torch / OpenMP threads of a unit that reserved `num_cpus` CPUs: max(1, int(num_cpus))."""
    return max(1, int(num_cpus))


def _set_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:  # else torch reads OMP_NUM_THREADS when the unit imports it
        sys.modules["torch"].set_num_threads(threads)


def _ray_unit(fn: Callable[[Any], Any], item: Any, threads: int) -> Any:
    """What one Ray task runs: set the thread count, then fn(item)."""
    _set_threads(threads)
    return fn(item)


class RayExecutor:
    """Units as Ray tasks (see the module docstring for ownership of the Ray instance)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0,
                 local_cpus: int | None = None, log_to_driver: bool = True) -> None:
        ray = import_ray()
        self.num_cpus, self.num_gpus = float(num_cpus), float(num_gpus)
        self.owns = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": log_to_driver,
                                       "logging_level": "warning"}
            if address:
                try:
                    ray.init(address=address, **options)
                except (ConnectionError, RuntimeError, ValueError, SystemExit) as e:  # Ray exits on a GCS timeout
                    raise ExecutorError(f"could not connect to the Ray cluster at '{address}' (start one with "
                                        f"'ray start --head', or leave the address out for a local Ray): {e}") from e
            else:
                ray.init(num_cpus=local_cpus, **options)
                self.owns = True
        self._ray = ray

    @classmethod
    def from_section(cls, section: RaySection, log_to_driver: bool = True) -> RayExecutor:
        """A RayExecutor with a run config's `evaluate.ray` settings."""
        return cls(section.address, section.num_cpus, section.num_gpus, section.local_cpus, log_to_driver)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """One Ray task per item; results in input order; the first failure (in input order) is raised
        as its own exception and the other tasks are cancelled."""
        ray = self._ray
        items = list(items)
        if not items:
            return []
        remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)(_ray_unit)
        threads = task_threads(self.num_cpus)
        refs = [remote.remote(fn, item, threads) for item in items]
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            for ref in refs:
                ray.cancel(ref)
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise

    def close(self) -> None:
        """Shut down the local Ray this executor started (a cluster or a borrowed Ray stays up)."""
        if self.owns and self._ray.is_initialized():
            self._ray.shutdown()
        self.owns = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_executor(kind: str, jobs: int = 1, ray: RaySection | None = None, log_to_driver: bool = True) -> Executor:
    """ProcessExecutor(jobs) for kind "process", a RayExecutor with `ray`'s settings for "ray"."""
    if kind == "process":
        return ProcessExecutor(jobs)
    if kind == "ray":
        return RayExecutor.from_section(ray or RaySection(), log_to_driver)
    raise ExecutorError(f"unknown executor '{kind}' (choose from {', '.join(EXECUTORS)})")


__all__ = ["EXECUTORS", "Executor", "ExecutorError", "ProcessExecutor", "RayExecutor", "RaySection", "import_ray",
           "make_executor", "task_threads"]
