"""Ablations: removing a planted direction removes the behaviour it carries; random ones do not."""
from dataclasses import dataclass

import pandas as pd
import pytest
import torch

from llc_watch.analyses.ablations import compute_ablations
from llc_watch.ablations import (ablate_model, evaluate_edit, projection_hook,
                                 random_directions, random_hook)
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
         "n_random": 32, "random_eval": 128, "chunk": 8192}
    df = pd.DataFrame(ablate_model(model, task, s))
    drop = df[df.measure == "acc_drop"].set_index(["position", "method"]).value
    for pos in range(task.T):
        assert drop[(pos, "projection")] > 0.3, drop      # the bit at this position is gone
        assert drop[(pos, "mean")] > 0.3
        assert drop[(pos, "random")] < 0.05               # random directions leave it
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
    assert set(df.method) == {"projection", "mean", "random"}
    calls = []
    monkeypatch.setattr(A, "ablate_model", lambda *a, **k: calls.append(1))
    assert len(compute_ablations(tiny_run.dir, s, checkpoints=steps, progress=False)) == len(df)
    assert calls == []


def test_n_random_must_be_a_real_control():
    from llc_watch.ablations import resolve_ablation_settings
    with pytest.raises(ValueError, match="n_random"):
        resolve_ablation_settings({"n_random": 1})
