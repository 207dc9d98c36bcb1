"""What it takes to run devinterp's reference `llc()` on our models (parity test, benchmark)."""
from __future__ import annotations

from torch import nn


class PlainLM(nn.Module):
    """devinterp treats any model with .cfg.n_heads as TransformerLens; hide ours behind this."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, tokens):
        return self.inner(tokens)


def devinterp_llc(model: nn.Module, loss_fn, data, *, epsilon: float, nbeta: float | None, gamma: float,
                  chains: int, draws: int, burn_in: int, batch_size: int, seed: int, device=None) -> dict:
    """devinterp's reference `llc()` on any model, loss and data: a cross-check of estimate_llc.

    devinterp reads a HuggingFace Dataset of token ids and a per-token loss; any data fits that
    shape if each row's "tokens" are its own index: the loss looks the rows up in our data and
    returns the batch's mean loss broadcast over one token position (devinterp averages over
    positions and the batch, so the value and its gradient are the mean loss's).
    Returns llc_mean, llc_stderr, llc_per_chain, init_loss, loss_trace (mean over chains), n.
    """
    import math
    import warnings

    import datasets
    import numpy as np
    import torch
    from devinterp.slt.llc import llc as _llc

    from .data import DataSource
    from .estimator import default_nbeta

    src = DataSource(data)
    n = len(src)
    ids = torch.arange(n)
    ds = datasets.Dataset.from_dict({"input_ids": torch.stack([ids, ids], 1).tolist()}).with_format("torch")

    def per_token_loss(m, input_ids):
        batch = src.batch(input_ids[:, 0].cpu())
        if device is not None:
            from .data import to_device
            batch = to_device(batch, device)
        loss = loss_fn(m, batch)
        return loss.reshape(1, 1).expand(input_ids.shape[0], 1)

    nb = float(nbeta) if nbeta is not None else default_nbeta(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = _llc(PlainLM(model) if hasattr(getattr(model, "cfg", None), "n_heads") else model, ds, {},
                   lr=epsilon, n_beta=nb, localization=gamma, num_chains=chains, num_draws=draws,
                   num_burnin_steps=burn_in, batch_size=batch_size,
                   num_init_loss_batches=max(1, n // batch_size), loss_fn=per_token_loss,
                   device=str(device or "cpu"), init_seed=seed)
    per_chain = [float(v) for v in np.asarray(out.llc_per_chain.values, float)]
    finite = [v for v in per_chain if math.isfinite(v)]
    trace = np.asarray(out.loss_trace.values, float).mean(0)
    return {"llc_mean": float(np.mean(per_chain)), "llc_per_chain": per_chain, "n": n, "nbeta": nb,
            "llc_stderr": float(np.std(finite, ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else float("nan"),
            "init_loss": float(out.init_loss), "loss_trace": [float(v) for v in trace]}
