"""submitit: Slurm (job arrays, requeue on preemption) and its local mode."""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any


from .base import _EngineExecutor
from .options import WorkerError, WorkerLostError, _require

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


