"""The LLC at many checkpoints in one pass: checkpoints × chains stacked into one vectorised run.

Each checkpoint is prepared exactly as `estimate_llc` prepares it (the same L_n(w*), batches,
observable, settings) and its result assembled by `estimate_llc` itself; only the sampling is
shared: the chains of a block of checkpoints run as one [checkpoints·chains, D] set of chains,
each (checkpoint, chain) with its own centre w* and the noise estimate_llc gives that chain. So,
given the same noise, the per-chain values equal those of calling estimate_llc per checkpoint
(tests/test_llc_batched.py), up to float rounding of the larger batched matmuls.

How it shares the sampling without copying the estimator: every checkpoint's estimate_llc runs in
its own thread up to its `run_chains` call, which `sampler.intercept_runs` hands to this module;
once a block's calls are in, one stacked run_chains serves them all and each thread finishes its
own result.

    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(512, 3); y = x @ torch.tensor([1., -2., .5]) + torch.randn(512)
    >>> models = [nn.Linear(3, 1, bias=False) for _ in range(3)]
    >>> mse = lambda m, b: 0.5 * ((m(b[0]).squeeze(-1) - b[1]) ** 2).mean()
    >>> rs = estimate_llc_many(models, mse, (x, y), chains=2, draws=20, burn_in=5, seed=0)
    >>> len(rs), rs[0].timing["batched_checkpoints"]
    (3, 3)
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from .data import DeviceBatches, batch_leaves
from .estimator import LLCError, LLCResult, estimate_llc
from .sampler import NOISE_BLOCK, ChainRun, intercept_runs, run_chains

# run_chains arguments that must agree for checkpoints to share one stacked run
SHARED_KWARGS = ("chains", "steps", "seed", "mala", "vectorized", "center_loss", "per_chain_batches",
                 "observe_every", "chain_ids", "capture", "precision")
CPU_MAX_ROWS = 64              # stacked chains per block on a CPU (memory, cache)
CUDA_MEMORY_FRACTION = 0.5     # of the free GPU memory a block may plan to use


@dataclass
class _Call:
    """One checkpoint's run_chains call, taken over by the batched path."""
    args: tuple
    kwargs: dict
    done: threading.Event = field(default_factory=threading.Event)
    run: ChainRun | None = None
    error: BaseException | None = None
    block_s: float = float("nan")
    stacked: bool = False


def estimate_llc_many(models: list[nn.Module], loss_fn, data, *, block_size: int | None = None,
                      return_exceptions: bool = False, seeds: Sequence[int] | None = None,
                      **kwargs) -> list:
    """estimate_llc(model, loss_fn, data, **kwargs) for every model, sampled in stacked blocks.

    models: checkpoints of one architecture (same parameter names and shapes).
    block_size: checkpoints per stacked run; None = as many as fit (all on a GPU with room; on a
        CPU, CPU_MAX_ROWS stacked chains).
    return_exceptions: a checkpoint whose estimate raises gives its exception in its place in the
        list (the others still run); False re-raises the first one.
    seeds: one sampler seed per model (default: kwargs' seed for all). Checkpoints with their own
        seeds still share one stacked pass (each row draws its own checkpoint's noise and
        minibatches) when their minibatches are per chain (the default) and on the device.
    kwargs: everything estimate_llc takes (seed, chains, draws, ...), the same for every model.
    Each result's timing gains `batched_checkpoints` (the block's size), `batched_stacked`
    (whether they shared one run; False when settings or held-fixed weights differ, which falls
    back to one run each) and `block_sampling_s`; `sampling_s` is the block's sampling time
    divided by its checkpoints.
    """
    models = list(models)
    if not models:
        return []
    if seeds is not None and len(seeds) != len(models):
        raise LLCError(f"seeds has {len(seeds)} entries for {len(models)} models (one seed per model)")
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise LLCError(f"block_size={block_size!r} must be a positive integer or None (as many as fit)")
    out: list = []
    i = 0
    while i < len(models):
        size = block_size or _auto_block(models[i:], loss_fn, data, kwargs)
        out += _block(models[i:i + size], loss_fn, data, kwargs, return_exceptions,
                      None if seeds is None else list(seeds[i:i + size]))
        i += size
    return out


def _auto_block(models, loss_fn, data, kwargs) -> int:
    chains = int(kwargs.get("chains", 4))
    dev = kwargs.get("device")
    dev = torch.device("cuda" if dev in (None, "auto") and torch.cuda.is_available() else (dev or "cpu"))
    if dev.type != "cuda":
        return max(1, min(len(models), CPU_MAX_ROWS // max(chains, 1)))
    D = sum(p.numel() for p in models[0].parameters())
    batch = int(kwargs.get("batch_size", 32))
    # per stacked chain: noise block, W, its gradient, RMSProp state and temporaries (~10 vectors),
    # plus activations, bounded by ~64 floats per parameter-sized unit per example (generous)
    per_row = 4 * D * (NOISE_BLOCK + 10) + 4 * batch * _activation_floats(models[0])
    free, _ = torch.cuda.mem_get_info(dev)
    rows = int(CUDA_MEMORY_FRACTION * free // max(per_row, 1))
    return max(1, min(len(models), rows // max(chains, 1)))


def _activation_floats(model: nn.Module) -> int:
    """A generous count of activation floats per example for a forward/backward (for sizing)."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "n_ctx") and hasattr(cfg, "d_model"):
        width = max(cfg.d_model, getattr(cfg, "d_mlp", 0) or 0, getattr(cfg, "vocab_size", 0) or 0)
        return 24 * cfg.n_ctx * width * max(cfg.n_layers, 1) + cfg.n_ctx * cfg.n_ctx * cfg.n_heads * cfg.n_layers * 4
    return 64 * sum(p.numel() for p in model.parameters())


def _block(models, loss_fn, data, kwargs, return_exceptions, seeds=None) -> list:
    """One stacked run for `models`: every checkpoint's estimate_llc in its own thread."""
    K = len(models)
    calls: list[_Call | None] = [None] * K
    arrived = threading.Semaphore(0)

    def one(k: int):
        def handler(*args, **kw):
            calls[k] = call = _Call(args, kw)
            arrived.release()
            call.done.wait()
            if call.error is not None:
                raise call.error
            return call.run

        try:
            with intercept_runs(handler):
                return estimate_llc(models[k], loss_fn, data,
                                    **(kwargs if seeds is None else {**kwargs, "seed": seeds[k]}))
        finally:
            if calls[k] is None:          # failed before sampling: count it as arrived
                arrived.release()

    with ThreadPoolExecutor(max_workers=K, thread_name_prefix="llc-checkpoint") as pool:
        futures = [pool.submit(one, k) for k in range(K)]
        for _ in range(K):
            arrived.acquire()
        _sample_together([c for c in calls if c is not None])
        results = []
        for f in futures:
            try:
                results.append(f.result())
            except Exception as e:  # noqa: BLE001 - handed back or re-raised, never dropped
                if not return_exceptions:
                    raise
                results.append(e)
    for r, c in zip(results, calls):
        if isinstance(r, LLCResult) and c is not None:
            r.timing.update(sampling_s=c.block_s / max(len([x for x in calls if x]), 1),
                            block_sampling_s=c.block_s,
                            batched_checkpoints=len([x for x in calls if x]),
                            batched_stacked=c.stacked)
    return results


def _sample_together(calls: list[_Call]) -> None:
    """Run the calls' chains as one stacked run_chains and hand each call its rows."""
    if not calls:
        return
    t0, stacked = time.perf_counter(), False
    try:
        stacked = _stackable(calls)
        if stacked:
            runs = _stacked_runs(calls)
        else:                      # different settings or structure: one run each, in turn
            runs = [run_chains(*c.args, **c.kwargs) for c in calls]
        for c, r in zip(calls, runs):
            c.run = r
    except BaseException as e:  # noqa: BLE001 - every waiting checkpoint gets the error
        for c in calls:
            c.error = e
    dt = time.perf_counter() - t0
    for c in calls:
        c.block_s, c.stacked = dt, stacked
        c.done.set()


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and a.device == b.device):
            return False
        if a is b or torch.equal(a, b):
            return True
        # NaN marks "undefined" in task features: equal where both are NaN
        return bool(a.is_floating_point() and ((a == b) | (a.isnan() & b.isnan())).all())
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _stackable(calls: list[_Call]) -> bool:
    c0 = calls[0]
    f0, s0 = c0.args[1], c0.args[2]
    for c in calls:
        f, s = c.args[1], c.args[2]
        if s != s0 or not c.kwargs.get("vectorized", True):
            return False
        if any(not _same(c.kwargs.get(k), c0.kwargs.get(k)) for k in SHARED_KWARGS if k != "seed"):
            return False
        if c.kwargs.get("row_seeds") is not None:
            return False
        if c.kwargs["seed"] != c0.kwargs["seed"] and not _own_rows(c, c0):
            return False
        if list(c.kwargs.get("draw_steps", ())) != list(c0.kwargs.get("draw_steps", ())):
            return False
        if c.kwargs.get("centers") is not None or c.kwargs.get("start") is not None:
            return False
        # the stacked run uses checkpoint 0's loss: parameters held fixed must be the same
        if (f.names != f0.names or f.shapes != f0.shapes or not _same(f.mask, f0.mask)
                or not _same(f.frozen, f0.frozen)):
            return False
        ob, ob0 = c.kwargs.get("observe_batch"), c0.kwargs.get("observe_batch")
        if (ob is None) != (ob0 is None) or (ob is not None and not _same(batch_leaves(ob)[0], batch_leaves(ob0)[0])):
            return False
    return True


def _own_rows(c: _Call, c0: _Call) -> bool:
    """Whether checkpoints with different seeds can share a pass: each chain has its own
    minibatch stream on the device over the same data, so row blocks can be stacked."""
    g, g0 = c.kwargs.get("get_batch"), c0.kwargs.get("get_batch")
    return (bool(c.kwargs.get("per_chain_batches")) and isinstance(g, DeviceBatches)
            and isinstance(g0, DeviceBatches) and g.index.shape == g0.index.shape
            and len(g.leaves) == len(g0.leaves) and all(_same(a, b) for a, b in zip(g.leaves, g0.leaves)))


class _Tiled:
    """Chain-stacked batches [C, ...] repeated for K checkpoints -> [K·C, ...] (row k·C + c is
    chain c's batch); keeps `at` (a device-side step) when the source has it."""

    def __init__(self, get_batch, K: int):
        self.get_batch, self.K = get_batch, K
        if hasattr(get_batch, "at"):
            self.at = lambda t_dev: self._tile(get_batch.at(t_dev))

    def _tile(self, batch):
        leaves, rebuild = batch_leaves(batch)
        return rebuild([x.repeat(self.K, *([1] * (x.dim() - 1))) for x in leaves])

    def __call__(self, t: int):
        return self._tile(self.get_batch(t))


def _stacked_runs(calls: list[_Call]) -> list[ChainRun]:
    """Stack K checkpoints × C chains into one run; split it back into K ChainRuns.

    Every checkpoint's batches come from the same seeded streams over the same data, so
    checkpoint 0's get_batch serves all (with per-chain batches its [C, ...] batch is tiled K
    times); row k·C + c is checkpoint k's chain c, drawing the noise of chain c.
    """
    K = len(calls)
    c0 = calls[0]
    loss_of, flat, s = c0.args
    kw = dict(c0.kwargs)
    C = kw["chains"]
    ids = list(kw.get("chain_ids") or range(C))
    get0 = kw["get_batch"]
    seeds = [c.kwargs["seed"] for c in calls]
    if len(set(seeds)) > 1:   # each checkpoint its own seed: its rows draw its own batches and noise
        get_batch = DeviceBatches.stack_rows([c.kwargs["get_batch"] for c in calls])
        kw.update(row_seeds=[sd for sd in seeds for _ in range(C)])
    else:
        get_batch = _Tiled(get0, K) if kw.get("per_chain_batches") else get0
    centers = torch.cat([c.args[1].w_star.to(flat.w_star.device).expand(C, -1) for c in calls])
    kw.update(chains=K * C, chain_ids=ids * K, centers=centers, get_batch=get_batch, progress=None)
    run = run_chains(loss_of, flat, s, **kw)
    shared_center_trace = (kw.get("center_loss") and not kw.get("per_chain_batches"))
    out = []
    for k in range(K):
        rows = slice(k * C, (k + 1) * C)
        cl = run.center_losses
        if cl is not None:
            cl = cl[k * C] if shared_center_trace else cl[rows]   # one w* for all its chains: [T]
        out.append(ChainRun(
            losses=run.losses[rows], final_w=run.final_w[rows],
            mala_accept=None if run.mala_accept is None else run.mala_accept[rows],
            vectorized=run.vectorized, center_losses=cl,
            observed=None if run.observed is None else run.observed[rows],
            observe_steps=list(run.observe_steps), captured=run.captured))
    return out
