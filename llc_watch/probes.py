"""Linear probes for every task feature at every checkpoint, fitted many at once.

One probe per (feature, site, position) -- or per (feature, site) pooled over positions. All
probes that read the same activations share one design matrix, so a checkpoint's probes are a few
batched tensor programs instead of hundreds of sklearn fits:

    binary       logistic regression, batched Newton (IRLS) with per-probe backtracking
    categorical  multinomial logistic regression, batched L-BFGS
    numeric      ridge regression, batched closed form

Regularisation follows sklearn's convention, C * sum(loss) + 0.5 * |w|^2 with C = 100 by default
(Naidu et al. 2025). The penalty is on raw-activation weights, as sklearn on raw activations has it
(`penalty="raw"`): an untrained model's tiny activations then cannot be read by huge weights, which
is what makes the step-0 control mean something (with `penalty="standardized"` nearly every
feature of 4-bit addition is linearly decodable at step 0, since carries are threshold functions of
the input bits). Fitting itself runs on standardised activations for conditioning; weights are
returned in raw activation space (what ablations need).

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(1, 400, 8, generator=g)                  # [G groups, N rows, d]
    >>> y = (X[0, :, 0] > 0).float().expand(1, 1, 400)           # [G, F probes, N]
    >>> train = torch.arange(400) < 300
    >>> fit = fit_logistic(X, y, train)
    >>> fit.w.shape, fit.b.shape                                 # raw-space weights
    (torch.Size([1, 1, 8]), torch.Size([1, 1]))
    >>> m = binary_metrics(fit.logits(X), y, ~train)
    >>> float(m["accuracy"][0, 0]) > 0.95
    True

Settings are a frozen `ProbeSettings`; running the probes on every checkpoint of a run (probes.csv,
probes_quiet.csv) is llc_watch.analyses.probes.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import torch

from .activations import ProbeSet, capture, default_sites, feature_positions, probe_set, site_layer
from .device import resolve_device
from .settings import SettingsBase, SettingsError
from .tasks import derive_seed

@dataclass(frozen=True)
class ProbeSettings(SettingsBase):
    n_train: int = 2048               # probe-set examples that fit probes (Naidu et al. used 10,000)
    n_test: int = 512                 # held-out probe-set examples for the metrics (and ablations)
    seed: int = 0                     # probe-set seed, mixed with the run's seed
    sites: Optional[tuple[str, ...]] = None     # None: residual stream + attn/mlp outputs (default_sites)
    features: Optional[tuple[str, ...]] = None  # None: every feature the task labels
    pooled: bool = False              # one probe per (feature, site) over all defined positions
    C: float = 100.0                  # inverse L2 strength, sklearn's convention
    penalty: str = "raw"              # raw: L2 on raw-activation weights (as sklearn); or standardized
    max_iter: int = 20                # Newton steps (binary; ~12 reach float32 precision) / L-BFGS iterations x 10
    shuffled: bool = True             # also fit every probe on shuffled train labels (selectivity control)
    min_class_count: int = 5          # skip probes whose train labels have fewer of their rarer class
    device: str = "auto"              # auto | cpu | cuda (resolved where each job runs)

    def validate(self):
        for name in ("n_train", "n_test", "max_iter"):
            self.at_least(name, 1)
        self.at_least("min_class_count", 1)
        self.positive("C")
        self.one_of("penalty", ("raw", "standardized"))
        self.device_name("device")

    def check_task(self, task) -> None:
        """Feature names known to the task (before any checkpoint is loaded)."""
        unknown = sorted(set(self.features or ()) - set(task.features))
        if unknown:
            raise SettingsError(f"features={','.join(unknown)}: not features of task {task.name!r}; "
                                f"known: {', '.join(task.features)}")


DEFAULT_SETTINGS: dict = ProbeSettings().to_dict()   # the dict form the fitting functions take

MEASURES = ("accuracy", "balanced_accuracy", "log_loss", "r2", "selectivity", "baseline")
POOLED = -1  # `position` of a probe pooled over positions


def resolve_settings(settings: dict | None, defaults: dict = DEFAULT_SETTINGS) -> dict:
    """Defaults filled in; unknown keys are an error naming the known ones."""
    settings = dict(settings or {})
    unknown = set(settings) - set(defaults)
    if unknown:
        raise ValueError(f"unknown probe setting(s) {sorted(unknown)}; known: {', '.join(sorted(defaults))}")
    return {**defaults, **settings}


# ----------------------------------------------------------------------------------------------
# Batched fitting. Shapes: X [G, N, d] (one design matrix per group, e.g. per (site, position)),
# labels y [G, F, N] (F probes share a group's X), row masks [G, F, N] or [N].
# ----------------------------------------------------------------------------------------------

@dataclass
class LinearFit:
    """Raw-space probe weights: logits = X @ w + b."""

    w: torch.Tensor  # [G, F, d] (binary, numeric) or [G, F, d, K] (categorical)
    b: torch.Tensor  # [G, F] or [G, F, K]

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        """X [G, N, d] -> [G, F, N] (or [G, F, N, K])."""
        if self.w.dim() == 3:
            return torch.einsum("gnd,gfd->gfn", X, self.w) + self.b[..., None]
        return torch.einsum("gnd,gfdk->gfnk", X, self.w) + self.b[:, :, None, :]


def _row_mask(mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Broadcast a row mask to y's [G, F, N] and drop rows whose label is NaN."""
    m = mask.to(y.device).bool()
    m = m.expand(y.shape[:3]) if m.dim() < 3 else m
    return m & ~torch.isnan(y if y.dim() == 3 else y.float())


def _standardize(X: torch.Tensor, train_rows: torch.Tensor):
    """(Xs, mu, sd) with train-row statistics per group; constant columns get sd 1."""
    Xt = X[:, train_rows]
    mu, sd = Xt.mean(1, keepdim=True), Xt.std(1, keepdim=True)
    sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))
    return (X - mu) / sd, mu, sd


def _penalty(sd: torch.Tensor, penalty: str) -> torch.Tensor:
    """Per-dimension L2 weights [G, 1, d] in standardised coordinates: |w_raw|^2 = sum (w_std / sd)^2."""
    if penalty == "raw":
        return 1.0 / sd ** 2
    if penalty == "standardized":
        return torch.ones_like(sd)
    raise ValueError(f"penalty={penalty!r}: choose 'raw' or 'standardized'")


def _to_raw(ws: torch.Tensor, bs: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor) -> LinearFit:
    """Undo standardisation: w.(x - mu)/sd + b = (w/sd).x + (b - w.mu/sd)."""
    if ws.dim() == 3:  # [G, F, d]
        w = ws / sd  # sd [G, 1, d] broadcasts over F
        return LinearFit(w, bs - torch.einsum("gfd,gd->gf", w, mu[:, 0]))
    w = ws / sd[..., None]  # [G, F, d, K]
    return LinearFit(w, bs - torch.einsum("gfdk,gd->gfk", w, mu[:, 0]))


def _any_train_rows(m: torch.Tensor) -> torch.Tensor:
    return m.any(dim=tuple(range(m.dim() - 1))) if m.dim() > 1 else m


def fit_logistic(X: torch.Tensor, y: torch.Tensor, train: torch.Tensor, C: float = 100.0,
                 max_iter: int = 20, tol: float = 1e-5, penalty: str = "raw") -> LinearFit:
    """Binary logistic probes by batched Newton: minimise C * sum(log-loss) + 0.5 |w|^2 per probe.

    X [G, N, d]; y [G, F, N] in {0, 1} (NaN = no label); train: bool [N] or [G, F, N] rows to fit.
    Every probe gets its own Newton step and its own backtracking step size.
    """
    G, N, d = X.shape
    m = _row_mask(train, y)                                    # [G, F, N]
    rows = _any_train_rows(m.reshape(-1, N))
    Xs, mu, sd = _standardize(X, rows)
    # only rows some probe trains on enter the loop (test rows cost nothing)
    m, yv, Xs = m[..., rows].float(), torch.nan_to_num(y[..., rows], nan=0.0), Xs[:, rows]
    N = Xs.shape[1]
    Z = torch.cat([Xs, torch.ones(G, N, 1, device=X.device, dtype=X.dtype)], -1)  # [G, N, D]
    F, D = y.shape[1], d + 1
    # dividing the objective by C * n keeps step sizes and tolerances scale-free
    n = m.sum(-1).clamp(min=1)                                 # [G, F]
    lam = 1.0 / (C * n)                                        # [G, F]
    reg = torch.cat([_penalty(sd, penalty), torch.zeros(G, 1, 1, device=X.device, dtype=X.dtype)], -1)  # [G, 1, D]
    # (the intercept is not penalised)

    def objective(theta):                                      # [..., G, F, D] -> [..., G, F]
        z = torch.einsum("gnd,...gfd->...gfn", Z, theta)
        nll = torch.nn.functional.softplus(z) - yv * z
        return (nll * m).sum(-1) / n + 0.5 * lam * (theta.pow(2) * reg).sum(-1)

    theta = torch.zeros(G, F, D, device=X.device, dtype=X.dtype)
    ts = 0.5 ** torch.arange(8, device=X.device, dtype=X.dtype)  # candidate step sizes
    for _ in range(max_iter):
        z = torch.einsum("gnd,gfd->gfn", Z, theta)
        p = torch.sigmoid(z)
        grad = torch.einsum("gfn,gnd->gfd", (p - yv) * m, Z) / n[..., None] + lam[..., None] * reg * theta
        if grad.abs().max() < tol:
            break
        s = p * (1 - p) * m / n[..., None]                     # [G, F, N]
        H = torch.einsum("gnd,gfn,gne->gfde", Z, s, Z) + torch.diag_embed(lam[..., None] * reg + 1e-10)
        step = torch.linalg.solve(H.double(), grad.double().unsqueeze(-1)).squeeze(-1).to(X.dtype)
        # backtracking, batched: evaluate every candidate step size and keep the largest that helps
        J0 = objective(theta)
        cand = theta - ts[:, None, None, None] * step          # [S, G, F, D]
        J = objective(cand)                                    # [S, G, F]
        decrease = (grad * step).sum(-1)                       # [G, F] >= 0 (H is positive definite)
        ok = J <= J0 - 1e-4 * ts[:, None, None] * decrease
        first = torch.where(ok.any(0), ok.float().argmax(0), torch.full_like(J0, len(ts) - 1, dtype=torch.long))
        theta = cand.gather(0, first[None, ..., None].expand(1, G, F, D))[0]
    return _to_raw(theta[..., :d], theta[..., d], mu, sd)


def fit_multinomial(X: torch.Tensor, y: torch.Tensor, train: torch.Tensor, n_classes: int,
                    C: float = 100.0, max_iter: int = 300, penalty: str = "raw") -> LinearFit:
    """Multinomial logistic probes by batched L-BFGS (the objective is a sum of independent probes).

    y [G, F, N] float class indices (NaN = no label). Returns w [G, F, d, K], b [G, F, K].
    """
    G, N, d = X.shape
    F, K = y.shape[1], n_classes
    m = _row_mask(train, y).float()
    Xs, mu, sd = _standardize(X, _any_train_rows(m.bool().reshape(-1, N)))
    yi = torch.nan_to_num(y, nan=0.0).long()
    n = m.sum(-1).clamp(min=1)
    lam = 1.0 / (C * n)
    reg = _penalty(sd, penalty)[..., None]                     # [G, 1, d, 1]
    W = torch.zeros(G, F, d, K, device=X.device, dtype=X.dtype, requires_grad=True)
    b = torch.zeros(G, F, K, device=X.device, dtype=X.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = torch.einsum("gnd,gfdk->gfnk", Xs, W) + b[:, :, None]
        nll = -logits.log_softmax(-1).gather(-1, yi[..., None])[..., 0]
        loss = ((nll * m).sum(-1) / n + 0.5 * lam * (W.pow(2) * reg).sum((-1, -2))).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return _to_raw(W.detach(), b.detach(), mu, sd)


def fit_ridge(X: torch.Tensor, y: torch.Tensor, train: torch.Tensor, C: float = 100.0,
              penalty: str = "raw") -> LinearFit:
    """Ridge probes in closed form: minimise 0.5 * C * sum((y - Xw - b)^2) + 0.5 |w|^2 per probe."""
    G, N, d = X.shape
    m = _row_mask(train, y).float()
    Xs, mu, sd = _standardize(X, _any_train_rows(m.bool().reshape(-1, N)))
    Z = torch.cat([Xs, torch.ones(G, N, 1, device=X.device, dtype=X.dtype)], -1)
    yv = torch.nan_to_num(y, nan=0.0)
    reg = torch.cat([_penalty(sd, penalty), torch.full((G, 1, 1), 1e-8, device=X.device, dtype=X.dtype)], -1)
    A = C * torch.einsum("gnd,gfn,gne->gfde", Z, m, Z) + torch.diag_embed(reg)
    rhs = C * torch.einsum("gnd,gfn->gfd", Z, m * yv)
    theta = torch.linalg.solve(A.double(), rhs.double().unsqueeze(-1)).squeeze(-1).to(X.dtype)
    return _to_raw(theta[..., :d], theta[..., d], mu, sd)


# ----------------------------------------------------------------------------------------------
# Metrics, batched over [G, F]
# ----------------------------------------------------------------------------------------------

def _masked_mean(v, m):
    return (v * m).sum(-1) / m.sum(-1).clamp(min=1)


def binary_metrics(logits: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """accuracy, balanced_accuracy, log_loss per probe ([G, F] each) on `rows`."""
    m = _row_mask(rows, y).float()
    yv = torch.nan_to_num(y, nan=0.0)
    correct = ((logits > 0).float() == yv).float()
    nll = torch.nn.functional.softplus(logits) - yv * logits
    recall1 = _masked_mean(correct, m * yv)
    recall0 = _masked_mean(correct, m * (1 - yv))
    has1, has0 = (m * yv).sum(-1) > 0, (m * (1 - yv)).sum(-1) > 0
    bal = torch.where(has1 & has0, (recall0 + recall1) / 2, torch.where(has1, recall1, recall0))
    return {"accuracy": _masked_mean(correct, m), "balanced_accuracy": bal, "log_loss": _masked_mean(nll, m)}


def categorical_metrics(logits: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """logits [G, F, N, K]; metrics per probe [G, F]. Balanced accuracy averages classes present."""
    m = _row_mask(rows, y).float()
    yi = torch.nan_to_num(y, nan=0.0).long()
    K = logits.shape[-1]
    correct = (logits.argmax(-1) == yi).float()
    nll = -logits.log_softmax(-1).gather(-1, yi[..., None])[..., 0]
    onehot = torch.nn.functional.one_hot(yi, K).float() * m[..., None]   # [G, F, N, K]
    per_class = (onehot * correct[..., None]).sum(-2) / onehot.sum(-2).clamp(min=1)
    present = onehot.sum(-2) > 0
    bal = (per_class * present).sum(-1) / present.sum(-1).clamp(min=1)
    return {"accuracy": _masked_mean(correct, m), "balanced_accuracy": bal, "log_loss": _masked_mean(nll, m)}


def numeric_metrics(pred: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    m = _row_mask(rows, y).float()
    yv = torch.nan_to_num(y, nan=0.0)
    mean = _masked_mean(yv, m)[..., None]
    ss_res = ((yv - pred) ** 2 * m).sum(-1)
    ss_tot = ((yv - mean) ** 2 * m).sum(-1)
    return {"r2": 1 - ss_res / ss_tot.clamp(min=1e-12)}


def majority_metrics(y: torch.Tensor, train: torch.Tensor, test: torch.Tensor, n_classes: int) -> dict:
    """The constant predictor of the train majority class (train prior for log-loss) on test rows."""
    mtr, mte = _row_mask(train, y).float(), _row_mask(test, y).float()
    yi = torch.nan_to_num(y, nan=0.0).long()
    counts = (torch.nn.functional.one_hot(yi, n_classes).float() * mtr[..., None]).sum(-2)   # [G, F, K]
    prior = (counts + 0.5) / (counts + 0.5).sum(-1, keepdim=True)
    logits = prior.log()[:, :, None, :].expand(*yi.shape, n_classes)
    out = categorical_metrics(logits, y, test)
    out["baseline"] = out["accuracy"]
    return out


# ----------------------------------------------------------------------------------------------
# One checkpoint: capture, fit every probe, tidy rows
# ----------------------------------------------------------------------------------------------

@dataclass
class ProbeGroup:
    """Probes that share design matrices: one feature kind (and class count) on one probe set."""

    keys: list[tuple]          # per group g: (site, position)
    features: list[str]        # per probe f within a group
    kind: str
    n_classes: int
    X: torch.Tensor            # [G, N, d]
    y: torch.Tensor            # [G, F, N]


def build_groups(acts: dict[str, torch.Tensor], ps: ProbeSet, specs: dict, positions: dict[str, list[int]],
                 all_positions: list[int], pooled: bool) -> list[ProbeGroup]:
    """Arrange captured activations {site: [N, P, d]} into batched probe groups, per kind.

    Sites of different widths (mlp.hook_post) form their own groups.
    """
    labels = {f: ps.batch.features[f][:, all_positions].to(next(iter(acts.values())).device) for f in specs}
    by_kind: dict[tuple, list[str]] = {}
    for f, spec in specs.items():
        by_kind.setdefault((spec.kind, spec.n_classes if spec.kind == "categorical" else 2), []).append(f)
    groups = []
    for (kind, K), feats in by_kind.items():
        used = sorted({p for f in feats for p in positions[f]})
        by_width: dict[int, list[str]] = {}
        for s, a in acts.items():
            by_width.setdefault(a.shape[-1], []).append(s)
        for sites in by_width.values():
            if pooled:
                cols = [all_positions.index(p) for p in used]
                keys = [(s, POOLED) for s in sites]
                X = torch.stack([acts[s][:, cols].transpose(0, 1).reshape(-1, acts[s].shape[-1]) for s in sites])
                y = torch.stack([labels[f][:, cols].transpose(0, 1).reshape(-1) for f in feats])
                y = y.expand(len(sites), *y.shape)
            else:
                keys = [(s, p) for s in sites for p in used]
                X = torch.stack([acts[s][:, all_positions.index(p)] for s, p in keys])
                y = torch.stack([torch.stack([labels[f][:, all_positions.index(p)] for f in feats])
                                 for _, p in keys])
            groups.append(ProbeGroup(keys, feats, kind, K, X, y.contiguous()))
    return groups


def _rows_mask(group: ProbeGroup, ps: ProbeSet, which: slice) -> torch.Tensor:
    """bool [N_rows] for the train or test examples (pooled rows are position-major)."""
    N = group.X.shape[1]
    ex = torch.zeros(len(ps.batch), dtype=torch.bool)
    ex[which] = True
    return ex.repeat(N // len(ps.batch)).to(group.X.device)


def _shuffle_labels(y: torch.Tensor, train: torch.Tensor, seed: int) -> torch.Tensor:
    """Permute each probe's labels among its train rows (test rows keep the truth)."""
    g = torch.Generator().manual_seed(seed)
    out = y.clone()
    idx = torch.nonzero(train.cpu()).flatten()
    G, F, _ = y.shape
    for gi in range(G):
        for fi in range(F):
            perm = idx[torch.randperm(len(idx), generator=g)].to(y.device)
            out[gi, fi, idx.to(y.device)] = y[gi, fi, perm]
    return out


@dataclass
class FittedProbes:
    """Everything a checkpoint's probes produced: rows for the table, fits for the ablations."""

    rows: list[dict]
    fits: dict[tuple, dict]  # (feature, site, position) -> {w, b, train_log_loss, accuracy, ...}
    probe_set: ProbeSet
    acts: dict[str, torch.Tensor]
    positions: list[int]


def fit_checkpoint_probes(model, task, settings: dict, run_seed: int = 0, step: int = 0,
                          kinds: tuple = ("binary", "categorical", "numeric"),
                          controls: bool = True) -> FittedProbes:
    """Capture the probe set's activations on `model` and fit every probe; return rows and fits."""
    s = settings
    device = resolve_device(s["device"])
    model = model.to(device).eval()
    ps = probe_set(task, s["n_train"], s["n_test"], seed=derive_seed(run_seed, s["seed"]))
    names = s["features"] or list(task.features)
    specs = {f: task.features[f] for f in names if task.features[f].kind in kinds}
    sites = s["sites"] or default_sites(model)
    positions = feature_positions(ps.batch, list(specs))
    all_pos = sorted({p for v in positions.values() for p in v})
    if not specs or not all_pos:
        return FittedProbes([], {}, ps, {}, all_pos)
    acts = capture(model, ps.batch.tokens, sites, all_pos, device=device)
    rows, fits = [], {}
    for group in build_groups(acts, ps, specs, positions, all_pos, s["pooled"]):
        tr, te = _rows_mask(group, ps, ps.train), _rows_mask(group, ps, ps.test)
        y = group.y
        F = y.shape[1]
        if controls and s["shuffled"]:  # fit true and shuffled labels in one batch
            y = torch.cat([y, _shuffle_labels(y, tr, derive_seed(run_seed, s["seed"], "shuffle"))], 1)
        if group.kind == "binary":
            fit = fit_logistic(group.X, y, tr, s["C"], s["max_iter"], penalty=s["penalty"])
            z = fit.logits(group.X)
            test, train = binary_metrics(z, y, te), binary_metrics(z, y, tr)
        elif group.kind == "categorical":
            fit = fit_multinomial(group.X, y, tr, group.n_classes, s["C"], 10 * s["max_iter"], s["penalty"])
            z = fit.logits(group.X)
            test, train = categorical_metrics(z, y, te), categorical_metrics(z, y, tr)
        else:
            fit = fit_ridge(group.X, y, tr, s["C"], s["penalty"])
            z = fit.logits(group.X)
            test, train = numeric_metrics(z, y, te), numeric_metrics(z, y, tr)
        maj = majority_metrics(group.y, tr, te, group.n_classes) if group.kind != "numeric" else None
        # class counts on train rows: a probe of a (nearly) constant label means nothing
        yt = torch.where(_row_mask(tr, group.y), group.y, torch.nan)
        if group.kind == "numeric":
            usable = torch.nan_to_num(yt.nanquantile(0.9, -1) - yt.nanquantile(0.1, -1), nan=0.0) > 0
        else:
            K = group.n_classes
            counts = (torch.nn.functional.one_hot(torch.nan_to_num(yt, nan=0).long(), K).float()
                      * (~yt.isnan())[..., None]).sum(-2)                      # [G, F, K]
            usable = (counts >= s["min_class_count"]).sum(-1) >= 2
        for gi, (site, pos) in enumerate(group.keys):
            for fi, feat in enumerate(group.features):
                if not usable[gi, fi]:
                    continue
                base = {"step": step, "feature": feat, "layer": site_layer(site), "site": site,
                        "position": int(pos), "kind": group.kind,
                        "n_train": int(_row_mask(tr, group.y)[gi, fi].sum()),
                        "n_test": int(_row_mask(te, group.y)[gi, fi].sum())}
                measures = ["r2"] if group.kind == "numeric" else ["accuracy", "balanced_accuracy", "log_loss"]
                if group.kind != "numeric":
                    base["train_log_loss"] = float(train["log_loss"][gi, fi])
                for mname in measures:  # train_value: the same measure on the train rows (what selects)
                    rows.append({**base, "measure": mname, "value": float(test[mname][gi, fi]), "control": "probe",
                                 "train_value": float(train[mname][gi, fi])})
                if controls and s["shuffled"]:
                    for mname in measures:
                        rows.append({**base, "measure": mname, "value": float(test[mname][gi, F + fi]),
                                     "control": "shuffled"})
                    head = measures[0] if group.kind == "numeric" else "accuracy"
                    rows.append({**base, "measure": "selectivity", "control": "shuffled",
                                 "value": float(test[head][gi, fi] - test[head][gi, F + fi])})
                if controls and maj is not None:
                    for mname in ("baseline", "accuracy", "balanced_accuracy", "log_loss"):
                        rows.append({**base, "measure": mname, "value": float(maj[mname][gi, fi]),
                                     "control": "majority"})
                if group.kind != "numeric":
                    fits[(feat, site, int(pos))] = {
                        "w": fit.w[gi, fi].cpu(), "b": fit.b[gi, fi].cpu(), "kind": group.kind,
                        "train_log_loss": float(train["log_loss"][gi, fi]),
                        "accuracy": float(test["accuracy"][gi, fi]),
                        "balanced_accuracy": float(test["balanced_accuracy"][gi, fi])}
    return FittedProbes(rows, fits, ps, acts, all_pos)


# ----------------------------------------------------------------------------------------------
# Whole run: step-0 control, each feature's curve (quiet-or-loud: llc_watch.analyses.probes)
# ----------------------------------------------------------------------------------------------

KEY = ["feature", "layer", "site", "position", "measure"]


def add_step0_control(df: pd.DataFrame) -> pd.DataFrame:
    """Append control='step0' rows: the same probe on the untrained model, beside every step.

    Also a 'selectivity' row against step 0 (probe accuracy - step-0 accuracy; R^2 for numeric).
    """
    probe = df[df.control == "probe"]
    ref = probe[probe.step == probe.step.min()] if len(probe) and probe.step.min() == 0 else None
    if ref is None:
        warnings.warn("no step-0 checkpoint in the table: the step0 control is left out")
        return df
    ref = ref[KEY + ["value"]].rename(columns={"value": "step0_value"})
    merged = probe.merge(ref, on=KEY, how="inner")
    s0 = merged.assign(value=merged.step0_value, control="step0").drop(columns="step0_value")
    head = merged[merged.measure.isin(["accuracy", "r2"])]
    sel = head.assign(value=head.value - head.step0_value, measure="selectivity", control="step0").drop(
        columns="step0_value")
    return pd.concat([df, s0, sel], ignore_index=True)


def _selection(p: pd.DataFrame) -> tuple[str, bool]:
    """(column, lower_is_better) that picks the best site: the train log-loss (Naidu et al.), else
    the measure's train value; never the test value (that would select on the test set)."""
    for col, lower in (("train_log_loss", True), ("train_value", False)):
        if col in p.columns and p[col].notna().all():
            return col, lower
    raise ValueError("the probes table has no train metric (train_log_loss / train_value) to select probes by; "
                     "rerun `llc-watch probe RUN` (tables written before this release select on the test set)")


HEAD_MEASURES = ("balanced_accuracy", "accuracy", "r2")  # the reported value per feature, in order of preference
FORMED_REDUCE = "max"   # over answer positions: a feature is held when some position's probe holds it


def feature_curves(probes: pd.DataFrame, reduce: str = FORMED_REDUCE, measures=HEAD_MEASURES,
                   on_missing_train: str = "raise") -> pd.DataFrame:
    """Per (feature, step): the held-out value of each position's probe selected by its train metric
    (lowest train log-loss over layers and sites, as Naidu et al. select; R^2 on train rows for
    numeric probes), reduced over positions (`max`, `mean` or `min`).

    The value is the first of `measures` the feature has: balanced accuracy (a majority-class
    predictor scores 0.5 however imbalanced the classes, where raw accuracy can start at 0.75),
    else accuracy, else R^2. on_missing_train: "raise", or "test" to select on the test value with a
    warning (old tables). Returns feature, step, value, measure, site, layer, position (of the
    position that sets the reduced value for max/min; of the first position for mean), selected_by.

        >>> rows = [dict(feature="c", step=10, layer=0, site=s, position=0, measure="balanced_accuracy",
        ...              control="probe", value=v, train_log_loss=t)
        ...         for s, v, t in (("resid", 0.95, 0.30), ("mlp", 0.99, 0.40))]
        >>> feature_curves(pd.DataFrame(rows))[["site", "value"]].values.tolist()   # train-selected
        [['resid', 0.95]]
    """
    if reduce not in ("max", "mean", "min"):
        raise ValueError(f"reduce={reduce!r}: choose max, mean or min")
    if on_missing_train not in ("raise", "test"):
        raise ValueError(f"on_missing_train={on_missing_train!r}: choose raise or test")
    p = probes[(probes["control"].fillna("probe") == "probe")] if "control" in probes.columns else probes
    p = p[np.isfinite(p["value"].astype(float))]
    out = []
    for feat, d in p.groupby("feature"):
        m = next((m for m in measures if (d["measure"] == m).any()), None)
        if m is None:
            continue
        d = d[d["measure"] == m]
        try:
            col, lower = _selection(d)
        except ValueError:
            if on_missing_train != "test":
                raise
            warnings.warn(f"probes of {feat}: no train metric, selected on the test value (rerun llc-watch probe)")
            col, lower = "value", False
        key = d[col].astype(float) * (1 if lower else -1)
        best = d.assign(_k=key).sort_values("_k", kind="stable").groupby(["step", "position"], as_index=False).first()
        for step, g in best.groupby("step"):
            if reduce == "mean":
                at, val = g.iloc[0], float(g["value"].mean())
            else:
                at = g.loc[g["value"].idxmax() if reduce == "max" else g["value"].idxmin()]
                val = float(at["value"])
            out.append({"feature": feat, "step": float(step), "value": val, "measure": m, "site": at["site"],
                        "layer": int(at["layer"]), "position": int(at["position"]), "selected_by": col})
    cols = ["feature", "step", "value", "measure", "site", "layer", "position", "selected_by"]
    return pd.DataFrame(out, columns=cols).sort_values(["feature", "step"]).reset_index(drop=True)


__all__ = ["DEFAULT_SETTINGS", "LinearFit", "fit_logistic", "fit_multinomial", "fit_ridge", "binary_metrics",
           "categorical_metrics", "numeric_metrics", "majority_metrics", "fit_checkpoint_probes", "ProbeSettings",
           "add_step0_control", "feature_curves", "resolve_settings", "HEAD_MEASURES", "FORMED_REDUCE"]
