"""Matmul precision options: offered only because the LLC agrees with fp32 within chain noise here.

Rule, fixed before running (not widened until green): on an exact-answer model, with the same
seed (same noise, same batches), |λ̂_bf16 − λ̂_fp32| <= 1 standard error of the fp32 chains: the
precision's shift must sit inside the chain noise, so it cannot move a result by a detectable
amount. Each estimate must also pass the exact-answer rule of tests/test_llc_exact.py
(|λ̂ − λ| <= 4·stderr + allowance). TF32 exists only on CUDA: on a CPU the option is accepted and
must give fp32's numbers exactly. bf16 autocast runs on the CPU, so it is tested here.
"""
import math

import numpy as np
import pytest
import torch

from llc_watch.analyses.llc import LLCSettings
from llc_watch.llc import LLCError, estimate_llc, exact
from llc_watch.llc.batched import estimate_llc_many
from llc_watch.llc.sampler import PRECISIONS, matmul_precision
from llc_watch.settings import SettingsError

torch.set_num_threads(1)
K, STEP_BIAS = 4.0, 0.05


def estimates(model, loss_fn, data, precisions, **kw):
    return {p: estimate_llc(model, loss_fn, data, precision=p, **kw) for p in precisions}


def check_exact(r, lam, allowance):
    assert r.valid, r.warnings
    assert abs(r.llc_mean - lam) <= K * r.llc_stderr + allowance, (r.llc_mean, r.llc_stderr, lam)


def check_agrees(low, ref):
    shift = abs(low.llc_mean - ref.llc_mean)
    assert shift <= ref.llc_stderr, f"λ̂ {low.llc_mean:.4g} vs fp32 {ref.llc_mean:.4g}: shift {shift:.3g} > stderr {ref.llc_stderr:.3g}"
    # the low precision really ran: its traces are not fp32's (else this test could not fail)
    assert not np.array_equal(low.loss_traces, ref.loss_traces)


def test_regular_model_bf16_agrees_and_tf32_is_fp32_on_cpu():
    n = 2000
    model, loss_fn, data, lam = exact.make_regular(4, n, seed=0)
    nbeta, gamma = n / math.log(n), 1.0
    a = torch.linalg.eigvalsh(nbeta * (data[0].T @ data[0]) / n)
    expected = float(0.5 * (a / (a + gamma)).sum())            # exact at this n, γ
    rs = estimates(model, loss_fn, data, PRECISIONS, epsilon=2e-4, gamma=gamma, chains=8, draws=500,
                   burn_in=200, batch_size=500, seed=0)
    for r in rs.values():
        check_exact(r, lam, abs(expected - lam) + STEP_BIAS * lam)
    check_agrees(rs["bf16"], rs["fp32"])
    # TF32 is a CUDA matmul mode: on a CPU the option is accepted and changes nothing
    assert rs["tf32"].hyperparameters["precision"] == "tf32"
    assert rs["tf32"].loss_traces == rs["fp32"].loss_traces
    assert rs["tf32"].llc_per_chain == rs["fp32"].llc_per_chain


def test_deep_linear_network_bf16_agrees():
    model, loss_fn, data, lam = exact.make_dln([5, 4, 3, 5], 1, 20000)       # λ = 7.5
    rs = estimates(model, loss_fn, data, ("fp32", "bf16"), epsilon=1e-4, gamma=1.0, chains=4, draws=400,
                   burn_in=200, batch_size=500, seed=0)
    for r in rs.values():
        check_exact(r, lam, 0.2 * lam)    # no finite-n closed form: test_llc_exact.py's 20 % allowance
    check_agrees(rs["bf16"], rs["fp32"])


def test_stacked_checkpoints_keep_the_precision():
    from tests.test_llc_batched import checkpoints
    models, loss_fn, data = checkpoints(2)
    kw = dict(epsilon=1e-4, gamma=100.0, chains=3, draws=20, burn_in=8, batch_size=32, seed=0, precision="bf16")
    for m, r in zip(models, estimate_llc_many(models, loss_fn, data, **kw)):
        one = estimate_llc(m, loss_fn, data, **kw)
        assert r.timing["batched_stacked"] and r.hyperparameters["precision"] == "bf16"
        # bf16 rounds each matmul's output: the larger stacked matmuls may round a few values the
        # other way, so the per-chain LLCs agree to a small fraction of a standard error
        np.testing.assert_allclose(r.llc_per_chain, one.llc_per_chain, atol=0.05 * one.llc_stderr)


def test_unknown_precision_is_named():
    model, loss_fn, data, _ = exact.make_regular(2, 64, seed=0)
    with pytest.raises(LLCError, match="precision='fp16'"):
        estimate_llc(model, loss_fn, data, precision="fp16", draws=2, burn_in=0)
    with pytest.raises(SettingsError, match="precision"):
        LLCSettings(precision="fp16")
    with pytest.raises(SettingsError, match="precision"):
        LLCSettings(precision="bf16", backend="devinterp")
    assert LLCSettings().precision == "fp32"


def test_precision_context_restores_state():
    a = torch.randn(4, 4)
    with matmul_precision("bf16", "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    assert (a @ a).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
