"""Behaviour of an in-context linear regression model at one checkpoint, as tidy rows.

Hoogland et al. (arXiv 2402.02364) read each developmental stage of their regression transformer
off its behaviour: how its predictions compare with predicting zero, with least squares and with
ridge regression (the Bayes-optimal predictor for the infinite task pool) as the context grows,
how its layer-norm weights shrink, and where its heads attend. This module measures those on a
fixed batch, as pure functions model -> rows (no files), so a study or an analysis can use them.

Rows: {"step", "measure", "position", "site", "value"}; position is the context position k
(0-based: the prediction of y_k from k earlier examples), -1 for a mean over positions or a
whole-model quantity.

    >>> import torch
    >>> from llc_watch.tasks import get_task
    >>> from llc_watch.model import ModelConfig, Transformer
    >>> task = get_task("icl_regression", n_dims=2, n_examples=4)
    >>> batch = task.sample(64, seed=0)
    >>> _ = torch.manual_seed(0)
    >>> model = Transformer(ModelConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=8, d_in=3, d_out=1, n_ctx=7))
    >>> rows = behaviour_rows(model, task, batch, step=5)
    >>> sorted({r["measure"] for r in rows})[:4]
    ['attn_entropy', 'attn_to_self', 'attn_to_x', 'attn_to_y']
    >>> zero = [r["value"] for r in rows if r["measure"] == "mse_zero" and r["position"] == -1][0]
    >>> ridge = [r["value"] for r in rows if r["measure"] == "mse_ridge" and r["position"] == -1][0]
    >>> ridge < zero                                     # ridge uses the context, zero does not
    True
"""
from __future__ import annotations

import numpy as np
import torch

MSE_MEASURES = ("mse_model", "mse_zero", "mse_ridge", "mse_lstsq", "model_vs_ridge", "model_vs_lstsq")


def _estimates(task, batch) -> dict[str, torch.Tensor]:
    """Predictions of y_k at every x-position [B, K]: ridge, least squares; targets y and x."""
    D, K = task.n_dims, task.n_examples
    xpos = torch.arange(0, 2 * K - 1, 2)
    x = batch.tokens[:, xpos, 1:].double()                                  # [B, K, D]
    y = batch.targets[:, xpos, 0].double()                                  # [B, K]
    lstsq = torch.stack([batch.features[f"lstsq_{i}"][:, xpos] for i in range(D)], -1).double()
    return {"x": x, "y": y, "ridge": batch.features["ridge_pred"][:, xpos].double(),
            "lstsq": (lstsq * x).sum(-1)}


@torch.no_grad()
def predictions(model, task, batch) -> torch.Tensor:
    """The model's predictions of y_k at the K x-positions, float64 [B, K] (on the CPU)."""
    device = next(model.parameters()).device
    model.eval()
    out = model(batch.tokens.to(device))[..., 0]
    return out[:, 0::2].double().cpu()


def mse_rows(pred: torch.Tensor, task, batch, step: int) -> list[dict]:
    """MSE per context position of the model and of the baselines, and the model's distance to them.

        mse_model       E (f(x_k) - y_k)^2
        mse_zero        E y_k^2                      (predicting 0: what a context-blind model can do)
        mse_ridge       E (ridge_k . x_k - y_k)^2     (Bayes-optimal with the N(0, I) task prior)
        mse_lstsq       E (lstsq_k . x_k - y_k)^2     (minimum-norm least squares; bad near k = D)
        model_vs_ridge  E (f(x_k) - ridge_k . x_k)^2  (0 when the model does ridge regression)
        model_vs_lstsq  E (f(x_k) - lstsq_k . x_k)^2
    """
    e = _estimates(task, batch)
    per = {
        "mse_model": (pred - e["y"]) ** 2, "mse_zero": e["y"] ** 2,
        "mse_ridge": (e["ridge"] - e["y"]) ** 2, "mse_lstsq": (e["lstsq"] - e["y"]) ** 2,
        "model_vs_ridge": (pred - e["ridge"]) ** 2, "model_vs_lstsq": (pred - e["lstsq"]) ** 2,
    }
    rows = []
    for measure, sq in per.items():
        by_pos = sq.mean(0)
        for k, v in enumerate(by_pos.tolist()):
            rows.append({"step": step, "measure": measure, "position": k, "site": "output", "value": v})
        rows.append({"step": step, "measure": measure, "position": -1, "site": "output",
                     "value": float(by_pos.mean())})
    return rows


def norm_rows(model, step: int) -> list[dict]:
    """Squared norms of every layer norm's weight and bias (Hoogland et al.'s layer-norm collapse),
    and of all weights together."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm) and module.weight is not None:
            rows.append({"step": step, "measure": "ln_weight_sq", "position": -1, "site": name,
                         "value": float(module.weight.detach().double().pow(2).sum())})
            if module.bias is not None:
                rows.append({"step": step, "measure": "ln_bias_sq", "position": -1, "site": name,
                             "value": float(module.bias.detach().double().pow(2).sum())})
    total = sum(float(p.detach().double().pow(2).sum()) for p in model.parameters())
    rows.append({"step": step, "measure": "weight_sq", "position": -1, "site": "all", "value": total})
    return rows


@torch.no_grad()
def attention_rows(model, batch, step: int) -> list[dict]:
    """Cheap attention summaries per (layer, head), over the x-position queries after the first:
    mean entropy (nats) of the pattern, and the attention mass on earlier y-tokens, on earlier
    x-tokens, and on the query itself."""
    device = next(model.parameters()).device
    sites = [s for s in model.site_names if s.endswith("attn.hook_pattern")]
    _, cache = model.run_with_cache(batch.tokens.to(device), names=sites)
    rows = []
    for site in sites:
        pat = cache[site].double().cpu()                                    # [B, H, Tq, Tk]
        T = pat.shape[-1]
        q = torch.arange(2, T, 2)                                           # x-queries with context
        keys = torch.arange(T)
        is_y = (keys % 2 == 1).double()
        p = pat[:, :, q]                                                    # [B, H, Q, T]
        entropy = -(p * torch.log(p.clamp(min=1e-30))).sum(-1)
        self_mass = pat[:, :, q, q]                                         # [B, H, Q] diagonal
        to_y = (p * is_y).sum(-1)
        to_x = (p * (1 - is_y)).sum(-1) - self_mass
        layer = site.split(".")[1]
        for h in range(pat.shape[1]):
            for measure, v in (("attn_entropy", entropy), ("attn_to_y", to_y), ("attn_to_x", to_x),
                               ("attn_to_self", self_mass)):
                rows.append({"step": step, "measure": measure, "position": -1,
                             "site": f"L{layer}H{h}", "value": float(v[:, h].mean())})
    return rows


def behaviour_rows(model, task, batch, step: int = 0) -> list[dict]:
    """Every measure of this module for one model on one fixed batch (see the module docstring)."""
    pred = predictions(model, task, batch)
    return mse_rows(pred, task, batch, step) + norm_rows(model, step) + attention_rows(model, batch, step)


def pca_trajectory(outputs: np.ndarray, n_components: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """PCA over checkpoints of flattened outputs [C, N] -> (projections [C, n], explained share [n]).

    A minimal form of essential dynamics (Hoogland et al.; Carroll et al. arXiv 2501.17745): the
    outputs are centred over checkpoints and projected on their top principal directions. Signs are
    fixed so that each component's largest-magnitude projection is positive (for reproducible plots).

        >>> t = np.linspace(0, 1, 20)
        >>> outs = np.stack([np.outer(np.cos(3 * t), [1, 0, 0]) + np.outer(np.sin(3 * t), [0, 1, 0])], 0)[0]
        >>> proj, share = pca_trajectory(outs, 2)
        >>> proj.shape, round(float(share.sum()), 6)
        ((20, 2), 1.0)
    """
    X = np.asarray(outputs, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"pca_trajectory needs outputs [checkpoints >= 2, N], got shape {X.shape}")
    X = X - X.mean(0, keepdims=True)
    U, S, _ = np.linalg.svd(X, full_matrices=False)
    n = min(n_components, len(S))
    proj = U[:, :n] * S[:n]
    sign = np.sign(proj[np.abs(proj).argmax(0), np.arange(n)])
    total = float((S ** 2).sum())
    share = (S[:n] ** 2) / total if total > 0 else np.zeros(n)
    return proj * np.where(sign == 0, 1, sign), share


def rows_to_frame(rows):
    """Tidy rows -> DataFrame with the columns in a fixed order."""
    import pandas as pd
    return pd.DataFrame(rows, columns=["step", "measure", "position", "site", "value"])


__all__ = ["MSE_MEASURES", "predictions", "mse_rows", "norm_rows", "attention_rows", "behaviour_rows",
           "pca_trajectory", "rows_to_frame"]
