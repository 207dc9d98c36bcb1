"""Modular addition a + b mod p, the grokking task (Nanda et al. 2023, arXiv 2301.05217).

Sequence `a b = c`; the loss is on c only. All p² pairs exist; a fixed, seeded `train_fraction`
of them is the training set, the rest is held out.

    >>> task = ModularAddition(p=7)
    >>> len(task.enumerate())     # every pair
    49
    >>> task.split("train", 0, seed=0, train_fraction=0.3).tokens.shape   # [round(0.3 p²), 3]
    torch.Size([15, 3])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Batch, FeatureSpec, Task, TaskConfigError, batch_from_sequences, torch_generator


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, int(p ** 0.5) + 1))


@dataclass
class ModularAddition(Task):
    p: int = 113  # modulus; must be prime so that every residue has Fourier structure

    name = "modular_addition"
    summary = "a + b mod p (grokking); features: a, b, the answer; Fourier measures in llc_watch.fourier"

    def __post_init__(self):
        if not isinstance(self.p, int) or isinstance(self.p, bool) or not _is_prime(self.p):
            raise TaskConfigError(f"{self.name}: p={self.p!r} must be a prime number (for example 113)")

    @property
    def vocab(self):
        return [str(i) for i in range(self.p)] + ["="]

    @property
    def features(self):
        return {
            "a": FeatureSpec("categorical", "first operand", self.p),
            "b": FeatureSpec("categorical", "second operand", self.p),
            "answer": FeatureSpec("categorical", "(a + b) mod p", self.p),
        }

    def encode(self, a: torch.Tensor, b: torch.Tensor) -> Batch:
        a, b = a.long(), b.long()
        c = (a + b) % self.p
        seq = torch.stack([a, b, torch.full_like(a, self.p), c], dim=1)
        B = len(a)
        nan = torch.full((B, 3), float("nan"))
        feats = {k: nan.clone() for k in self.features}
        feats["a"][:, 2], feats["b"][:, 2], feats["answer"][:, 2] = a.float(), b.float(), c.float()
        return batch_from_sequences(seq, answer_start=3, features=feats)

    def sample(self, n, seed):
        g = torch_generator(seed)
        return self.encode(torch.randint(0, self.p, (n,), generator=g), torch.randint(0, self.p, (n,), generator=g))

    def enumerate(self):
        grid = torch.arange(self.p)
        return self.encode(grid.repeat_interleave(self.p), grid.repeat(self.p))
