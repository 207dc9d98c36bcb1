"""Synthetic snapshots with planted features: known directions that switch on (and off) at known snapshots.

Each row n has sparse non-negative coefficients c[n, j]; snapshot k's activation is

    x[k, n] = sum_j c[n, j] * on[k, j] * D[j] + noise,   on[k, j] = 1 for onset_j <= k < offset_j

so a crosscoder should find each direction D[j] and put its emergence at snapshot onset_j.

    >>> p = planted_features(n_snapshots=4, d=8, n_features=3, n_rows=100, seed=0)
    >>> p.acts.shape, p.directions.shape, p.onsets.tolist()
    (torch.Size([4, 100, 8]), torch.Size([3, 8]), [0, 2, 3])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Planted:
    acts: torch.Tensor        # [K, N, d]
    directions: torch.Tensor  # [J, d] unit vectors
    onsets: torch.Tensor      # [J] first snapshot where feature j is on
    offsets: torch.Tensor     # [J] first snapshot where it is off again (K = never)
    coefficients: torch.Tensor  # [N, J]


def planted_features(n_snapshots: int, d: int, n_features: int, n_rows: int, p_active: float = 0.08,
                     noise: float = 0.03, n_fading: int = 0, seed: int = 0) -> Planted:
    """Planted features with onsets spread evenly over the snapshots (the first at snapshot 0).

    The last `n_fading` features switch off again halfway between their onset and the end.
    Coefficients: present with probability `p_active`, magnitude uniform in [1, 2].
    """
    g = torch.Generator().manual_seed(seed)
    K, J = n_snapshots, n_features
    D = torch.randn(J, d, generator=g)
    D = D / D.norm(dim=-1, keepdim=True)
    onsets = torch.round(torch.linspace(0, K - 1, J)).long()
    offsets = torch.full((J,), K, dtype=torch.long)
    for j in range(J - n_fading, J):
        offsets[j] = min(K, int(onsets[j]) + max(2, (K - int(onsets[j])) // 2))
    present = torch.rand(n_rows, J, generator=g) < p_active
    c = present * (1 + torch.rand(n_rows, J, generator=g))
    steps = torch.arange(K)[:, None]
    on = ((steps >= onsets[None]) & (steps < offsets[None])).float()      # [K, J]
    acts = torch.einsum("nj,kj,jd->knd", c, on, D) + noise * torch.randn(K, n_rows, d, generator=g)
    return Planted(acts, D, onsets, offsets, c)


__all__ = ["planted_features", "Planted"]
