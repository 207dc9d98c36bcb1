"""dask.distributed (a LocalCluster or `address`)."""
from __future__ import annotations

from concurrent.futures import Future
from typing import Any


from .base import _EngineExecutor
from .options import _require

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
