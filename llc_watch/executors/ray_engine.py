"""Ray remote tasks (a local cluster or `address`)."""
from __future__ import annotations

import threading
from concurrent.futures import Future


from .base import _EngineExecutor
from .options import WorkerLostError, _require

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


