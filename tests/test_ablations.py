"""Ablations: removing a planted direction removes the behaviour it carries; random ones do not."""
from dataclasses import dataclass

import pandas as pd
import pytest
import torch

from llc_watch.analyses.ablations import compute_ablations
from llc_watch.ablations import (SubspaceEdit, ablate_model, bootstrap_interval, evaluate_edit, probe_subspace,
                                 projection_hook, random_directions, random_frames, random_hook)
from llc_watch.model import ModelConfig, Transformer
from llc_watch.tasks import Batch, FeatureSpec, Task


@dataclass
class Echo(Task):
    """Predict the current bit: targets = tokens; feature 'bit' = the token. Tests only."""

    T: int = 4
    name = "echo"

    @property
    def vocab(self):
        return ["0", "1"]

    @property
    def features(self):
        return {"bit": FeatureSpec("binary", "the current token")}

    def sample(self, n, seed):
        tok = torch.randint(0, 2, (n, self.T), generator=torch.Generator().manual_seed(seed))
        return Batch(tok, tok.clone(), torch.ones_like(tok, dtype=torch.bool), {"bit": tok.float()})


def echo_model(d=16, T=4):
    """Attention and MLP zeroed; the bit lives on e_0 (+3 / -3) and the unembedding reads only e_0.
    Other coordinates carry token-independent noise per position so activations are not degenerate."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig(n_layers=1, d_model=d, n_heads=2, d_mlp=8, norm="none", vocab_size=2, n_ctx=T))
    with torch.no_grad():
        for p in m.blocks.parameters():
            p.zero_()
        m.embed.weight.zero_()
        m.embed.weight[:, 0] = torch.tensor([-3.0, 3.0])
        m.embed.weight[:, 1:] = 0.3 * torch.randn(2, d - 1)   # token-dependent clutter, off e_0
        m.pos_embed.zero_()
        m.unembed.weight.zero_()
        m.unembed.bias.zero_()
        m.unembed.weight[1, 0], m.unembed.weight[0, 0] = 1.0, -1.0
    return m.eval()


def test_hooks_move_points_as_defined():
    x = torch.randn(5, 3, 4)
    w = torch.nn.functional.normalize(torch.randn(4), dim=0)
    out = projection_hook(1, w, torch.tensor(0.7))(x)
    assert torch.allclose(out[:, 1] @ w + 0.7, torch.zeros(5), atol=1e-5)   # on the hyperplane
    assert torch.equal(out[:, [0, 2]], x[:, [0, 2]])                         # other positions untouched
    U = random_directions(4, 3, seed=0)
    assert torch.allclose(U.norm(dim=1), torch.ones(3))
    stacked = x.repeat(3, 1, 1)                                              # [R*B, T, d], r-major
    edited = random_hook(2, U, torch.zeros(3))(stacked).view(3, 5, 3, 4)
    for r in range(3):
        assert torch.allclose(edited[r, :, 2] @ U[r], torch.zeros(5), atol=1e-5)


def test_projection_of_planted_direction_removes_behaviour_random_does_not():
    task, model = Echo(), echo_model()
    ev = task.sample(256, seed=1)
    acc, _ = evaluate_edit(model, task, ev)
    assert float(acc[0]) == 1.0
    s = {"n_train": 256, "n_test": 256, "seed": 0, "sites": ["blocks.0.hook_resid_post"], "features": None,
         "C": 100.0, "penalty": "raw", "max_iter": 20, "min_class_count": 5, "device": "cpu",
         "n_random": 32, "random_eval": 128, "chunk": 8192, "controls": ("shift", "cov", "projection")}
    df = pd.DataFrame(ablate_model(model, task, s))
    drop = df[df.measure == "acc_drop"].set_index(["position", "method"]).value
    for pos in range(task.T):
        assert drop[(pos, "projection")] > 0.3, drop      # the bit at this position is gone
        assert drop[(pos, "mean")] > 0.3
        assert drop[(pos, "random")] < 0.05               # random directions leave it
        assert drop[(pos, "random_shift")] < 0.05         # so does the probe's own displacement, elsewhere
        assert drop[(pos, "random_projection")] < 0.05
    # the bit removed at all four positions at once: every answer a coin flip per position
    assert drop[(-1, "projection_all")] > 0.85 and drop[(-1, "random_shift_all")] < 0.05
    row = df[(df.method == "projection") & (df.measure == "acc_drop")].iloc[0]
    assert row.random_std >= 0 and row.value > row.random_mean + 3 * row.random_std
    # one of T=4 positions falls to a coin flip: mean answer loss rises by about ln(2) / 4
    rise = df[df.measure == "loss_rise"].query("method == 'projection'").value
    assert ((rise > 0.15) & (rise < 0.2)).all(), rise


def test_compute_ablations_on_a_run_and_rerun_skips(tiny_run, monkeypatch):
    import llc_watch.analyses.ablations as A
    s = {"n_train": 256, "n_test": 128, "features": ["carry_in"], "n_random": 8}
    steps = [tiny_run.checkpoints()[-1].step]
    df = compute_ablations(tiny_run.dir, s, checkpoints=steps, progress=False)
    assert (tiny_run.dir / "ablations.csv").is_file()
    assert {"step", "feature", "site", "position", "method", "measure", "value", "random_mean",
            "random_std"} <= set(df.columns)
    assert set(df.method) == {"projection", "mean", "random", "random_shift", "projection_all", "random_shift_all"}
    calls = []
    monkeypatch.setattr(A, "ablate_model", lambda *a, **k: calls.append(1))
    assert len(compute_ablations(tiny_run.dir, s, checkpoints=steps, progress=False)) == len(df)
    assert calls == []


def test_n_random_must_be_a_real_control():
    from llc_watch.ablations import resolve_ablation_settings
    with pytest.raises(ValueError, match="n_random"):
        resolve_ablation_settings({"n_random": 1})


def test_matched_control_moves_every_example_as_far_as_the_projection():
    """The old control mean-ablated random directions (a shift of |u.x - mean|); the matched one
    displaces each example by exactly the projection's (w_hat.x + b_hat), only along u."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 2, 6, generator=g) + 2.0
    w, b = torch.randn(6, generator=g), torch.tensor(0.8)
    B, a0 = probe_subspace(w, b)
    proj = SubspaceEdit(1, B[None], a0[None])(0, 1)(x)
    V = random_frames(6, 1, 5, seed=1)
    shifted = SubspaceEdit(1, V, along=(B, a0))(0, 5)(x.repeat(5, 1, 1)).view(5, 7, 2, 6)
    d_probe = (proj - x)[:, 1].norm(dim=-1)
    for r in range(5):
        d_rand = (shifted[r] - x)[:, 1]
        assert torch.allclose(d_rand.norm(dim=-1), d_probe, atol=1e-5)
        cos = torch.nn.functional.cosine_similarity(d_rand, V[r, :, 0].expand(7, 6), dim=-1)
        assert torch.allclose(cos.abs(), torch.ones(7), atol=1e-5)            # along u, not the probe
    # the paper's control: a random hyperplane with the probe's offset, x - (u.x + b_hat) u
    U = random_directions(6, 3, seed=2)
    out = SubspaceEdit(0, U[..., None], a0.expand(3, 1))(0, 3)(x.repeat(3, 1, 1)).view(3, 7, 2, 6)
    for r in range(3):
        assert torch.allclose(out[r, :, 0] @ U[r] + (-a0), torch.zeros(7), atol=1e-5)


def test_categorical_probe_subspace_equalises_every_class_logit():
    g = torch.Generator().manual_seed(3)
    W, b = torch.randn(8, 4, generator=g), torch.randn(4, generator=g)
    B, a = probe_subspace(W, b)
    assert B.shape == (8, 3) and torch.allclose(B.T @ B, torch.eye(3), atol=1e-5)
    x = torch.randn(10, 1, 8, generator=g)
    out = SubspaceEdit(0, B[None], a[None])(0, 1)(x)[:, 0]
    logits = out @ W + b
    assert torch.allclose(logits - logits.mean(1, keepdim=True), torch.zeros(10, 4), atol=1e-4)


def test_covariance_frames_follow_the_activation_variance():
    cov = torch.diag(torch.tensor([100.0, 1e-4, 1e-4, 1e-4]))
    V = random_frames(4, 1, 64, seed=0, cov=cov)
    assert (V[:, 0, 0].abs() > 0.99).float().mean() > 0.95
    U = random_frames(4, 1, 64, seed=0)
    assert (U[:, 0, 0].abs() > 0.99).float().mean() < 0.2


def test_bootstrap_interval_covers_the_mean_at_its_level():
    rng = torch.Generator().manual_seed(0)
    hits = 0
    for i in range(200):
        x = (torch.rand(200, generator=rng) < 0.3).float()
        lo, hi = bootstrap_interval(x, n_boot=400, level=0.9, seed=i)
        hits += lo <= 0.3 <= hi
    assert 0.84 <= hits / 200 <= 0.96      # nominal 0.9; binomial sd of the rate over 200 trials ~0.02
    assert all(v != v for v in bootstrap_interval(x, n_boot=0))              # (nan, nan): none asked


@dataclass
class Echo3(Task):
    """Predict the current symbol of three; a categorical feature 'sym'. Tests only."""

    T: int = 3
    name = "echo3"

    @property
    def vocab(self):
        return ["a", "b", "c"]

    @property
    def features(self):
        return {"sym": FeatureSpec("categorical", "the current symbol", 3)}

    def sample(self, n, seed):
        tok = torch.randint(0, 3, (n, self.T), generator=torch.Generator().manual_seed(seed))
        return Batch(tok, tok.clone(), torch.ones_like(tok, dtype=torch.bool), {"sym": tok.float()})


def test_multiclass_feature_ablation_removes_it_and_controls_do_not():
    d = 12
    torch.manual_seed(0)
    m = Transformer(ModelConfig(n_layers=1, d_model=d, n_heads=2, d_mlp=8, norm="none", vocab_size=3, n_ctx=3))
    corners = 3.0 * torch.tensor([[1.0, 0.0], [-0.5, 0.866], [-0.5, -0.866]])
    with torch.no_grad():
        for p in m.blocks.parameters():
            p.zero_()
        m.embed.weight.zero_()
        m.embed.weight[:, :2] = corners
        m.embed.weight[:, 2:] = 0.3 * torch.randn(3, d - 2)
        m.pos_embed.zero_()
        m.unembed.weight.zero_()
        m.unembed.bias.zero_()
        m.unembed.weight[:, :2] = corners
    task = Echo3()
    s = {"n_train": 256, "n_test": 256, "seed": 0, "sites": ["blocks.0.hook_resid_post"], "features": None,
         "C": 100.0, "penalty": "raw", "max_iter": 20, "min_class_count": 5, "device": "cpu",
         "n_random": 16, "random_eval": 128, "chunk": 8192, "controls": ("shift",), "n_boot": 300}
    df = pd.DataFrame(ablate_model(m.eval(), task, s))
    acc = df[df.measure == "acc_drop"]
    proj = acc[acc.method == "projection"]
    assert set(proj["kind"]) == {"categorical"} and set(proj["rank"]) == {2}
    assert (proj["value"] > 0.5).all()                   # all three logits tied: a coin flip of three
    assert (acc[acc.method == "random_shift"]["value"] < 0.1).all()
    assert (proj["excess_lo"] > 0.4).all() and (proj["ci_lo"] <= proj["value"]).all()
    assert (proj["value"] <= proj["ci_hi"]).all()
