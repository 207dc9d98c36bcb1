"""Data for the LLC estimator: any of a tensor, a tuple/dict of tensors, a Dataset, a DataLoader,
or an object indexable by an index tensor (such as llc_watch's task `Batch`).

`DataSource` gives the size n, a batch for any index tensor, and a seeded, reproducible
minibatch stream (epochs of a fresh permutation; every chain sees the same stream).

    >>> import torch
    >>> src = DataSource((torch.randn(100, 3), torch.randn(100)))
    >>> len(src)
    100
    >>> x, y = src.batch(torch.arange(8))                  # x: [8, 3], y: [8]
    >>> stream = MinibatchStream(len(src), batch_size=32, seed=0)
    >>> stream.indices(0).shape                              # step 0's indices [32]
    torch.Size([32])
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data._utils.collate import default_collate


class DataError(ValueError):
    """Data the estimator cannot read; the message says which forms it accepts."""


ACCEPTED = ("a tensor, a tuple/list or dict of tensors with a shared first dimension, "
            "a torch Dataset, a DataLoader, or an object with __len__ and __getitem__(index tensor)")


def to_device(batch, device):
    """Move a batch (tensor, tuple/list/dict of them, or anything with .to) to device."""
    if isinstance(batch, torch.Tensor) or hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class DataSource:
    """Uniform access to the estimator's data: len() and batch(index tensor)."""

    def __init__(self, data, collate_fn=None):
        self.collate = collate_fn or default_collate
        if isinstance(data, DataLoader):
            # why: we own the shuffling (seeded, reproducible), so read the loader's dataset
            self.collate = data.collate_fn or default_collate
            data = data.dataset
        if isinstance(data, TensorDataset):
            data = tuple(data.tensors)
        if isinstance(data, torch.Tensor):
            self.kind, self.n = "tensor", len(data)
        elif isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
            sizes = {len(t) for t in data}
            if len(sizes) != 1:
                raise DataError(f"data tensors have different first dimensions {sorted(sizes)}; "
                                "they must all have one row per example")
            self.kind, self.n = "tuple", sizes.pop()
        elif isinstance(data, dict) and data and all(isinstance(t, torch.Tensor) for t in data.values()):
            sizes = {len(t) for t in data.values()}
            if len(sizes) != 1:
                raise DataError(f"data dict tensors have different first dimensions {sorted(sizes)}")
            self.kind, self.n = "dict", sizes.pop()
        elif isinstance(data, Dataset):
            if not hasattr(data, "__len__"):
                raise DataError("an iterable-style Dataset has no length; pass a map-style "
                                "Dataset or tensors")
            self.kind, self.n = "dataset", len(data)
        elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
            self.kind, self.n = "indexable", len(data)
        else:
            raise DataError(f"cannot read data of type {type(data).__name__}; pass {ACCEPTED}")
        if self.n < 1:
            raise DataError("data is empty; the LLC needs at least one example")
        self.data = data

    def __len__(self) -> int:
        return self.n

    def batch(self, idx: torch.Tensor):
        """The examples at idx (a LongTensor), collated as the data's own form."""
        d = self.data
        if self.kind in ("tensor", "indexable"):
            return d[idx]
        if self.kind == "tuple":
            return type(d)(t[idx] for t in d)
        if self.kind == "dict":
            return {k: t[idx] for k, t in d.items()}
        return self.collate([d[int(i)] for i in idx])


class MinibatchStream:
    """Step t -> the indices of step t's minibatch: epochs of seeded permutations, drop-last.

    Unlike devinterp's `cycle` (which replays the first epoch), every epoch is reshuffled.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} must be >= 1")
        self.n, self.batch_size = n, min(batch_size, n)
        self.per_epoch = n // self.batch_size
        self.gen = torch.Generator().manual_seed(int(seed))
        self.perms: list[torch.Tensor] = []

    def indices(self, t: int) -> torch.Tensor:
        epoch, k = divmod(t, self.per_epoch)
        while len(self.perms) <= epoch:
            self.perms.append(torch.randperm(self.n, generator=self.gen))
        return self.perms[epoch][k * self.batch_size:(k + 1) * self.batch_size]
