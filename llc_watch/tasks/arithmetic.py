"""Binary addition and multiplication, operands and result least-significant bit first.

Encoding (Naidu et al. 2025, arXiv 2505.03997): `a_0 … a_{n-1} + b_0 … b_{n-1} = c_0 … c_m <EOS>`
over the vocabulary {0, 1, +, =, <EOS>} (`*` for multiplication). Loss on the answer tokens only.

    >>> task = Addition(n_bits=4)
    >>> b = task.sample(2, seed=0)
    >>> b.tokens.shape            # [B, 3n+3]
    torch.Size([2, 15])
    >>> sorted(task.features)[:3]
    ['a_bit', 'b_bit', 'carry_in']
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Batch, FeatureSpec, Task, TaskConfigError, batch_from_sequences, torch_generator

ZERO, ONE, OP, EQ, EOS = 0, 1, 2, 3, 4
MAX_BITS = 64


def _check_bits(name: str, n_bits) -> None:
    if not isinstance(n_bits, int) or isinstance(n_bits, bool) or not 1 <= n_bits <= MAX_BITS:
        raise TaskConfigError(f"{name}: n_bits={n_bits!r} must be an integer from 1 to {MAX_BITS}")


def _random_bits(n: int, n_bits: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n, n_bits), generator=g)


def _nan(shape) -> torch.Tensor:
    return torch.full(shape, float("nan"))


@dataclass
class Addition(Task):
    n_bits: int = 8  # operand width; the sum has n_bits + 1 bits

    name = "addition"
    summary = "a + b in binary, LSB first; features: carries and operand bits per sum bit"

    def __post_init__(self):
        _check_bits(self.name, self.n_bits)

    @property
    def vocab(self):
        return ["0", "1", "+", "=", "<EOS>"]

    @property
    def features(self):
        return {
            "carry_in": FeatureSpec("binary", "carry into the sum bit predicted here"),
            "carry_out": FeatureSpec("binary", "carry out of the sum bit predicted here"),
            "a_bit": FeatureSpec("binary", "first-operand bit at the sum bit predicted here"),
            "b_bit": FeatureSpec("binary", "second-operand bit at the sum bit predicted here"),
        }

    def sample(self, n, seed):
        g = torch_generator(seed)
        return self.encode(_random_bits(n, self.n_bits, g), _random_bits(n, self.n_bits, g))

    def encode(self, a: torch.Tensor, b: torch.Tensor) -> Batch:
        """a, b: int [B, n_bits] bit arrays, LSB first."""
        B, n = a.shape
        carry = torch.zeros(B, n + 1, dtype=torch.long)  # carry[:, i] = carry into bit i
        c = torch.zeros(B, n + 1, dtype=torch.long)
        for i in range(n):
            s = a[:, i] + b[:, i] + carry[:, i]
            c[:, i], carry[:, i + 1] = s % 2, s // 2
        c[:, n] = carry[:, n]
        col = lambda v: torch.full((B, 1), v, dtype=torch.long)
        seq = torch.cat([a, col(OP), b, col(EQ), c, col(EOS)], dim=1)
        T = seq.shape[1] - 1
        first = 2 * n + 1  # input position that predicts c_0 (the '=' token)
        feats = {k: _nan((B, T)) for k in self.features}
        feats["carry_in"][:, first:first + n + 1] = carry.float()
        feats["carry_out"][:, first:first + n] = carry[:, 1:].float()
        feats["a_bit"][:, first:first + n] = a.float()
        feats["b_bit"][:, first:first + n] = b.float()
        return batch_from_sequences(seq, answer_start=first + 1, features=feats)


@dataclass
class Multiplication(Task):
    n_bits: int = 4  # operand width; the product has 2 * n_bits bits

    name = "multiplication"
    summary = "a * b in binary, LSB first; features: partial-product carries, column carries"

    def __post_init__(self):
        _check_bits(self.name, self.n_bits)

    @property
    def vocab(self):
        return ["0", "1", "*", "=", "<EOS>"]

    @property
    def features(self):
        n = self.n_bits
        out = {
            "column_carry": FeatureSpec("numeric", "carry into this product bit in long multiplication (column sums)"),
            "a_bit": FeatureSpec("binary", "first-operand bit at the product bit predicted here (if any)"),
            "b_bit": FeatureSpec("binary", "second-operand bit at the product bit predicted here (if any)"),
        }
        for k in range(1, n):
            out[f"pp_carry_{k}"] = FeatureSpec(
                "binary", f"carry into this bit when adding partial product {k} (a * b_{k} << {k}) to the running sum")
        return out

    def sample(self, n, seed):
        g = torch_generator(seed)
        return self.encode(_random_bits(n, self.n_bits, g), _random_bits(n, self.n_bits, g))

    def encode(self, a, b):
        B, n = a.shape
        m = 2 * n
        # running sum P_k = sum_{j<=k} (a * b_j) << j, as bit arrays; record the carries of each add
        running = torch.zeros(B, m, dtype=torch.long)
        pp_carries = {}
        for k in range(n):
            addend = torch.zeros(B, m, dtype=torch.long)
            addend[:, k:k + n] = a * b[:, k:k + 1]
            carry = torch.zeros(B, m + 1, dtype=torch.long)
            for i in range(m):
                s = running[:, i] + addend[:, i] + carry[:, i]
                running[:, i], carry[:, i + 1] = s % 2, s // 2
            if k > 0:
                pp_carries[k] = carry[:, :m]
        c = running
        # column-wise long multiplication carries
        col_carry = torch.zeros(B, m + 1, dtype=torch.long)
        for i in range(m):
            s = sum(a[:, j] * b[:, i - j] for j in range(max(0, i - n + 1), min(i, n - 1) + 1)) + col_carry[:, i]
            col_carry[:, i + 1] = s // 2
        col = lambda v: torch.full((B, 1), v, dtype=torch.long)
        seq = torch.cat([a, col(OP), b, col(EQ), c, col(EOS)], dim=1)
        T = seq.shape[1] - 1
        first = 2 * n + 1
        feats = {k: _nan((B, T)) for k in self.features}
        feats["column_carry"][:, first:first + m] = col_carry[:, :m].float()
        feats["a_bit"][:, first:first + n] = a.float()
        feats["b_bit"][:, first:first + n] = b.float()
        for k, carry in pp_carries.items():
            feats[f"pp_carry_{k}"][:, first:first + m] = carry.float()
        return batch_from_sequences(seq, answer_start=first + 1, features=feats)
