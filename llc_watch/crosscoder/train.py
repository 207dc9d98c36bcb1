"""Train a crosscoder on activations [K, N, d] (a tensor, or a chunked on-disk store of that shape).

Loss per batch of rows (an input seen by all K snapshots), on activations normalised per snapshot:

    sum_k |x̂_k - x_k|^2                                   reconstruction, every snapshot
  + aux_coef * AuxK                                        TopK/BatchTopK: dead latents learn the residual
  + sparsity_coef * sum_i tanh(tanh_c * f_i * d_i)         JumpReLU: decoder-norm-weighted sparsity
  + preact_coef * sum_i relu(theta_i - pre_i) * d_i        JumpReLU: pulls dead latents toward firing

with d_i = sum_k |W_dec[k, i]|. A latent is dead when it has not fired for `dead_after` steps;
AuxK (Gao et al. 2024) reconstructs the main reconstruction's residual from the `aux_k` largest
dead latents, which gives them gradient again.

Normalisation ("snapshot"): each snapshot is divided by its own root-mean-square centred norm,
so an early snapshot with tiny activations weighs as much as a late one. Decoder norms are then
relative to that snapshot's spread: a feature diluted by many new ones later reads weaker.
"global" uses one scale for all snapshots (absolute growth then shows as growth); "none" skips it.

Deterministic on CPU for a seed: initialisation, batch order and everything else come from it.

    >>> import torch
    >>> acts = torch.randn(2, 256, 8)
    >>> fit = train_crosscoder(acts, n_latents=16, k=2, steps=20, batch_size=64, seed=0)
    >>> fit.model.W_dec.shape, fit.scales.shape
    (torch.Size([2, 16, 8]), torch.Size([2]))
    >>> sorted(fit.metrics)
    ['dead_latents', 'fvu', 'fvu_per_snapshot', 'l0']
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from .model import ACTIVATIONS, Crosscoder


class RowSource(Protocol):
    """Anything with a shape (K, N, d) that returns rows [K, B, d] for row indices."""

    shape: tuple[int, int, int]

    def rows(self, idx: np.ndarray) -> torch.Tensor: ...

    def snapshot(self, k: int) -> torch.Tensor: ...


class TensorRows:
    """A RowSource over an in-memory tensor [K, N, d]."""

    def __init__(self, acts: torch.Tensor):
        if acts.dim() != 3:
            raise ValueError(f"crosscoder activations must be [K, N, d]; got shape {tuple(acts.shape)}")
        self.acts = acts.float()
        self.shape = tuple(acts.shape)

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        return self.acts[:, torch.as_tensor(idx, dtype=torch.long)]

    def snapshot(self, k: int) -> torch.Tensor:
        return self.acts[k]


def as_rows(acts) -> RowSource:
    if isinstance(acts, torch.Tensor):
        return TensorRows(acts)
    if hasattr(acts, "rows") and hasattr(acts, "shape"):
        return acts
    raise TypeError(f"crosscoder activations must be a tensor [K, N, d] or a store with .rows(); got {type(acts).__name__}")


def snapshot_scales(src: RowSource, normalize: str) -> torch.Tensor:
    """[K] divisors: root-mean-square centred row norm per snapshot ("snapshot"), one for all ("global")."""
    K = src.shape[0]
    if normalize == "none":
        return torch.ones(K)
    sq = torch.zeros(K)
    for k in range(K):  # one snapshot in memory at a time
        x = src.snapshot(k).double()
        sq[k] = float(((x - x.mean(0)) ** 2).sum(-1).mean())
    if normalize == "global":
        sq = sq.mean().expand(K).clone()
    elif normalize != "snapshot":
        raise ValueError(f"crosscoder normalize={normalize!r}: choose snapshot, global or none")
    bad = [k for k in range(K) if not (sq[k] > 0 and math.isfinite(sq[k]))]
    if bad:
        raise ValueError(f"crosscoder: snapshot(s) {bad} have constant or non-finite activations; "
                         "they cannot be normalised (choose other snapshots or normalize='none')")
    return sq.sqrt().float()


@dataclass
class CrosscoderFit:
    """A trained crosscoder with what it needs to read raw activations, and how training went.

    scales [K]: raw activations are divided by these before the crosscoder sees them.
    history: tidy (train_step, measure, snapshot, value); metrics: final values on `eval_rows` rows.
    """

    model: Crosscoder
    scales: torch.Tensor
    history: pd.DataFrame
    metrics: dict

    @torch.no_grad()
    def encode_raw(self, acts: torch.Tensor) -> torch.Tensor:
        """Raw activations [K, N, d] -> code [N, m]."""
        dev = self.model.W_dec.device
        return self.model.encode(acts.to(dev) / self.scales.to(dev)[:, None, None])

    def decoder_raw(self) -> torch.Tensor:
        """Decoder rows in raw activation units [K, m, d] (what an ablation subtracts)."""
        return self.model.W_dec.detach() * self.scales.to(self.model.W_dec.device)[:, None, None]


def _aux_loss(model: Crosscoder, x: torch.Tensor, recon: torch.Tensor, pre: torch.Tensor,
              dead: torch.Tensor, aux_k: int) -> torch.Tensor:
    """AuxK: reconstruct the residual x - x̂ from the aux_k largest dead latents, relative error."""
    n_dead = int(dead.sum())
    if n_dead == 0 or aux_k == 0:
        return pre.new_zeros(())
    resid = (x - recon).detach()                                   # [K, B, d]
    f = torch.relu(pre) * dead                                     # only dead latents
    top = f.topk(min(aux_k, n_dead), dim=1)
    f_aux = torch.zeros_like(f).scatter(1, top.indices, top.values)
    r_hat = torch.einsum("nm,kmd->knd", f_aux, model.W_dec)
    denom = (resid - resid.mean(1, keepdim=True)).pow(2).sum().clamp(min=1e-12)
    return (r_hat - resid).pow(2).sum() / denom


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def evaluate(model: Crosscoder, src: RowSource, scales: torch.Tensor, idx: np.ndarray,
             batch_size: int = 4096) -> dict:
    """FVU per snapshot (and pooled), mean L0, and latents that never fire on rows `idx`."""
    was_training = model.training
    model.eval()
    dev = model.W_dec.device
    K, m = model.n_snapshots, model.n_latents
    sse, n, s1, s2 = torch.zeros(K, dtype=torch.float64), 0, 0.0, 0.0
    xs_sum = torch.zeros(K, model.d, dtype=torch.float64)
    xs_sq = torch.zeros(K, dtype=torch.float64)
    l0, fired = 0.0, torch.zeros(m, dtype=torch.bool)
    for i in range(0, len(idx), batch_size):
        x = src.rows(idx[i:i + batch_size]).to(dev) / scales.to(dev)[:, None, None]
        recon, f, _ = model(x)
        sse += (recon - x).pow(2).sum((1, 2)).double().cpu()
        xs_sum += x.sum(1).double().cpu()
        xs_sq += x.pow(2).sum((1, 2)).double().cpu()
        n += x.shape[1]
        l0 += float((f > 0).sum())
        fired |= (f > 0).any(0).cpu()
    var = xs_sq - xs_sum.pow(2).sum(-1) / max(n, 1)               # centred sum of squares per snapshot
    fvu = (sse / var.clamp(min=1e-12)).float()
    model.train(was_training)
    return {"fvu_per_snapshot": fvu.tolist(), "fvu": float(sse.sum() / var.sum().clamp(min=1e-12)),
            "l0": l0 / max(n, 1), "dead_latents": int((~fired).sum())}


def train_crosscoder(acts, n_latents: int, *, activation: str = "batchtopk", k: int = 8, lr: float = 2e-3,
                     steps: int = 2000, batch_size: int = 512, seed: int = 0, device: str = "cpu",
                     normalize: str = "snapshot", aux_k: int = 32, aux_coef: float = 1 / 32,
                     dead_after: int = 200, sparsity_coef: float = 0.2, tanh_c: float = 4.0,
                     preact_coef: float = 3e-6, init_norm: float = 0.1, jump_init: float = 0.1,
                     jump_eps: float = 0.01, eval_rows: int = 8192, log_every: int = 100,
                     progress: bool = False) -> CrosscoderFit:
    """Train a crosscoder on `acts` ([K, N, d] tensor or RowSource); see the module docstring."""
    src = as_rows(acts)
    K, N, d = src.shape
    if activation not in ACTIVATIONS:
        raise ValueError(f"crosscoder activation={activation!r}: choose one of {', '.join(ACTIVATIONS)}")
    if N < 2:
        raise ValueError(f"crosscoder: need at least 2 rows of activations, got {N}")
    dev = _resolve_device(device)
    scales = snapshot_scales(src, normalize)
    torch.manual_seed(seed)  # nothing below should draw from the global generator; this makes sure
    model = Crosscoder(K, d, n_latents, activation=activation, k=k, init_norm=init_norm,
                       jump_init=jump_init, jump_eps=jump_eps, seed=seed).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    warmup = max(1, steps // 20)
    # linear warm-up, then linear decay to 0 over the last 20% (settles the dictionary)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * min(1.0, (steps - s) / max(1, 0.2 * steps)))
    rng = np.random.default_rng(seed)
    eval_idx = np.sort(rng.choice(N, size=min(eval_rows, N), replace=False))
    since_fired = torch.zeros(n_latents, device=dev)
    sc = scales.to(dev)[:, None, None]
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="crosscoder")
    model.train()
    for step in range(steps):
        idx = rng.integers(0, N, size=min(batch_size, N))
        x = src.rows(idx).to(dev) / sc
        recon, f, pre = model(x)
        mse = (recon - x).pow(2).sum((0, 2)).mean()
        loss = mse
        active = (f > 0)
        since_fired = torch.where(active.any(0), torch.zeros_like(since_fired), since_fired + 1)
        dead = since_fired > dead_after
        aux = torch.zeros((), device=dev)
        if activation in ("topk", "batchtopk") and aux_coef > 0:
            aux = _aux_loss(model, x, recon, pre, dead, aux_k)
            loss = loss + aux_coef * aux
        if activation == "jumprelu":
            dn = model.decoder_norms().sum(0)
            loss = loss + sparsity_coef * torch.tanh(tanh_c * f * dn).sum(-1).mean()
            theta = model.log_threshold.exp()
            loss = loss + preact_coef * (torch.relu(theta - pre) * dn).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            for name, v in (("loss", loss), ("mse", mse), ("aux", aux), ("l0", active.float().sum(-1).mean()),
                            ("dead", dead.float().sum())):
                history.append({"train_step": step, "measure": name, "snapshot": -1, "value": float(v.detach())})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    metrics = evaluate(model, src, scales, eval_idx)
    for kk, v in enumerate(metrics["fvu_per_snapshot"]):
        history.append({"train_step": steps, "measure": "fvu", "snapshot": kk, "value": v})
    for name in ("fvu", "l0", "dead_latents"):
        history.append({"train_step": steps, "measure": f"final_{name}", "snapshot": -1, "value": float(metrics[name])})
    if not all(math.isfinite(v) for v in metrics["fvu_per_snapshot"]):
        raise FloatingPointError(f"crosscoder training diverged (FVU {metrics['fvu_per_snapshot']}); lower lr={lr}")
    return CrosscoderFit(model, scales, pd.DataFrame(history), metrics)


__all__ = ["train_crosscoder", "CrosscoderFit", "TensorRows", "as_rows", "snapshot_scales", "evaluate"]
