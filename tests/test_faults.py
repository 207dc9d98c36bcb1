"""Fault injection (issue 17): every failure gets one clear line, the right exit status, and leaves
every finished result and table as it was.

Each test reproduces one case found by trying the package adversarially on an addition-tiny run.
Destructive tests work on a copy of the shared tiny run.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from llc_watch.cli import main

FAST_LLC = ["--chains", "2", "--draws", "6", "--burn-in", "2", "--batch-size", "32", "--quiet"]
FAST_PROBE = ["--n-train", "128", "--n-test", "64", "--quiet"]


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(tiny_run.dir, dst, ignore=shutil.ignore_patterns("results", "*.csv", "report.html",
                                                                      "calibration.json"))
    shutil.copy(tiny_run.dir / "metrics.csv", dst / "metrics.csv")
    return dst


def _steps(run: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("step_*.safetensors"))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines, "no error message at all"
    return "\n".join(lines)


def _two_checkpoints(run: Path) -> str:
    s = _steps(run)
    return f"{s[len(s) // 2]},{s[-1]}"


# --- 1. foreign checkpoints ---------------------------------------------------------------------

def _foreign_checkpoint(tmp_path, run: Path, overrides: list[str]) -> int:
    """Train a small other run with `overrides` and copy one checkpoint of it into `run` under a new step."""
    from llc_watch.config import RunConfig
    from llc_watch.train import train
    cfg = RunConfig.from_preset("addition-tiny").with_overrides(overrides + ["train.steps=20"])
    other = train(cfg, tmp_path / "other", progress=False)
    src = other.checkpoints()[-1].path
    step = max(_steps(run)) + 1
    shutil.copy(src, run / "checkpoints" / f"step_{step:07d}.safetensors")
    return step


@pytest.mark.parametrize("overrides,words", [
    (["model.d_model=64"], ["d_model", "32", "64"]),
    (["seed=7"], ["seed", "7"]),
])
def test_a_foreign_checkpoint_fails_alone_naming_both_values(run_copy, tmp_path, capsys, overrides, words):
    step = _foreign_checkpoint(tmp_path, run_copy, overrides)
    own = _steps(run_copy)[-2]
    code = main(["llc", str(run_copy), "--checkpoints", f"{own},{step}", *FAST_LLC])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert str(step) in err
    for w in words:
        assert w in err, (w, err)
    df = pd.read_csv(run_copy / "llc.csv")
    assert set(df["step"]) == {own}, "the foreign checkpoint must not get a row; the run's own one must"


def test_a_foreign_checkpoint_is_not_probed(run_copy, tmp_path, capsys):
    step = _foreign_checkpoint(tmp_path, run_copy, ["model.d_model=64"])
    code = main(["probe", str(run_copy), "--checkpoints", str(step), *FAST_PROBE])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "d_model" in err


# --- 2. a failed command never empties a table --------------------------------------------------

def test_failed_llc_keeps_the_previous_table(run_copy, capsys):
    assert main(["llc", str(run_copy), "--checkpoints", _two_checkpoints(run_copy), *FAST_LLC]) == 0
    before = (run_copy / "llc.csv").read_bytes()
    capsys.readouterr()
    assert main(["llc", str(run_copy), *FAST_LLC, "--chains", "0"]) == 2
    assert "chains" in _one_line_error(capsys)
    assert (run_copy / "llc.csv").read_bytes() == before


def test_failed_probe_keeps_the_previous_table(run_copy, capsys):
    assert main(["probe", str(run_copy), "--checkpoints", _two_checkpoints(run_copy), *FAST_PROBE]) == 0
    before = (run_copy / "probes.csv").read_bytes()
    capsys.readouterr()
    assert main(["probe", str(run_copy), *FAST_PROBE, "--n-train", "0"]) == 2
    assert "n_train" in _one_line_error(capsys).replace("-", "_")
    assert (run_copy / "probes.csv").read_bytes() == before


@pytest.mark.parametrize("cmd", ["stages", "report"])
def test_an_empty_table_is_named_with_the_command_to_run(run_copy, capsys, cmd):
    (run_copy / "llc.csv").write_text("")
    code = main([cmd, str(run_copy)])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "EmptyDataError" not in err
    if code != 0:                      # refusing is fine, with the table and the command named
        assert code == 2 and "llc.csv" in err and "llc-watch llc" in err


# --- 3. settings validated before any work ------------------------------------------------------

@pytest.mark.parametrize("args,word", [
    (["--chains", "0"], "chains"), (["--draws", "0"], "draws"),
    (["--epsilon", "nan"], "epsilon"), (["--epsilon", "-1"], "epsilon"), (["--epsilon", "0"], "epsilon"),
    (["--epsilon", "inf"], "epsilon"), (["--nbeta", "-1"], "nbeta"), (["--batch-size", "0"], "batch"),
    (["--eval-size", "0"], "eval"),
])
def test_bad_llc_settings_exit_2_with_one_line_before_loading(run_copy, capsys, monkeypatch, args, word):
    import llc_watch.checkpoints as ck
    loaded = []
    real = ck.Checkpoint.load_model
    monkeypatch.setattr(ck.Checkpoint, "load_model", lambda self, *a, **k: loaded.append(self) or real(self, *a, **k))
    assert main(["llc", str(run_copy), "--quiet", *args]) == 2
    err = _one_line_error(capsys)
    assert word in err.replace("-", "_").replace("_size", "_size"), err
    assert len(err.splitlines()) == 1, f"one line, printed once: {err!r}"
    assert not loaded, "settings must be checked before any checkpoint is loaded"


@pytest.mark.parametrize("args,word", [
    (["--C", "-1"], "C"), (["--features", "nosuch"], "nosuch"), (["--n-train", "0"], "n_train"),
])
def test_bad_probe_settings_exit_2(run_copy, capsys, args, word):
    assert main(["probe", str(run_copy), "--quiet", *args]) == 2
    err = _one_line_error(capsys)
    assert word in err.replace("-", "_") or word in err
    if word == "nosuch":
        assert "carry" in err, "the message lists the features that exist"


def test_non_finite_learning_rate_is_refused(tmp_path, capsys):
    assert main(["train", "--preset", "addition-tiny", "--set", "train.lr=inf", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 2
    assert "train.lr" in _one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_training_that_diverges_stops_with_a_clear_error(tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["train", "--preset", "addition-tiny", "--set", "train.lr=1e6", "--set", "train.grad_clip=0",
                 "--set", "train.steps=200", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code != 0:
        assert "loss" in err and ("NaN" in err or "non-finite" in err or "not finite" in err)
        assert (out / "config.json").is_file()       # what was written before stays
    else:
        m = pd.read_csv(out / "metrics.csv")
        assert m["value"].notna().all(), "a run that ended with exit 0 must not hold NaN metrics"


# --- 4. an invalid estimate shows no value -------------------------------------------------------

def test_invalid_estimates_have_no_value(run_copy, capsys):
    main(["llc", str(run_copy), "--checkpoints", _two_checkpoints(run_copy), *FAST_LLC, "--epsilon", "10"])
    df = pd.read_csv(run_copy / "llc.csv")
    bad = df[~df["valid"].astype(bool)]
    assert len(bad), "epsilon 10 must make the estimate invalid"
    assert bad["value"].isna().all(), bad[["step", "value", "valid"]]


# --- 5. OS errors are one line -------------------------------------------------------------------

def test_train_out_naming_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["train", "--preset", "addition-tiny", "--out", str(f), "--quiet"]) == 2
    assert str(f) in _one_line_error(capsys)


def test_report_out_naming_a_directory(run_copy, tmp_path, capsys):
    main(["stages", str(run_copy)])
    capsys.readouterr()
    d = tmp_path / "adir"
    d.mkdir()
    assert main(["report", str(run_copy), "--out", str(d)]) == 2
    assert str(d) in _one_line_error(capsys)


def test_report_out_elsewhere_writes_nothing_into_the_run(run_copy, tmp_path, capsys):
    before = {p.relative_to(run_copy): p.stat().st_mtime_ns for p in run_copy.rglob("*") if p.is_file()}
    assert main(["report", str(run_copy), "--out", str(tmp_path / "r.html")]) == 0
    after = {p.relative_to(run_copy): p.stat().st_mtime_ns for p in run_copy.rglob("*") if p.is_file()}
    assert before == after


@pytest.mark.parametrize("name", ["calibration.json", "config.json"])
def test_corrupt_json_is_one_line(run_copy, capsys, name):
    (run_copy / name).write_text("{not json")
    assert main(["llc", str(run_copy), *FAST_LLC]) == 2
    assert name in _one_line_error(capsys)


def test_a_calibration_without_its_choice_is_one_line_naming_the_fix(run_copy, capsys):
    (run_copy / "calibration.json").write_text('{"warnings": []}')
    assert main(["llc", str(run_copy), *FAST_LLC]) == 2
    err = _one_line_error(capsys)
    assert "calibration.json has no 'choice'" in err and "llc-watch calibrate" in err


def test_a_read_only_run_folder_is_one_line(run_copy, capsys, monkeypatch):
    """Every write goes through llc_watch.io; a read-only file system fails it with EROFS."""
    import llc_watch.io as io

    def refuse(path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    monkeypatch.setattr(io, "atomic_write_bytes", refuse)
    code = main(["llc", str(run_copy), "--checkpoints", str(_steps(run_copy)[-1]), *FAST_LLC])
    err = _one_line_error(capsys)
    assert code == 2 and "read-only" in err.lower()


def test_a_full_disk_during_llc_keeps_what_finished(run_copy, capsys, monkeypatch):
    import llc_watch.io as io
    real, calls = io.atomic_write_bytes, []

    def fill_up(path, data, *a, **k):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, *a, **k)
    monkeypatch.setattr(io, "atomic_write_bytes", fill_up)
    code = main(["llc", str(run_copy), "--checkpoints", _two_checkpoints(run_copy), *FAST_LLC])
    err = _one_line_error(capsys)
    assert code != 0 and ("space" in err.lower() or "full" in err.lower())
    assert len(list((run_copy / "results").rglob("*.json"))) >= 1, "the finished result is kept"


# --- 6. advice that works ------------------------------------------------------------------------

def test_a_truncated_checkpoint_gets_one_cause_and_advice_that_works(run_copy, capsys):
    step = _steps(run_copy)[-1]
    p = run_copy / "checkpoints" / f"step_{step:07d}.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    code = main(["llc", str(run_copy), "--checkpoints", str(step), *FAST_LLC])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and str(p) in err
    assert err.count("Delete") + err.count("delete") <= 1, "the advice once"
    assert "does not match its own model config" not in err, "one cause per message"
    if "llc-watch train" in err:       # the advice says train rewrites it: then it must
        p.unlink()
        cfg = json.loads((run_copy / "config.json").read_text())
        assert main(["train", "--config", str(_config_toml(run_copy, cfg)), "--out", str(run_copy), "--quiet"]) == 0
        assert p.is_file(), "train was said to rewrite the deleted checkpoint but did not"


def _config_toml(run: Path, cfg: dict) -> Path:
    """The run's config.json as a TOML file `train --config` accepts."""
    lines = []
    for k, v in cfg.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {json.dumps(v)}")
    for sec, vals in cfg.items():
        if isinstance(vals, dict):
            lines.append(f"[{sec}]")
            for k, v in vals.items():
                if isinstance(v, dict):
                    continue
                lines.append(f"{k} = {json.dumps(v) if v is not None else '0'}")
            for k, v in vals.items():
                if isinstance(v, dict):
                    lines.append(f"[{sec}.{k}]")
                    lines += [f"{kk} = {json.dumps(vv)}" for kk, vv in v.items()]
    path = run.parent / "cfg.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_shape_mismatch_says_which_tensor(run_copy, capsys):
    from safetensors.torch import load_file, save_file
    import torch
    step = _steps(run_copy)[-1]
    p = run_copy / "checkpoints" / f"step_{step:07d}.safetensors"
    from safetensors import safe_open
    with safe_open(str(p), "pt") as f:
        meta = f.metadata()
    state = load_file(str(p))
    name = next(iter(state))
    state[name] = torch.zeros(3, 3)
    save_file(state, str(p), metadata=meta)
    code = main(["llc", str(run_copy), "--checkpoints", str(step), *FAST_LLC])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert name in err and "Error(s) in loading state_dict" not in err


# --- 7. no orphans, a refused config writes nothing ----------------------------------------------

def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    kids, frontier = [], [pid]
    pairs = [tuple(map(int, ln.split())) for ln in out.strip().splitlines()]
    while frontier:
        p = frontier.pop()
        for c, pp in pairs:
            if pp == p:
                kids.append(c)
                frontier.append(c)
    return kids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    st = Path(f"/proc/{pid}/stat")
    return not (st.exists() and st.read_text().split()[2] == "Z")


def test_workers_die_with_their_driver(run_copy):
    proc = subprocess.Popen([sys.executable, "-m", "llc_watch.cli", "llc", str(run_copy), "--executor", "process",
                             "--workers", "2", "--chains", "2", "--draws", "3000", "--burn-in", "0", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids = []
    deadline = time.time() + 60
    while time.time() < deadline and len(kids) < 2:
        time.sleep(0.5)
        kids = _children(proc.pid)
    assert kids, "the process executor started no workers"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.5)
    left = [k for k in kids if _alive(k)]
    for k in left:
        os.kill(k, signal.SIGKILL)
    assert not left, f"workers {left} outlived their killed driver"


def test_a_refused_device_writes_no_config(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "r"
    assert main(["train", "--preset", "addition-tiny", "--set", "train.device=cuda", "--out", str(out),
                 "--quiet"]) == 2
    assert "cuda" in _one_line_error(capsys).lower()
    assert not (out / "config.json").exists()
    assert main(["train", "--preset", "addition-tiny", "--set", "train.steps=5", "--out", str(out), "--quiet"]) == 0


# --- 8. file modes and deterministic bytes -------------------------------------------------------

def test_result_files_follow_the_umask(tmp_path):
    from llc_watch.io import atomic_write_text
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "x.txt", "hi")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_identical_checkpoints_have_identical_bytes(tmp_path):
    from llc_watch.checkpoints import save_checkpoint
    from llc_watch.config import RunConfig
    from llc_watch.model import Transformer
    import torch
    cfg = RunConfig.from_preset("addition-tiny")
    torch.manual_seed(0)
    model = Transformer(cfg.model_config())
    a = save_checkpoint(tmp_path / "a", 1, model, cfg).read_bytes()
    b = save_checkpoint(tmp_path / "b", 1, model, cfg).read_bytes()
    assert a == b


# --- 9. concurrent runs -------------------------------------------------------------------------

def test_two_concurrent_llc_commands_end_with_a_correct_table(run_copy):
    """Two drivers on one run at once: both succeed, every checkpoint has one result file, and the
    table holds each step once (jobs are keyed by checkpoint bytes and settings, written atomically)."""
    steps = _two_checkpoints(run_copy)
    cmd = [sys.executable, "-m", "llc_watch.cli", "llc", str(run_copy), "--checkpoints", steps, *FAST_LLC]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    df = pd.read_csv(run_copy / "llc.csv")
    assert sorted(df["step"]) == sorted(int(s) for s in steps.split(","))
    assert len(list((run_copy / "results" / "llc").glob("*.json"))) == 2
    assert not list(run_copy.rglob(".*.tmp")), "no temporary file left behind"
