"""Modular addition's own probes and ablations: Fourier progress measures (Nanda et al. 2023).

A grokked model computes a + b mod p through a few key frequencies k: cos/sin(2 pi k a / p) in
the embedding, products of them in the MLP neurons, and cos(2 pi k (a + b - c) / p) in the logits.
Per checkpoint:

    embed_power   share of the embedding's (non-constant) Fourier power at each frequency
    mlp_power     share of the MLP neurons' variance over (a, b) at each frequency
    mlp_neurons   neurons whose variance is >= 50 % one frequency, per frequency
    restricted_loss  loss with the logits kept only along the key frequencies' directions (plus their mean)
    excluded_loss    loss with the key frequencies' directions removed from the logits

The logit directions for frequency k are the pair-space vectors cos(2 pi k (a + b) / p) and
sin(2 pi k (a + b) / p) over all p^2 inputs; they are orthogonal across k, so projecting onto a
set of frequencies is a sum of rank-one projections.

    >>> import math, torch
    >>> p = 7
    >>> a, b = torch.arange(p).repeat_interleave(p), torch.arange(p).repeat(p)   # every pair
    >>> c = torch.arange(p)
    >>> logits = 4 * torch.cos(2 * math.pi * 2 * (a + b - c[:, None]).T / p)   # [p*p, p], frequency 2
    >>> torch.allclose(restricted_logits(logits, p, [2]), logits, atol=1e-5)   # all of it is key
    True
    >>> excluded_logits(logits, p, [2]).abs().max() < 1e-5                     # nothing else is left
    tensor(True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .checkpoints import Checkpoint
from .settings import SettingsBase

@dataclass(frozen=True)
class FourierSettings(SettingsBase):
    key_freqs: Optional[tuple[int, ...]] = None  # None: from the run's final checkpoint (logit power)
    key_frac: float = 0.9             # key frequencies: the fewest explaining this share of the power...
    max_key: int = 8                  # ...but no more than this many
    neuron_fve: float = 0.5           # a neuron counts for frequency k when k explains this share of it
    device: str = "auto"              # auto | cpu | cuda (resolved where each job runs)

    def validate(self):
        self.within("key_frac", 0.0, 1.0)
        self.at_least("max_key", 1)
        self.within("neuron_fve", 0.0, 1.0)
        if self.key_freqs is not None and not all(int(k) >= 1 for k in self.key_freqs):
            self._fail("key_freqs", "frequencies are integers >= 1")
        self.device_name("device")


DEFAULT_SETTINGS: dict = FourierSettings().to_dict()


def fourier_basis(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B [p, p] orthonormal rows: constant, cos 1, sin 1, cos 2, ...; freq [p] of each row).

    >>> B, freq = fourier_basis(5)
    >>> torch.allclose(B @ B.T, torch.eye(5), atol=1e-6), freq.tolist()
    (True, [0, 1, 1, 2, 2])
    """
    x = torch.arange(p, dtype=torch.float64)
    rows, freq = [torch.ones(p, dtype=torch.float64)], [0]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
        freq += [k, k]
    B = torch.stack(rows)
    return (B / B.norm(dim=1, keepdim=True)).float(), torch.tensor(freq)


def frequency_power(W: torch.Tensor, p: int) -> torch.Tensor:
    """W [p, d] (rows indexed by residue) -> share of its non-constant Fourier power per frequency [K+1].

    Index 0 (the constant) is 0 by construction; shares over 1..K sum to 1.
    """
    B, freq = fourier_basis(p)
    coef2 = (B.to(W) @ W).pow(2).sum(-1)                           # [p] power per basis row
    power = torch.zeros(int(freq.max()) + 1, dtype=W.dtype).index_add_(0, freq, coef2.cpu())
    power[0] = 0
    return power / power.sum().clamp(min=1e-30)


def neuron_frequency_fve(acts: torch.Tensor, p: int) -> torch.Tensor:
    """acts [p, p, n] (neuron value at input (a, b)) -> [K+1, n]: share of each neuron's variance
    in the 2-D Fourier terms of frequency k (terms in a, in b, and their products)."""
    B, freq = fourier_basis(p)
    B = B.to(acts)
    coef2 = torch.einsum("ia,abn,jb->ijn", B, acts, B).pow(2)       # [p, p, n]
    coef2[0, 0] = 0                                                 # the mean is not variance
    fi, fj = freq[:, None].expand(p, p), freq[None, :].expand(p, p)
    K = int(freq.max())
    out = torch.zeros(K + 1, acts.shape[-1], dtype=acts.dtype, device=acts.device)
    for k in range(1, K + 1):
        # terms whose frequencies are each 0 or k (at least one is k)
        sel = ((fi == k) | (fi == 0)) & ((fj == k) | (fj == 0))
        out[k] = coef2[sel.to(acts.device)].sum(0)
    return out / coef2.sum((0, 1)).clamp(min=1e-30)


def pair_directions(p: int, k: int) -> torch.Tensor:
    """[2, p*p] unit vectors cos/sin(2 pi k (a + b) / p) over pairs indexed a * p + b."""
    a, b = torch.arange(p).repeat_interleave(p), torch.arange(p).repeat(p)
    ang = 2 * math.pi * k * (a + b).double() / p
    U = torch.stack([torch.cos(ang), torch.sin(ang)])
    return (U / U.norm(dim=1, keepdim=True)).float()


def project_logits(logits: torch.Tensor, p: int, freqs) -> torch.Tensor:
    """logits [p*p, V] over every pair (index a*p + b) -> their component along `freqs`' directions."""
    out = torch.zeros_like(logits)
    for k in freqs:
        U = pair_directions(p, int(k)).to(logits)
        out += U.T @ (U @ logits)
    return out


def restricted_logits(logits: torch.Tensor, p: int, freqs) -> torch.Tensor:
    """Keep only the key frequencies (and each logit's mean over pairs)."""
    return logits.mean(0, keepdim=True) + project_logits(logits, p, freqs)


def excluded_logits(logits: torch.Tensor, p: int, freqs) -> torch.Tensor:
    """Remove the key frequencies, keep everything else."""
    return logits - project_logits(logits, p, freqs)


def logit_frequency_power(logits: torch.Tensor, p: int) -> torch.Tensor:
    """[K+1] share of the logits' non-constant power (over pairs) along each frequency's directions."""
    centred = logits - logits.mean(0, keepdim=True)
    K = (p - 1) // 2
    power = torch.zeros(K + 1)
    for k in range(1, K + 1):
        power[k] = (pair_directions(p, k).to(logits) @ centred).pow(2).sum().cpu()
    return power / centred.pow(2).sum().clamp(min=1e-30).cpu()


def key_frequencies(power: torch.Tensor, frac: float = 0.9, max_key: int = 8) -> list[int]:
    """The fewest frequencies (index >= 1) whose shares add up to `frac` of the total, at most max_key.

    >>> key_frequencies(torch.tensor([0., .05, .5, .05, .4]))
    [2, 4]
    """
    share = power[1:] / power[1:].sum().clamp(min=1e-30)
    order = torch.argsort(share, descending=True)
    out, total = [], 0.0
    for i in order[:max_key]:
        out.append(int(i) + 1)
        total += float(share[i])
        if total >= frac:
            break
    return sorted(out)


def _ce(logits: torch.Tensor, target: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits.float(), target))


@torch.no_grad()
def fourier_rows(model, task, key_freqs: list[int], train_mask: torch.Tensor, settings: dict,
                 step: int = 0) -> list[dict]:
    """Every Fourier measure of one modular-addition model (1 layer or more: the last MLP is read)."""
    p = task.p
    batch = task.enumerate()                                         # every pair, index a*p + b
    device = next(model.parameters()).device
    cache: dict = {}
    out = model(batch.tokens.to(device), cache=cache)[:, -1]        # [p*p, V] logits at '='
    target = batch.targets[:, -1].to(device)
    train_mask = train_mask.to(device)
    rows = []

    def add(measure, value, site, frequency=-1, split="all"):
        rows.append({"step": step, "measure": measure, "frequency": int(frequency), "site": site,
                     "value": float(value), "split": split, "key_freqs": " ".join(map(str, key_freqs))})

    W_E = model.embed.weight[:p].float()                               # [p, d] residue rows
    embed = frequency_power(W_E, p)
    for k in range(1, len(embed)):
        add("embed_power", embed[k], "hook_embed", k)
    mlp_sites = [s for s in model.site_names if s.endswith("mlp.hook_post")]
    if mlp_sites:
        site = mlp_sites[-1]
        acts = cache[site][:, -1].float().reshape(p, p, -1)         # [a, b, n]
        fve = neuron_frequency_fve(acts, p)                         # [K+1, n]
        var = (acts - acts.mean((0, 1))).pow(2).sum((0, 1))        # weight neurons by their variance
        power = (fve * var).sum(1) / var.sum().clamp(min=1e-30)
        for k in range(1, fve.shape[0]):
            add("mlp_power", power[k], site, k)
            add("mlp_neurons", (fve[k] >= settings["neuron_fve"]).sum(), site, k)
        add("mlp_key_power", sum(float(power[k]) for k in key_freqs), site)
    add("embed_key_power", sum(float(embed[k]) for k in key_freqs), "hook_embed")
    lp = logit_frequency_power(out.float(), p)
    for k in range(1, len(lp)):
        add("logit_power", lp[k], "logits", k)
    restricted = restricted_logits(out.float(), p, key_freqs)
    excluded = excluded_logits(out.float(), p, key_freqs)
    for split, m in (("all", torch.ones_like(train_mask)), ("train", train_mask), ("test", ~train_mask)):
        if m.any():
            add("loss", _ce(out[m], target[m]), "logits", split=split)
            add("restricted_loss", _ce(restricted[m], target[m]), "logits", split=split)
            add("excluded_loss", _ce(excluded[m], target[m]), "logits", split=split)
    return rows


def train_mask(task, cfg) -> torch.Tensor:
    """bool [p*p]: the pairs in the run's training split (the same seeded permutation as training)."""
    from .tasks import derive_seed
    n = task.p ** 2
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "split")))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[perm[: int(round(cfg.train.train_fraction * n))]] = True
    return mask


@torch.no_grad()
def final_key_frequencies(checkpoint: Checkpoint, frac: float = 0.9, max_key: int = 8) -> list[int]:
    """Key frequencies of a (final) checkpoint: the frequencies carrying its logits' power."""
    task = checkpoint.config().make_task()
    model = checkpoint.load_model()
    logits = model(task.enumerate().tokens)[:, -1].float()
    return key_frequencies(logit_frequency_power(logits, task.p), frac, max_key)


__all__ = ["fourier_basis", "frequency_power", "neuron_frequency_fve", "pair_directions", "project_logits",
           "restricted_logits", "excluded_logits", "logit_frequency_power", "key_frequencies", "fourier_rows",
           "final_key_frequencies", "train_mask", "FourierSettings"]
