"""Causal check: remove a crosscoder feature from a snapshot's activations and measure the damage.

At snapshot k, feature i's contribution to input n at position p is f_i[n, p] * W_dec[k, i] (in raw
activation units). Ablation subtracts exactly that at the crosscoder's site and positions, then
runs the rest of the model: the rise in answer loss and drop in exact-match accuracy say whether
the snapshot uses what the feature writes. The code f comes from all K snapshots at once (the
crosscoder's shared latent), so it is precomputed for the evaluated inputs.

R features are evaluated in one forward pass by stacking R copies of the batch, each with its own edit.

    >>> import torch
    >>> x = torch.zeros(2, 3, 4)                                # copies R=2 of a [B=1, T=3, d=4] batch
    >>> contrib = torch.ones(2, 1, 2, 4)                        # [R, B, P, d]
    >>> subtract_hook([0, 2], contrib)(x)[:, :, 0].tolist()     # positions 0 and 2 edited
    [[-1.0, 0.0, -1.0], [-1.0, 0.0, -1.0]]
"""
from __future__ import annotations

import math

import pandas as pd
import torch

from ..tasks import Batch


def subtract_hook(positions: list[int], contrib: torch.Tensor):
    """Hook for inputs stacked [R*B, T, d] (r-major): x[r, :, positions] -= contrib[r] ([R, B, P, d])."""
    pos = torch.as_tensor(positions, dtype=torch.long)

    def hook(x):
        R = contrib.shape[0]
        x = x.clone()
        v = x.view(R, -1, *x.shape[1:])                          # [R, B, T, d]
        v[:, :, pos.to(x.device)] -= contrib.to(x.device, x.dtype)
        return v.view_as(x)
    return hook


@torch.no_grad()
def _evaluate(model, task, batch: Batch, hooks=None, repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact-match accuracy [repeat], mean answer loss [repeat]); accuracy NaN for continuous outputs."""
    device = next(model.parameters()).device
    B = len(batch)
    stacked = Batch(batch.tokens.repeat(repeat, *[1] * (batch.tokens.dim() - 1)),
                    batch.targets.repeat(repeat, *[1] * (batch.targets.dim() - 1)),
                    batch.loss_mask.repeat(repeat, 1)).to(device)
    out = model(stacked.tokens, hooks=hooks).float()
    losses, accs = [], []
    for r in range(repeat):
        part = stacked[r * B:(r + 1) * B]
        o = out[r * B:(r + 1) * B]
        losses.append(float(task.loss(o, part)))
        accs.append(float(task.accuracy(o, part)) if task.output == "tokens" else math.nan)
    return torch.tensor(accs), torch.tensor(losses)


def ablate_at_snapshot(model, task, batch: Batch, site: str, positions: list[int], codes: torch.Tensor,
                       decoder: torch.Tensor, features: list[int], step: int, per_pass: int = 16) -> list[dict]:
    """Tidy rows (feature, step, measure, value, clean) for ablating each of `features` at this snapshot.

    codes [B, P, m] for the batch's inputs at `positions`; decoder [m, d] this snapshot's raw decoder.
    measures: loss_rise (answer loss after - before), acc_drop (exact match before - after).
    """
    clean_acc, clean_loss = (float(v[0]) for v in _evaluate(model, task, batch))
    rows = []
    for i0 in range(0, len(features), per_pass):
        fs = features[i0:i0 + per_pass]
        contrib = torch.einsum("bpr,rd->rbpd", codes[:, :, fs], decoder[fs])     # [R, B, P, d]
        acc, loss = _evaluate(model, task, batch, {site: subtract_hook(positions, contrib)}, repeat=len(fs))
        for j, f in enumerate(fs):
            rows.append({"feature": f, "step": step, "measure": "loss_rise", "value": float(loss[j]) - clean_loss,
                         "clean": clean_loss})
            rows.append({"feature": f, "step": step, "measure": "acc_drop", "value": clean_acc - float(acc[j]),
                         "clean": clean_acc})
    return rows


def ablation_onset(ablations: pd.DataFrame, measure: str = "loss_rise", frac: float = 0.5,
                   min_effect: float = 0.01) -> pd.DataFrame:
    """Per feature: the first snapshot step whose effect reaches `frac` x its largest effect.

    NaN when the largest effect is below `min_effect` (the feature never matters that much).

    >>> df = pd.DataFrame({"feature": 0, "step": [1, 10, 100], "measure": "loss_rise", "value": [0.0, 0.3, 0.5]})
    >>> ablation_onset(df).values.tolist()
    [[0.0, 10.0, 0.5, 0.5]]
    """
    a = ablations[ablations["measure"] == measure].sort_values("step")
    out = []
    for f, g in a.groupby("feature"):
        peak = float(g["value"].max())
        onset = float(g.loc[g["value"] >= frac * peak, "step"].iloc[0]) if peak >= min_effect else math.nan
        out.append({"feature": f, "ablation_onset_step": onset, "ablation_peak": peak,
                    "ablation_final": float(g["value"].iloc[-1])})
    return pd.DataFrame(out, columns=["feature", "ablation_onset_step", "ablation_peak", "ablation_final"])


__all__ = ["subtract_hook", "ablate_at_snapshot", "ablation_onset"]
