"""Where per-checkpoint jobs run: the local machine, Slurm (submitit), Ray or Dask, behind one interface.

Every engine is reached through `get_executor(kind, options)`, which returns a standard
`concurrent.futures.Executor` whose `submit` returns a `concurrent.futures.Future`; that is all
`jobs.run_checkpoint_jobs` needs. Each engine is an optional extra, imported only when chosen:

    kind             engine                              extra
    serial           inline, in this process (default)   -
    process          local pool of spawned processes     -
    submitit-local   submitit LocalExecutor (one process per job, Slurm-like logs)   llc_watch[slurm]
    slurm            submitit AutoExecutor on Slurm (job arrays, requeue on preemption)  llc_watch[slurm]
    ray              Ray remote tasks (local cluster or `address`)    llc_watch[ray]
    dask             dask.distributed Client (LocalCluster or `address`)   llc_watch[dask]

    >>> ex = get_executor("serial")
    >>> ex.submit(sum, [1, 2]).result()
    3

Options come from a TOML file (`load_executor_options`), one table per engine; the schema, with
defaults, is `OPTIONS` below and docs/executors.md. Results never travel only through the engine:
each job writes its own result file atomically (jobs.execute_job), so a lost worker, a preempted
Slurm job or a restarted driver costs only the unfinished checkpoints.

Devices: job functions read `settings["device"]` ("auto", "cpu", "cuda", "cuda:1") and resolve it
*inside the worker* with `job_device(settings)`, so a job that lands on a GPU worker uses its GPU
and the job key (which hashes the settings) does not depend on where the job ran. Ask the engine
for GPUs per job with `gpus_per_node` (submitit), `num_gpus` (Ray) or `resources = {GPU = 1}` (Dask).
"""
from __future__ import annotations

from .base import _EngineExecutor, check_executor, job_device, worker_info
from .factory import executor_from_cli, get_executor
from .options import (ALIASES, KINDS, SECTIONS, ExecutorConfigError, MissingEngineError, WorkerError,
                      WorkerLostError, executor_options, load_executor_options)


def __getattr__(name):   # the engine classes, imported only when asked for (each is an optional extra)
    if name == "SubmititExecutor":
        from .submitit_engine import SubmititExecutor
        return SubmititExecutor
    if name == "RayExecutor":
        from .ray_engine import RayExecutor
        return RayExecutor
    if name == "DaskExecutor":
        from .dask_engine import DaskExecutor
        return DaskExecutor
    raise AttributeError(name)
