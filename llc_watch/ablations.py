"""Does the model use a feature it holds? Remove it along its best probe and measure the damage.

For each feature (binary or categorical) and answer position, the best probe (lowest train
log-loss over sites, Naidu et al. 2025) gives a decision set at its site: for a binary probe the
hyperplane w.x + b = 0, for a K-class probe the affine subspace where all K class logits are equal
(B^T x = a, with B [d, r] an orthonormal basis of the span of the centred class weights, r <= K-1;
for K = 2 this is the hyperplane, with w_hat = w/|w| and b_hat = b/|w| scaled alike). Edits of that
site at that position, each evaluated by exact-match accuracy and answer loss:

    projection        x <- x - B (B^T x - a)            onto the decision set (the paper's ablation)
    mean              x <- x - B (B^T x - mean(B^T x))  the probe coordinates set to their mean
    random_shift      x <- x - U (B^T x - a)            the probe's own displacement of every example
                                                        (same offset, same length), along random U
    random_cov        as random_shift, U drawn from the site's activation covariance (directions the
                                                        activations actually vary along)
    random_projection x <- x - U (U^T x - a)            a random decision set with the probe's offset
                                                        (the paper's random control: x - (u.x + b_hat) u)
    random            x <- x - U (U^T x - mean(U^T x))  mean ablation along random U (the mean's control)
    projection_all    the projection at every answer position of the feature at once (position -1),
                      against random_shift_all (each position's displacement along its own random U)

U: `n_random` random orthonormal [d, r] frames. random_shift is the like-for-like control of the
projection: it moves every example exactly as far as the projection does, only not along the probe;
its mean and spread fill `random_mean` / `random_std` of the projection rows (`random` fills the mean
rows'). Intervals: a percentile bootstrap over held-out examples (and over directions for the
controls) of each accuracy drop (`ci_lo`, `ci_hi`) and of the projection's excess over the matched
control on the same examples (`excess`, `excess_lo`, `excess_hi`).

    >>> import torch
    >>> x = torch.tensor([[[3.0, 1.0]]])                     # [B, T, d]
    >>> hook = projection_hook(0, torch.tensor([1.0, 0.0]), torch.tensor(-1.0))
    >>> hook(x)                                              # moved onto x_0 = 1
    tensor([[[1., 1.]]])
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from .activations import site_layer
from .probes import ProbeSettings, fit_checkpoint_probes
from .settings import SettingsBase
from .tasks import Batch, derive_seed

CONTROLS = ("shift", "cov", "projection")   # matched random controls (method random_<control>)


@dataclass(frozen=True)
class AblationSettings(SettingsBase):
    n_train: int = 2048               # probe-set examples that fit the probes whose directions are ablated
    n_test: int = 512                 # held-out examples the ablations are evaluated on
    seed: int = 0                     # probe-set seed, mixed with the run's seed
    sites: Optional[tuple[str, ...]] = None     # None: residual stream + attn/mlp outputs
    features: Optional[tuple[str, ...]] = None  # None: every feature the task labels
    C: float = 100.0                  # inverse L2 strength of the probes, sklearn's convention
    penalty: str = "raw"              # raw | standardized (see ProbeSettings)
    max_iter: int = 20                # probe fitting iterations
    min_class_count: int = 5          # skip probes whose train labels have fewer of their rarer class
    device: str = "auto"              # auto | cpu | cuda (resolved where each job runs)
    n_random: int = 32                # random unit directions per (site, position): the control
    random_eval: int = 128            # held-out examples the random control runs on (0: all n_test);
                                      # it costs n_random forward passes per (site, position)
    chunk: int = 8192                 # sequences per forward pass (random directions are batched)
    controls: tuple[str, ...] = ("shift",)  # matched random controls beside `random`: shift (same displacement),
                                      # cov (shift along covariance directions), projection (random hyperplane with
                                      # the probe's offset); each costs n_random passes per (feature, position)
    kinds: tuple[str, ...] = ("binary", "categorical")   # feature kinds ablated (numeric probes have no decision set)
    n_boot: int = 1000                # bootstrap resamples for the intervals (0: none)
    all_positions: bool = True        # also ablate each feature at all its answer positions at once (projection_all)
    level: float = 0.9                # bootstrap interval level

    def validate(self):
        ProbeSettings.validate(self)
        if self.n_random < 2:
            self._fail("n_random", "must be >= 2 (32 is the paper's control)")
        self.at_least("random_eval", 0)
        self.at_least("chunk", 1)
        self.at_least("n_boot", 0)
        self.within("level", 0.5, 0.999)
        bad = sorted(set(self.controls) - set(CONTROLS))
        if bad:
            self._fail("controls", f"unknown control(s) {bad}; choose from {', '.join(CONTROLS)}")
        bad = sorted(set(self.kinds) - {"binary", "categorical"})
        if bad:
            self._fail("kinds", f"{bad} cannot be ablated; choose binary and/or categorical")

    check_task = ProbeSettings.check_task


DEFAULT_SETTINGS: dict = AblationSettings().to_dict()


# ----------------------------------------------------------------------------------------------
# Subspace edits: x <- x - V_r coef_r(x) at one position, one frame V_r per stacked copy r
# ----------------------------------------------------------------------------------------------

def probe_subspace(w: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """(B [d, r], a [r]): the probe's decision set {x : B^T x = a}, B orthonormal.

    Binary probe (w [d], b []): B = w_hat, a = -b_hat (the hyperplane w.x + b = 0). K-class probe
    (w [d, K], b [K]): where all class logits are equal, i.e. Wc^T x + bc = 0 for the class-centred
    weights; B spans Wc's column space (rank <= K - 1).

        >>> B, a = probe_subspace(torch.tensor([3.0, 4.0]), torch.tensor(10.0))
        >>> B[:, 0].tolist(), a.tolist()
        ([0.6000000238418579, 0.800000011920929], [-2.0])
    """
    if w.dim() == 1:
        n = w.norm()
        return (w / n)[:, None], (-b / n).reshape(1)
    Wc, bc = w - w.mean(1, keepdim=True), b - b.mean()
    U, S, Vh = torch.linalg.svd(Wc.double(), full_matrices=False)
    r = int((S > rtol * S[0]).sum())
    a = -(Vh[:r] @ bc.double()) / S[:r]
    return U[:, :r].to(w.dtype), a.to(w.dtype)


def random_frames(d: int, r: int, n: int, seed: int, cov: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """n random orthonormal frames [n, d, r], a pure function of seed: uniform (Haar) when cov is None,
    else the QR of Gaussian draws from N(0, cov) (directions weighted by the activations' variance)."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(n, d, r, generator=g, dtype=torch.float64)
    if cov is not None:
        evals, evecs = torch.linalg.eigh(cov.double().cpu())
        G = evecs @ (evals.clamp(min=0).sqrt()[:, None] * (evecs.T @ G))
    Q, R = torch.linalg.qr(G)
    Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))[:, None, :]   # a unique, uniform frame
    return Q.float().to(device)


class SubspaceEdit:
    """x[:, position] <- x - V_r coef_r for inputs stacked [R*B, T, d] (r-major), V [R, d, k].

    coef_r = V_r^T x - a_r (project onto {V_r^T x = a_r}), or, with `along` = (B, a0), the probe's
    own coordinates B^T x - a0 moved along V_r instead (same displacement, other directions).
    `evaluate_edit` slices it to the copies of each forward pass.
    """

    sliceable = True

    def __init__(self, position: int, V: torch.Tensor, a: torch.Tensor | None = None, along=None):
        self.position, self.V, self.a, self.along = position, V, a, along

    def __call__(self, r0: int, r1: int):
        V = self.V[r0:r1]
        a = self.a[r0:r1] if self.a is not None else None
        pos, along = self.position, self.along

        def hook(x):
            x = x.clone()
            R = V.shape[0]
            v = x[:, pos].view(R, -1, x.shape[-1])                              # [R, B, d]
            if along is None:
                coef = torch.einsum("rbd,rdk->rbk", v, V) - a[:, None, :]
            else:
                B, a0 = along
                coef = (torch.einsum("rbd,dk->rbk", v, B) - a0).expand(R, -1, -1)
            x[:, pos] = (v - torch.einsum("rbk,rdk->rbd", coef, V)).reshape(-1, x.shape[-1])
            return x
        return hook


class ComposedEdit:
    """Sliceable edits of one site at different positions, applied in turn (a feature ablated at
    every answer position at once)."""

    sliceable = True

    def __init__(self, edits: list):
        self.edits = list(edits)

    def __call__(self, r0: int, r1: int):
        hooks = [e(r0, r1) for e in self.edits]

        def hook(x):
            for h in hooks:
                x = h(x)
            return x
        return hook


def projection_hook(position: int, w_hat: torch.Tensor, b_hat: torch.Tensor):
    """x[:, position] <- x - (w_hat.x + b_hat) w_hat: onto the hyperplane (w_hat a unit vector)."""
    return SubspaceEdit(position, w_hat[None, :, None], -b_hat.reshape(1, 1))(0, 1)


def mean_hook(position: int, w_hat: torch.Tensor, mean: torch.Tensor):
    """x[:, position] <- x - (w_hat.x - mean) w_hat: the component along w_hat set to its mean."""
    return projection_hook(position, w_hat, -mean)


def random_hook(position: int, U: torch.Tensor, means: torch.Tensor):
    """For inputs stacked [R*B, T, d] (r-major), edit copy r along its own unit direction U[r]:
    x <- x - (U[r].x - means[r]) U[r]  (U [R, d], means [R])."""
    return SubspaceEdit(position, U[..., None], means[:, None])(0, U.shape[0])


def random_directions(d: int, n: int, seed: int, device=None) -> torch.Tensor:
    """n unit vectors [n, d], uniform on the sphere, a pure function of seed."""
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(n, d, generator=g)
    return (U / U.norm(dim=-1, keepdim=True)).to(device)


# ----------------------------------------------------------------------------------------------
# Evaluation under an edit
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_examples(model, task, batch: Batch, hooks: dict | None = None, repeat: int = 1,
                      chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: (exact match [repeat, B] float, mean answer-token loss [repeat, B]) with `hooks`.

    repeat > 1 stacks the batch `repeat` times (r-major) for hooks that edit each copy differently
    (sliceable hooks, e.g. SubspaceEdit); `chunk` rows per forward pass, rounded to whole copies.
    """
    device = next(model.parameters()).device
    B = len(batch)
    per_pass = max(1, chunk // B)  # copies per forward pass
    oks, losses = [], []
    for r0 in range(0, repeat, per_pass):
        r = min(per_pass, repeat - r0)
        toks = batch.tokens.to(device).repeat(r, 1)
        tgt, mask = batch.targets.to(device).repeat(r, 1), batch.loss_mask.to(device).repeat(r, 1)
        hk = hooks
        if hooks:  # a sliceable hook holds all `repeat` edits; give it this pass's copies
            hk = {s: h(r0, r0 + r) if getattr(h, "sliceable", False) else h for s, h in hooks.items()}
        out = model(toks, hooks=hk).float()
        nll = torch.nn.functional.cross_entropy(out.transpose(1, 2), tgt, reduction="none")  # [rB, T]
        oks.append(((out.argmax(-1) == tgt) | ~mask).all(-1).float().view(r, B))
        losses.append(((nll * mask).sum(1) / mask.sum(1).clamp(min=1)).view(r, B))
    return torch.cat(oks).cpu(), torch.cat(losses).cpu()


def evaluate_edit(model, task, batch: Batch, hooks: dict | None = None, repeat: int = 1,
                  chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact-match accuracy [repeat], mean answer-token loss [repeat]) with `hooks` applied."""
    ok, loss = evaluate_examples(model, task, batch, hooks, repeat, chunk)
    return ok.mean(1), loss.mean(1)


def bootstrap_interval(x: torch.Tensor, n_boot: int = 1000, level: float = 0.9, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(x): x [B] resamples examples; x [R, B] resamples
    directions and examples independently (both are samples). (nan, nan) when n_boot is 0.

        >>> lo, hi = bootstrap_interval(torch.tensor([0.0, 1.0] * 50), n_boot=2000)
        >>> 0.38 < lo < 0.5 < hi < 0.62
        True
    """
    if n_boot <= 0 or x.numel() == 0:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)
    x = x.double()
    if x.dim() == 1:
        x = x[None]
    R, B = x.shape
    rows = torch.randint(0, R, (n_boot, R), generator=g) if R > 1 else torch.zeros(n_boot, 1, dtype=torch.long)
    cols = torch.randint(0, B, (n_boot, B), generator=g)
    per_row = torch.stack([x[:, c].mean(1) for c in cols])              # [n_boot, R]
    stats = per_row.gather(1, rows).mean(1)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(stats, q).tolist()
    return float(lo), float(hi)


# ----------------------------------------------------------------------------------------------
# One checkpoint
# ----------------------------------------------------------------------------------------------

def ablate_model(model, task, settings: dict, run_seed: int = 0, step: int = 0) -> list[dict]:
    """Fit the probes, then ablate each (feature, position)'s best probe against its controls; tidy rows."""
    s = {"controls": ("shift",), "kinds": ("binary", "categorical"), "n_boot": 1000, "level": 0.9, **settings}
    kinds = tuple(s["kinds"])
    probes = fit_checkpoint_probes(model, task, {k: s[k] for k in ProbeSettings.__dataclass_fields__ if k in s}
                                   | {"pooled": False, "shuffled": False},
                                   run_seed=run_seed, step=step, kinds=kinds, controls=False)
    if not probes.fits:
        return []
    device = next(model.parameters()).device
    ps = probes.probe_set
    ev = ps.batch[ps.test]
    ok_clean, loss_clean = (v[0] for v in evaluate_examples(model, task, ev, chunk=s["chunk"]))
    clean_acc, clean_loss = float(ok_clean.mean()), float(loss_clean.mean())
    train_rows = slice(0, ps.n_train)
    n_rand = s["random_eval"] or len(ev)
    ev_random = ev[:n_rand]
    ok_clean_r, loss_clean_r = ok_clean[:n_rand], loss_clean[:n_rand]
    boot = dict(n_boot=s["n_boot"], level=s["level"])

    best: dict[tuple, tuple] = {}  # (feature, position) -> (site, fit)
    for (feat, site, pos), fit in probes.fits.items():
        if (feat, pos) not in best or fit["train_log_loss"] < best[(feat, pos)][1]["train_log_loss"]:
            best[(feat, pos)] = (site, fit)

    def site_acts(site, pos):
        return probes.acts[site][:, probes.positions.index(pos)].to(device)       # [N, d]

    def run_control(edit, site, seed):
        ok, loss = evaluate_examples(model, task, ev_random, {site: edit}, repeat=s["n_random"], chunk=s["chunk"])
        drop, rise = ok_clean_r[None] - ok, loss - loss_clean_r[None]            # [R, B]
        return {"acc_drop": drop, "loss_rise": rise}

    mean_cache: dict[tuple, dict] = {}  # the mean-ablation control depends only on (site, position, rank)

    def mean_control(site, pos, r):
        if (site, pos, r) not in mean_cache:
            acts = site_acts(site, pos)[train_rows]
            V = random_frames(acts.shape[-1], r, s["n_random"], derive_seed(s["seed"], "random", site, pos, r), None, device)
            means = torch.einsum("nd,rdk->rk", acts, V) / acts.shape[0]   # mean coordinate per frame
            mean_cache[(site, pos, r)] = run_control(SubspaceEdit(pos, V, means), site, 0)
        return mean_cache[(site, pos, r)]

    rows = []
    parts: dict[str, list] = {}   # feature -> [(site, pos, B, a0)]: for the all-positions ablation
    for (feat, pos), (site, fit) in sorted(best.items()):
        w, b = fit["w"].to(device), fit["b"].to(device)
        if not torch.isfinite(w).all() or w.norm() == 0:
            warnings.warn(f"step {step}: probe for {feat} at {site}[{pos}] has zero or non-finite weights; not ablated")
            continue
        B, a0 = probe_subspace(w, b)
        r = B.shape[1]
        parts.setdefault(feat, []).append((site, pos, B, a0))
        acts = site_acts(site, pos)                                                 # [N, d]
        coords = acts @ B                                                           # [N, r]
        mean0 = coords[train_rows].mean(0)
        edits = {"projection": SubspaceEdit(pos, B[None], a0[None]),
                 "mean": SubspaceEdit(pos, B[None], mean0[None])}
        shift = {"projection": float((coords[ps.test] - a0).norm(dim=-1).mean()),
                 "mean": float((coords[ps.test] - mean0).norm(dim=-1).mean())}
        seed = derive_seed(s["seed"], "control", feat, site, pos)
        ctrl = {"random": mean_control(site, pos, r)}
        for c in s["controls"]:
            if c == "cov":
                tr = acts[train_rows]
                cov = torch.cov(tr.T) if tr.shape[0] > 1 else torch.eye(tr.shape[1])
                V = random_frames(acts.shape[-1], r, s["n_random"], derive_seed(seed, "cov"), cov, device)
            else:
                V = random_frames(acts.shape[-1], r, s["n_random"], derive_seed(seed, c), None, device)
            edit = (SubspaceEdit(pos, V, a0.expand(s["n_random"], r)) if c == "projection"
                    else SubspaceEdit(pos, V, along=(B, a0)))
            ctrl[f"random_{c}"] = run_control(edit, site, seed)
        matched = {"projection": ctrl.get("random_shift", ctrl["random"]), "mean": ctrl["random"]}
        base = {"step": step, "feature": feat, "layer": site_layer(site), "site": site, "position": int(pos),
                "kind": fit["kind"], "rank": r,
                "probe_train_log_loss": fit["train_log_loss"], "probe_accuracy": fit["accuracy"],
                "probe_balanced_accuracy": fit["balanced_accuracy"],
                "clean_acc": clean_acc, "clean_loss": clean_loss, "n_random": s["n_random"], "n_eval": len(ev),
                "n_eval_random": len(ev_random)}
        for method, edit in edits.items():
            ok, loss = (v[0] for v in evaluate_examples(model, task, ev, {site: edit}, chunk=s["chunk"]))
            per = {"acc_drop": ok_clean - ok, "loss_rise": loss - loss_clean}
            ref = matched[method]
            for measure, x in per.items():
                rm = ref[measure].mean(1)                                           # per direction
                lo, hi = bootstrap_interval(x, **boot, seed=derive_seed(seed, method, measure))
                # paired on the control's examples: probe drop minus the control's mean over directions
                diff = x[:n_rand] - ref[measure].mean(0)
                elo, ehi = bootstrap_interval(diff, **boot, seed=derive_seed(seed, method, measure, "excess"))
                rows.append({**base, "method": method, "measure": measure, "value": float(x.mean()),
                             "ci_lo": lo, "ci_hi": hi, "random_mean": float(rm.mean()), "random_std": float(rm.std()),
                             "excess": float(diff.mean()), "excess_lo": elo, "excess_hi": ehi,
                             "shift": shift[method]})
        for method, c in ctrl.items():
            for measure in ("acc_drop", "loss_rise"):
                x = c[measure]
                lo, hi = bootstrap_interval(x, **boot, seed=derive_seed(seed, method, measure))
                rm = x.mean(1)
                rows.append({**base, "method": method, "measure": measure, "value": float(x.mean()),
                             "ci_lo": lo, "ci_hi": hi, "random_mean": float(rm.mean()), "random_std": float(rm.std()),
                             "excess": float("nan"), "excess_lo": float("nan"), "excess_hi": float("nan"),
                             "shift": float("nan")})
    if s.get("all_positions", True):
        rows += _ablate_all_positions(parts, model, task, ev, ev_random, ok_clean, loss_clean, s, boot,
                                      {f: _shared_columns(rows, f) for f in parts})
    return rows


def _shared_columns(rows: list[dict], feat: str) -> dict:
    """The per-checkpoint columns a feature's rows share (clean accuracy, sizes)."""
    r = next(r for r in rows if r["feature"] == feat)
    return {k: r[k] for k in ("step", "feature", "kind", "clean_acc", "clean_loss", "n_random", "n_eval",
                              "n_eval_random")}


def _ablate_all_positions(parts, model, task, ev, ev_random, ok_clean, loss_clean, s, boot, shared) -> list[dict]:
    """method projection_all: each feature's best probes projected out at all its answer positions at
    once (a feature ablated whole), against random_shift_all (every position's own displacement along
    its own random frame). position -1; site: the sites involved, '+'-joined."""
    rows = []
    n_rand = len(ev_random)
    for feat, ps_ in sorted(parts.items()):
        if len(ps_) < 2:
            continue   # one position: the per-position rows say it all
        by_site: dict[str, list] = {}
        ctrl_site: dict[str, list] = {}
        for site, pos, B, a0 in ps_:
            by_site.setdefault(site, []).append(SubspaceEdit(pos, B[None], a0[None]))
            V = random_frames(B.shape[0], B.shape[1], s["n_random"], derive_seed(s["seed"], "all", feat, site, pos),
                              None, B.device)
            ctrl_site.setdefault(site, []).append(SubspaceEdit(pos, V, along=(B, a0)))
        ok, loss = (v[0] for v in evaluate_examples(model, task, ev, {k: ComposedEdit(e) for k, e in by_site.items()},
                                                    chunk=s["chunk"]))
        okc, lossc = evaluate_examples(model, task, ev_random, {k: ComposedEdit(e) for k, e in ctrl_site.items()},
                                       repeat=s["n_random"], chunk=s["chunk"])
        ref = {"acc_drop": ok_clean[None, :n_rand] - okc, "loss_rise": lossc - loss_clean[None, :n_rand]}
        per = {"acc_drop": ok_clean - ok, "loss_rise": loss - loss_clean}
        base = {**shared[feat], "layer": -1, "site": "+".join(sorted(by_site)), "position": -1,
                "rank": int(sum(B.shape[1] for _, _, B, _ in ps_)), "probe_train_log_loss": float("nan"),
                "probe_accuracy": float("nan"), "probe_balanced_accuracy": float("nan")}
        seed = derive_seed(s["seed"], "all", feat)
        for measure, x in per.items():
            rm = ref[measure].mean(1)
            lo, hi = bootstrap_interval(x, **boot, seed=derive_seed(seed, measure))
            diff = x[:n_rand] - ref[measure].mean(0)
            elo, ehi = bootstrap_interval(diff, **boot, seed=derive_seed(seed, measure, "excess"))
            common = {"random_mean": float(rm.mean()), "random_std": float(rm.std()), "shift": float("nan")}
            rows.append({**base, **common, "method": "projection_all", "measure": measure, "value": float(x.mean()),
                         "ci_lo": lo, "ci_hi": hi, "excess": float(diff.mean()), "excess_lo": elo, "excess_hi": ehi})
            clo, chi = bootstrap_interval(ref[measure], **boot, seed=derive_seed(seed, measure, "control"))
            rows.append({**base, **common, "method": "random_shift_all", "measure": measure,
                         "value": float(ref[measure].mean()), "ci_lo": clo, "ci_hi": chi, "excess": float("nan"),
                         "excess_lo": float("nan"), "excess_hi": float("nan")})
    return rows


def resolve_ablation_settings(settings: dict | None) -> dict:
    """Defaults filled in and validated (unknown keys, ranges) as a dict for ablate_model."""
    return AblationSettings.from_mapping(settings).to_dict()


__all__ = ["DEFAULT_SETTINGS", "projection_hook", "mean_hook", "random_hook", "random_directions",
           "evaluate_edit", "evaluate_examples", "ablate_model", "AblationSettings", "resolve_ablation_settings",
           "probe_subspace", "random_frames", "SubspaceEdit", "bootstrap_interval", "CONTROLS"]
