"""Replaying training to add checkpoints after the fact (train.replay_checkpoints): the replay
retraces the run bit for bit, and refuses a run it cannot retrace without writing anything."""
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from llc_watch.checkpoints import CheckpointError, Run, checkpoint_name
from llc_watch.train import replay_checkpoints

torch.set_num_threads(1)


@pytest.fixture
def run(tiny_run, tmp_path):
    shutil.copytree(tiny_run.dir, tmp_path / "run")
    return Run(tmp_path / "run")


def test_replay_retraces_the_run_and_adds_checkpoints(run):
    steps = [c.step for c in run.checkpoints()]
    gone = steps[len(steps) // 2]
    path = run.dir / "checkpoints" / checkpoint_name(gone)
    original = path.read_bytes()
    path.unlink()
    new = (steps[2] + steps[3]) // 2 if steps[3] - steps[2] > 1 else steps[-1] - 1
    assert replay_checkpoints(run.dir, [gone, new, steps[0]]) == sorted([gone, new])
    assert path.read_bytes() == original           # the same weights, metadata and bytes as training wrote
    assert sorted(c.step for c in Run(run.dir).checkpoints()) == sorted(steps + [new])
    assert replay_checkpoints(run.dir, [gone, new]) == []   # present already: nothing to do


def test_replay_refuses_a_run_it_cannot_retrace(run):
    steps = [c.step for c in run.checkpoints()]
    bent = run.dir / "checkpoints" / checkpoint_name(steps[3])
    state = load_file(bent)
    state = {k: v + 0.01 for k, v in state.items()}
    from safetensors import safe_open
    with safe_open(bent, "pt") as f:
        meta = f.metadata()
    save_file(state, bent, metadata=meta)
    before = sorted(p.name for p in (run.dir / "checkpoints").iterdir())
    with pytest.raises(CheckpointError, match=f"does not retrace the run.*step {steps[3]}"):
        replay_checkpoints(run.dir, [steps[4] + 1])
    assert sorted(p.name for p in (run.dir / "checkpoints").iterdir()) == before


def test_replay_outside_training_is_refused(run):
    from llc_watch.config import ConfigError
    with pytest.raises(ConfigError, match="within the run's training"):
        replay_checkpoints(run.dir, [run.config.train.steps + 10])
