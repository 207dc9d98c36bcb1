"""The batch control variate without a forward pass per step: every example's loss at w*, once.

The estimate with the batch control variate is λ̂ = nβ · mean_t (L_b(w_t) − L_b(w*)), where b is
step t's minibatch. L_b(w*) is the mean of the batch's per-example losses at the fixed w*, so
those n numbers can be computed once (one pass over the data, as for L_n(w*)) and each step's
L_b(w*) read from them by the step's indices. The per-step alternative is one forward pass at w*
per chain and step (per-chain minibatch streams), about a third of a chain's sampling work.

This holds when `loss_fn` is the mean of per-example terms, as `estimate_llc` asks of it; a loss
that weights examples unequally (a mean over a batch's tokens when examples have different token
counts) is caught by comparing the two on whole chunks, and then the per-step forward is used.

    >>> import torch
    >>> from llc_watch.llc.data import DataSource, MinibatchStream
    >>> x, y = torch.randn(64, 3), torch.randn(64)
    >>> w = torch.tensor([1.0, -2.0, 0.5])
    >>> loss_of = lambda w, b: 0.5 * ((b[0] @ w - b[1]) ** 2).mean()
    >>> ell = example_losses(loss_of, w, DataSource((x, y)), chunk=16, device="cpu")
    >>> ell.shape, bool(torch.isclose(ell.mean(), loss_of(w, (x, y))))           # [n]
    (torch.Size([64]), True)
    >>> stream = MinibatchStream(64, 8, seed=0)
    >>> trace = center_trace(ell, stream.indices, steps=5)                       # [T]
    >>> bool(torch.isclose(trace[3], loss_of(w, (x[stream.indices(3)], y[stream.indices(3)])).double()))
    True
    >>> unequal = lambda w, b: 0.5 * ((b[0] @ w - b[1]) ** 2).sum() / (len(b[1]) + 1)   # not a mean
    >>> example_losses(unequal, w, DataSource((x, y)), chunk=16, device="cpu") is None
    True
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.func import vmap

from .data import DataError, DataSource, batch_leaves, to_device

# Relative agreement asked of a chunk's loss and the mean of its per-example losses: float32
# summation differs by ~1e-7; a loss that weights examples unequally differs far more.
DECOMPOSABLE_RTOL = 1e-4
STEPS_PER_BLOCK = 4096     # steps whose indices are gathered at once when reading the trace


def worth_caching(n: int, steps: int, rows_per_step: int, batch_size: int) -> bool:
    """Whether one forward pass over all n examples costs no more than the per-step forwards it
    replaces (steps × rows × batch examples; rows = chains with per-chain streams, else 1).

        >>> worth_caching(4096, 100, 4, 32), worth_caching(10**6, 100, 4, 32)
        (True, False)
    """
    return n <= steps * rows_per_step * min(batch_size, n)


@torch.no_grad()
def example_losses(loss_of: Callable, w: torch.Tensor, src: DataSource, *, chunk: int,
                   device) -> torch.Tensor | None:
    """ℓ_i(w) for every example i of `src`, in order: [n] (float32, on `device`).

    Each chunk runs as one vmapped forward pass whose rows are single-example batches. None when
    that cannot work here: the batch is not a tensor structure, the loss cannot be vmapped over
    examples, or the chunk's loss is not the mean of its examples' losses (checked on the first and
    the last chunk).
    """
    n = len(src)
    starts = list(range(0, n, chunk))
    checked = {starts[0], starts[-1]}
    out = []
    try:
        for i in starts:
            batch = to_device(src.batch(torch.arange(i, min(i + chunk, n))), device)
            leaves, rebuild = batch_leaves(batch)
            one = lambda *xs: loss_of(w, rebuild([x.unsqueeze(0) for x in xs])).float()  # noqa: E731
            ell = vmap(one)(*leaves)
            if ell.shape != (len(leaves[0]),):
                return None
            if i in checked:
                whole = loss_of(w, batch).float()
                if not torch.isclose(ell.double().mean(), whole.double(), rtol=DECOMPOSABLE_RTOL, atol=1e-30):
                    return None
            out.append(ell)
    except (DataError, RuntimeError, TypeError, ValueError, IndexError):
        # why this broad: vmap refuses data-dependent control flow, .item(), in-place ops on
        # inputs and random ops with RuntimeError/ValueError; any of them means "not this way"
        return None
    return torch.cat(out)


def center_trace(ell: torch.Tensor, indices: Callable[[int], torch.Tensor], steps: int) -> torch.Tensor:
    """Every step's minibatch loss at w*, read from the per-example losses `ell` [n].

    indices(t): step t's example indices, [B] (one stream: returns [T]) or [C, B] (a stream per
    chain: returns [C, T]). float64, on the CPU.
    """
    ell = ell.detach().double().cpu()
    parts = []
    for t0 in range(0, steps, STEPS_PER_BLOCK):
        idx = torch.stack([indices(t) for t in range(t0, min(t0 + STEPS_PER_BLOCK, steps))])  # [b, (C,) B]
        parts.append(ell[idx].mean(-1))                                                   # [b, (C,)]
    return torch.cat(parts).T.contiguous() if parts[0].dim() == 2 else torch.cat(parts)
