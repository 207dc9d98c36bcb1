"""Many checkpoints in one stacked run: the same per-chain values as estimate_llc per checkpoint."""
import math

import numpy as np
import pytest
import torch

from llc_watch.llc import LLCError, estimate_llc
from llc_watch.llc.batched import estimate_llc_many
from llc_watch.model import ModelConfig, Transformer
from llc_watch.tasks import get_task

torch.set_num_threads(1)
KW = dict(epsilon=1e-4, gamma=100.0, chains=3, draws=20, burn_in=8, batch_size=32, seed=0)


def checkpoints(k=3):
    """k 'checkpoints' of one architecture: a few Adam steps apart, so their w* differ."""
    task = get_task("addition", n_bits=3)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, vocab_size=5, n_ctx=task.seq_len))
    data = task.sample(256, seed=0)
    loss_fn = lambda m, b: task.loss(m(b.tokens), b)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    out = []
    for _ in range(k):
        for _ in range(15):
            opt.zero_grad()
            loss_fn(model, data).backward()
            opt.step()
        out.append(Transformer(model.cfg))
        out[-1].load_state_dict(model.state_dict())
    return out, loss_fn, data


def assert_same(a, b):
    assert a.init_loss == b.init_loss and a.draw_steps == b.draw_steps
    np.testing.assert_allclose(a.loss_traces, b.loss_traces, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.llc_per_chain, b.llc_per_chain, rtol=1e-3, atol=1e-3)
    assert a.chain_failed == b.chain_failed and a.valid == b.valid


@pytest.mark.parametrize("block_size", [None, 2])
def test_batched_equals_one_checkpoint_at_a_time(block_size):
    models, loss_fn, data = checkpoints()
    many = estimate_llc_many(models, loss_fn, data, block_size=block_size, **KW)
    for m, r in zip(models, many):
        assert_same(r, estimate_llc(m, loss_fn, data, **KW))
    assert many[0].timing["batched_checkpoints"] == (3 if block_size is None else 2)
    assert all(r.timing["batched_stacked"] for r in many)
    assert len({round(r.llc_mean, 6) for r in many}) == 3          # really different checkpoints


def test_mala_and_no_batch_control_stack_too():
    models, loss_fn, data = checkpoints(2)
    kw = {**KW, "mala": True, "batch_control": False}
    for m, r in zip(models, estimate_llc_many(models, loss_fn, data, **kw)):
        ref = estimate_llc(m, loss_fn, data, **kw)
        assert_same(r, ref)
        np.testing.assert_allclose(r.diagnostics["mala_acceptance"], ref.diagnostics["mala_acceptance"], rtol=1e-4)


def test_restricted_checkpoints_fall_back_to_separate_runs():
    models, loss_fn, data = checkpoints(2)
    kw = {**KW, "params": "blocks.0.mlp.*"}    # the rest, held fixed, differs between checkpoints
    for m, r in zip(models, estimate_llc_many(models, loss_fn, data, **kw)):
        assert_same(r, estimate_llc(m, loss_fn, data, **kw))
        assert not r.timing["batched_stacked"]


def test_a_broken_checkpoint_is_reported_in_its_place():
    models, loss_fn, data = checkpoints(3)
    with torch.no_grad():
        models[1].unembed.weight.fill_(math.nan)
    out = estimate_llc_many(models, loss_fn, data, return_exceptions=True, **KW)
    assert isinstance(out[1], LLCError) and "not finite" in str(out[1])
    assert_same(out[2], estimate_llc(models[2], loss_fn, data, **KW))
    with pytest.raises(LLCError, match="not finite"):
        estimate_llc_many(models, loss_fn, data, **KW)
    with pytest.raises(LLCError, match="block_size"):
        estimate_llc_many(models, loss_fn, data, block_size=0, **KW)


def test_checkpoints_of_a_run_with_the_job_settings(tmp_path):
    from llc_watch.config import RunConfig
    from llc_watch.analyses.llc import checkpoint_problem, estimate_checkpoints, estimator_kwargs
    from llc_watch.train import train
    cfg = RunConfig.from_preset("addition-tiny").with_overrides(
        ["train.steps=40", "checkpoints.n_log=3", "checkpoints.n_linear=2", "train.threads=1"])
    ckpts = train(cfg, tmp_path / "run", progress=False).checkpoints()[-2:]
    # stacking needs one seed for all (common noise); per-checkpoint seeds (the default) are tested below
    settings = {"chains": 2, "draws": 15, "burn_in": 5, "n_data": 256, "seed_per_checkpoint": False}
    many = estimate_checkpoints(ckpts, settings)
    for c, r in zip(ckpts, many):
        s, model, loss_fn, data = checkpoint_problem(c, settings)
        assert_same(r, estimate_llc(model, loss_fn, data, **estimator_kwargs(s, model)))
    assert all(r.timing["batched_stacked"] for r in many)
    # with per-checkpoint seeds (the default) every checkpoint runs on its own seed, as llc_job
    # does, and they still share one stacked pass: each row block draws its own noise and batches
    from llc_watch.analyses.llc import checkpoint_seed
    settings = {**settings, "seed_per_checkpoint": True}
    many = estimate_checkpoints(ckpts, settings)
    assert [r.hyperparameters["seed"] for r in many] == [checkpoint_seed(settings, c.step) for c in ckpts]
    assert len({r.hyperparameters["seed"] for r in many}) == len(ckpts)
    assert all(r.timing["batched_stacked"] for r in many)
    for c, r in zip(ckpts, many):
        s, model, loss_fn, data = checkpoint_problem(c, settings)
        assert_same(r, estimate_llc(model, loss_fn, data, **{**estimator_kwargs(s, model), "seed": r.hyperparameters["seed"]}))


def test_own_seeds_stack_and_equal_separate_runs():
    """estimate_llc_many(seeds=...) gives each model its own seed's noise and minibatches in one
    stacked pass: the same per-chain values as estimate_llc at that seed."""
    models, loss_fn, data = checkpoints(3)
    seeds = [11, 12, 13]
    many = estimate_llc_many(models, loss_fn, data, seeds=seeds, **KW)
    assert all(r.timing["batched_stacked"] for r in many)
    for m, sd, r in zip(models, seeds, many):
        assert_same(r, estimate_llc(m, loss_fn, data, **{**KW, "seed": sd}))
    with pytest.raises(LLCError, match="one seed per model"):
        estimate_llc_many(models, loss_fn, data, seeds=[1], **KW)


def test_llc_command_stacked_equals_one_job_per_checkpoint(tmp_path):
    """The driver's stacked path (the default on a GPU) writes the same llc.csv values as one job per
    checkpoint, into the same result files (so a rerun of either skips the other's work)."""
    import pandas as pd
    from llc_watch.analyses import compute_llc
    from llc_watch.config import RunConfig
    from llc_watch.train import train
    cfg = RunConfig.from_preset("addition-tiny").with_overrides(
        ["train.steps=40", "checkpoints.n_log=3", "checkpoints.n_linear=2", "train.threads=1"])
    run = train(cfg, tmp_path / "run", progress=False)
    settings = {"chains": 2, "draws": 15, "burn_in": 5, "n_data": 256}   # per-checkpoint seeds
    stacked = compute_llc(run.dir, {**settings, "stack_checkpoints": True}, progress=False)
    results = sorted((run.dir / "results" / "llc").glob("*.json"))
    for p in results:
        p.unlink()
    single = compute_llc(run.dir, {**settings, "stack_checkpoints": False}, progress=False)
    assert sorted(p.name for p in (run.dir / "results" / "llc").glob("*.json")) == [p.name for p in results]
    a, b = stacked.reset_index(drop=True), single.reset_index(drop=True)
    assert a["step"].tolist() == b["step"].tolist() and a["valid"].tolist() == b["valid"].tolist()
    # same noise, same batches: only float32 summation order differs (stacked matmuls), so the
    # estimates agree to a tiny fraction of their own standard error
    assert ((a["value"] - b["value"]).abs() <= 1e-3 * b["stderr"]).all(), (a["value"], b["value"])
