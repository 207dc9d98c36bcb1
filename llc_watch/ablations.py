"""Does the model use a feature it holds? Remove it along its best probe and measure the damage.

For each binary feature and answer position, the best probe (lowest train log-loss over sites,
Naidu et al. 2025) gives a hyperplane w.x + b = 0 at its site. With w_hat = w/|w| and
b_hat = b/|w| (scaled alike), three edits of that site at that position are compared:

    projection  x <- x - (w_hat.x + b_hat) w_hat       onto the decision hyperplane
    mean        x <- x - (w_hat.x - mean(w_hat.x)) w_hat   the probe direction set to its mean
    random      x <- x - (u.x - mean(u.x)) u, for >= 32 random unit u at the same site and position

Metrics on the probe set's held-out examples: drop in exact-match accuracy and rise in loss, each
beside the random directions' mean and standard deviation (over directions; the random control runs
on the first `random_eval` held-out examples, each drop against the clean model on those same ones).

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

    def validate(self):
        ProbeSettings.validate(self)
        if self.n_random < 2:
            self._fail("n_random", "must be >= 2 (32 is the paper's control)")
        self.at_least("random_eval", 0)
        self.at_least("chunk", 1)

    check_task = ProbeSettings.check_task


DEFAULT_SETTINGS: dict = AblationSettings().to_dict()


# ----------------------------------------------------------------------------------------------
# Hooks: each edits one position of one site, for `model(tokens, hooks={site: hook})`
# ----------------------------------------------------------------------------------------------

def projection_hook(position: int, w_hat: torch.Tensor, b_hat: torch.Tensor):
    """x[:, position] <- x - (w_hat.x + b_hat) w_hat: onto the hyperplane (w_hat a unit vector)."""
    def hook(x):  # [B, T, d]
        x = x.clone()
        v = x[:, position]
        x[:, position] = v - (v @ w_hat + b_hat)[:, None] * w_hat
        return x
    return hook


def mean_hook(position: int, w_hat: torch.Tensor, mean: torch.Tensor):
    """x[:, position] <- x - (w_hat.x - mean) w_hat: the component along w_hat set to its mean."""
    return projection_hook(position, w_hat, -mean)


def random_hook(position: int, U: torch.Tensor, means: torch.Tensor):
    """For inputs stacked [R*B, T, d] (r-major), edit copy r along its own unit direction U[r].

    U [R, d], means [R] (mean of U[r].x on the probe set): x <- x - (U[r].x - means[r]) U[r].
    """
    R = U.shape[0]

    def hook(x):
        x = x.clone()
        v = x[:, position].view(R, -1, x.shape[-1])                 # [R, B, d]
        coef = torch.einsum("rbd,rd->rb", v, U) - means[:, None]    # [R, B]
        x[:, position] = (v - coef[..., None] * U[:, None]).reshape(-1, x.shape[-1])
        return x
    return hook


def random_directions(d: int, n: int, seed: int, device=None) -> torch.Tensor:
    """n unit vectors [n, d], uniform on the sphere, a pure function of seed."""
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(n, d, generator=g)
    return (U / U.norm(dim=-1, keepdim=True)).to(device)


# ----------------------------------------------------------------------------------------------
# Evaluation under an edit
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_edit(model, task, batch: Batch, hooks: dict | None = None, repeat: int = 1,
                  chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact-match accuracy [repeat], mean answer-token loss [repeat]) with `hooks` applied.

    repeat > 1 stacks the batch `repeat` times (r-major) for hooks that edit each copy differently;
    then `chunk` must hold at least one whole copy's worth of rows per pass (it is rounded).
    """
    device = next(model.parameters()).device
    B = len(batch)
    per_pass = max(1, chunk // B)  # copies per forward pass
    accs, losses = [], []
    for r0 in range(0, repeat, per_pass):
        r = min(per_pass, repeat - r0)
        toks = batch.tokens.to(device).repeat(r, 1)
        tgt, mask = batch.targets.to(device).repeat(r, 1), batch.loss_mask.to(device).repeat(r, 1)
        hk = hooks
        if hooks and repeat > 1:  # the hook holds all `repeat` directions; give it this slice
            hk = {s: h(r0, r0 + r) if getattr(h, "sliceable", False) else h for s, h in hooks.items()}
        out = model(toks, hooks=hk).float()
        nll = torch.nn.functional.cross_entropy(out.transpose(1, 2), tgt, reduction="none")  # [rB, T]
        ok = ((out.argmax(-1) == tgt) | ~mask).all(-1).float()
        accs.append(ok.view(r, B).mean(1))
        losses.append(((nll * mask).view(r, -1).sum(1) / mask.view(r, -1).sum(1).clamp(min=1)))
    return torch.cat(accs).cpu(), torch.cat(losses).cpu()


class _Sliceable:
    """A random-direction hook that `evaluate_edit` can cut to the copies of one forward pass."""

    sliceable = True

    def __init__(self, position, U, means):
        self.position, self.U, self.means = position, U, means

    def __call__(self, r0, r1):
        return random_hook(self.position, self.U[r0:r1], self.means[r0:r1])


# ----------------------------------------------------------------------------------------------
# One checkpoint
# ----------------------------------------------------------------------------------------------

def ablate_model(model, task, settings: dict, run_seed: int = 0, step: int = 0) -> list[dict]:
    """Fit the probes, then ablate each (binary feature, position)'s best probe; tidy rows."""
    s = settings
    probes = fit_checkpoint_probes(model, task, {**s, "pooled": False, "shuffled": False},
                                   run_seed=run_seed, step=step, kinds=("binary",), controls=False)
    if not probes.fits:
        return []
    device = next(model.parameters()).device
    ps = probes.probe_set
    ev = ps.batch[ps.test]
    clean_acc, clean_loss = (float(v[0]) for v in evaluate_edit(model, task, ev, chunk=s["chunk"]))
    train_rows = slice(0, ps.n_train)
    ev_random = ev[: s["random_eval"]] if s["random_eval"] else ev
    clean_random = tuple(float(v[0]) for v in evaluate_edit(model, task, ev_random, chunk=s["chunk"]))

    best: dict[tuple, tuple] = {}  # (feature, position) -> (site, fit)
    for (feat, site, pos), fit in probes.fits.items():
        if (feat, pos) not in best or fit["train_log_loss"] < best[(feat, pos)][1]["train_log_loss"]:
            best[(feat, pos)] = (site, fit)

    random_cache: dict[tuple, tuple] = {}

    def random_control(site, pos):
        if (site, pos) not in random_cache:
            acts = probes.acts[site][train_rows, probes.positions.index(pos)].to(device)   # [n, d]
            U = random_directions(acts.shape[-1], s["n_random"], derive_seed(s["seed"], "random", site, pos), device)
            means = (acts @ U.T).mean(0)
            acc, loss = evaluate_edit(model, task, ev_random, {site: _Sliceable(pos, U, means)},
                                      repeat=s["n_random"], chunk=s["chunk"])
            drop, rise = clean_random[0] - acc, loss - clean_random[1]
            random_cache[(site, pos)] = {"acc_drop": (float(drop.mean()), float(drop.std())),
                                         "loss_rise": (float(rise.mean()), float(rise.std()))}
        return random_cache[(site, pos)]

    rows = []
    for (feat, pos), (site, fit) in sorted(best.items()):
        w, b = fit["w"].to(device), fit["b"].to(device)
        norm = w.norm()
        if not torch.isfinite(norm) or norm == 0:
            warnings.warn(f"step {step}: probe for {feat} at {site}[{pos}] has zero weights; not ablated")
            continue
        w_hat, b_hat = w / norm, b / norm
        acts = probes.acts[site][:, probes.positions.index(pos)].to(device)               # [N, d]
        coord = acts @ w_hat
        edits = {"projection": projection_hook(pos, w_hat, b_hat),
                 "mean": mean_hook(pos, w_hat, coord[train_rows].mean())}
        shift = {"projection": float((coord[ps.test] + b_hat).abs().mean()),
                 "mean": float((coord[ps.test] - coord[train_rows].mean()).abs().mean())}
        ctrl = random_control(site, pos)
        base = {"step": step, "feature": feat, "layer": site_layer(site), "site": site, "position": int(pos),
                "probe_train_log_loss": fit["train_log_loss"], "probe_accuracy": fit["accuracy"],
                "probe_balanced_accuracy": fit["balanced_accuracy"],
                "clean_acc": clean_acc, "clean_loss": clean_loss, "n_random": s["n_random"], "n_eval": len(ev),
                "n_eval_random": len(ev_random)}
        for method, hook in edits.items():
            acc, loss = (float(v[0]) for v in evaluate_edit(model, task, ev, {site: hook}, chunk=s["chunk"]))
            for measure, value in (("acc_drop", clean_acc - acc), ("loss_rise", loss - clean_loss)):
                rows.append({**base, "method": method, "measure": measure, "value": value,
                             "random_mean": ctrl[measure][0], "random_std": ctrl[measure][1],
                             "shift": shift[method]})
        for measure in ("acc_drop", "loss_rise"):
            rows.append({**base, "method": "random", "measure": measure, "value": ctrl[measure][0],
                         "random_mean": ctrl[measure][0], "random_std": ctrl[measure][1], "shift": float("nan")})
    return rows


def resolve_ablation_settings(settings: dict | None) -> dict:
    """Defaults filled in and validated (unknown keys, ranges) as a dict for ablate_model."""
    return AblationSettings.from_mapping(settings).to_dict()


__all__ = ["DEFAULT_SETTINGS", "projection_hook", "mean_hook", "random_hook", "random_directions",
           "evaluate_edit", "ablate_model", "AblationSettings", "resolve_ablation_settings"]
