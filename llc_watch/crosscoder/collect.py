"""Activations of fixed inputs at K checkpoints, streamed to disk one snapshot (and one chunk) at a time.

Each snapshot's activations go to their own `.npy` file [N_rows, d] (rows = examples x positions,
example-major), written through a memory map in chunks of examples and renamed into place when
complete: memory stays at one chunk's forward pass, and a killed collection resumes at the first
missing snapshot. `ActivationStore` reads the files back as one [K, N, d] source of rows.

    >>> import numpy as np, tempfile, torch
    >>> folder = tempfile.mkdtemp()
    >>> for step in (0, 10):
    ...     _ = write_snapshot(f"{folder}/acts_{step:07d}.npy", [np.ones((4, 3), np.float32) * step])
    >>> store = ActivationStore([f"{folder}/acts_{s:07d}.npy" for s in (0, 10)], steps=[0, 10])
    >>> store.shape
    (2, 4, 3)
    >>> store.rows(np.array([0, 2]))[:, :, 0]          # [K, B, d]
    tensor([[ 0.,  0.],
            [10., 10.]])
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..activations import capture
from ..tasks import Batch, Task, derive_seed


def select_snapshots(steps: list[int], n: int) -> list[int]:
    """n checkpoint steps spread evenly in log(step + 1) between the first and last (all if fewer).

    >>> select_snapshots([0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000], 5)
    [0, 5, 20, 200, 1000]
    """
    steps = sorted(set(int(s) for s in steps))
    if n >= len(steps):
        return steps
    x = np.log1p(steps)
    chosen: list[int] = []
    for t in np.linspace(x[0], x[-1], n):
        order = np.argsort(np.abs(x - t), kind="stable")
        chosen.append(next(steps[i] for i in order if steps[i] not in chosen))
    return sorted(chosen)


def fixed_inputs(task: Task, n: int, seed: int) -> Batch:
    """n inputs, the same for every snapshot: a seeded sample, or a seeded subset of a finite task."""
    universe = task.enumerate()
    if universe is None:
        return task.sample(n, seed=derive_seed(seed, "crosscoder-inputs"))
    g = torch.Generator().manual_seed(derive_seed(seed, "crosscoder-inputs"))
    return universe[torch.randperm(len(universe), generator=g)[:n]]


def answer_positions(batch: Batch, min_share: float = 0.5) -> list[int]:
    """Positions that are answer positions (loss_mask) in at least `min_share` of the examples."""
    share = batch.loss_mask.float().mean(0)
    pos = [int(t) for t in torch.nonzero(share >= min_share).flatten()]
    if not pos:
        raise ValueError("no position is an answer position in most examples; give crosscoder positions explicitly")
    return pos


def resolve_site(model, site: str) -> str:
    if site == "last":
        return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    if site not in model.site_names:
        raise ValueError(f"crosscoder.site={site!r} is not a site of this model; choose 'last' or one of "
                         f"{', '.join(s for s in model.site_names if 'pattern' not in s)}")
    return site


def write_snapshot(path: str | Path, chunks) -> Path:
    """Write chunks [n_i, d] as one float32 .npy [sum n_i, d], atomically (temporary file, then rename).

    A chunk source with `total_rows` and `d` attributes is streamed into a memory map one chunk at a
    time (bounded memory); any other iterable of arrays is listed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    total = getattr(chunks, "total_rows", None)
    if total is None:
        chunks = list(chunks)
        total = sum(len(c) for c in chunks)
        d = chunks[0].shape[1]
    else:
        d = chunks.d
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, d))
        i = 0
        for c in chunks:
            mm[i:i + len(c)] = c
            i += len(c)
        if i != total:
            raise RuntimeError(f"{path}: wrote {i} rows, expected {total}")
        mm.flush()
        del mm
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class _Chunks:
    """Activations of `tokens` at (site, positions), one chunk of examples at a time, as [n*P, d] arrays."""

    def __init__(self, model, tokens, site, positions, chunk_size, device):
        self.model, self.tokens, self.site, self.positions = model, tokens, site, positions
        self.chunk_size, self.device = chunk_size, device
        self.d = model.cfg.d_model if "mlp.hook_post" not in site else model.cfg.d_mlp
        self.total_rows = len(tokens) * len(positions)

    def __iter__(self):
        for i in range(0, len(self.tokens), self.chunk_size):
            a = capture(self.model, self.tokens[i:i + self.chunk_size], [self.site], self.positions,
                        chunk=self.chunk_size, device=self.device)[self.site]      # [n, P, d]
            yield a.reshape(-1, a.shape[-1]).cpu().numpy().astype(np.float32)


def collect_activations(run, steps: list[int], tokens: torch.Tensor, site: str, positions: list[int],
                        folder: str | Path, chunk_size: int = 512, device: str | torch.device = "cpu",
                        progress: bool = False) -> "ActivationStore":
    """One .npy per checkpoint step in `folder` (skipping those already there), as an ActivationStore."""
    folder = Path(folder)
    paths = []
    it = run.checkpoints(steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="crosscoder: collect")
    for ckpt in it:
        path = folder / f"acts_{ckpt.step:07d}.npy"
        if not path.is_file():
            model = ckpt.load_model(device)
            s = resolve_site(model, site)
            write_snapshot(path, _Chunks(model, tokens, s, positions, chunk_size, device))
        paths.append(path)
    return ActivationStore(paths, steps)


class ActivationStore:
    """K per-snapshot .npy files [N, d], read as rows of [K, N, d] through memory maps."""

    def __init__(self, paths: list, steps: list[int]):
        self.paths, self.steps = [Path(p) for p in paths], list(steps)
        self.maps = [np.load(p, mmap_mode="r") for p in self.paths]
        shapes = {m.shape for m in self.maps}
        if len(shapes) != 1:
            raise ValueError(f"activation files disagree in shape: {sorted(shapes)}; delete {self.paths[0].parent}")
        N, d = self.maps[0].shape
        self.shape = (len(self.maps), N, d)

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        """[K, B, d] for row indices idx (sorted reads are faster; order is kept)."""
        idx = np.asarray(idx)
        return torch.from_numpy(np.stack([np.asarray(m[idx]) for m in self.maps]))

    def snapshot(self, k: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.maps[k]))


class PositionCentered:
    """A RowSource minus each (snapshot, position) mean; rows are example-major with P positions.

    >>> import torch
    >>> from llc_watch.crosscoder.train import TensorRows
    >>> x = torch.tensor([[[1.0], [10.0], [3.0], [20.0]]])        # K=1, 2 examples x P=2 positions
    >>> PositionCentered(TensorRows(x), 2).rows(np.arange(4))[0, :, 0].tolist()
    [-1.0, -5.0, 1.0, 5.0]
    """

    def __init__(self, src, n_positions: int):
        K, N, d = src.shape
        if N % n_positions:
            raise ValueError(f"{N} rows are not whole examples of {n_positions} positions")
        self.src, self.P, self.shape = src, n_positions, src.shape
        self.means = torch.stack([src.snapshot(k).double().view(-1, n_positions, d).mean(0).float()
                                  for k in range(K)])               # [K, P, d]

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        idx = np.asarray(idx)
        return self.src.rows(idx) - self.means[:, torch.as_tensor(idx % self.P)]

    def snapshot(self, k: int) -> torch.Tensor:
        x = self.src.snapshot(k)
        return (x.view(-1, self.P, x.shape[-1]) - self.means[k]).view_as(x)


__all__ = ["PositionCentered", "select_snapshots", "fixed_inputs", "answer_positions", "resolve_site", "write_snapshot",
           "collect_activations", "ActivationStore"]
