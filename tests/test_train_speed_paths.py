"""The fast training loop gives the weights of the plain loop, step for step (CPU, fixed seed)."""
import pytest
import torch

from llc_watch.config import RunConfig
from llc_watch.train import Stepper, TrainingData, new_model_and_optimizer, train


def weights_after(cfg, steps, **stepper_kw):
    task = cfg.make_task()
    data = TrainingData(task, cfg)
    model, opt = new_model_and_optimizer(cfg, task, "cpu")
    stepper = Stepper(cfg, task, data, model, opt, "cpu", **stepper_kw)
    try:
        stepper.run(0, steps // 2)
        stepper.run(steps // 2, steps)          # two segments, as between checkpoints
    finally:
        stepper.close()
    return stepper.mode, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("preset, fast_kw, mode", [
    ("addition-tiny", dict(workers=2, use_threads=True), "2 batch workers"),
    ("addition-tiny", dict(workers=1), "1 batch workers"),                    # a spawned process
    ("modular-addition", dict(), "training set on the device"),
])
def test_fast_loop_equals_plain_loop(preset, fast_kw, mode):
    cfg = RunConfig.from_preset(preset).with_overrides(["train.steps=12", "train.threads=1"])
    if preset == "modular-addition":   # a small modulus and mini-batches: the index path
        cfg = cfg.with_overrides(["task.settings.p=13", "train.batch_size=16"])
    plain_mode, plain = weights_after(cfg, 12, fast=False)
    fast_mode, fast = weights_after(cfg, 12, fast=True, **fast_kw)
    assert plain_mode == "plain" and mode in fast_mode
    for k in plain:
        assert torch.equal(plain[k], fast[k]), k


def test_train_fast_and_plain_write_the_same_run(tmp_path):
    cfg = RunConfig.from_preset("addition-tiny").with_overrides(
        ["train.steps=30", "checkpoints.n_log=4", "checkpoints.n_linear=3", "train.threads=1"])
    a, b = train(cfg, tmp_path / "a", progress=False), train(cfg, tmp_path / "b", progress=False, fast=False)
    assert [c.step for c in a.checkpoints()] == [c.step for c in b.checkpoints()]
    for ca, cb in zip(a.checkpoints(), b.checkpoints()):
        sa, sb = ca.load_model().state_dict(), cb.load_model().state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.metrics().equals(b.metrics())


def test_stop_after_then_resume_matches_one_go(tmp_path):
    cfg = RunConfig.from_preset("addition-tiny").with_overrides(
        ["train.steps=30", "checkpoints.n_log=4", "checkpoints.n_linear=3", "train.threads=1"])
    train(cfg, tmp_path / "r", progress=False, stop_after=17)
    resumed = train(cfg, tmp_path / "r", progress=False)
    whole = train(cfg, tmp_path / "w", progress=False)
    sa, sb = resumed.checkpoints()[-1].load_model().state_dict(), whole.checkpoints()[-1].load_model().state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_captured_training_step_tracks_the_plain_loop_on_cuda():
    cfg = RunConfig.from_preset("addition-tiny").with_overrides(["train.steps=40"])
    task = cfg.make_task()
    data = TrainingData(task, cfg)
    ws = []
    for fast in (True, False):
        model, opt = new_model_and_optimizer(cfg, task, "cuda")
        stepper = Stepper(cfg, task, data, model, opt, "cuda", fast=fast)
        stepper.run(0, 40)
        stepper.close()
        ws.append((torch.cat([p.detach().reshape(-1) for p in model.parameters()]), stepper.mode))
    (a, mode), (b, _) = ws
    assert "step captured" in mode, mode
    assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())
