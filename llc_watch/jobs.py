"""Per-checkpoint jobs: idempotent, atomic, resumable, on any concurrent.futures-style executor.

An analysis is a top-level function `fn(checkpoint, settings) -> list[dict]` returning tidy rows
(one per checkpoint x measure). The driver keys each job by (analysis, checkpoint bytes, settings),
skips keys already on disk, and has the *worker* write its own result file atomically, so a killed
driver or worker loses nothing that finished and a rerun only redoes what is missing.

    >>> report = run_checkpoint_jobs(my_analysis, run.checkpoints(), {"n": 3},
    ...                              out_dir=run.dir / "results" / "mine")   # doctest: +SKIP
    >>> report.table()            # pandas DataFrame of every finished row   # doctest: +SKIP
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import traceback
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
from tqdm.auto import tqdm

from .checkpoints import Checkpoint, CheckpointError
from .io import atomic_write_json

JobFn = Callable[[Checkpoint, dict], list[dict]]


class SerialExecutor(Executor):
    """Runs each job in this process, when its result is first asked for: the default, and the
    easiest to debug. Lazy, so a progress bar over `as_completed`-style collection moves per job."""

    def submit(self, fn, /, *args, **kwargs):
        return _LazyFuture(fn, args, kwargs)


class _LazyFuture(Future):
    def __init__(self, fn, args, kwargs):
        super().__init__()
        self._call = (fn, args, kwargs)

    def _run(self):
        if self._call is not None:
            fn, args, kwargs = self._call
            self._call = None
            try:
                self.set_result(fn(*args, **kwargs))
            except BaseException as e:  # the future carries it, as a real executor would
                self.set_exception(e)

    def result(self, timeout=None):
        self._run()
        return super().result(timeout)

    def exception(self, timeout=None):
        self._run()
        return super().exception(timeout)


def _collect(todo: dict):
    """Futures in completion order; lazy (serial) ones are run one by one, in submission order."""
    lazy = [f for f in todo if isinstance(f, _LazyFuture)]
    yield from lazy
    rest = [f for f in todo if not isinstance(f, _LazyFuture)]
    if rest:
        yield from as_completed(rest)


def make_executor(kind: str = "serial", workers: int = 2) -> Executor:
    """Built-in executors: 'serial' or 'process' (a local pool of `workers` processes)."""
    if kind == "serial":
        return SerialExecutor()
    if kind == "process":
        import multiprocessing as mp
        from .worker_guard import worker_initializer_args
        initializer, initargs = worker_initializer_args(os.getpid())   # workers die with this driver
        return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                   initializer=initializer, initargs=initargs)
    raise ValueError(f"unknown executor {kind!r}; built in: serial, process")


def job_key(fn: JobFn, checkpoint: Checkpoint, settings: dict) -> str:
    """A job's identity: the function, the checkpoint's bytes and the settings. Settings whose names
    start with "_" are plumbing (where a job keeps side files), not identity: a moved run folder
    keeps its results."""
    identity = {k: v for k, v in settings.items() if not str(k).startswith("_")}
    payload = json.dumps({"fn": f"{fn.__module__}.{fn.__qualname__}", "ckpt": checkpoint.fingerprint(),
                          "settings": identity}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def result_path(out_dir: Path, checkpoint: Checkpoint, key: str) -> Path:
    return Path(out_dir) / f"step_{checkpoint.step:07d}-{key}.json"


def execute_job(fn: JobFn, checkpoint: Checkpoint, settings: dict, path: str) -> dict:
    """Run one job and write its result file atomically. Top level, so executors can pickle it.

    A job that raises writes nothing: its checkpoint stays unfinished and a rerun retries it.
    """
    return write_record(path, checkpoint, settings, fn(checkpoint, settings))


def write_record(path, checkpoint: Checkpoint, settings: dict, rows: list[dict]) -> dict:
    """Write one checkpoint's finished rows atomically (the result file a rerun skips on)."""
    record = {"step": checkpoint.step, "checkpoint": checkpoint.path, "settings": settings,
              "settings_key": settings_key(settings), "rows": rows}
    atomic_write_json(path, record)
    # return what a rerun would read back, so fresh and skipped records make the same table
    # (same column order, JSON types), and the engine ships plain data back to the driver
    return json.loads(Path(path).read_text())


@dataclass
class JobFailure:
    step: int
    checkpoint: str
    error: str
    detail: str = ""
    retry: bool = True   # whether rerunning may help (not for a corrupt or foreign checkpoint)

    def __str__(self):
        return f"step {self.step} ({self.checkpoint}): {self.error}"


class JobsFailed(RuntimeError):
    """Some per-checkpoint jobs failed; the others finished and are saved."""

    def __init__(self, what: str, report: "JobReport"):
        self.report = report
        retry = any(f.retry for f in report.failures)
        super().__init__(f"{what}: {report.summary()}\nFinished checkpoints are saved"
                         + ("; rerun the same command to retry only the failed ones." if retry else "."))


@dataclass
class JobReport:
    records: list[dict] = field(default_factory=list)
    failures: list[JobFailure] = field(default_factory=list)
    skipped: int = 0   # finished before this call
    ran: int = 0       # finished during this call

    @property
    def ok(self) -> bool:
        return not self.failures

    def table(self) -> pd.DataFrame:
        """One row per checkpoint x measure, sorted by step."""
        rows = [dict(r) for rec in self.records for r in rec["rows"]]
        df = pd.DataFrame(rows)
        return df.sort_values("step", kind="stable").reset_index(drop=True) if len(df) else df

    def raise_if_failed(self, what: str) -> None:
        if self.failures:
            raise JobsFailed(what, self)

    def summary(self) -> str:
        s = f"{self.ran} ran, {self.skipped} already done, {len(self.failures)} failed"
        return s + "".join(f"\n  failed: {f}" for f in self.failures)


def _read_record(path: Path) -> dict | None:
    """A finished job's result file, or None when there is none (or only an unreadable one,
    which only a non-atomic writer could leave: it is removed and the job redone)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        path.unlink()
        return None


# errors of the place results are written to, not of one checkpoint: every other job would hit them
# too, so the driver stops at the first one (what finished is on disk) and the CLI names the path
STORAGE_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM})


def is_storage_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in STORAGE_ERRNOS


def _describe(e: BaseException) -> str:
    if isinstance(e, BrokenExecutor):  # BrokenProcessPool: some worker process died
        return (f"{type(e).__name__}: a worker process died (killed, out of memory or crashed) "
                "while this job was queued or running; rerun to redo it")
    return f"{type(e).__name__}: {e}"


def run_checkpoint_jobs(fn: JobFn, checkpoints: list[Checkpoint], settings: dict, out_dir: str | Path,
                        executor: Executor | None = None, desc: str = "jobs",
                        progress: bool = True, batch_fn=None) -> JobReport:
    """Run `fn` on every checkpoint not already done with these settings; collect all rows.

    batch_fn: optionally, (checkpoints, settings) -> [rows or the exception, per checkpoint],
    computing what `fn` would for many checkpoints in one pass (the LLC stacks checkpoints × chains
    on a GPU). Its results are written to the same per-checkpoint result files, under `fn`'s keys,
    so resuming and kill -9 behave exactly as with one job per checkpoint.

    Failures (an exception in a job, a corrupt checkpoint) are reported per checkpoint; the other
    jobs still finish. Results of other settings in `out_dir` are left alone and never mixed in.
    A storage error (read-only, full disk, no permission: `is_storage_error`) would fail every job
    alike, so it is raised at once: jobs not started are cancelled, finished results stay on disk.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = JobReport()
    todo: dict[Future, Checkpoint] = {}
    executor = executor or SerialExecutor()
    pending = []
    for ckpt in checkpoints:
        try:
            key = job_key(fn, ckpt, settings)
        except OSError as e:
            report.failures.append(JobFailure(ckpt.step, ckpt.path, f"cannot read checkpoint: {e}"))
            continue
        path = result_path(out_dir, ckpt, key)
        record = _read_record(path)
        if record is not None:
            report.records.append(record)
            report.skipped += 1
            continue
        pending.append((ckpt, path))

    bar = tqdm(total=len(checkpoints), initial=report.skipped, desc=desc, disable=not progress,
               unit="ckpt", dynamic_ncols=True)
    if batch_fn is not None and pending:
        try:
            outs = list(batch_fn([c for c, _ in pending], settings))
        except Exception as e:  # the whole batch failed: every checkpoint in it did
            outs = [e] * len(pending)
        for (ckpt, path), out in zip(pending, outs):
            if isinstance(out, BaseException):
                report.failures.append(JobFailure(ckpt.step, ckpt.path, _describe(out),
                                                  "".join(traceback.format_exception(out))))
            else:
                report.records.append(write_record(path, ckpt, settings, out))
                report.ran += 1
            bar.update(1)
        pending = []
    for ckpt, path in pending:
        try:
            todo[executor.submit(execute_job, fn, ckpt, settings, str(path))] = ckpt
        except Exception as e:  # a broken pool, an engine that refused the job: report, go on
            report.failures.append(JobFailure(ckpt.step, ckpt.path, f"not submitted: {_describe(e)}",
                                              traceback.format_exc()))
            bar.update(1)
    paths = dict(pending)
    for fut in _collect(todo):
        ckpt = todo[fut]
        try:
            report.records.append(fut.result())
            report.ran += 1
        except Exception as e:  # one bad checkpoint must not stop the others
            finished = _read_record(paths[ckpt])
            if finished is not None:  # the job wrote its result, then its pool broke: the file is the truth
                report.records.append(finished)
                report.ran += 1
            elif is_storage_error(e):
                bar.close()
                for f in todo:
                    f.cancel()
                raise
            else:
                report.failures.append(JobFailure(ckpt.step, ckpt.path, _describe(e),
                                                  getattr(e, "detail", "") or traceback.format_exc(),
                                                  retry=not isinstance(e, CheckpointError)))
        bar.update(1)
    bar.close()
    report.records.sort(key=lambda r: r["step"])
    return report
