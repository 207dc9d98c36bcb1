"""Sequence tasks of the quiet-features paper (Naidu et al. 2025, arXiv 2505.03997): maximum
subarray, activity selection, majority of majority.

Encodings (one example each; the loss is on the answer tokens and <EOS>):

    max_subarray        x_1 … x_n  =  m_1 … m_n  <EOS>
        x_i are integer tokens -R..R; m_i is `in` if x_i belongs to the maximum-sum (nonempty)
        subarray, else `out`. Ties: of all subarrays with the maximum sum, the one that ends first,
        and of those the shortest (exactly what Kadane's algorithm finds when it keeps the first
        strict improvement and restarts whenever the running sum is <= 0).
    activity_selection  s_1 f_1  s_2 f_2 …  s_n f_n  =  a_1 … a_n  <EOS>
        activities sorted by finish time (ties: by start time), times are tokens t0..tT; a_i is
        `sel` if the greedy earliest-finish selector takes activity i (s_i >= the finish time of the
        last selected activity; intervals are half-open, so touching activities are compatible),
        else `skip`. The greedy selection is a maximum set of compatible activities.
    majority_of_majority  b_1 … b_n  =  y  <EOS>
        n = n_blocks * block_size bits; y is the majority of the blocks' majority bits. Ties (even
        sizes) count as 1: a block (or the whole) has majority 1 when at least half are ones.

Feature labels at the answer positions (position t predicts targets[:, t]):
  * max_subarray (at the position predicting m_i): `x` (x_i), `running_sum` (x_1 + … + x_i),
    `max_ending_here` (Kadane's best sum of a subarray ending at i), `prev_negative` (x_{i-1} < 0),
    `best_so_far` (best subarray sum within x_1..x_i), `in_subarray` (the answer m_i)
  * activity_selection (predicting a_i): `start`, `finish` (of activity i), `last_finish` (finish
    time of the last activity selected before i; 0 if none), `selected` (the answer a_i),
    `n_selected` (activities selected before i)
  * majority_of_majority (predicting y): `block_majority_{k}`, `block_ones_{k}` per block,
    `n_majority_blocks` (blocks with majority 1), `n_ones` (ones in the whole input)

    >>> MaxSubarray(length=8).sample(2, seed=0).tokens.shape    # [B, 2 * length + 1]
    torch.Size([2, 17])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import Batch, FeatureSpec, Task, TaskConfigError, batch_from_sequences


def _check_int(task: str, name: str, value, lo: int, hi: int | None = None, why: str = "") -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
    if not ok:
        rng = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise TaskConfigError(f"{task}: {name}={value!r} must be an integer {rng}{why}")


def _nan(B, T):
    return np.full((B, T), np.nan, dtype=np.float32)


# --- maximum subarray ------------------------------------------------------------------------------

def kadane(x) -> tuple[int, int, int, list[int]]:
    """(best sum, start, end inclusive, max-ending-here per i) with the documented tie-break."""
    best, bs, be = None, 0, 0
    cur, cs, ending = 0, 0, []
    for i, v in enumerate(x):
        if cur <= 0:
            cur, cs = v, i
        else:
            cur += v
        ending.append(cur)
        if best is None or cur > best:
            best, bs, be = cur, cs, i
    return best, bs, be, ending


@dataclass
class MaxSubarray(Task):
    length: int = 12        # elements per example (the paper: 64)
    max_value: int = 4      # elements are integers -max_value..max_value, uniform

    name = "max_subarray"
    summary = ("mark the maximum-sum subarray; features: running sum, max ending here, previous "
               "element negative")

    def __post_init__(self):
        _check_int(self.name, "length", self.length, 1, 512)
        _check_int(self.name, "max_value", self.max_value, 1, 100)

    @property
    def vocab(self):
        R = self.max_value
        return [str(v) for v in range(-R, R + 1)] + ["=", "in", "out", "<EOS>"]

    @property
    def features(self):
        return {
            "x": FeatureSpec("numeric", "the element whose membership is predicted here"),
            "running_sum": FeatureSpec("numeric", "sum of the elements up to and including this one"),
            "max_ending_here": FeatureSpec("numeric", "Kadane: largest sum of a subarray ending at this element"),
            "prev_negative": FeatureSpec("binary", "the previous element is negative"),
            "best_so_far": FeatureSpec("numeric", "largest subarray sum among the elements so far"),
            "in_subarray": FeatureSpec("binary", "this element is in the maximum subarray (the answer)"),
        }

    def sample(self, n, seed):
        rng = np.random.default_rng(int(seed))
        return self.encode(rng.integers(-self.max_value, self.max_value + 1, size=(n, self.length)))

    def encode(self, x) -> Batch:
        x = np.asarray(x, dtype=np.int64)
        B, n = x.shape
        R = self.max_value
        if n != self.length or np.abs(x).max(initial=0) > R:
            raise TaskConfigError(f"{self.name}: inputs must be [B, length={self.length}] integers in -{R}..{R}")
        EQ, IN, OUT, EOS = 2 * R + 1, 2 * R + 2, 2 * R + 3, 2 * R + 4
        seq = np.zeros((B, 2 * n + 2), dtype=np.int64)
        seq[:, :n] = x + R
        seq[:, n] = EQ
        seq[:, -1] = EOS
        T = 2 * n + 1
        f = {k: _nan(B, T) for k in self.features}
        pos = slice(n, 2 * n)     # input positions predicting m_1..m_n
        f["x"][:, pos] = x
        f["running_sum"][:, pos] = np.cumsum(x, axis=1)
        f["prev_negative"][:, n + 1: 2 * n] = x[:, :-1] < 0
        for b in range(B):
            best, s, e, ending = kadane(x[b].tolist())
            mark = np.zeros(n, dtype=bool)
            mark[s: e + 1] = True
            seq[b, n + 1: 2 * n + 1] = np.where(mark, IN, OUT)
            f["max_ending_here"][b, pos] = ending
            f["best_so_far"][b, pos] = np.maximum.accumulate(ending)
            f["in_subarray"][b, pos] = mark
        return batch_from_sequences(torch.from_numpy(seq), answer_start=n + 1,
                                    features={k: torch.from_numpy(v) for k, v in f.items()})


# --- activity selection ------------------------------------------------------------------------------

def greedy_activities(starts, finishes) -> list[bool]:
    """Earliest-finish greedy over activities already sorted by (finish, start)."""
    last, out = 0, []
    for s, f in zip(starts, finishes):
        take = s >= last
        out.append(take)
        if take:
            last = f
    return out


@dataclass
class ActivitySelection(Task):
    n_activities: int = 8   # activities per example (the paper: 16)
    max_time: int = 16      # times are integers 0..max_time; start < finish
    max_duration: int = 6   # finish - start is 1..max_duration

    name = "activity_selection"
    summary = ("greedy activity selection over activities sorted by finish time; features: start "
               "times, last selected finish time, selected")

    def __post_init__(self):
        _check_int(self.name, "n_activities", self.n_activities, 1, 256)
        _check_int(self.name, "max_time", self.max_time, 1, 256)
        _check_int(self.name, "max_duration", self.max_duration, 1, self.max_time,
                   " (at most max_time, so that an activity fits)")

    @property
    def vocab(self):
        return [f"t{i}" for i in range(self.max_time + 1)] + ["=", "sel", "skip", "<EOS>"]

    @property
    def features(self):
        return {
            "start": FeatureSpec("numeric", "start time of the activity decided here"),
            "finish": FeatureSpec("numeric", "finish time of the activity decided here"),
            "last_finish": FeatureSpec("numeric", "finish time of the last selected activity (0 if none)"),
            "selected": FeatureSpec("binary", "the activity decided here is selected (the answer)"),
            "n_selected": FeatureSpec("numeric", "activities selected before this one"),
        }

    def sample(self, n, seed):
        rng = np.random.default_rng(int(seed))
        dur = rng.integers(1, self.max_duration + 1, size=(n, self.n_activities))
        start = (rng.random((n, self.n_activities)) * (self.max_time - dur + 1)).astype(np.int64)
        return self.encode(start, start + dur)

    def encode(self, start, finish) -> Batch:
        """start, finish: int [B, n_activities]; sorted here by (finish, start)."""
        start, finish = np.asarray(start, dtype=np.int64), np.asarray(finish, dtype=np.int64)
        B, n = start.shape
        if n != self.n_activities or (start < 0).any() or (finish > self.max_time).any() or (start >= finish).any():
            raise TaskConfigError(f"{self.name}: activities must be [B, n_activities={self.n_activities}] "
                                  f"with 0 <= start < finish <= max_time={self.max_time}")
        order = np.lexsort((start, finish), axis=1)
        start, finish = np.take_along_axis(start, order, 1), np.take_along_axis(finish, order, 1)
        M = self.max_time
        EQ, SEL, SKIP, EOS = M + 1, M + 2, M + 3, M + 4
        seq = np.zeros((B, 2 * n + n + 2), dtype=np.int64)
        seq[:, 0: 2 * n: 2], seq[:, 1: 2 * n: 2] = start, finish
        seq[:, 2 * n] = EQ
        seq[:, -1] = EOS
        T = seq.shape[1] - 1
        f = {k: _nan(B, T) for k in self.features}
        pos = slice(2 * n, 3 * n)
        f["start"][:, pos], f["finish"][:, pos] = start, finish
        for b in range(B):
            sel = greedy_activities(start[b].tolist(), finish[b].tolist())
            seq[b, 2 * n + 1: 3 * n + 1] = np.where(sel, SEL, SKIP)
            last, count = 0, 0
            for i, take in enumerate(sel):
                f["last_finish"][b, 2 * n + i] = last
                f["n_selected"][b, 2 * n + i] = count
                f["selected"][b, 2 * n + i] = take
                if take:
                    last, count = finish[b, i], count + 1
        return batch_from_sequences(torch.from_numpy(seq), answer_start=2 * n + 1,
                                    features={k: torch.from_numpy(v) for k, v in f.items()})


# --- majority of majority ------------------------------------------------------------------------------

@dataclass
class MajorityOfMajority(Task):
    n_blocks: int = 5       # blocks (the paper's inputs have 32 bits)
    block_size: int = 5     # bits per block
    p_one: float = 0.5      # probability of a 1 bit

    name = "majority_of_majority"
    summary = "majority of the blocks' majority bits; features: each block's majority and count of ones"

    def __post_init__(self):
        _check_int(self.name, "n_blocks", self.n_blocks, 1, 64)
        _check_int(self.name, "block_size", self.block_size, 1, 64)
        if self.n_blocks * self.block_size > 1024:
            raise TaskConfigError(f"{self.name}: n_blocks * block_size = {self.n_blocks * self.block_size} "
                                  "must be at most 1024 bits")
        if not isinstance(self.p_one, (int, float)) or isinstance(self.p_one, bool) or not 0 < self.p_one < 1:
            raise TaskConfigError(f"{self.name}: p_one={self.p_one!r} must lie strictly between 0 and 1")

    @property
    def vocab(self):
        return ["0", "1", "=", "<EOS>"]

    @property
    def features(self):
        out = {}
        for k in range(self.n_blocks):
            out[f"block_majority_{k}"] = FeatureSpec("binary", f"block {k} has majority 1 (ties count as 1)")
        for k in range(self.n_blocks):
            out[f"block_ones_{k}"] = FeatureSpec("numeric", f"number of ones in block {k}")
        out["n_majority_blocks"] = FeatureSpec("numeric", "number of blocks with majority 1")
        out["n_ones"] = FeatureSpec("numeric", "number of ones in the whole input")
        return out

    def sample(self, n, seed):
        rng = np.random.default_rng(int(seed))
        return self.encode((rng.random((n, self.n_blocks * self.block_size)) < self.p_one).astype(np.int64))

    def encode(self, bits) -> Batch:
        bits = np.asarray(bits, dtype=np.int64)
        B, L = bits.shape
        if L != self.n_blocks * self.block_size or not np.isin(bits, (0, 1)).all():
            raise TaskConfigError(f"{self.name}: inputs must be [B, n_blocks * block_size = "
                                  f"{self.n_blocks * self.block_size}] bits")
        ones = bits.reshape(B, self.n_blocks, self.block_size).sum(-1)
        maj = 2 * ones >= self.block_size
        y = 2 * maj.sum(-1) >= self.n_blocks
        seq = np.concatenate([bits, np.full((B, 1), 2), y[:, None].astype(np.int64), np.full((B, 1), 3)], axis=1)
        T = L + 2
        f = {k: _nan(B, T) for k in self.features}
        for k in range(self.n_blocks):
            f[f"block_majority_{k}"][:, L] = maj[:, k]
            f[f"block_ones_{k}"][:, L] = ones[:, k]
        f["n_majority_blocks"][:, L] = maj.sum(-1)
        f["n_ones"][:, L] = bits.sum(-1)
        return batch_from_sequences(torch.from_numpy(seq), answer_start=L + 1,
                                    features={k: torch.from_numpy(v) for k, v in f.items()})


TASK_CLASSES = (MaxSubarray, ActivitySelection, MajorityOfMajority)
