"""The estimator against exact learning coefficients (see llc_watch/llc/exact.py).

Tolerance rule, fixed before running (not widened until green):

    |λ̂ − λ| <= K·stderr + allowance,   K = 4

stderr is the chains' own spread (std of per-chain LLCs / √chains). The allowance is the documented
finite-n (and finite-step-size) bias, per model:
  - regular: the exact finite-n expectation is ½·Σ_i a_i/(a_i + γ) with a_i the eigenvalues of
    nβ·Σ̂ (Gaussian posterior); allowance = |that − d/2| + 5 % of λ for step-size/minibatch bias;
  - normal crossing: the exact finite-n expectation by quadrature
    (exact.normal_crossing_expected_llc); allowance = |that − λ| + 5 % of λ; a second check asks the
    sampler to hit the quadrature value itself within K·stderr + 5 %;
  - reduced-rank regression: no finite-n closed form; allowance = 20 % of λ, the order of the exact
    finite-n gap computed for normal crossing at the same n (16 %, rounded up).
Data: n = 2000, nβ = n/log n, 8 chains, fixed seeds.
"""
import math

import pytest
import torch

from llc_watch.llc import estimate_llc
from llc_watch.llc import exact

torch.set_num_threads(1)
K, STEP_BIAS = 4.0, 0.05
N = 2000
NBETA = N / math.log(N)


def check(r, lam, allowance):
    assert r.valid, r.warnings
    tol = K * r.llc_stderr + allowance
    assert abs(r.llc_mean - lam) <= tol, f"λ̂={r.llc_mean:.4g} ± {r.llc_stderr:.2g}, λ={lam}, tol={tol:.3g}"


# --- exact formulas ---------------------------------------------------------------------------

def test_reference_examples():
    assert exact.rrr(4, 3, 5, 0) == 5.5 and exact.rrr(6, 2, 3, 0) == 3.0
    assert exact.regular(6) == 3.0
    assert exact.normal_crossing([1, 3, 2]) == 1 / 6
    assert exact.normal_crossing_multiplicity([2, 2, 1]) == 2


def test_dln_agrees_with_rrr_for_two_layers_on_every_small_shape():
    for M in range(1, 8):
        for H in range(1, 8):
            for N_ in range(1, 8):
                for r in range(min(M, H, N_) + 1):
                    assert exact.dln([M, H, N_], r) == pytest.approx(exact.rrr(M, H, N_, r), abs=1e-12), (M, H, N_, r)


def test_normal_crossing_quadrature_tends_to_lambda():
    gaps = [abs(exact.normal_crossing_expected_llc([1, 2], n / math.log(n), 1.0) - 0.25)
            for n in (1e3, 1e4, 1e6)]
    assert gaps[0] > gaps[1] > gaps[2]


# --- the estimator ----------------------------------------------------------------------------

def test_regular_model_gives_d_over_2():
    model, loss_fn, data, lam = exact.make_regular(4, N, seed=0)
    gamma = 1.0
    x = data[0]
    a = torch.linalg.eigvalsh(NBETA * (x.T @ x) / N)
    expected = float(0.5 * (a / (a + gamma)).sum())           # exact at this n, γ
    r = estimate_llc(model, loss_fn, data, epsilon=2e-4, gamma=gamma, chains=8, draws=1000,
                     burn_in=200, batch_size=500, seed=0)
    check(r, lam, abs(expected - lam) + STEP_BIAS * lam)


def test_normal_crossing_unique_max():
    ks = [1, 2]
    model, loss_fn, data, lam = exact.make_normal_crossing(ks, N, seed=0)
    x, y = data
    quad = exact.normal_crossing_expected_llc(ks, NBETA, 1.0, float((x * x).mean()), float((x * y).mean()))
    r = estimate_llc(model, loss_fn, data, epsilon=1e-3, gamma=1.0, chains=8, draws=3000,
                     burn_in=1000, batch_size=500, seed=0)
    check(r, quad, STEP_BIAS * lam)                           # the sampler is exact at finite n
    check(r, lam, abs(quad - lam) + STEP_BIAS * lam)          # and near λ, by the finite-n gap


@pytest.mark.parametrize("shape,epsilon", [((4, 3, 5, 0), 1e-3), ((3, 2, 3, 1), 2e-4)])
def test_reduced_rank_regression(shape, epsilon):
    model, loss_fn, data, lam = exact.make_rrr(*shape, N, seed=0)
    r = estimate_llc(model, loss_fn, data, epsilon=epsilon, gamma=1.0, chains=8, draws=2000,
                     burn_in=1000, batch_size=500, seed=0)
    check(r, lam, 0.2 * lam)


def test_deep_linear_network_at_a_generic_point_gives_its_lambda():
    # every layer of full rank: the true parameters near w* form a smooth manifold and the model is
    # regular in the product (16 entries), so λ(w*) = dln([4]*4, 4) = 8 exactly, with 32 flat
    # directions beside the stiff ones; allowance: the regular model's (step size and minibatch)
    model, loss_fn, data, lam = exact.make_dln([4, 4, 4, 4], 4, N, seed=0, point="generic")
    assert lam == 8.0 and sum(p.numel() for p in model.parameters()) == 48
    r = estimate_llc(model, loss_fn, data, epsilon=1e-4, gamma=1.0, chains=8, draws=1000,
                     burn_in=500, batch_size=1000, seed=0)
    check(r, lam, STEP_BIAS * lam)


def test_a_generic_point_below_full_rank_is_refused():
    # there λ(w*) depends on the point and has no closed form: one clear error naming the fix
    with pytest.raises(ValueError, match="point='minimal'"):
        exact.make_dln([4, 4, 4, 4], 2, N, point="generic")


@pytest.mark.slow
@pytest.mark.parametrize("ks", [[1, 3], [2, 3]])
def test_normal_crossing_more(ks):
    model, loss_fn, data, lam = exact.make_normal_crossing(ks, N, seed=1)
    x, y = data
    quad = exact.normal_crossing_expected_llc(ks, NBETA, 1.0, float((x * x).mean()), float((x * y).mean()))
    r = estimate_llc(model, loss_fn, data, epsilon=1e-3, gamma=1.0, chains=8, draws=6000,
                     burn_in=2000, batch_size=500, seed=1)
    check(r, quad, STEP_BIAS * lam)


@pytest.mark.slow
@pytest.mark.parametrize("shape,epsilon", [((6, 2, 3, 0), 1e-3), ((5, 2, 4, 1), 2e-4), ((4, 4, 4, 2), 2e-4)])
def test_reduced_rank_regression_more(shape, epsilon):
    model, loss_fn, data, lam = exact.make_rrr(*shape, N, seed=1)
    r = estimate_llc(model, loss_fn, data, epsilon=epsilon, gamma=1.0, chains=8, draws=4000,
                     burn_in=2000, batch_size=500, seed=1)
    check(r, lam, 0.2 * lam)
