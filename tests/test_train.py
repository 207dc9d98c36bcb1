import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from llc_watch.checkpoints import Checkpoint, CheckpointError, checkpoint_steps, open_run
from llc_watch.config import ConfigError, RunConfig
from llc_watch.train import RunExistsError, train

TINY = ["train.steps=60", "checkpoints.n_log=6", "checkpoints.n_linear=4"]


def tiny(*extra):
    return RunConfig.from_preset("addition-tiny").with_overrides(TINY + list(extra))


def test_checkpoint_schedule_is_log_union_linear():
    steps = checkpoint_steps(10_000, n_log=30, n_linear=20)
    assert steps[0] == 0 and steps[-1] == 10_000
    assert {1, 2, 3}.issubset(steps) and 5263 in steps  # dense early (log), even later (linear)
    assert len(steps) >= 40


def test_short_run_learns_4bit_addition(tiny_run):
    m = tiny_run.metrics().pivot(index="step", columns="measure", values="value")
    assert m["test_acc"].iloc[0] < 0.1
    assert m["test_acc"].iloc[-1] > 0.9, m.tail()
    assert m["train_loss"].iloc[-1] < 0.3 * m["train_loss"].iloc[0]
    steps = [c.step for c in tiny_run.checkpoints()]
    assert steps == checkpoint_steps(tiny_run.config.train.steps, tiny_run.config.checkpoints.n_log,
                                     tiny_run.config.checkpoints.n_linear)
    # the metrics table is tidy: one row per checkpoint x measure
    assert set(tiny_run.metrics().columns) == {"step", "measure", "value"}
    assert len(tiny_run.metrics()) == 4 * len(steps)


def test_checkpoint_round_trip_is_bit_exact(tiny_run):
    ckpt = tiny_run.checkpoints()[-1]
    model = ckpt.load_model()
    saved = load_file(ckpt.path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert ckpt.config().to_dict() == tiny_run.config.to_dict()
    # and the rebuilt model computes what was evaluated at training time
    batch = tiny_run.task.sample(8, seed=1)
    assert model(batch.tokens).shape[-1] == tiny_run.task.vocab_size


def test_planted_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "step_0000001.safetensors"
    path.write_bytes(pickle.dumps({"model": Evil()}))
    torch.save({"model": Evil()}, tmp_path / "torch_style.safetensors")
    for p in (path, tmp_path / "torch_style.safetensors"):
        with pytest.raises(CheckpointError, match="not a safetensors file"):
            Checkpoint(str(p), 1).load_model()
    assert not marker.exists()


def test_corrupt_checkpoint_error_names_the_file(tiny_run, tmp_path):
    src = Path(tiny_run.checkpoints()[-1].path)
    bad = tmp_path / src.name
    bad.write_bytes(src.read_bytes()[: len(src.read_bytes()) // 2])  # truncated
    with pytest.raises(CheckpointError, match=bad.name):
        Checkpoint(str(bad), 1).load_model()


def test_killed_then_resumed_equals_uninterrupted(tmp_path):
    cfg = tiny()
    full = train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "resumed", progress=False, stop_after=30)   # "killed" after step 30
    assert open_run(tmp_path / "resumed").checkpoints()[-1].step < cfg.train.steps
    resumed = train(cfg, tmp_path / "resumed", progress=False)
    a, b = full.checkpoints()[-1].load_state(), resumed.checkpoints()[-1].load_state()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    pd.testing.assert_frame_equal(full.metrics(), resumed.metrics())


def test_sigkill_mid_run_then_rerun_completes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "llc_watch.cli", "train", "--preset", "addition-tiny", "--out", str(out),
           "--quiet", "--set", "train.steps=150"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "checkpoints").glob("*.safetensors"))) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = open_run(out)
    assert run.checkpoints()[-1].step == 150
    for ckpt in run.checkpoints():
        ckpt.load_state()  # every file whole
    assert not list(out.rglob("*.tmp"))


def test_rerun_with_different_config_is_refused(tmp_path):
    train(tiny(), tmp_path / "r", progress=False)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*") if p.is_file()}
    with pytest.raises(RunExistsError, match="train.lr"):
        train(tiny("train.lr=0.01"), tmp_path / "r", progress=False)
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert before == after


def test_modular_addition_uses_fixed_split(tmp_path):
    cfg = RunConfig.from_preset("modular-addition").with_overrides(
        ["task.settings.p=7", "train.steps=5", "model.d_model=16", "model.d_mlp=16", "checkpoints.n_log=2"])
    run = train(cfg, tmp_path / "m", progress=False)
    assert set(run.metrics().measure) == {"train_loss", "train_acc", "test_loss", "test_acc"}


@pytest.mark.parametrize("override,word", [
    (["train.steps=0"], "train.steps"), (["train.lr=-1"], "train.lr"), (["train.schedule=linear"], "schedule"),
    (["train.stepz=3"], "stepz"), (["model.d_model=30"], "n_heads"), (["train.steps=abc"], "train.steps"),
    (["task.settings.n_bits=0"], "n_bits"), (["nonsense"], "section.key=value"), (["optim.lr=1"], "optim"),
])
def test_bad_configs_are_named(override, word):
    with pytest.raises(ConfigError, match=word):
        RunConfig.from_preset("addition-tiny").with_overrides(override)


def test_toml_config_with_preset(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('preset = "addition-tiny"\nseed = 3\n[train]\nlr = 0.002\n[task.settings]\nn_bits = 5\n')
    cfg = RunConfig.from_toml(f)
    assert (cfg.seed, cfg.train.lr, cfg.task.settings["n_bits"], cfg.model.d_model) == (3, 0.002, 5, 32)
    f.write_text("[train\nlr=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        RunConfig.from_toml(f)
    f.write_text("[trian]\nlr=1")
    with pytest.raises(ConfigError, match="trian"):
        RunConfig.from_toml(f)
