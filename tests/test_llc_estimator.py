"""The estimator's engineering: paths agree, seeds reproduce, failures are flagged, data forms."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from llc_watch.llc import LLCError, default_nbeta, devinterp_nbeta, estimate_llc, exact
from llc_watch.llc import diagnostics as dg
from llc_watch.llc.estimator import OBSERVE_SIZE_MAX, OBSERVE_SIZE_MIN, observe_size_for
from llc_watch.model import ModelConfig, Transformer
from llc_watch.tasks import get_task

torch.set_num_threads(1)


def tiny_transformer_case(n=256, seed=0):
    task = get_task("addition", n_bits=3)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, vocab_size=5, n_ctx=task.seq_len))
    data = task.sample(n, seed=seed)
    return model, (lambda m, b: task.loss(m(b.tokens), b)), data


FAST = dict(epsilon=1e-4, gamma=100.0, chains=3, draws=30, burn_in=10, batch_size=32, seed=0)


def test_vectorised_equals_sequential_with_shared_noise():
    model, loss_fn, data = tiny_transformer_case()
    a = estimate_llc(model, loss_fn, data, vectorized=True, **FAST)
    b = estimate_llc(model, loss_fn, data, vectorized=False, **FAST)
    assert a.hyperparameters["vectorized"] and not b.hyperparameters["vectorized"]
    # same noise, same batches: only float rounding of batched vs single matmuls differs
    np.testing.assert_allclose(a.loss_traces, b.loss_traces, rtol=1e-4, atol=1e-6)
    assert a.llc_mean == pytest.approx(b.llc_mean, rel=1e-3, abs=1e-3)


def test_same_seed_identical_other_seed_different():
    model, loss_fn, data = tiny_transformer_case()
    a = estimate_llc(model, loss_fn, data, **FAST)
    b = estimate_llc(model, loss_fn, data, **FAST)
    c = estimate_llc(model, loss_fn, data, **{**FAST, "seed": 1})
    assert a.llc_per_chain == b.llc_per_chain and a.loss_traces == b.loss_traces
    assert a.llc_per_chain != c.llc_per_chain
    assert a.init_loss == c.init_loss          # L_n(w*) does not depend on the sampling seed


def test_chain_noise_does_not_depend_on_chain_count():
    model, loss_fn, data = tiny_transformer_case()
    a = estimate_llc(model, loss_fn, data, **FAST)
    b = estimate_llc(model, loss_fn, data, **{**FAST, "chains": 2})
    np.testing.assert_allclose(a.loss_traces[:2], b.loss_traces, rtol=1e-5)


def test_model_is_not_modified():
    model, loss_fn, data = tiny_transformer_case()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    estimate_llc(model, loss_fn, data, **FAST)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_diverging_epsilon_is_flagged_invalid():
    model, loss_fn, data = tiny_transformer_case()
    r = estimate_llc(model, loss_fn, data, **{**FAST, "epsilon": 1.0, "gamma": 1.0})
    assert not r.valid
    assert all(f is not None for f in r.chain_failed)
    assert any("INVALID" in w for w in r.warnings)
    json.dumps(r.to_dict(), allow_nan=False)     # NaNs become null: still strict JSON


def test_exploding_but_finite_chain_is_failed():
    # a finite, huge excess loss (devinterp 2.0.1 would average it into an LLC of ~1e9)
    draws = np.array([[1.0, 1.0, 1.0], [1e7, 1e7, 1e7]])
    reasons = dg.chain_failures(draws, draws, np.array([True, True]), init_loss=1.0, nbeta=100.0,
                                n_sampled=1000)
    assert reasons[0] is None and reasons[1].startswith("exploding")


def test_healthy_chain_rule():
    assert dg.min_healthy(8, 0.75) == 6 and dg.min_healthy(1, 0.75) == 1 and dg.min_healthy(3, 0.75) == 3


@pytest.mark.parametrize("batch_control", [False, True])
def test_burn_in_excluded_and_draw_spacing(batch_control):
    model, loss_fn, data = tiny_transformer_case()
    r = estimate_llc(model, loss_fn, data, **{**FAST, "burn_in": 7, "draws": 5, "steps_between_draws": 3},
                     batch_control=batch_control)
    assert r.draw_steps == [7, 10, 13, 16, 19]
    assert len(r.loss_traces[0]) == 20
    tr = np.array(r.loss_traces)
    if batch_control:   # control variate: the batch loss at w* replaces L_n(w*) draw by draw
        c = np.array(r.diagnostics["center_loss_trace"])     # [C, T] per-chain batches, [T] shared
        tr = tr - (c if c.ndim == 2 else c[None, :]) + r.init_loss
    else:
        assert r.diagnostics["center_loss_trace"] is None
    expect = r.hyperparameters["nbeta"] * (tr[:, r.draw_steps].mean(1) - r.init_loss)
    np.testing.assert_allclose(r.llc_per_chain, expect)


def test_batch_control_keeps_the_mean_and_removes_shared_noise():
    # small batches, draws not covering whole epochs: the shared batch noise is large without it
    model, loss_fn, data, lam = exact.make_regular(4, 2000)
    kw = dict(epsilon=2e-4, gamma=1.0, chains=8, draws=300, burn_in=200, batch_size=32, seed=0,
              per_chain_batches=False)
    raw = estimate_llc(model, loss_fn, data, batch_control=False, **kw)
    cv = estimate_llc(model, loss_fn, data, batch_control=True, **kw)
    assert raw.loss_traces == cv.loss_traces                   # same chains, same batches
    assert cv.diagnostics["shared_noise_stderr"] < 0.5 * raw.diagnostics["shared_noise_stderr"]
    assert any("shared minibatch noise" in w for w in raw.warnings)
    assert not any("shared minibatch noise" in w for w in cv.warnings)
    # the two differ by exactly the batch offset nβ·(mean_t L_bt(w*) − L_n(w*)), plus nβ times the
    # float32 rounding between their L_n(w*) (cv's is the mean of the per-example losses it reads
    # L_bt(w*) from, raw's the size-weighted mean of chunk losses)
    assert cv.init_loss == pytest.approx(raw.init_loss, rel=1e-6)
    rounding = raw.hyperparameters["nbeta"] * (cv.init_loss - raw.init_loss)
    assert raw.llc_mean - cv.llc_mean == pytest.approx(cv.diagnostics["batch_offset"] + rounding,
                                                       rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("per_chain_batches", [True, False])
def test_cached_batch_control_equals_a_forward_at_w_star_per_step(monkeypatch, per_chain_batches):
    # the batch loss at w* read from every example's loss at w* (computed once) is the batch loss a
    # forward pass at w* gives on that step's batch: same traces, same estimate, to float32 rounding
    from llc_watch.llc import control
    model, loss_fn, data = tiny_transformer_case()
    kw = dict(FAST, per_chain_batches=per_chain_batches)
    cached = estimate_llc(model, loss_fn, data, **kw)
    monkeypatch.setattr(control, "worth_caching", lambda *a: False)
    forward = estimate_llc(model, loss_fn, data, **kw)
    assert cached.diagnostics["center_loss_method"] == "per-example losses at w*, computed once"
    assert forward.diagnostics["center_loss_method"] == "a forward pass at w* per step"
    assert cached.loss_traces == forward.loss_traces                      # the same chains
    np.testing.assert_allclose(cached.diagnostics["center_loss_trace"],
                               forward.diagnostics["center_loss_trace"], rtol=1e-5)
    np.testing.assert_allclose(cached.llc_per_chain, forward.llc_per_chain, rtol=1e-4, atol=1e-4)
    assert cached.init_loss == pytest.approx(forward.init_loss, rel=1e-6)


def test_a_loss_that_is_not_a_mean_over_examples_gets_a_forward_per_step():
    # a mean over a batch's tokens, where examples have different token counts, is not the mean of
    # per-example losses: reading L_b(w*) from them would be wrong, so each step runs a forward
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + torch.randn(512, generator=g)
    tokens = torch.randint(1, 4, (512,), generator=g).float()     # each example counts 1-3 times
    model = nn.Linear(3, 1, bias=False)
    model.weight.data = torch.linalg.lstsq(x, y[:, None]).solution.T

    def per_token_mean(m, b):
        xb, yb, kb = b
        return (0.5 * (m(xb).squeeze(-1) - yb) ** 2 * kb).sum() / kb.sum()

    r = estimate_llc(model, per_token_mean, (x, y, tokens), epsilon=1e-4, gamma=1.0, chains=2,
                     draws=20, burn_in=5, batch_size=32, seed=0)
    assert r.diagnostics["center_loss_method"] == "a forward pass at w* per step"
    c = np.array(r.diagnostics["center_loss_trace"])                         # [C, T]
    from llc_watch.llc.data import ChainMinibatchStreams
    from llc_watch.tasks.base import derive_seed
    idx = ChainMinibatchStreams(512, 32, derive_seed(0, "batches"), 2).indices(3)[1]
    with torch.no_grad():
        assert c[1, 3] == pytest.approx(float(per_token_mean(model, (x[idx], y[idx], tokens[idx]))), rel=1e-5)


def test_init_loss_is_deterministic_full_data_mean():
    model, loss_fn, data = tiny_transformer_case()
    r = estimate_llc(model, loss_fn, data, **FAST)
    with torch.no_grad():
        full = float(loss_fn(model.eval(), data))
    assert r.init_loss == pytest.approx(full, rel=1e-5)
    assert r.init_loss_method["eval_size"] == len(data)
    r2 = estimate_llc(model, loss_fn, data, **{**FAST, "eval_size": 100})
    assert r2.init_loss_method["eval_size"] == 100


def test_default_nbeta_is_n_over_log_n_and_devinterp_option():
    model, loss_fn, data, _ = exact.make_regular(2, 500)
    r = estimate_llc(model, loss_fn, data, epsilon=1e-4, gamma=1.0, chains=2, draws=5, burn_in=0)
    assert r.hyperparameters["nbeta"] == pytest.approx(500 / math.log(500)) == pytest.approx(default_nbeta(500))
    r = estimate_llc(model, loss_fn, data, epsilon=1e-4, gamma=1.0, chains=2, draws=5, burn_in=0,
                     nbeta="devinterp", batch_size=32)
    assert r.hyperparameters["nbeta"] == pytest.approx(devinterp_nbeta(32)) == pytest.approx(32 / math.log(32))


@pytest.mark.parametrize("form", ["tuple", "dataset", "loader", "dict"])
def test_data_forms_agree(form):
    model, loss_fn, (x, y), _ = exact.make_regular(3, 400)
    forms = {"tuple": (x, y), "dataset": TensorDataset(x, y), "loader": DataLoader(TensorDataset(x, y), batch_size=7),
             "dict": {"x": x, "y": y}}
    fn = (lambda m, b: loss_fn(m, (b["x"], b["y"]))) if form == "dict" else loss_fn
    ref = estimate_llc(model, loss_fn, (x, y), epsilon=1e-4, gamma=1.0, chains=2, draws=10, burn_in=0, seed=3)
    r = estimate_llc(model, fn, forms[form], epsilon=1e-4, gamma=1.0, chains=2, draws=10, burn_in=0, seed=3)
    np.testing.assert_allclose(r.loss_traces, ref.loss_traces, rtol=1e-6)


def test_unvmappable_model_falls_back_to_sequential():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x):
            if self.lin.weight.sum().item() > 1e9:    # data-dependent Python control flow
                return x[:, :1]
            return self.lin(x)

    x, y = torch.randn(200, 2), torch.randn(200, 1)
    r = estimate_llc(Odd(), lambda m, b: 0.5 * ((m(b[0]) - b[1]) ** 2).mean(), (x, y),
                     epsilon=1e-4, gamma=1.0, chains=2, draws=5, burn_in=0)
    assert not r.hyperparameters["vectorized"]
    assert any("sequentially" in w for w in r.warnings)


def test_bad_settings_name_the_setting():
    model, loss_fn, data = tiny_transformer_case()
    with pytest.raises(LLCError, match="epsilon"):
        estimate_llc(model, loss_fn, data, epsilon=-1.0)
    with pytest.raises(LLCError, match="sampler"):
        estimate_llc(model, loss_fn, data, sampler="hmc")
    with pytest.raises(LLCError, match="no parameter"):
        estimate_llc(model, loss_fn, data, params=["nope.*"])
    with pytest.raises(LLCError, match="chains"):
        estimate_llc(model, loss_fn, data, chains=0)
    with pytest.raises(LLCError, match="observe_size"):
        estimate_llc(model, loss_fn, data, observe_size=0)


def test_the_observable_never_moves_the_chains_and_its_default_size_keeps_its_cost_in_budget():
    # the observable only reads the loss at each chain's w: any size gives the same draws
    model, loss_fn, data = tiny_transformer_case()               # n = 256
    kw = {**FAST, "observe_every": 5}
    given = estimate_llc(model, loss_fn, data, observe_size=200, **kw)
    auto = estimate_llc(model, loss_fn, data, **kw)
    assert given.llc_per_chain == auto.llc_per_chain and given.loss_traces == auto.loss_traces
    assert given.diagnostics["observe_size"] == 200
    # batch 32, every 5 steps: a forward pass on 240 examples costs half of 5 steps' forward+backward on 32
    assert auto.diagnostics["observe_size"] == observe_size_for(32, 5) == 240
    assert observe_size_for(32, 1) == OBSERVE_SIZE_MIN                 # never below the floor
    assert observe_size_for(4096, 5) == OBSERVE_SIZE_MAX               # the exact-answer models' 1,024
    big = estimate_llc(model, loss_fn, data, **{**kw, "batch_size": 128})
    assert big.diagnostics["observe_size"] == len(data)                # at most the data


def test_rmsprop_sampler_runs_and_records_settings():
    model, loss_fn, data = tiny_transformer_case()
    r = estimate_llc(model, loss_fn, data, **{**FAST, "sampler": "rmsprop_sgld", "epsilon": 1e-5})
    assert r.valid and r.hyperparameters["sampler"] == "rmsprop_sgld"
    assert r.hyperparameters["rmsprop_eps"] == 0.1


def test_mala_acceptance_near_one_for_small_steps():
    model, loss_fn, data, _ = exact.make_regular(3, 1000)
    r = estimate_llc(model, loss_fn, data, epsilon=1e-5, gamma=1.0, chains=2, draws=20, burn_in=20,
                     batch_size=1000, mala=True)
    assert 0.9 < r.diagnostics["mala_acceptance_mean"] <= 1.0


def test_diagnostics_on_synthetic_traces():
    rng = np.random.default_rng(0)
    good = rng.normal(size=(4, 500))
    assert dg.split_rhat(good) < 1.05 and dg.ess(good) > 1000
    bad = good + np.arange(4)[:, None] * 3.0             # chains at different levels
    assert dg.split_rhat(bad) > 1.1
    ar = np.zeros((4, 2000))
    for t in range(1, 2000):                              # strongly autocorrelated
        ar[:, t] = 0.95 * ar[:, t - 1] + rng.normal(size=4)
    assert dg.ess(ar) < 0.1 * ar.size
    trend = good + np.linspace(0, 5, 500)
    d, se = dg.drift(trend, 0.0, 1.0)
    assert dg.drift_flag(d, se, llc=1.0) and not dg.drift_flag(*dg.drift(good, 0.0, 1.0), llc=1.0)


@pytest.mark.parametrize("per_chain_batches", [True, False])
def test_long_chains_stream_their_batches_with_the_same_numbers(monkeypatch, per_chain_batches):
    # the step indices of a long run are no longer all precomputed (160,000 steps × 4 chains ×
    # batch 1,024 were 5 GB, and a 4,096 batch was killed for memory): above the budget they are
    # streamed, and the sampler must see exactly the same minibatches
    from llc_watch.llc import data as llc_data
    model, loss_fn, data = tiny_transformer_case()
    kw = dict(FAST, per_chain_batches=per_chain_batches, draws=60)   # 70 steps: several epochs of 256
    kept = estimate_llc(model, loss_fn, data, **kw)
    monkeypatch.setattr(llc_data, "INDEX_BUDGET_BYTES", 1)
    built = []
    real = llc_data.DeviceBatches.__init__
    monkeypatch.setattr(llc_data.DeviceBatches, "__init__", lambda self, *a, **k: built.append(1) or real(self, *a, **k))
    streamed = estimate_llc(model, loss_fn, data, **kw)
    assert not built                                   # nothing precomputed
    assert streamed.loss_traces == kept.loss_traces and streamed.llc_mean == kept.llc_mean


def test_a_minibatch_stream_keeps_one_epoch_and_replays_an_earlier_one():
    from llc_watch.llc.data import MinibatchStream
    s, ref = MinibatchStream(100, 32, seed=3), MinibatchStream(100, 32, seed=3)
    ahead = [ref.indices(t).clone() for t in range(40)]          # 13 epochs of 3 batches
    got = [s.indices(t).clone() for t in range(40)]
    assert all(bool((a == b).all()) for a, b in zip(ahead, got)) and s.epoch == 13
    assert s.perm.numel() == 100                                 # one permutation held, not 14
    assert bool((s.indices(4) == ahead[4]).all())                # an earlier epoch: replayed exactly


def test_step_indices_built_in_chunks_as_int32_give_the_same_minibatches(monkeypatch):
    # the device's step indices are built a chunk of steps at a time (the host never holds them all)
    # and kept as int32: every step's minibatch must be the stream's own, across chunk edges
    from llc_watch.llc import data as llc_data
    monkeypatch.setattr(llc_data, "INDEX_CHUNK_STEPS", 3)
    src = llc_data.DataSource((torch.arange(50.0), torch.arange(50) * 2))
    stream = llc_data.ChainMinibatchStreams(50, 8, seed=1, chains=3)
    db = llc_data.DeviceBatches(src, stream, steps=20, device="cpu")
    assert db.index.dtype == torch.int32 and tuple(db.index.shape) == (20, 3, 8)
    for t in range(20):
        x, y = db(t)
        assert torch.equal(x, src.batch(stream.indices(t))[0]) and torch.equal(y, 2 * x.long())
        assert torch.equal(db.at(torch.tensor([t]))[0], x)


def test_results_print_as_their_summary_not_every_trace():
    # the dataclass reprs printed every loss trace (an LLCResult of 2 chains × 60 steps: 10,000
    # characters) and a Calibration its whole sweep, evidence and rule
    import pandas as pd
    from llc_watch.llc.calibration import Calibration
    model, loss_fn, data, _ = exact.make_regular(3, 500)
    r = estimate_llc(model, loss_fn, data, **{**FAST, "draws": 200})
    text = repr(r)
    assert text.startswith("<LLCResult LLC ") and f"{r.llc_mean:.4g}" in text and "3 chains × 200 draws" in text
    assert len(text) < 600 and str(r.loss_traces[0][5]) not in text
    cal = Calibration({"epsilon": 1e-4, "gamma": 1.0}, pd.DataFrame({"llc": range(40)}), {"rule": "x" * 5000},
                      ["NO PLATEAU: ..."], "extrapolated", 1.5, 0.1)
    assert repr(cal) == ("<Calibration extrapolated: ε=0.0001 γ=1; λ̂ ≈ 1.5 ± 0.1; 1 warning(s); .choice, "
                         ".sweep (40 runs), .evidence, .warnings>")
