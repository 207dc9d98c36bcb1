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
    Only the current epoch's permutation is kept (steps are asked for in order; an earlier epoch
    is drawn again from the seed): keeping every epoch's grew with the chain, 5 GB at 160,000
    steps of batch 1,024 over n = 20,000 × 4 chains.

        >>> s = MinibatchStream(10, 4, seed=0)
        >>> late, early = s.indices(11).clone(), s.indices(0)
        >>> bool((early == MinibatchStream(10, 4, seed=0).indices(0)).all()), tuple(late.shape)
        (True, (4,))
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} must be >= 1")
        self.n, self.batch_size = n, min(batch_size, n)
        self.per_epoch = n // self.batch_size
        self.seed = int(seed)
        self._restart()

    def _restart(self) -> None:
        self.gen = torch.Generator().manual_seed(self.seed)
        self.epoch, self.perm = -1, None

    def indices(self, t: int) -> torch.Tensor:
        epoch, k = divmod(t, self.per_epoch)
        if epoch < self.epoch:   # an earlier epoch: replay the generator from the seed
            self._restart()
        while self.epoch < epoch:
            self.perm, self.epoch = torch.randperm(self.n, generator=self.gen), self.epoch + 1
        return self.perm[k * self.batch_size:(k + 1) * self.batch_size]


class ChainMinibatchStreams:
    """Independent minibatch streams, one per chain: step t -> indices [C, batch_size].

    Chain c's stream is a `MinibatchStream` seeded from (seed, c) alone, so it does not depend on
    how many chains run (chain 0 of a 2-chain run sees what chain 0 of an 8-chain run sees).

        >>> s2, s8 = ChainMinibatchStreams(100, 10, seed=0, chains=2), ChainMinibatchStreams(100, 10, 0, 8)
        >>> s8.indices(3).shape
        torch.Size([8, 10])
        >>> bool((s2.indices(3) == s8.indices(3)[:2]).all()), bool((s8.indices(3)[0] == s8.indices(3)[1]).all())
        (True, False)
    """

    def __init__(self, n: int, batch_size: int, seed: int, chains: int, chain_ids=None):
        from llc_watch.tasks.base import derive_seed  # stable sha256-based seed derivation
        ids = list(range(chains)) if chain_ids is None else list(chain_ids)
        if len(ids) != chains:
            raise DataError(f"chain_ids has {len(ids)} entries for {chains} chains")
        self.streams = [MinibatchStream(n, batch_size, derive_seed(seed, "chain-batches", c)) for c in ids]
        self.batch_size = self.streams[0].batch_size

    def indices(self, t: int) -> torch.Tensor:
        return torch.stack([s.indices(t) for s in self.streams])


# --- chain-stacked batches: a batch whose every tensor has a leading chain dimension -----------

def batch_leaves(batch) -> tuple[list[torch.Tensor], callable]:
    """(the batch's tensors, rebuild(tensors) -> a batch of the same form).

    Forms: a tensor, a tuple/list or dict of batches, a dataclass whose fields are batches (such
    as llc_watch's task `Batch`). Used to vmap over, stack or slice batches of any of these forms.

        >>> leaves, rebuild = batch_leaves({"x": torch.zeros(2, 3), "y": (torch.ones(2),)})
        >>> [tuple(t.shape) for t in leaves], rebuild([t + 1 for t in leaves])["y"][0].tolist()
        ([(2, 3), (2,)], [2.0, 2.0])
    """
    import dataclasses
    if isinstance(batch, torch.Tensor):
        return [batch], lambda ts: ts[0]
    if isinstance(batch, (tuple, list)) or isinstance(batch, dict) or dataclasses.is_dataclass(batch):
        if isinstance(batch, dict):
            keys, parts = list(batch), list(batch.values())
        elif isinstance(batch, (tuple, list)):
            keys, parts = None, list(batch)
        else:
            keys = [f.name for f in dataclasses.fields(batch)]
            parts = [getattr(batch, k) for k in keys]
        sub = [batch_leaves(p) for p in parts]
        counts = [len(ls) for ls, _ in sub]
        leaves = [t for ls, _ in sub for t in ls]

        def rebuild(ts):
            out, i = [], 0
            for (_, rb), k in zip(sub, counts):
                out.append(rb(ts[i:i + k]))
                i += k
            if isinstance(batch, dict):
                return dict(zip(keys, out))
            if isinstance(batch, (tuple, list)):
                return type(batch)(out)
            return dataclasses.replace(batch, **dict(zip(keys, out)))
        return leaves, rebuild
    raise DataError(f"cannot split a batch of type {type(batch).__name__} into tensors: chain-stacked "
                    "batches must be tensors, tuples/lists/dicts of tensors, or dataclasses of them")


def stack_batches(batches: list):
    """Chain-stack batches of one form: every tensor gets a leading chain dimension [C, ...].

        >>> b = stack_batches([(torch.zeros(4, 2), torch.zeros(4)), (torch.ones(4, 2), torch.ones(4))])
        >>> b[0].shape, b[1].shape
        (torch.Size([2, 4, 2]), torch.Size([2, 4]))
    """
    if not batches:
        raise DataError("stack_batches needs at least one batch")
    split = [batch_leaves(b) for b in batches]
    n = {len(ls) for ls, _ in split}
    if len(n) != 1:
        raise DataError("stack_batches: the batches have different forms")
    return split[0][1]([torch.stack(ts) for ts in zip(*(ls for ls, _ in split))])


def chain_batch(stacked, c: int):
    """Chain c's own batch out of a chain-stacked batch (the inverse of stack_batches)."""
    leaves, rebuild = batch_leaves(stacked)
    return rebuild([t[c] for t in leaves])


class DeviceBatches:
    """get_batch for the sampler with everything on the device: step t -> its minibatch.

    The data are moved to the device once; every step's indices (from a MinibatchStream, [B]
    per step, or ChainMinibatchStreams, [C, B] per step: chain-stacked batches) are computed up
    front and moved once; a step's batch is then one gather per tensor. `at(t)` takes the step
    as a device tensor, so a captured step can fetch its own batch. Same examples as
    `source.batch(stream.indices(t))`.

        >>> src = DataSource((torch.arange(10.0), torch.arange(10) * 2))
        >>> db = DeviceBatches(src, MinibatchStream(10, 4, seed=0), steps=3, device="cpu")
        >>> x, y = db(2); bool((y == 2 * x).all()), tuple(x.shape)
        (True, (4,))
    """

    def __init__(self, source: DataSource, stream, steps: int, device):
        self.device = torch.device(device)
        full = source.batch(torch.arange(len(source)))
        leaves, self.rebuild = batch_leaves(full)
        self.leaves = [x.to(self.device) for x in leaves]
        first = stream.indices(0)
        # int32 where it can hold n: half the memory, so twice the steps fit the budget
        self.index = torch.empty((steps, *first.shape), dtype=index_dtype(len(source)), device=self.device)
        for a in range(0, steps, INDEX_CHUNK_STEPS):   # filled in chunks: the host never holds them all
            b = min(steps, a + INDEX_CHUNK_STEPS)
            self.index[a:b] = torch.stack([stream.indices(t) for t in range(a, b)]).to(self.device)
        self.steps = steps

    @classmethod
    def stack_rows(cls, parts: list["DeviceBatches"]) -> "DeviceBatches":
        """One chain-stacked get_batch whose rows are the parts' rows in order (parts over the
        same data, each with [T, C_k, B] indices): row block k draws part k's minibatches.

            >>> src = DataSource(torch.arange(10.0))
            >>> a, b = (DeviceBatches(src, ChainMinibatchStreams(10, 3, seed=s, chains=2), 4, "cpu") for s in (0, 1))
            >>> ab = DeviceBatches.stack_rows([a, b])
            >>> tuple(ab(2).shape), bool((ab(2)[2:] == b(2)).all())
            ((4, 3), True)
        """
        p0 = parts[0]
        out = cls.__new__(cls)
        out.device, out.leaves, out.rebuild, out.steps = p0.device, p0.leaves, p0.rebuild, p0.steps
        out.index = torch.cat([p.index for p in parts], dim=1)
        return out

    def __call__(self, t: int):
        return self.rebuild([x[self.index[t]] for x in self.leaves])

    def at(self, t_dev: torch.Tensor):
        idx = self.index.index_select(0, t_dev).squeeze(0)
        return self.rebuild([x[idx] for x in self.leaves])


INDEX_BUDGET_BYTES = 512 * 2**20   # host memory: precomputed step indices above this are streamed
INDEX_CHUNK_STEPS = 4096           # steps whose indices are built on the host at once


def index_dtype(n: int) -> torch.dtype:
    """int32 where it holds every index below n, else int64."""
    return torch.int32 if n <= 2**31 - 1 else torch.int64


def index_budget(device) -> int:
    """Bytes the precomputed step indices may take on `device`: INDEX_BUDGET_BYTES in host
    memory; on a GPU a quarter of its free memory (at least that). Why: the per-step fetch the
    streamed path falls back to is host-bound there (on an H100, 4,500 steps of a 10,000-weight
    deep linear network at batch 8,192 took 44 s streamed against 3 s for 1,500 kept), while
    160,000 steps × 4 chains × batch 8,192 of int32 indices are 21 GB, which an 80 GB card holds.

        >>> index_budget("cpu") == INDEX_BUDGET_BYTES
        True
    """
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(dev)
        return max(INDEX_BUDGET_BYTES, free // 4)
    return INDEX_BUDGET_BYTES


def device_batches(source: DataSource, stream, steps: int, device):
    """`DeviceBatches` when the data collate into tensors and every step's indices fit in
    `index_budget(device)`; else a plain per-step fetch (the same examples, fetched and moved at
    each step: the sampler then reads them through its prefetch ring). Long chains stream on the
    host: 160,000 steps × 4 chains × batch 1,024 of int32 indices are 2.6 GB.

        >>> src = DataSource(torch.arange(10.0))
        >>> stream = ChainMinibatchStreams(10, 4, seed=0, chains=2)
        >>> kept, streamed = device_batches(src, stream, 5, "cpu"), device_batches(src, stream, 10**9, "cpu")
        >>> isinstance(kept, DeviceBatches), isinstance(streamed, DeviceBatches), bool((kept(3) == streamed(3)).all())
        (True, False, True)
    """
    def fetch(t):
        idx = stream.indices(t)
        if idx.dim() == 2:     # chain-stacked
            return to_device(stack_batches([source.batch(i) for i in idx]), device)
        return to_device(source.batch(idx), device)

    per_step = stream.indices(0).numel() * torch.iinfo(index_dtype(len(source))).bits // 8
    if per_step * steps > index_budget(device):
        return fetch
    try:
        return DeviceBatches(source, stream, steps, device)
    except (DataError, RuntimeError, TypeError):
        return fetch
