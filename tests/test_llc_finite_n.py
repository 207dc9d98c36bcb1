"""Finite-n targets by exact HMC (llc_watch.llc.finite_n) against answers known in closed form or
by quadrature. Tolerances: 4 of the run's own Monte Carlo standard errors (sd / √bulk ESS)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from llc_watch.llc import exact
from llc_watch.llc.finite_n import _Potential, linear_expected_llc


def test_gradient_matches_autograd():
    """∇U of the product-chain potential against torch's, at a random point of a 3-layer network."""
    model, _, (x, _), _ = exact.make_dln([4, 3, 2, 5], 1, n=300)
    w_star = [m.weight.detach().double().numpy() for m in model]
    S = (x.double().T @ x.double() / len(x)).numpy()
    pot = _Potential(w_star, S, nbeta=50.0, gamma=0.7)
    rng = np.random.default_rng(0)
    ws = [w[None] + rng.standard_normal((2,) + w.shape) for w in w_star]      # 2 chains
    U, excess, grads = pot(ws)
    for c in range(2):
        wt = [torch.tensor(W[c], requires_grad=True) for W in ws]
        P = wt[0]
        for W in wt[1:]:
            P = W @ P
        Pstar = torch.tensor(pot.P_star)
        D = P - Pstar
        ex = 50.0 * 0.5 * torch.trace(D @ torch.tensor(S) @ D.T)
        u = ex + 0.35 * sum(((W - torch.tensor(W0)) ** 2).sum() for W, W0 in zip(wt, w_star))
        u.backward()
        assert U[c] == pytest.approx(float(u.detach()), rel=1e-10)
        assert excess[c] == pytest.approx(float(ex.detach()), rel=1e-10)
        for g, W in zip(grads, wt):
            np.testing.assert_allclose(g[c], W.grad.numpy(), rtol=1e-9, atol=1e-9)


def test_regular_model_matches_gaussian_closed_form():
    """One linear layer: the localised posterior is Gaussian, and E[nβ·ΔL] = ½ Σ_i nβ s_i / (nβ s_i + γ)
    over the eigenvalues s_i of S, once per output (exact at any n)."""
    torch.manual_seed(0)
    n, nb, gamma = 500, 40.0, 2.0
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    x = torch.randn(n, 3) * torch.tensor([1.0, 0.3, 0.05])      # spread eigenvalues: γ matters for some
    s = np.linalg.eigvalsh((x.double().T @ x.double() / n).numpy())
    want = 2 * 0.5 * float(np.sum(nb * s / (nb * s + gamma)))
    t = linear_expected_llc(model, x, nb, gamma, chains=4, iters=600, seed=1)
    assert t.trusted, t
    assert abs(t.value - want) < 4 * t.stderr, (t.value, want, t.stderr)


@pytest.mark.parametrize("gamma", [1.0, 10.0])
def test_singular_two_weight_network_matches_quadrature(gamma):
    """f = x·b·a with a true product 0 (w* = 0): the potential nβ·½·s·(ab)² + (γ/2)(a² + b²) is normal
    crossing with k = (1, 1), whose finite-n expectation the quadrature gives (λ = 1/2 as n → ∞)."""
    model, _, (x, _), lam = exact.make_dln([1, 1, 1], 0, n=4000)
    assert lam == 0.5 and all(float(m.weight.detach().abs().max()) == 0 for m in model)
    nb = 4000 / math.log(4000)
    quad = exact.normal_crossing_expected_llc([1, 1], nb, gamma, a=float((x * x).mean()))
    t = linear_expected_llc(model, x, nb, gamma, chains=4, iters=1500, seed=0)
    assert t.rhat <= 1.01
    assert abs(t.value - quad) < 4 * t.stderr, (t.value, quad, t.stderr)
    assert abs(quad - lam) > 4 * t.stderr     # the check can tell the finite-n target from λ


def test_bad_inputs_say_what_to_do():
    with pytest.raises(ValueError, match="without biases"):
        linear_expected_llc(nn.Sequential(nn.Linear(2, 2)), torch.randn(10, 2), 5.0, 1.0)
    with pytest.raises(ValueError, match="expected \\[n, 2\\]"):
        linear_expected_llc(nn.Linear(2, 1, bias=False), torch.randn(10, 3), 5.0, 1.0)
    with pytest.raises(ValueError, match="positive and finite"):
        linear_expected_llc(nn.Linear(2, 1, bias=False), torch.randn(10, 2), 5.0, 0.0)
    with pytest.raises(ValueError, match="at least 2 chains"):
        linear_expected_llc(nn.Linear(2, 1, bias=False), torch.randn(10, 2), 5.0, 1.0, chains=1)
