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

import importlib
import os
import queue
import sys
import threading
import time
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

KINDS = ("serial", "process", "submitit-local", "slurm", "ray", "dask")
ALIASES = {"local": "serial"}  # `--executor local`: this machine (a process pool if --workers > 1)

# kind -> (module to import, extra that provides it)
_ENGINES = {"submitit-local": ("submitit", "slurm"), "slurm": ("submitit", "slurm"),
            "ray": ("ray", "ray"), "dask": ("distributed", "dask")}

# kind -> the TOML table its options live in (submitit-local reads [slurm], so one file tries a
# Slurm setup locally first)
SECTIONS = {"serial": "serial", "process": "process", "submitit-local": "slurm", "slurm": "slurm",
            "ray": "ray", "dask": "dask"}

# The schema: table -> {key: (default, meaning)}. Keys outside it are an error, except submitit's
# own `slurm_*` parameters, which are passed through to AutoExecutor.update_parameters.
OPTIONS: dict[str, dict[str, tuple[Any, str]]] = {
    "serial": {},
    "process": {
        "workers": (2, "worker processes"),
    },
    "slurm": {
        "folder": (None, "job logs and pickles; default RUN/logs/submitit (%j is the job id)"),
        "cpus_per_task": (1, "CPUs per job"),
        "gpus_per_node": (0, "GPUs per job"),
        "mem_gb": (None, "memory per job in GB (None: the partition's default)"),
        "timeout_min": (60, "time limit per job in minutes; a job that times out is requeued"),
        "slurm_partition": (None, "Slurm partition"),
        "slurm_array_parallelism": (256, "most array tasks running at once"),
        "max_in_flight": (None, "most jobs submitted and unfinished at once (None: all for "
                                "slurm, `workers` for submitit-local)"),
        "workers": (2, "submitit-local: jobs running at once"),
        "poll_s": (None, "seconds between status checks (default 0.5 local, 15 slurm)"),
        "setup": ([], "shell lines run before each job, e.g. ['source ~/venv/bin/activate']"),
    },
    "ray": {
        "address": (None, "cluster to join ('auto', 'ray://head:10001'); None starts a local one"),
        "num_cpus": (2, "local cluster only: CPUs it may use"),
        "num_gpus": (None, "local cluster only: GPUs it may use (None: detect)"),
        "cpus_per_job": (1, "CPUs reserved per job"),
        "gpus_per_job": (0, "GPUs reserved per job (fractions allowed)"),
        "max_retries": (3, "reruns of a job whose worker died (not of a job that raised)"),
        "runtime_env": (None, "Ray runtime_env for the workers (pip, env_vars, working_dir)"),
        "init": ({}, "other ray.init keyword arguments"),
    },
    "dask": {
        "address": (None, "scheduler to join ('tcp://host:8786'); None starts a LocalCluster"),
        "n_workers": (2, "LocalCluster only: worker processes"),
        "threads_per_worker": (1, "LocalCluster only: threads per worker"),
        "memory_limit": ("auto", "LocalCluster only: memory per worker"),
        "resources": (None, "per-job resources, e.g. {GPU = 1}; workers must advertise them"),
        "retries": (0, "reruns of a job that raised (lost workers are retried by the scheduler)"),
    },
}


class ExecutorConfigError(ValueError):
    """An executor kind or option that cannot work; the message names it and the valid choices."""


class MissingEngineError(ImportError):
    """The chosen engine's optional package is not installed; the message says which extra to install."""


class WorkerError(RuntimeError):
    """A job raised on a remote worker whose engine returns only the traceback text (submitit)."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


class WorkerLostError(RuntimeError):
    """A job's worker died or the job was cancelled/timed out without a result; rerunning redoes it."""


def _require(kind: str):
    module, extra = _ENGINES[kind]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingEngineError(
            f"--executor {kind} needs the optional package {module!r}, which is not installed "
            f"({e}). Install it with: pip install 'llc_watch[{extra}]'") from None


# ---------------------------------------------------------------------------------------------
# options


def load_executor_options(path: str | Path) -> dict:
    """Read an executor config file (TOML): optional top-level `executor = KIND`, one table per engine.

        executor = "slurm"
        [slurm]
        cpus_per_task = 4
        gpus_per_node = 1
        slurm_partition = "gpu"

    Unknown tables or keys raise ExecutorConfigError naming the valid ones.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ExecutorConfigError(f"executor config {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ExecutorConfigError(f"executor config {path} is not valid TOML: {e}") from None
    for key, value in data.items():
        if key == "executor":
            if value not in KINDS and value not in ALIASES:
                raise ExecutorConfigError(f"{path}: executor = {value!r}; choose one of {', '.join(KINDS)}")
        elif key not in OPTIONS or not isinstance(value, dict):
            raise ExecutorConfigError(f"{path}: unknown table [{key}]; tables are "
                                      f"{', '.join(t for t in OPTIONS if OPTIONS[t])} (and `executor = KIND`)")
        else:
            _check_keys(key, value, where=str(path))
    return data


def _check_keys(section: str, opts: dict, where: str = "executor options") -> None:
    known = OPTIONS[section]
    bad = [k for k in opts if k not in known and not (section == "slurm" and k.startswith("slurm_"))]
    if bad:
        raise ExecutorConfigError(f"{where}: unknown [{section}] option(s) {bad}; valid: {', '.join(known)}"
                                  + (" and any submitit slurm_* parameter" if section == "slurm" else ""))


def executor_options(kind: str, options: dict | None = None) -> dict:
    """The options for `kind`, with defaults filled in. `options` is either a whole config file as
    returned by load_executor_options (the engine's table is picked) or the engine's table itself."""
    if kind not in KINDS:
        raise ExecutorConfigError(f"unknown executor {kind!r}; choose one of {', '.join(KINDS)}")
    section = SECTIONS[kind]
    options = dict(options or {})
    if any(isinstance(v, dict) and k in OPTIONS for k, v in options.items()) or "executor" in options:
        options = dict(options.get(section) or {})
    _check_keys(section, options)
    out = {k: v for k, (v, _) in OPTIONS[section].items()}
    out.update(options)
    return out


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
        from .jobs import SerialExecutor
        return SerialExecutor()
    if kind == "process":
        from .jobs import make_executor
        return make_executor("process", workers=int(opts["workers"]))
    if kind in ("submitit-local", "slurm"):
        return SubmititExecutor(opts, cluster="local" if kind == "submitit-local" else "slurm", run_dir=run_dir)
    if kind == "ray":
        return RayExecutor(opts)
    if kind == "dask":
        return DaskExecutor(opts)
    raise AssertionError(kind)


def executor_from_cli(executor: str | None = None, config: str | Path | None = None,
                      workers: int | None = None, run_dir: str | Path | None = None) -> Executor:
    """What `--executor KIND --executor-config FILE --workers N` ask for. KIND defaults to the
    file's `executor = ...`, else `serial` (or `process` when --workers > 1)."""
    options = load_executor_options(config) if config else {}
    kind = executor or options.get("executor") or "local"
    return get_executor(kind, options, run_dir=run_dir, workers=workers)


# ---------------------------------------------------------------------------------------------
# devices and worker checks


def job_device(settings: dict | None = None, default: str = "auto"):
    """Resolve settings["device"] where the job runs (llc_watch.device.resolve_device)."""
    from .device import resolve_device
    return resolve_device(str((settings or {}).get("device", default)))


def worker_info(settings: dict | None = None) -> dict:
    """Where a job runs: host, process, Python, torch and the device `job_device` picks there."""
    import platform
    import torch
    return {"host": platform.node(), "pid": os.getpid(), "python": sys.executable,
            "torch": torch.__version__, "device": str(job_device(settings)),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def check_executor(executor: Executor, n: int = 1, settings: dict | None = None,
                   timeout: float | None = 600) -> list[dict]:
    """Run `worker_info` as `n` jobs: a quick test that a cluster config works before a long run."""
    futs = [executor.submit(worker_info, settings) for _ in range(n)]
    return [f.result(timeout=timeout) for f in futs]


class _EngineExecutor(Executor):
    """Leaving a `with` block by an exception (Ctrl-C, a driver error) cancels what has not started
    instead of waiting for every job: finished results are on disk, and a rerun does the rest."""

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.shutdown(wait=True)
        else:
            self.shutdown(wait=False, cancel_futures=True)
        return False


# ---------------------------------------------------------------------------------------------
# submitit (Slurm and its local mode)


class _Requeueable:
    """Wraps a job for submitit: on preemption or timeout submitit calls `checkpoint`, which
    resubmits the same call (jobs are idempotent, so the requeued job simply starts again)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, *args, **kwargs)


class SubmititExecutor(_EngineExecutor):
    """submitit behind concurrent.futures: submit() returns a Future at once; a dispatcher thread
    sends queued calls as job arrays (at most `max_in_flight` unfinished), polls them, and resolves
    each Future with the job's result or its error (WorkerError with the remote traceback text,
    WorkerLostError when the job died, was cancelled or timed out without a result)."""

    _GENERIC = ("cpus_per_task", "gpus_per_node", "mem_gb", "timeout_min")

    def __init__(self, options: dict, cluster: str = "slurm", run_dir: str | Path | None = None):
        submitit = _require("submitit-local" if cluster == "local" else "slurm")
        opts = dict(options)
        folder = opts.pop("folder") or (Path(run_dir) / "logs" / "submitit" if run_dir else None)
        if folder is None:
            folder = Path("logs") / "submitit"
        folder = Path(folder)
        self.folder = folder if "%j" in str(folder) else folder / "%j"
        self.cluster = cluster
        max_in_flight = opts.pop("max_in_flight")
        workers = int(opts.pop("workers"))
        self.max_in_flight = max_in_flight if max_in_flight else (workers if cluster == "local" else None)
        poll = opts.pop("poll_s")
        self.poll_s = float(poll) if poll is not None else (0.5 if cluster == "local" else 15.0)
        setup = list(opts.pop("setup") or [])
        self._ex = submitit.AutoExecutor(folder=self.folder, cluster=cluster)
        params: dict[str, Any] = {k: opts.pop(k) for k in self._GENERIC if opts.get(k) is not None}
        for k in self._GENERIC:
            opts.pop(k, None)
        params["name"] = "llc_watch"
        if cluster == "slurm":
            params.update({k: v for k, v in opts.items() if v is not None and k.startswith("slurm_")})
            if setup:
                params["slurm_setup"] = setup
        else:
            if setup:
                params["local_setup"] = setup
        self._ex.update_parameters(**params)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._shutdown = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._running: dict = {}

    @property
    def log_folder(self) -> Path:
        return Path(str(self.folder).replace("%j", "")).resolve()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            if self._error is not None:
                raise RuntimeError(f"submitit dispatcher failed: {self._error}") from self._error
            fut: Future = Future()
            self._queue.put((fut, fn, args, kwargs))
            if self._thread is None:
                self._thread = threading.Thread(target=self._dispatch, name="llc_watch-submitit", daemon=True)
                self._thread.start()
        return fut

    def _take(self, n: int | None) -> list:
        """Queued calls, up to n; waits briefly so a burst of submits goes out as one job array."""
        items = []
        deadline = time.monotonic() + 0.2
        while n is None or len(items) < n:
            try:
                items.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return items

    def _dispatch(self) -> None:
        running = self._running  # submitit Job -> Future
        try:
            while True:
                room = None if self.max_in_flight is None else self.max_in_flight - len(running)
                items = self._take(room) if room is None or room > 0 else []
                items = [it for it in items if it[0].set_running_or_notify_cancel()]
                if items:
                    try:
                        with self._ex.batch():
                            jobs = [self._ex.submit(_Requeueable(fn), *a, **kw) for _, fn, a, kw in items]
                    except Exception as e:  # sbatch refused (bad partition, quota): fail these jobs
                        for fut, *_ in items:
                            fut.set_exception(e)
                        jobs = []
                    for job, (fut, *_rest) in zip(jobs, items):
                        running[job] = fut
                for job in [j for j in running if j.done()]:
                    self._resolve(job, running.pop(job))
                with self._lock:
                    if self._shutdown and not running and self._queue.empty():
                        return
                if not items:
                    time.sleep(self.poll_s if running else 0.05)
        except BaseException as e:  # never leave a Future hanging
            self._error = e
            for fut in running.values():
                if not fut.done():
                    fut.set_exception(e)
            while not self._queue.empty():
                fut = self._queue.get()[0]
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(e)

    def _resolve(self, job, fut: Future) -> None:
        from submitit.core.utils import FailedJobError, UncompletedJobError
        if self.cluster == "local":
            job._results_timeout_s = 2  # local files appear at once; don't wait 15 s for a dead job
        try:
            fut.set_result(job.result())
        except FailedJobError as e:
            text = str(e)
            trace = text.split("-" * 22)[1].strip() if text.count("-" * 22) >= 2 else text
            last = next((ln for ln in reversed(trace.splitlines()) if ln.strip()), "job failed")
            fut.set_exception(WorkerError(f"{last.strip()} (job {job.job_id}, log {job.paths.stderr})", trace))
        except UncompletedJobError:
            fut.set_exception(WorkerLostError(
                f"job {job.job_id} ended without a result (state {job.state}): killed, cancelled, "
                f"out of memory or out of time? See {job.paths.stderr}"))
        except Exception as e:
            fut.set_exception(e)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            thread = self._thread
        if cancel_futures:
            while True:
                try:
                    self._queue.get_nowait()[0].cancel()
                except queue.Empty:
                    break
            if self.cluster == "local":  # local jobs would outlive us; Slurm jobs may finish and count
                for job in list(self._running):
                    job.cancel(check=False)
        if wait and thread is not None:
            thread.join()


# ---------------------------------------------------------------------------------------------
# Ray


def _ray_call(fn, *args, **kwargs):
    return fn(*args, **kwargs)


class RayExecutor(_EngineExecutor):
    """Ray remote tasks as concurrent.futures Futures. Joins `address` or starts a local cluster
    with `num_cpus`; each job reserves `cpus_per_job` CPUs and `gpus_per_job` GPUs (Ray sets the
    worker's CUDA_VISIBLE_DEVICES to them). A job whose worker dies is rerun up to `max_retries`
    times by Ray; a job that raises is not retried (run again to retry it)."""

    def __init__(self, options: dict):
        ray = _require("ray")
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            init = dict(options.get("init") or {})
            init.setdefault("include_dashboard", False)
            init.setdefault("logging_level", "warning")
            init.setdefault("log_to_driver", False)
            if options.get("runtime_env"):
                init["runtime_env"] = options["runtime_env"]
            if options.get("address"):
                ray.init(address=options["address"], **init)
            else:
                if options.get("num_gpus") is not None:
                    init["num_gpus"] = options["num_gpus"]
                ray.init(num_cpus=int(options["num_cpus"]), **init)
        self._remote = ray.remote(_ray_call).options(
            num_cpus=options["cpus_per_job"], num_gpus=options["gpus_per_job"] or 0,
            max_retries=int(options["max_retries"]), retry_exceptions=False)
        self._refs: dict = {}
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        ref = self._remote.remote(fn, *args, **kwargs)
        fut: Future = Future()
        fut.set_running_or_notify_cancel()
        with self._lock:
            self._refs[id(fut)] = ref  # keep the ObjectRef alive until the job is done

        def done(rf: Future):
            with self._lock:
                self._refs.pop(id(fut), None)
            try:
                fut.set_result(rf.result())
            except BaseException as e:
                fut.set_exception(self._unwrap(e))

        ref.future().add_done_callback(done)
        return fut

    def _unwrap(self, e: BaseException) -> BaseException:
        exc = self._ray.exceptions
        if isinstance(e, exc.RayTaskError) and isinstance(getattr(e, "cause", None), BaseException):
            return e.cause  # the job's own exception, as in the serial executor
        if isinstance(e, (exc.WorkerCrashedError, exc.NodeDiedError, exc.TaskCancelledError,
                          exc.ObjectLostError)):
            return WorkerLostError(f"Ray lost the job's worker ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''})")
        return e

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        with self._lock:
            refs = list(self._refs.values())
        if cancel_futures:
            for ref in refs:
                self._ray.cancel(ref)
        elif wait and refs:
            self._ray.wait(refs, num_returns=len(refs))
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()


# ---------------------------------------------------------------------------------------------
# Dask


class DaskExecutor(_EngineExecutor):
    """dask.distributed's own concurrent.futures executor (Client.get_executor), on a scheduler at
    `address` or on a LocalCluster started here. Submissions are impure (pure=False), so a rerun in
    the same session really reruns a job that failed."""

    def __init__(self, options: dict):
        distributed = _require("dask")
        self._cluster = None
        if options.get("address"):
            self._client = distributed.Client(options["address"])
        else:
            self._cluster = distributed.LocalCluster(
                n_workers=int(options["n_workers"]), threads_per_worker=int(options["threads_per_worker"]),
                processes=True, memory_limit=options["memory_limit"], dashboard_address=None)
            self._client = distributed.Client(self._cluster)
        kw: dict[str, Any] = {"pure": False}
        if options.get("resources"):
            kw["resources"] = dict(options["resources"])
        if options.get("retries"):
            kw["retries"] = int(options["retries"])
        self._ex = self._client.get_executor(**kw)

    @property
    def client(self):
        return self._client

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return self._ex.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        try:
            self._ex.shutdown(wait=wait and not cancel_futures)
        finally:
            self._client.close()
            if self._cluster is not None:
                self._cluster.close()
