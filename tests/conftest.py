import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads: BLAS threads oversubscribe 2 cores

import matplotlib
import pytest
import torch

matplotlib.use("Agg")  # plots are tested headless
torch.set_num_threads(1)  # CI has 2 cores; one thread per test process keeps timings honest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A trained 4-bit addition run shared by tests that only read it."""
    from llc_watch.config import RunConfig
    from llc_watch.train import train
    cfg = RunConfig.from_preset("addition-tiny")
    return train(cfg, tmp_path_factory.mktemp("runs") / "tiny", progress=False)
