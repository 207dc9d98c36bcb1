"""Reading a trained crosscoder: when each feature forms, how its strength evolves, what it responds to.

Emergence rule. A feature's strength at snapshot k is its decoder norm n_k = |W_dec[k, i]|; with
r_k = n_k / max_k n_k, the feature **emerges** at the first snapshot where r_k >= `frac` (0.5:
half its peak strength). Trajectory types, from r:

    dead                 never fires on the collected rows
    present_throughout   r >= frac at the first snapshot, and still >= fade_frac at the last
    fades                r >= frac at the first snapshot, below fade_frac at the last
    forms_then_fades     emerges later, below fade_frac at the last snapshot
    forms_late           emerges at a snapshot index > late_frac * (K - 1) (the late part of log step)
    forms_and_stays      emerges later and stays (r >= fade_frac at the last snapshot)

    >>> import torch
    >>> norms = torch.tensor([[0.0, 1.0, 1.0, 0.0],       # [K=4 snapshots, m=4 features]
    ...                       [0.1, 1.0, 1.0, 0.0],
    ...                       [0.9, 1.0, 0.1, 0.1],
    ...                       [1.0, 1.0, 0.0, 1.0]])
    >>> emergence_index(norms).tolist()
    [2, 0, 0, 3]
    >>> trajectory_types(norms)
    ['forms_and_stays', 'present_throughout', 'fades', 'forms_late']
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

TRAJECTORY_TYPES = ("present_throughout", "forms_and_stays", "forms_late", "forms_then_fades", "fades", "dead")


def emergence_index(norms: torch.Tensor, frac: float = 0.5) -> torch.Tensor:
    """[K, m] decoder norms -> [m] first snapshot index with norm >= frac * its peak (-1: all zero)."""
    peak = norms.max(0).values
    reached = norms >= frac * peak
    idx = reached.float().argmax(0)
    return torch.where(peak > 0, idx, torch.full_like(idx, -1)).long()


def trajectory_types(norms: torch.Tensor, frac: float = 0.5, fade_frac: float = 0.25, late_frac: float = 2 / 3,
                     fired: torch.Tensor | None = None) -> list[str]:
    """One type per feature (see the module docstring); `fired` [m] bool marks features that ever fire."""
    K = norms.shape[0]
    peak = norms.max(0).values.clamp(min=1e-12)
    r = norms / peak
    em = emergence_index(norms, frac)
    out = []
    for i in range(norms.shape[1]):
        stays = bool(r[-1, i] >= fade_frac)
        if (fired is not None and not bool(fired[i])) or em[i] < 0:
            out.append("dead")
        elif em[i] == 0:
            out.append("present_throughout" if stays else "fades")
        elif not stays:
            out.append("forms_then_fades")
        elif em[i] > late_frac * (K - 1):
            out.append("forms_late")
        else:
            out.append("forms_and_stays")
    return out


def feature_directions(W_dec: torch.Tensor) -> torch.Tensor:
    """[K, m, d] decoders -> [m, d] unit directions of the decoder summed over snapshots.

    The sum weights each snapshot by the feature's strength there, so a feature that exists only
    late is described by its late direction.
    """
    v = W_dec.sum(0)
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def cross_snapshot_cosine(W_dec: torch.Tensor) -> torch.Tensor:
    """[K, m, d] -> [K, m]: cosine of each snapshot's decoder row with the feature's overall direction.

    Near 1 wherever the feature exists: it keeps its direction; lower values say it rotates.
    """
    u = feature_directions(W_dec)
    return torch.einsum("kmd,md->km", W_dec, u) / W_dec.norm(dim=-1).clamp(min=1e-12)


def match_directions(learned: torch.Tensor, planted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each planted direction [J, d], the best learned one [m, d] by |cosine|: (index [J], cosine [J])."""
    cos = torch.nn.functional.normalize(planted, dim=-1) @ torch.nn.functional.normalize(learned, dim=-1).T
    best = cos.abs().max(1)
    return best.indices, cos.gather(1, best.indices[:, None])[:, 0]


def match_labels(codes: torch.Tensor, labels: dict[str, torch.Tensor], min_rows: int = 20) -> pd.DataFrame:
    """Pearson correlation of every feature's activation with every labelled quantity.

    codes [N, m] (one row per (example, position)); labels {name: [N] float, NaN where undefined}.
    Returns tidy rows (feature, label, corr, n_rows); corr is NaN when a side is constant there.

    >>> codes = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    >>> df = match_labels(codes, {"carry": torch.tensor([0.0, 1.0, 0.0, 1.0])}, min_rows=2)
    >>> df.round(3).values.tolist()
    [[0, 'carry', 0.962, 4], [1, 'carry', -1.0, 4]]
    """
    rows = []
    c = codes.double()
    for name, y in labels.items():
        ok = ~torch.isnan(y)
        n = int(ok.sum())
        if n < min_rows:
            continue
        yc = y[ok].double() - y[ok].double().mean()
        xc = c[ok] - c[ok].mean(0)
        denom = xc.norm(dim=0) * yc.norm()
        corr = torch.where(denom > 1e-12, (xc * yc[:, None]).sum(0) / denom.clamp(min=1e-12),
                           torch.full_like(denom, float("nan")))
        for i, v in enumerate(corr.tolist()):
            rows.append({"feature": i, "label": name, "corr": v, "n_rows": n})
    return pd.DataFrame(rows, columns=["feature", "label", "corr", "n_rows"])


def best_label(matches: pd.DataFrame) -> pd.DataFrame:
    """Per feature: the label with the largest |corr| (feature, best_label, best_corr)."""
    m = matches.dropna(subset=["corr"])
    if not len(m):
        return pd.DataFrame(columns=["feature", "best_label", "best_corr"])
    m = m.assign(abs_corr=m["corr"].abs()).sort_values(["feature", "abs_corr"], ascending=[True, False])
    top = m.groupby("feature").head(1)
    return top.rename(columns={"label": "best_label", "corr": "best_corr"})[["feature", "best_label", "best_corr"]]


def top_examples(codes: torch.Tensor, n: int = 5) -> pd.DataFrame:
    """The n rows where each feature is largest: tidy (feature, rank, row, activation); zeros left out."""
    n = min(n, codes.shape[0])
    top = codes.topk(n, dim=0)
    out = []
    for i in range(codes.shape[1]):
        for r in range(n):
            v = float(top.values[r, i])
            if v > 0:
                out.append({"feature": i, "rank": r, "row": int(top.indices[r, i]), "activation": v})
    return pd.DataFrame(out, columns=["feature", "rank", "row", "activation"])


def emergence_signal(features: pd.DataFrame, bandwidth: float = 0.15, grid: int = 200,
                     steps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Density of feature emergence over log(step + 1): (steps [grid], density [grid]).

    Features present from the first snapshot and dead features are left out (they did not form
    during the collected window). A Gaussian kernel of `bandwidth` in log(step + 1) units, scaled by
    the number of features counted, so the curve integrates to that count over log(step + 1):
    its peaks are the times when many features form, candidate stage boundaries.

    >>> df = pd.DataFrame({"emergence_step": [100, 110, 120, 1000], "trajectory": ["forms_and_stays"] * 4,
    ...                    "first_step": 0, "last_step": 2000})
    >>> s, v = emergence_signal(df)
    >>> bool(80 < s[v.argmax()] < 150)                       # the peak sits where three features form
    True
    """
    need = {"emergence_step", "trajectory"}
    if not need <= set(features.columns):
        raise ValueError(f"emergence_signal needs columns {sorted(need)}; got {sorted(features.columns)}")
    formed = features[~features["trajectory"].isin(["present_throughout", "fades", "dead"])]
    x = np.log1p(formed["emergence_step"].to_numpy(float))
    if steps is None:
        lo = float(features["first_step"].min()) if "first_step" in features else float(np.expm1(x.min(initial=0)))
        hi = float(features["last_step"].max()) if "last_step" in features else float(np.expm1(x.max(initial=1)))
        xs = np.linspace(np.log1p(lo), np.log1p(hi), grid)
    else:
        xs = np.log1p(np.asarray(steps, float))
    if not len(x):
        return np.expm1(xs), np.zeros_like(xs)
    z = (xs[:, None] - x[None, :]) / bandwidth
    dens = np.exp(-0.5 * z ** 2).sum(1) / (bandwidth * np.sqrt(2 * np.pi))
    return np.expm1(xs), dens


def emergence_peaks(steps: np.ndarray, density: np.ndarray, min_height: float = 0.25) -> np.ndarray:
    """Steps of the local maxima of an emergence density at least `min_height` x its global maximum."""
    d = np.asarray(density, float)
    if not len(d) or d.max() <= 0:
        return np.array([])
    interior = (d[1:-1] >= d[:-2]) & (d[1:-1] > d[2:]) & (d[1:-1] >= min_height * d.max())
    return np.asarray(steps, float)[1:-1][interior]


__all__ = ["emergence_index", "trajectory_types", "feature_directions", "cross_snapshot_cosine", "match_directions",
           "match_labels", "best_label", "top_examples", "emergence_signal", "emergence_peaks", "TRAJECTORY_TYPES"]
