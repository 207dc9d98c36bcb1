"""Bring your own run: the user's checkpoint files (from a plain script that is not ours) + a problem
given as module:function -> LLC, stages and report, from the CLI and from Python."""
import pickle

import pytest
import torch

from examples.byo_mlp import train_mlp
from llc_watch.analyses import compute_llc, run_stage_map
from llc_watch.checkpoints import CheckpointError
from llc_watch.cli import main
from llc_watch.problem import ProblemError
from llc_watch.report import write_report
from llc_watch.run import ForeignRun, create_foreign_run, open_run

PROBLEM = "examples.byo_mlp.problem:make"
TINY = ["--chains", "2", "--draws", "20", "--burn-in", "5", "--quiet"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("byo") / "ckpts"
    train_mlp.main(d, steps=200, save_every=50)
    return d


def test_cli_llc_stages_report_on_own_checkpoints(ckpts, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["llc", "--problem", PROBLEM, "--checkpoint-dir", str(ckpts), "--out", str(run), *TINY]) == 0
    assert "wrote" in capsys.readouterr().out
    r = open_run(run)
    assert isinstance(r, ForeignRun) and [c.step for c in r.checkpoints()] == [0, 50, 100, 150, 200]
    llc = r.table("llc")
    assert llc["step"].tolist() == [0, 50, 100, 150, 200]
    assert (llc["n_params_sampled"] == sum(p.numel() for p in train_mlp.mlp().parameters())).all()
    assert (llc["n"] == 1024).all()
    assert main(["stages", str(run), "--resamples", "5"]) == 0
    assert main(["report", str(run)]) == 0
    text = (run / "report.html").read_text()
    assert "examples.byo_mlp.problem:make" in text and 'alt="per-chain LLC"' in text
    assert "llc-watch train" not in text           # no advice to train what the user trained themselves
    # the run folder is reopened by path; a rerun does nothing new
    assert main(["llc", str(run), *TINY]) == 0
    assert "0 ran, 5 already done" in capsys.readouterr().out


def test_python_api_and_step_pattern(ckpts, tmp_path):
    run = create_foreign_run(tmp_path / "run", PROBLEM, ckpts, step_pattern=r"step_(\d+)\.pt")
    df = compute_llc(run, {"chains": 2, "draws": 20, "burn_in": 5}, checkpoints=[0, 200], progress=False)
    assert df["step"].tolist() == [0, 200] and df["value"].notna().any()
    assert len(run_stage_map(run, resamples=5).stages) >= 1
    assert write_report(run, out_path=tmp_path / "r.html").is_file()


def test_wrong_shapes_and_pickled_code_fail_alone_with_one_line(ckpts, tmp_path):
    d = tmp_path / "ckpts"
    d.mkdir()
    for f in ckpts.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    torch.save(train_mlp.mlp(width=32).state_dict(), d / "step_60.pt")          # another architecture

    class Planted:
        def __reduce__(self):
            return (print, ("PLANTED CODE RAN",))
    (d / "step_70.pt").write_bytes(pickle.dumps({"w": Planted()}))               # code in a pickle
    run = create_foreign_run(tmp_path / "run", PROBLEM, d)
    by_step = {c.step: c for c in run.checkpoints()}
    with pytest.raises(CheckpointError, match=r"does not fit the model of problem .*shape of 0.weight: \(32, 8\)"):
        by_step[60].load_model()
    with pytest.raises(CheckpointError, match="cannot be read"):
        by_step[70].load_model()


def test_bad_problem_and_missing_options_are_one_line(ckpts, tmp_path, capsys):
    assert main(["llc", "--problem", "nosuch.module:make", "--checkpoint-dir", str(ckpts),
                 "--out", str(tmp_path / "r")]) == 2
    assert "cannot import 'nosuch'" in capsys.readouterr().err
    assert main(["llc", "--problem", PROBLEM, "--out", str(tmp_path / "r")]) == 2
    assert "--checkpoint-dir" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(ProblemError, match="module:function"):
        create_foreign_run(tmp_path / "r", "nofunction", ckpts)
