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
