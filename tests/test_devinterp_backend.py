"""`--backend devinterp`: devinterp's reference llc() on any run's checkpoints through the same driver,
agreeing with our estimator within the two estimates' own spread."""
import math
import shutil

import pytest

pytest.importorskip("devinterp.slt.llc")
pytest.importorskip("datasets")

from examples.byo_mlp import train_mlp  # noqa: E402
from llc_watch.analyses import compute_llc  # noqa: E402
from llc_watch.cli import main  # noqa: E402
from llc_watch.run import create_foreign_run  # noqa: E402

K = 4.0   # standard errors of the difference: a fixed-seed check, tolerance from the estimates' spread


def _agree(ours, theirs):
    a, b = ours.iloc[0], theirs.iloc[0]
    assert a["backend"] == "ours" and b["backend"] == "devinterp" and a["valid"] and b["valid"]
    assert a["n"] == b["n"] and a["epsilon"] == b["epsilon"] and math.isclose(a["nbeta"], b["nbeta"])
    tol = K * math.hypot(a["stderr"], b["stderr"])
    assert abs(a["value"] - b["value"]) <= tol, (a["value"], b["value"], tol)


def test_parity_on_a_bring_your_own_mlp(tmp_path):
    ckpts = tmp_path / "ckpts"
    train_mlp.main(ckpts, steps=400, save_every=400)
    run = create_foreign_run(tmp_path / "run", "examples.byo_mlp.problem:make", ckpts)
    s = {"chains": 4, "draws": 200, "burn_in": 0, "batch_size": 32, "epsilon": 1e-4, "gamma": 100.0}
    ours = compute_llc(run, s, checkpoints=[400], progress=False)
    theirs = compute_llc(run, {**s, "backend": "devinterp"}, checkpoints=[400], progress=False)
    _agree(ours, theirs)


def test_parity_on_an_llc_watch_run_from_the_cli(tiny_run, tmp_path, capsys):
    d = tmp_path / "run"
    shutil.copytree(tiny_run.dir, d)
    step = tiny_run.checkpoints()[-1].step
    args = ["llc", str(d), "--checkpoints", str(step), "--chains", "4", "--draws", "96", "--burn-in", "0",
            "--n-data", "512", "--epsilon", "3e-4", "--quiet"]
    assert main(args + ["--backend", "devinterp"]) == 0
    theirs = compute_llc(d, {"chains": 4, "draws": 96, "burn_in": 0, "n_data": 512, "epsilon": 3e-4,
                             "backend": "devinterp"}, checkpoints=[step], progress=False)
    assert "0 ran, 1 already done" in theirs.attrs["summary"]       # the CLI's result, reused
    ours = compute_llc(d, {"chains": 4, "draws": 96, "burn_in": 0, "n_data": 512, "epsilon": 3e-4},
                       checkpoints=[step], progress=False)
    _agree(ours, theirs)


def test_devinterp_backend_refuses_what_it_cannot_do(tiny_run, capsys):
    assert main(["llc", str(tiny_run.dir), "--backend", "devinterp", "--params", "head:0.0"]) == 2
    assert "leave params and sampler unset" in capsys.readouterr().err
