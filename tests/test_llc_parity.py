"""Parity with devinterp 2's own pipeline (devinterp.slt.llc.llc) on the same model and settings.

Same model, data, ε, nβ, γ, chains, draws, batch size, plain SGLD. Differences that remain, by design:
devinterp averages every step including burn-in (so burn_in = 0 here, where the two definitions
coincide) and computes L_n(w*) from `num_init_loss_batches` shuffled batches (set to one full epoch,
which is the whole data set, as ours). Noise and batch order differ, so the estimates are two
independent draws of the same quantity: they must agree within K = 4 combined standard errors
(each the chains' own spread / √chains).
"""
import math
import warnings

import pytest
import torch

from llc_watch.llc import estimate_llc
from llc_watch.llc.devinterp_ref import PlainLM
from llc_watch.model import ModelConfig, Transformer
from llc_watch.tasks import get_task

devinterp_llc = pytest.importorskip("devinterp.slt.llc").llc
datasets = pytest.importorskip("datasets")
torch.set_num_threads(1)
K = 4.0


def trained_tiny_model(task, data, steps=150):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, vocab_size=5, n_ctx=task.seq_len))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        task.loss(model(data.tokens), data).backward()
        opt.step()
    return model.eval()


def test_estimates_agree_with_devinterp():
    task = get_task("addition", n_bits=3)
    n, batch_size, chains, draws = 512, 32, 4, 96         # 96 steps = 6 whole epochs
    data = task.sample(n, seed=0)
    model = trained_tiny_model(task, data)
    mask = data.loss_mask[0]
    assert (data.loss_mask == mask).all()                  # answer positions are the same in every row
    settings = dict(epsilon=3e-4, nbeta=n / math.log(n), gamma=100.0)

    ours = estimate_llc(model, lambda m, b: task.loss(m(b.tokens), b), data, chains=chains, draws=draws,
                        burn_in=0, batch_size=batch_size, seed=0, **settings)

    seq = torch.cat([data.tokens, data.targets[:, -1:]], dim=1)   # full sequences: input_ids
    ds = datasets.Dataset.from_dict({"input_ids": seq.tolist()}).with_format("torch")

    def per_token_loss(m, ids):                            # masked NLL rescaled so the token mean
        logp = torch.log_softmax(m(ids[:, :-1]).float(), -1)   # equals the task's answer-token mean
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
        return nll * mask * (mask.numel() / mask.sum())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = devinterp_llc(PlainLM(model), ds, {}, lr=settings["epsilon"], n_beta=settings["nbeta"],
                               localization=settings["gamma"], num_chains=chains, num_draws=draws,
                               batch_size=batch_size, num_init_loss_batches=n // batch_size,
                               loss_fn=per_token_loss, device="cpu", init_seed=0)
    their_chains = theirs.llc_per_chain.values
    their_se = float(their_chains.std(ddof=1) / math.sqrt(chains))
    assert float(theirs.init_loss) == pytest.approx(ours.init_loss, rel=1e-4)
    assert ours.valid
    tol = K * math.hypot(ours.llc_stderr, their_se)
    assert abs(ours.llc_mean - float(theirs.llc_mean)) <= tol, (ours.llc_mean, float(theirs.llc_mean), tol)


def test_too_large_epsilon_devinterp_silent_ours_invalid():
    """devinterp 2.0.1 returns an astronomically large LLC with no error when ε is too large;
    the same run here is marked invalid with each chain's failure named."""
    task = get_task("addition", n_bits=3)
    n, eps, chains, draws = 512, 0.1, 2, 30
    data = task.sample(n, seed=0)
    model = trained_tiny_model(task, data)
    mask = data.loss_mask[0]
    seq = torch.cat([data.tokens, data.targets[:, -1:]], dim=1)
    ds = datasets.Dataset.from_dict({"input_ids": seq.tolist()}).with_format("torch")

    def per_token_loss(m, ids):
        logp = torch.log_softmax(m(ids[:, :-1]).float(), -1)
        return -logp.gather(-1, ids[:, 1:, None])[..., 0] * mask * (mask.numel() / mask.sum())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = devinterp_llc(PlainLM(model), ds, {}, lr=eps, n_beta=n / math.log(n), localization=100.0,
                               num_chains=chains, num_draws=draws, batch_size=32, num_init_loss_batches=16,
                               loss_fn=per_token_loss, device="cpu")
    n_params = sum(p.numel() for p in model.parameters())
    assert not float(theirs.llc_mean) <= n_params / 2      # impossible value (or NaN), no error
    ours = estimate_llc(model, lambda m, b: task.loss(m(b.tokens), b), data, epsilon=eps, gamma=100.0,
                        chains=chains, draws=draws, burn_in=0)
    assert not ours.valid and all(f is not None for f in ours.chain_failed)
