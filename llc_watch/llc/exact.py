"""Exact learning coefficients (real log canonical thresholds) of models with known answers.

Sources: regular models; normal crossing;
reduced-rank regression (Aoyagi & Watanabe 2005); deep linear networks (Aoyagi 2024).

    >>> regular(4)
    2.0
    >>> normal_crossing([1, 2])          # f = x·w1·w2², λ = 1/(2·max k)
    0.25
    >>> rrr(4, 3, 5, 0), rrr(6, 2, 3, 0)
    (5.5, 3.0)
    >>> dln([4, 3, 5], 0)                # the same network as a 2-layer deep linear network
    5.5
"""
from __future__ import annotations

import math
from fractions import Fraction
from itertools import combinations

import torch
from torch import nn


def regular(d: int) -> float:
    """Regular model with d parameters: λ = d/2."""
    return d / 2


def normal_crossing(ks) -> float:
    """f(x; w) = x·∏ w_i^{k_i} at w = 0: λ = 1/(2·max k_i)."""
    ks = list(ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks={ks}: need at least one exponent, each >= 1")
    return 1 / (2 * max(ks))


def normal_crossing_multiplicity(ks) -> int:
    """How many exponents reach the maximum (above 1: finite-n estimates are biased downwards)."""
    ks = list(ks)
    return ks.count(max(ks))


def rrr(M: int, H: int, N: int, r: int) -> float:
    """Reduced-rank regression y = B·A·x, A: H×M, B: N×H, true product of rank r."""
    if not 0 <= r <= min(M, H, N):
        raise ValueError(f"rank r={r} must be in [0, min(M, H, N)={min(M, H, N)}]")
    if M + H < N + r:
        return (H * M - H * r + N * r) / 2
    if N + H < M + r:
        return (H * N - H * r + M * r) / 2
    if M + N < H + r:
        return M * N / 2
    delta = 1 if (M + H + N + r) % 2 else 0
    return (2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2 + delta) / 8


def _dln_set(Ms: list[int]) -> tuple[list[int], int]:
    """The index set S (|S| = ℓ + 1) of Aoyagi's theorem, and ℓ."""
    order = sorted(range(len(Ms)), key=lambda i: Ms[i])
    for size in range(2, len(Ms) + 1):           # ℓ = size − 1 >= 1
        S, rest = order[:size], order[size:]
        ell = size - 1
        mx = max(Ms[i] for i in S)
        mn_rest = min((Ms[j] for j in rest), default=math.inf)
        total = sum(Ms[i] for i in S)
        if mx < mn_rest and total >= ell * mx and total < ell * mn_rest:
            return S, ell
    raise ValueError(f"no index set satisfies Aoyagi's conditions for M_i = {Ms}")


def dln(widths, r: int) -> float:
    """Deep linear network with widths H_0 (input), …, H_L (output), true map of rank r."""
    H = list(widths)
    if len(H) < 2:
        raise ValueError("widths needs at least an input and an output width")
    if not 0 <= r <= min(H):
        raise ValueError(f"rank r={r} must be in [0, min(widths)={min(H)}]")
    Ms = [h - r for h in H]
    S, ell = _dln_set(Ms)
    total = sum(Ms[i] for i in S)
    m_bar = -(-total // ell)                      # ceil(Σ/ℓ)
    a = total - (m_bar - 1) * ell
    lam = (Fraction(-r * r + r * (H[0] + H[-1]), 2) + Fraction(a * (ell - a), 4 * ell)
           - Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
           + Fraction(sum(Ms[i] * Ms[j] for i, j in combinations(S, 2)), 2))
    return float(lam)


# --- models with these answers, for testing an estimator ---------------------------------------
# Each returns (model, loss_fn, data, λ). Noise is N(0, 1) and the loss is the Gaussian negative
# log-likelihood up to a constant, ½·mean‖y − f(x)‖², so L_n is on the scale the theory assumes.

def _half_mse(model, batch):
    x, y = batch
    return 0.5 * (model(x) - y).pow(2).sum(-1).mean()


class _NormalCrossing(nn.Module):
    def __init__(self, ks):
        super().__init__()
        self.ks = list(ks)
        self.w = nn.Parameter(torch.zeros(len(self.ks)))       # true parameter w = 0

    def forward(self, x):                                       # x: [B, 1] -> [B, 1]
        k = torch.tensor(self.ks, dtype=self.w.dtype, device=self.w.device)
        return x * torch.prod(self.w ** k)


def make_regular(d: int, n: int, seed: int = 0):
    """Linear regression with d coefficients at its least-squares solution: λ = d/2."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, 1, generator=g) + torch.randn(n, 1, generator=g)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)   # w* = argmin L_n
    return model, _half_mse, (x, y), regular(d)


def make_normal_crossing(ks, n: int, seed: int = 0):
    """y = x·∏ w_i^{k_i} + noise with true w = 0: λ = 1/(2·max k)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g)
    y = torch.randn(n, 1, generator=g)                          # the truth is f = 0
    y = y - x * (x * y).sum() / (x * x).sum()   # why: mean(x·y) = 0, so w* = 0 minimises L_n exactly
    return _NormalCrossing(ks), _half_mse, (x, y), normal_crossing(ks)


def noise_orthogonal_to(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """`noise` with its least-squares fit on x removed: y = P·x + that noise has P as its exact
    least-squares map, so a linear model (of any depth or rank) sitting at P minimises L_n exactly.

    Why: λ̂ = nβ·(E L_n(w) − L_n(w*)) takes w* as given. With w* the truth and plain noise, L_n is
    lowest not at w* but where the model fits some noise, the posterior leans there, and λ̂ reads
    low by about λ/log n at finite n (reduced rank 4-3-5 r = 0 and 3-2-3 r = 1 at n = 2,000, same
    seed and sampler: 5.90 → 6.48 and 3.25 → 3.75); make_regular (w* = argmin) and
    make_normal_crossing (mean(x·y) = 0) already sit at the minimum.

        >>> x, e = torch.randn(50, 3), torch.randn(50, 2)
        >>> bool((x.T @ noise_orthogonal_to(x, e)).abs().max() < 1e-4)
        True
    """
    return noise - x @ torch.linalg.lstsq(x, noise).solution


def make_rrr(M: int, H: int, N: int, r: int, n: int, seed: int = 0):
    """y = B·A·x + noise; the model sits at a true (B, A) whose product has rank r, which minimises
    L_n exactly (the noise is orthogonal to x: `noise_orthogonal_to`)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(M, H, bias=False), nn.Linear(H, N, bias=False))
    with torch.no_grad():
        A = torch.zeros(H, M)
        B = torch.zeros(N, H)
        A[:r] = torch.randn(r, M, generator=g)
        B[:, :r] = torch.randn(N, r, generator=g)
        model[0].weight.copy_(A)
        model[1].weight.copy_(B)
    x = torch.randn(n, M, generator=g)
    y = x @ (B @ A).T + noise_orthogonal_to(x, torch.randn(n, N, generator=g))
    return model, _half_mse, (x, y), rrr(M, H, N, r)


DLN_POINTS = ("minimal", "generic")


def _orthonormal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    """A random matrix with orthonormal columns (rows >= cols), uniformly oriented."""
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=g))
    return q * torch.sign(torch.diagonal(r))


def make_dln(widths, r: int, n: int, seed: int = 0, point: str = "minimal"):
    """Deep linear network x -> W_L ⋯ W_1 x (no biases), widths H_0 (input), …, H_L (output),
    sitting at a true parameter w* whose product has rank r; y = product·x + N(0, I) noise made
    orthogonal to x (`noise_orthogonal_to`), so w* minimises L_n exactly. Returns λ(w*), the
    local learning coefficient at that w*: dln(widths, r) (Aoyagi 2024).

    Which w*, and why it matters: λ = dln(widths, r) is the *global* learning coefficient, the
    smallest local one over the true parameters. The local one depends on the point: where every
    layer but one is invertible (square widths), the product moves freely around w*, the model is
    regular in it, and λ(w*) = H_0·H_L/2 whatever the rank (widths 20 × 6 at rank 3: 200 at such a
    point, against λ = 142.5 at the most singular one). So:

      "minimal" (default, any r): layer 1 maps x onto r random directions, the middle layers carry
        those r coordinates through a random r×r block each, the last spreads them over the
        outputs; every other weight is 0. The most singular true parameter, where λ(w*) is the
        global λ. Its zero extra units make quartic directions (products of zero weights) whose
        posterior reaches far along their arms, which SGLD crosses slowly.
      "generic" (r = min(widths) only): every layer a randomly oriented matrix of full rank with
        singular values in [0.75, 1.25]. The true parameters near w* form a smooth manifold (the
        product is a submersion onto the matrices of rank min(widths)), so λ(w*) = λ =
        dln(widths, min(widths)) = b(H_0 + H_L − b)/2 with b = min(widths): a known answer at any
        size, with the network's flat directions (rescalings between layers) but no quartic ones.
        A lower rank at a generic point has no closed-form λ(w*), hence the restriction.

        >>> model, loss_fn, (x, y), lam = make_dln([5, 4, 3, 5], 1, n=100)
        >>> sum(p.numel() for p in model.parameters()), lam, tuple(y.shape)
        (47, 7.5, (100, 5))
        >>> rank = lambda m: int(torch.linalg.matrix_rank((m[2].weight @ m[1].weight @ m[0].weight).detach()))
        >>> model_g, _, _, lam_g = make_dln([5, 4, 3, 5], 3, n=100, point="generic")
        >>> rank(model), rank(model_g), lam_g                    # the true map's rank r; λ(w*)
        (1, 3, 10.5)
    """
    H = list(widths)
    if point not in DLN_POINTS:
        raise ValueError(f"point={point!r}: choose one of {DLN_POINTS}")
    if point == "generic" and r != min(H):
        raise ValueError(f"point='generic' needs r = min(widths) = {min(H)} (got r={r}): at a generic "
                         "point of a lower-rank map the local learning coefficient depends on the point "
                         "and has no closed form; use point='minimal' for Aoyagi's λ at that rank")
    lam = dln(H, r)                                            # validates widths and r
    g = torch.Generator().manual_seed(seed)
    layers = [nn.Linear(H[i], H[i + 1], bias=False) for i in range(len(H) - 1)]
    with torch.no_grad():
        for i, lin in enumerate(layers):
            W = torch.zeros(H[i + 1], H[i])
            if point == "generic":
                k = min(H[i], H[i + 1])
                s = 0.75 + 0.5 * torch.rand(k, generator=g)
                W = (_orthonormal(H[i + 1], k, g) * s) @ _orthonormal(H[i], k, g).T
            elif r:
                if i == 0:
                    W[:r] = torch.randn(r, H[0], generator=g) / math.sqrt(H[0])
                elif i == len(layers) - 1:
                    W[:, :r] = torch.randn(H[-1], r, generator=g) / math.sqrt(r)
                else:
                    W[:r, :r] = torch.randn(r, r, generator=g) / math.sqrt(r) + torch.eye(r)
            lin.weight.copy_(W)
    model = nn.Sequential(*layers)
    x = torch.randn(n, H[0], generator=g)
    with torch.no_grad():
        y = model(x) + noise_orthogonal_to(x, torch.randn(n, H[-1], generator=g))   # w* minimises L_n
    return model, _half_mse, (x, y), lam


def normal_crossing_expected_llc(ks, nbeta: float, gamma: float, a: float = 1.0, b: float = 0.0,
                                 half_width: float | None = None, points: int = 1201) -> float:
    """E[nβ·(L_n(w) − L_n(0))] under the localised tempered posterior, by quadrature (1–2 weights).

    For f = x·∏ w_i^{k_i}: L_n(w) − L_n(0) = ½·a·p² − b·p with p = ∏ w_i^{k_i}, a = mean x²,
    b = mean x·y. This is what an exact sampler estimates at finite n; it tends to
    normal_crossing(ks) only as nβ → ∞ (slowly, in log nβ), so its gap to λ is the finite-n bias.
    """
    import numpy as np
    ks = list(ks)
    if len(ks) not in (1, 2):
        raise ValueError("quadrature is implemented for 1 or 2 weights")
    hw = half_width or 8.0 / math.sqrt(gamma)
    g = np.linspace(-hw, hw, points)
    grids = np.meshgrid(*([g] * len(ks)), indexing="ij")
    p = np.ones_like(grids[0])
    for w, k in zip(grids, ks):
        p = p * w ** k
    excess = nbeta * (0.5 * a * p ** 2 - b * p)
    logw = -excess - 0.5 * gamma * sum(w ** 2 for w in grids)
    wt = np.exp(logw - logw.max())
    return float((excess * wt).sum() / wt.sum())
