"""Activation capture on a fixed probe set: the same examples, sites and positions at every checkpoint.

A probe set is drawn once from the run's seed, so every checkpoint is probed on identical inputs;
`capture` keeps only the chosen sites at the chosen positions, so memory is
O(n_examples x n_positions x d) for one checkpoint and nothing is held across checkpoints.

    >>> import torch
    >>> from llc_watch.tasks import get_task
    >>> from llc_watch.model import Transformer, ModelConfig
    >>> task = get_task("addition", n_bits=4)
    >>> model = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32,
    ...                                 vocab_size=task.vocab_size, n_ctx=task.seq_len))
    >>> ps = probe_set(task, n_train=64, n_test=32, seed=0)
    >>> sites = default_sites(model)
    >>> sites
    ['blocks.0.hook_resid_pre', 'blocks.0.hook_attn_out', 'blocks.0.hook_mlp_out', 'blocks.0.hook_resid_post']
    >>> positions = feature_positions(ps.batch, ["carry_in"])["carry_in"]
    >>> positions                                   # input positions that predict the 5 sum bits
    [9, 10, 11, 12, 13]
    >>> acts = capture(model, ps.batch.tokens, sites, positions)
    >>> acts["blocks.0.hook_resid_post"].shape      # [N, P, d_model]
    torch.Size([96, 5, 16])
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .model import Transformer
from .tasks import Batch, Task, derive_seed


@dataclass
class ProbeSet:
    """A fixed set of examples: the first `n_train` rows fit probes, the rest test them."""

    batch: Batch  # [N, T], N = n_train + n_test
    n_train: int

    @property
    def n_test(self) -> int:
        return len(self.batch) - self.n_train

    @property
    def train(self) -> slice:
        return slice(0, self.n_train)

    @property
    def test(self) -> slice:
        return slice(self.n_train, len(self.batch))


def probe_set(task: Task, n_train: int, n_test: int, seed: int) -> ProbeSet:
    """The same `n_train + n_test` examples for a given (task, seed), on every machine.

    Enumerable tasks (modular addition) draw a seeded permutation of every example, capped at
    n_train + n_test; when the universe is smaller, it is split in the same train:test ratio.
    """
    if n_train < 2 or n_test < 1:
        raise ValueError(f"probe set: n_train={n_train} must be >= 2 and n_test={n_test} >= 1")
    universe = task.enumerate()
    if universe is None:
        batch = task.sample(n_train + n_test, seed=derive_seed(seed, "probe-set"))
        return ProbeSet(batch, n_train)
    g = torch.Generator().manual_seed(derive_seed(seed, "probe-set"))
    perm = torch.randperm(len(universe), generator=g)[: n_train + n_test]
    n_tr = min(n_train, int(round(len(perm) * n_train / (n_train + n_test))))
    return ProbeSet(universe[perm], n_tr)


def default_sites(model: Transformer) -> list[str]:
    """Residual stream (entering block 0, leaving every block) plus every attention and MLP output."""
    names = set(model.site_names)
    out = ["blocks.0.hook_resid_pre"]
    for l in range(model.cfg.n_layers):
        out += [s for s in (f"blocks.{l}.hook_attn_out", f"blocks.{l}.hook_mlp_out",
                            f"blocks.{l}.hook_resid_post") if s in names]
    return out


def site_layer(site: str) -> int:
    """Block index of a site ('blocks.1.hook_mlp_out' -> 1); -1 for 'hook_embed'."""
    m = re.match(r"blocks\.(\d+)\.", site)
    return int(m.group(1)) if m else -1


def feature_positions(batch: Batch, features: list[str], min_defined: float = 0.5) -> dict[str, list[int]]:
    """Positions where each feature is defined (non-NaN) in at least `min_defined` of the examples."""
    out = {}
    for f in features:
        if f not in batch.features:
            raise KeyError(f"feature {f!r} is not labelled by this task; it has {sorted(batch.features)}")
        defined = (~batch.features[f].isnan()).float().mean(0)  # [T]
        out[f] = [int(t) for t in torch.nonzero(defined >= min_defined).flatten()]
    return out


@torch.no_grad()
def capture(model: Transformer, tokens: torch.Tensor, sites: list[str], positions: list[int],
            chunk: int = 1024, device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """{site: float32 [N, P, d]} activations at `positions` (in the given order), in chunks of `chunk`.

    Only the requested slices are kept (the hooks copy them out), so peak memory is one chunk's
    forward pass plus the result.
    """
    device = device or next(model.parameters()).device
    unknown = [s for s in sites if s not in model.site_names]
    if unknown:
        raise KeyError(f"no such site(s) {unknown}; see Transformer.site_names")
    pos = torch.as_tensor(positions, dtype=torch.long, device=device)
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in sites}

    def keep(site):
        def hook(x):
            parts[site].append(x[:, pos].float())
        return hook

    hooks = {s: keep(s) for s in sites}
    for i in range(0, len(tokens), chunk):
        model(tokens[i:i + chunk].to(device), hooks=hooks)
    return {s: torch.cat(v) for s, v in parts.items()}
