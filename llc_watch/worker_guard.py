"""Process-pool workers die with their driver: a kill -9 of `llc-watch llc --executor process` must
not leave its workers computing (and then idling at hundreds of MB) as orphans re-parented to PID 1.

Each worker runs this file as its pool initializer through `runpy.run_path` (stdlib, so it pickles
by reference), before llc_watch or torch is imported: importing them takes seconds, long enough for a
killed driver's workers to be orphans already. It depends on nothing but the standard library.

    >>> initializer, initargs = worker_initializer_args(1234)   # what jobs.make_executor("process") passes
    >>> initializer.__module__, initargs[1:]
    ('runpy', ({'DRIVER_PID': 1234}, '__llc_watch_worker__'))
"""
from __future__ import annotations

import os
import sys
import threading
import time


def die_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """End this process when `parent` dies. `parent` is passed in rather than read here: by the
    time a worker runs this, its parent may already be gone. Linux: the kernel's parent-death
    signal (prctl PR_SET_PDEATHSIG); everywhere: a daemon thread polling os.getppid(), which
    changes when the process is re-parented."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal
            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl here: the poll below still covers it
            pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def worker_initializer_args(driver_pid: int) -> tuple:
    """(initializer, initargs) for a ProcessPoolExecutor whose workers die with `driver_pid`."""
    import runpy
    return runpy.run_path, (__file__, {"DRIVER_PID": driver_pid}, RUN_NAME)


RUN_NAME = "__llc_watch_worker__"

if __name__ == RUN_NAME:   # run by runpy.run_path in a new worker, with DRIVER_PID in its globals
    die_with_parent(globals()["DRIVER_PID"])
    import torch           # only now: a killed driver is noticed even while this import runs
    torch.set_num_threads(1)   # workers split the cores: N processes x N threads would oversubscribe
