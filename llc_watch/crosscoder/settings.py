"""CrosscoderSettings: everything `crosscode_run` does, in one frozen dataclass with its defaults.

    >>> s = CrosscoderSettings(n_snapshots=12, k=4)
    >>> s.n_snapshots, s.activation
    (12, 'batchtopk')
    >>> CrosscoderSettings(activation="relu")
    Traceback (most recent call last):
    ...
    llc_watch.crosscoder.settings.CrosscoderSettingsError: crosscoder.activation='relu': choose one of topk, batchtopk, jumprelu
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from llc_watch.settings import SettingsBase, SettingsError

from .model import ACTIVATIONS

NORMALIZE = ("snapshot", "global", "none")


class CrosscoderSettingsError(SettingsError):
    """A crosscoder setting that cannot work; the message names it and what to choose."""


@dataclass(frozen=True)
class CrosscoderSettings(SettingsBase):
    # --- what to collect ------------------------------------------------------------------------
    site: str = "last"                  # "last": residual stream after the last block; or any site name
    positions: tuple[int, ...] | None = None  # input positions to read; None: the answer positions
    n_examples: int = 1024              # fixed inputs, the same at every snapshot (rows = examples x positions)
    n_snapshots: int = 24               # K checkpoints, log-spaced in log(step + 1) over the run (all if fewer)
    seed: int = 0                       # inputs, initialisation and batch order (mixed with the run's seed)
    chunk_size: int = 512               # examples per forward pass while collecting (bounds memory)
    # --- the crosscoder -------------------------------------------------------------------------
    n_latents: int = 128                # dictionary size m
    activation: str = "batchtopk"       # topk | batchtopk | jumprelu
    k: int = 8                          # TopK/BatchTopK: active latents per row (on average for BatchTopK)
    normalize: str = "snapshot"         # snapshot | global | none: per-snapshot RMS scaling (see train.py)
    center_positions: bool = True       # subtract each (snapshot, position) mean first: otherwise position
                                        # identity dominates the variance and takes most latents
    lr: float = 2e-3                    # Adam learning rate (warm-up 5 %, linear decay over the last 20 %)
    steps: int = 2000                   # optimiser steps
    batch_size: int = 512               # rows per step
    aux_k: int = 32                     # TopK/BatchTopK: dead latents used by the auxiliary loss
    aux_coef: float = 1 / 32            # weight of the auxiliary (AuxK) loss; 0 turns it off
    dead_after: int = 200               # steps without firing before a latent counts as dead
    sparsity_coef: float = 0.2          # JumpReLU: weight of the decoder-norm-weighted tanh sparsity
    tanh_c: float = 4.0                 # JumpReLU: sharpness of tanh(c * f * |W_dec|)
    preact_coef: float = 3e-6           # JumpReLU: pre-activation loss that revives dead latents
    jump_init: float = 0.1              # JumpReLU: initial threshold (normalised units)
    device: str = "auto"                # auto | cpu | cuda
    # --- reading it -----------------------------------------------------------------------------
    emergence_frac: float = 0.5         # emerges at the first snapshot with decoder norm >= this x its peak
    fade_frac: float = 0.25             # "fades" when the last snapshot's norm is below this x its peak
    late_frac: float = 2 / 3            # "forms late" when it emerges after this fraction of the snapshots
    n_top_examples: int = 5             # top activating (example, position) rows kept per feature
    n_ablate: int = 16                  # features ablated at every snapshot (largest mean contribution,
                                        # plus the best match of each labelled feature)
    n_ablate_examples: int = 128        # inputs the ablation is evaluated on
    keep_activations: bool = False      # keep the collected activations (crosscoder_cache/) after success

    def validate(self):
        def bad(field, why):
            raise CrosscoderSettingsError(f"crosscoder.{field}={getattr(self, field)!r}: {why}")

        def positive_int(field, minimum=1):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
                bad(field, f"must be an integer >= {minimum}")

        for f in ("n_examples", "chunk_size", "n_latents", "k", "steps", "batch_size", "n_top_examples",
                  "n_ablate_examples"):
            positive_int(f)
        positive_int("n_snapshots", 2)
        for f in ("aux_k", "dead_after", "n_ablate", "seed"):
            positive_int(f, 0)
        if self.k > self.n_latents:
            bad("k", f"must be at most n_latents={self.n_latents}")
        if self.activation not in ACTIVATIONS:
            bad("activation", f"choose one of {', '.join(ACTIVATIONS)}")
        if self.normalize not in NORMALIZE:
            bad("normalize", f"choose one of {', '.join(NORMALIZE)}")
        for f in ("lr", "tanh_c", "jump_init"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(f, "must be a finite number > 0")
        for f in ("aux_coef", "sparsity_coef", "preact_coef"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                bad(f, "must be a finite number >= 0")
        for f in ("emergence_frac", "fade_frac", "late_frac"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and 0 < v < 1):
                bad(f, "must be strictly between 0 and 1")
        if self.device not in ("auto", "cpu") and not str(self.device).startswith("cuda"):
            bad("device", "choose auto, cpu or cuda[:N]")
        if not isinstance(self.site, str) or not self.site:
            bad("site", "give a site name (see Transformer.site_names) or 'last'")
        if self.positions is not None:
            if not isinstance(self.positions, tuple) or not self.positions or not all(
                    isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in self.positions):
                bad("positions", "must be None (answer positions) or a non-empty tuple of integers >= 0")

    @classmethod
    def from_dict(cls, d: dict | None) -> "CrosscoderSettings":
        """Settings from a dict (TOML, CLI); unknown keys are an error naming the known ones."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CrosscoderSettingsError(f"unknown crosscoder setting(s) {unknown}; known: {', '.join(sorted(known))}")
        if isinstance(d.get("positions"), list):
            d["positions"] = tuple(d["positions"])
        return cls(**d)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["positions"] = list(self.positions) if self.positions is not None else None
        return d

    def key(self, *extra) -> str:
        """A short hash of the settings (and anything else the result depends on)."""
        blob = json.dumps([self.to_dict(), *extra], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def train_kwargs(self) -> dict:
        """Keyword arguments of train_crosscoder taken from these settings."""
        names = ("activation", "k", "lr", "steps", "batch_size", "seed", "normalize", "aux_k", "aux_coef",
                 "dead_after", "sparsity_coef", "tanh_c", "preact_coef", "jump_init")
        return {n: getattr(self, n) for n in names}


__all__ = ["CrosscoderSettings", "CrosscoderSettingsError"]
