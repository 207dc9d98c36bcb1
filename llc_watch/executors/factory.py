"""The one factory: get_executor(kind, options) and what the CLI's executor options ask for."""
from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path


from .options import ALIASES, ExecutorConfigError, executor_options, load_executor_options

# ---------------------------------------------------------------------------------------------
# the entry point


def get_executor(kind: str = "serial", options: dict | None = None, *, run_dir: str | Path | None = None,
                 workers: int | None = None) -> Executor:
    """A concurrent.futures-style Executor for `kind`, configured from `options`.

    run_dir: the run folder; submitit job logs go to RUN/logs/submitit unless `folder` is set.
    workers: the CLI's --workers; overrides the engine's own count (process workers, Dask
    n_workers, a local Ray cluster's num_cpus, submitit-local jobs at once).

    Use it as a context manager, or call shutdown(): a local Ray or Dask cluster started here is
    stopped then; one that was joined through `address` is left running.
    """
    if kind in ALIASES:
        kind = "process" if workers and workers > 1 else ALIASES[kind]
    opts = executor_options(kind, options)
    if workers is not None:
        if workers < 1:
            raise ExecutorConfigError(f"--workers must be at least 1 (got {workers})")
        key = {"process": "workers", "submitit-local": "workers", "slurm": "max_in_flight",
               "ray": "num_cpus", "dask": "n_workers"}.get(kind)
        if key:
            opts[key] = workers
    if kind == "serial":
        from llc_watch.jobs import SerialExecutor
        return SerialExecutor()
    if kind == "process":
        from llc_watch.jobs import make_executor
        return make_executor("process", workers=int(opts["workers"]))
    if kind in ("submitit-local", "slurm"):
        from .submitit_engine import SubmititExecutor
        return SubmititExecutor(opts, cluster="local" if kind == "submitit-local" else "slurm", run_dir=run_dir)
    if kind == "ray":
        from .ray_engine import RayExecutor
        return RayExecutor(opts)
    if kind == "dask":
        from .dask_engine import DaskExecutor
        return DaskExecutor(opts)
    raise AssertionError(kind)


def executor_from_cli(executor: str | None = None, config: str | Path | None = None,
                      workers: int | None = None, run_dir: str | Path | None = None) -> Executor:
    """What `--executor KIND --executor-config FILE --workers N` ask for. KIND defaults to the
    file's `executor = ...`, else `serial` (or `process` when --workers > 1)."""
    options = load_executor_options(config) if config else {}
    kind = executor or options.get("executor") or "local"
    return get_executor(kind, options, run_dir=run_dir, workers=workers)


