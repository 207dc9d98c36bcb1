"""What every engine shares: the in-worker device, a worker check, and cancel-on-error `with` blocks."""
from __future__ import annotations

import os
import sys
from concurrent.futures import Executor



# ---------------------------------------------------------------------------------------------
# devices and worker checks


def job_device(settings: dict | None = None, default: str = "auto"):
    """Resolve settings["device"] where the job runs (llc_watch.device.resolve_device)."""
    from llc_watch.device import resolve_device
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


