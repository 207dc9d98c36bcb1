"""Weight-restricted LLC (Wang et al. 2024, arXiv 2410.02984): sample a subset, hold the rest at w*.

Tolerance rule as in test_llc_exact.py: K·stderr + |exact finite-n value − λ| + 5 % of λ.
"""
import math

import pytest
import torch
from torch import nn

from llc_watch.llc import LLCError, estimate_llc, select_params
from llc_watch.llc.sampler import FlatParams, SGLDSettings, make_flat_loss, run_chains
from llc_watch.model import ModelConfig, Transformer
from llc_watch.tasks import get_task

torch.set_num_threads(1)
K, STEP_BIAS, N = 4.0, 0.05, 2000
NBETA = N / math.log(N)


class TwoPart(nn.Module):
    """f(x) = a·x[:, :3] + b·x[:, 3:]: two regular sub-models of 3 and 2 weights."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 1, bias=False), nn.Linear(2, 1, bias=False)

    def forward(self, x):
        return self.a(x[:, :3]) + self.b(x[:, 3:])


def two_part_case():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 5, generator=g)
    y = x @ torch.randn(5, 1, generator=g) + torch.randn(N, 1, generator=g)
    w = torch.linalg.lstsq(x, y).solution.T                       # least squares: w* = argmin L_n
    model = TwoPart()
    with torch.no_grad():
        model.a.weight.copy_(w[:, :3])
        model.b.weight.copy_(w[:, 3:])
    loss = lambda m, b: 0.5 * ((m(b[0]) - b[1]) ** 2).mean()
    return model, loss, (x, y)


def expected_regular(x, cols, gamma):
    """Exact finite-n E[nβ(L − L*)] of the Gaussian posterior over the weights in `cols`."""
    xs = x[:, cols]
    a = torch.linalg.eigvalsh(NBETA * xs.T @ xs / len(x))
    return float(0.5 * (a / (a + gamma)).sum())


@pytest.mark.parametrize("params,cols", [("a.*", [0, 1, 2]), (["b.weight"], [3, 4]),
                                         ({"a.weight": torch.tensor([[True, False, True]])}, [0, 2])])
def test_restricted_llc_is_the_sub_models(params, cols):
    model, loss, data = two_part_case()
    lam = len(cols) / 2
    expected = expected_regular(data[0], cols, 1.0)
    r = estimate_llc(model, loss, data, epsilon=2e-4, gamma=1.0, chains=8, draws=800, burn_in=200,
                     batch_size=500, seed=0, params=params)
    assert r.valid and r.hyperparameters["n_params_sampled"] == len(cols)
    tol = K * r.llc_stderr + abs(expected - lam) + STEP_BIAS * lam
    assert abs(r.llc_mean - lam) <= tol, (r.llc_mean, r.llc_stderr, lam)


def test_predicate_selection_and_head_mask_keeps_the_rest_at_w_star():
    task = get_task("addition", n_bits=3)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, vocab_size=5, n_ctx=task.seq_len))
    assert set(select_params(model, lambda n: n.startswith("blocks.0.attn"))) == {
        "blocks.0.attn.W_QKV.weight", "blocks.0.attn.W_QKV.bias", "blocks.0.attn.W_O.weight", "blocks.0.attn.W_O.bias"}
    # head 0's slices of the fused QKV projection: rows [q | k | v] x heads x d_head
    d_head, D = 8, 16
    rows = torch.zeros(3 * D, dtype=torch.bool)
    for part in range(3):
        rows[part * D: part * D + d_head] = True
    mask = rows[:, None].expand(3 * D, D).clone()
    sel = select_params(model, {"blocks.0.attn.W_QKV.weight": mask})
    flat = FlatParams(model, sel)
    assert flat.n_sampled == int(mask.sum())
    data = task.sample(64, seed=0)
    loss_of = make_flat_loss(model, lambda m, b: task.loss(m(b.tokens), b), flat)
    run = run_chains(loss_of, flat, SGLDSettings(1e-3, 50.0, 10.0), chains=2, steps=5,
                     get_batch=lambda t: data, seed=0)
    moved = (run.final_w != flat.w_star).any(0)
    assert moved[flat.mask.bool()].float().mean() > 0.99 and not moved[~flat.mask.bool()].any()


def test_bad_mask_shape_is_named():
    model, loss, data = two_part_case()
    with pytest.raises(LLCError, match="mask shape"):
        select_params(model, {"a.weight": torch.ones(2, 2, dtype=torch.bool)})


def test_head_restriction_from_settings():
    from llc_watch.analyses.llc import resolve_params
    task = get_task("addition", n_bits=3)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, vocab_size=5, n_ctx=task.seq_len))
    sel = resolve_params(model, ["head:1.0", "blocks.0.mlp.*"])
    flat = FlatParams(model, sel)
    mlp = sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks.0.mlp."))
    assert flat.n_sampled == 3 * 8 * 16 + 3 * 8 + 16 * 8 + mlp
    r = estimate_llc(model, lambda m, b: task.loss(m(b.tokens), b), task.sample(128, seed=0),
                     params=sel, epsilon=1e-4, gamma=100.0, chains=2, draws=5, burn_in=0)
    assert r.hyperparameters["n_params_sampled"] == flat.n_sampled
    assert "blocks.1.attn.W_QKV.weight[mask]" in r.hyperparameters["params"]
    with pytest.raises(ValueError, match="head:5.0 does not exist"):
        resolve_params(model, "head:5.0")
