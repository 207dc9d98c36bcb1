"""What every task provides: token sequences, a loss mask over answer tokens, and feature labels.

A task generates its own data from a seed (nothing is downloaded). One example is a token sequence;
the model reads `tokens` (the sequence without its last token) and predicts `targets` (the sequence
shifted by one). Position t of every per-position tensor refers to the model's state *at input
position t*, i.e. the state that predicts `targets[:, t]`: a feature label at t is the intermediate
quantity the model needs for that prediction (for addition, the carry into the sum bit it predicts).

    >>> from llc_watch.tasks import get_task
    >>> task = get_task("addition", n_bits=4)
    >>> batch = task.sample(32, seed=0)
    >>> batch.tokens.shape, batch.targets.shape, batch.loss_mask.shape   # [B, T] each
    (torch.Size([32, 15]), torch.Size([32, 15]), torch.Size([32, 15]))
    >>> batch.features["carry_in"].shape                                  # [B, T], NaN off-answer
    torch.Size([32, 15])
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

FeatureKind = Literal["binary", "categorical", "numeric"]


class TaskConfigError(ValueError):
    """A task setting that cannot work; the message names the setting."""


@dataclass(frozen=True)
class FeatureSpec:
    """An intermediate quantity a task labels per position (probes read these)."""

    kind: FeatureKind
    description: str
    n_classes: int = 2  # binary: 2; categorical: number of classes; numeric: ignored


@dataclass
class Batch:
    """A batch of examples, every tensor with leading dims [B, T] (T = sequence length - 1).

    tokens:    int64 [B, T]  model input (token tasks); float [B, T, d_in] for continuous tasks
    targets:   int64 [B, T]  next-token targets (token tasks); float [B, T, d_out] for continuous
    loss_mask: bool  [B, T]  True at answer positions (loss and accuracy are taken there only)
    features:  name -> float32 [B, T], NaN where the feature is undefined at that position
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, idx) -> "Batch":
        return Batch(
            self.tokens[idx], self.targets[idx], self.loss_mask[idx],
            {k: v[idx] for k, v in self.features.items()},
        )

    def to(self, device) -> "Batch":
        return Batch(
            self.tokens.to(device), self.targets.to(device), self.loss_mask.to(device),
            {k: v.to(device) for k, v in self.features.items()},
        )

    @staticmethod
    def cat(batches: list["Batch"]) -> "Batch":
        return Batch(
            torch.cat([b.tokens for b in batches]), torch.cat([b.targets for b in batches]),
            torch.cat([b.loss_mask for b in batches]),
            {k: torch.cat([b.features[k] for b in batches]) for k in batches[0].features},
        )


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any printable parts (same on every machine and Python run)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def torch_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def batch_from_sequences(seq: torch.Tensor, answer_start: int | torch.Tensor,
                         features: dict[str, torch.Tensor] | None = None,
                         answer_end: int | torch.Tensor | None = None) -> Batch:
    """Make a next-token Batch from full sequences [B, L].

    answer_start: index (in the full sequence) of the first answer token, per batch or per row.
    answer_end: one past the last answer token (default: the sequence end), per batch or per row.
    features: name -> [B, L-1] labels already aligned to input positions.
    """
    seq = seq.long()
    B, L = seq.shape
    tokens, targets = seq[:, :-1], seq[:, 1:]
    target_index = torch.arange(1, L).unsqueeze(0)  # position in full sequence of targets[:, t]
    start = torch.as_tensor(answer_start).reshape(-1, 1)
    end = torch.as_tensor(L if answer_end is None else answer_end).reshape(-1, 1)
    mask = (target_index >= start) & (target_index < end)
    return Batch(tokens.contiguous(), targets.contiguous(), mask.expand(B, -1).contiguous(),
                 dict(features or {}))


class Task:
    """Base class. A subclass sets `name`, `vocab`, `features`, and implements `sample`.

    Subclasses are dataclasses whose fields are the task's settings (validated in __post_init__).
    `seed` picks the data; the same (settings, seed) give the same examples everywhere.
    Tasks with a small finite universe of examples (modular addition) also implement `enumerate`,
    and then train/test are a fixed split of it by `train_fraction`.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    output: ClassVar[Literal["tokens", "continuous"]] = "tokens"

    # --- to implement -------------------------------------------------------------------------
    @property
    def vocab(self) -> list[str]:
        raise NotImplementedError

    @property
    def features(self) -> dict[str, FeatureSpec]:
        raise NotImplementedError

    def sample(self, n: int, seed: int) -> Batch:
        """n random examples, a deterministic function of (settings, n, seed)."""
        raise NotImplementedError

    def enumerate(self) -> Batch | None:
        """Every possible example, for tasks small enough to split exhaustively; else None."""
        return None

    # --- shared behaviour ---------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def seq_len(self) -> int:
        """Model context needed: length of `tokens` (T)."""
        return self.sample(1, seed=0).tokens.shape[1]

    def settings(self) -> dict:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def decode(self, tokens: torch.Tensor) -> str:
        return " ".join(self.vocab[int(t)] for t in tokens)

    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy over answer tokens (token tasks); MSE over answers (continuous)."""
        mask = batch.loss_mask
        if self.output == "continuous":
            err = ((output - batch.targets) ** 2).sum(-1)
            return (err * mask).sum() / mask.sum().clamp(min=1)
        logp = torch.log_softmax(output.float(), dim=-1)
        nll = -logp.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
        return (nll * mask).sum() / mask.sum().clamp(min=1)

    def per_example_correct(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        """bool [B]: every answer token right under teacher forcing.

        For token tasks this equals exact match under greedy decoding: while all earlier answer
        tokens are right, greedy decoding sees the same prefix as teacher forcing.
        """
        if self.output == "continuous":
            raise NotImplementedError(f"{self.name}: continuous tasks define their own accuracy")
        ok = (output.argmax(-1) == batch.targets) | ~batch.loss_mask
        return ok.all(dim=-1)

    def accuracy(self, output: torch.Tensor, batch: Batch) -> float:
        return self.per_example_correct(output, batch).float().mean().item()

    # Data splits -------------------------------------------------------------------------------
    def split(self, which: Literal["train", "test"], n: int, seed: int,
              train_fraction: float = 1.0) -> Batch:
        """A fixed evaluation/training set.

        Enumerable tasks: a seeded permutation of every example; the first `train_fraction` is
        train, the rest test (n is a cap). Others: fresh samples with a seed per split, so train
        and test never share a random stream.
        """
        universe = self.enumerate()
        if universe is not None:
            perm = torch.randperm(len(universe), generator=torch_generator(derive_seed(seed, "split")))
            n_train = int(round(train_fraction * len(universe)))
            idx = perm[:n_train] if which == "train" else perm[n_train:]
            if len(idx) == 0:
                raise TaskConfigError(
                    f"{self.name}: the '{which}' split is empty (train_fraction={train_fraction}); "
                    "use a train_fraction below 1 to hold out a test set")
            return universe[idx[:n] if n else idx]
        return self.sample(n, seed=derive_seed(seed, which))
