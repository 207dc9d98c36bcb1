"""The stage map: every signal's boundaries, aligned, cut into stages, with quiet stages marked."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from llc_watch.signals import Signal

from .boundaries import CUT_KINDS as _CUT_KINDS, Boundary, align_boundaries, find_boundaries
from .smoothing import Smooth, log_step, smooth_signal, step_of

# --------------------------------------------------------------------------------------------------
# Stages


def _trend(sm: Smooth | None, a: float, b: float, flat: float) -> str:
    if sm is None:
        return "n/a"
    rng = float(np.ptp(sm.mean)) or 1.0
    lo, hi = max(a, sm.steps[0]), min(b, sm.steps[-1])
    if hi <= lo:
        return "n/a"
    d = float(sm.at(hi)[0] - sm.at(lo)[0])
    noise = 2 * float(np.median(sm.sd))
    if abs(d) < max(flat * rng, noise):
        return "flat"
    return "rising" if d > 0 else "falling"


def stage_table(aligned: pd.DataFrame, smooths: Mapping[str, Smooth], first_step: float, last_step: float,
                cut_families: Sequence[str] = ("llc", "loss"), flat: float = 0.1,
                llc_invalid_steps: Sequence[float] = ()) -> pd.DataFrame:
    """Cut [first_step, last_step] at aligned groups holding an LLC or loss boundary, and describe each stage.

    Columns: stage, start_step, end_step, llc_trend, loss_trend (rising/falling/flat/n/a; "flat" when
    the smoothed signal moves less than `flat` of its range), features_formed (probe onsets in the
    stage), ablation_effects (ablation onsets), quiet (the loss is flat while the LLC moves or a feature
    forms), boundaries (signal:kind at the stage start), invalid_llc (invalid LLC checkpoints inside).
    """
    cuts = []
    if len(aligned):
        a = aligned[aligned["family"].isin(cut_families) & aligned["kind"].isin(_CUT_KINDS)]
        for gid, g in a.groupby("group"):
            c = float(step_of(np.median(np.log1p(g["step"]))))
            if first_step < c < last_step:
                cuts.append((c, gid))
    cuts.sort()
    edges = [first_step] + [c for c, _ in cuts] + [last_step]
    starts_group = [None] + [gid for _, gid in cuts]
    loss_sm = smooths.get("train_loss") or smooths.get("test_loss")
    llc_sm = smooths.get("llc")
    onsets = aligned[aligned["kind"] == "onset"] if len(aligned) else aligned
    rows = []
    for i in range(len(edges) - 1):
        s0, s1 = edges[i], edges[i + 1]
        last = i == len(edges) - 2
        inside = (onsets["step"] >= s0) & ((onsets["step"] <= s1) if last else (onsets["step"] < s1)) \
            if len(onsets) else []
        sel = onsets[inside] if len(onsets) else onsets
        feats = sorted(s.split(":", 1)[1] for s in sel["signal"] if s.startswith("probe:")) if len(sel) else []
        abls = sorted(s.split(":", 1)[1] for s in sel["signal"] if s.startswith("ablation:")) if len(sel) else []
        llc_t, loss_t = _trend(llc_sm, s0, s1, flat), _trend(loss_sm, s0, s1, flat)
        probe_moves = any(_trend(sm, s0, s1, flat) != "flat" for k, sm in smooths.items()
                          if k.startswith("probe:") and _trend(sm, s0, s1, flat) != "n/a")
        quiet = loss_t == "flat" and (llc_t in ("rising", "falling") or bool(feats) or probe_moves)
        at = ""
        if starts_group[i] is not None:
            g = aligned[aligned["group"] == starts_group[i]]
            at = ", ".join(f"{s}:{k}" for s, k in zip(g["signal"], g["kind"]))
        n_bad = int(sum(s0 <= s <= s1 for s in llc_invalid_steps))
        rows.append({"stage": i + 1, "start_step": s0, "end_step": s1, "llc_trend": llc_t, "loss_trend": loss_t,
                     "features_formed": ", ".join(feats), "ablation_effects": ", ".join(abls),
                     "quiet": bool(quiet), "boundaries": at, "invalid_llc": n_bad})
    return pd.DataFrame(rows)


@dataclass
class StageMap:
    """Everything a stage map holds; `to_dict()` is JSON-able, `save(run_dir)` writes the CSVs.

    boundaries: every Boundary; aligned: align_boundaries(); stages: stage_table(); smooths: the GP
    fits per signal (not saved); warnings: what the reader should know (missing tables, invalid LLC).
    """

    boundaries: list[Boundary]
    aligned: pd.DataFrame
    stages: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    llc_invalid_steps: list[float] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    smooths: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        def records(df):
            return json.loads(df.to_json(orient="records"))
        return {"boundaries": [b.to_dict() for b in self.boundaries], "aligned": records(self.aligned),
                "stages": records(self.stages), "warnings": list(self.warnings),
                "llc_invalid_steps": [float(s) for s in self.llc_invalid_steps], "settings": dict(self.settings)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "StageMap":
        return cls(boundaries=[Boundary.from_dict(b) for b in d["boundaries"]],
                   aligned=pd.DataFrame(d["aligned"]), stages=pd.DataFrame(d["stages"]),
                   warnings=list(d.get("warnings", [])), llc_invalid_steps=list(d.get("llc_invalid_steps", [])),
                   settings=dict(d.get("settings", {})))

    def save(self, run_dir: str | Path) -> dict[str, Path]:
        """Write stages.csv, boundaries.csv (the aligned table) and stage_map.json, atomically."""
        from llc_watch.io import atomic_write_csv, atomic_write_json
        run_dir = Path(run_dir)
        return {"stages": atomic_write_csv(run_dir / "stages.csv", self.stages),
                "boundaries": atomic_write_csv(run_dir / "boundaries.csv", self.aligned),
                "json": atomic_write_json(run_dir / "stage_map.json", self.to_dict())}

    def first(self, signal: str, kind: str | None = None) -> Boundary | None:
        """The earliest boundary of `signal` (optionally of `kind`), or None."""
        bs = [b for b in self.boundaries if b.signal == signal and (kind is None or b.kind == kind)]
        return min(bs, key=lambda b: b.step) if bs else None

    def summary(self) -> str:
        """A few lines for a terminal: the stage table, the timeline, the warnings."""
        st = self.stages.copy()
        for c in ("start_step", "end_step"):
            st[c] = st[c].round().astype("Int64")
        cols = [c for c in ["stage", "start_step", "end_step", "llc_trend", "loss_trend", "features_formed",
                            "ablation_effects", "quiet", "invalid_llc"] if c in st.columns]
        lines = [f"{len(self.stages)} stages, {len(self.boundaries)} boundaries in "
                 f"{len({b.signal for b in self.boundaries})} signals", st[cols].to_string(index=False)]
        lines += self.timeline()
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def decisive_drop(self, loss: str) -> tuple[Boundary, Boundary]:
        """(drop, plateau end before it) of the loss drop that matters: the one nearest in log step
        to the steepest rise in exact-match accuracy. A loss often first falls early to the
        output-frequency level; that drop comes with no accuracy and is not "the" drop."""
        drops = sorted((b for b in self.boundaries if b.signal == loss and b.kind == "drop"), key=lambda b: b.step)
        rise = self.first("test_acc", "drop") or self.first("train_acc", "drop")
        drop = (min(drops, key=lambda b: abs(log_step(b.step) - log_step(rise.step))) if rise else drops[-1])
        ends = [b for b in self.boundaries if b.signal == loss and b.kind == "plateau-end" and b.step <= drop.step]
        return drop, (max(ends, key=lambda b: b.step) if ends else drop)

    def timeline(self) -> list[str]:
        """Plain sentences: does each feature (probe onset) form before the loss drops?"""
        loss = next((s for s in ("train_loss", "test_loss") if self.first(s, "drop")), None)
        out = []
        if loss is None:
            return ["No loss drop was detected, so nothing can be said about features forming before it."] \
                if any(b.kind == "onset" for b in self.boundaries) else []
        drop, start = self.decisive_drop(loss)
        for b in sorted((b for b in self.boundaries if b.kind == "onset"), key=lambda b: b.step):
            what = "forms" if b.signal.startswith("probe:") else "appears"
            name = b.signal.replace("probe:", "feature ").replace("ablation:", "ablation effect of ")
            if b.hi < start.lo:
                rel = f"before the {loss} plateau ends (step {start.step:.0f}, interval {start.lo:.0f}–{start.hi:.0f})"
            elif b.hi < drop.lo:
                rel = f"after the {loss} plateau ends but before its steepest drop (step {drop.step:.0f})"
            elif b.lo > drop.hi:
                rel = f"after the {loss} drop (step {drop.step:.0f})"
            else:
                rel = f"at the same time as the {loss} drop, within uncertainty (drop at step {drop.step:.0f})"
            out.append(f"{name} {what} at step {b.step:.0f} (interval {b.lo:.0f}–{b.hi:.0f}): {rel}.")
        return out


def stage_map(signals: Mapping[str, Signal], tolerance: float = 0.35, resamples: int = 100, seed: int = 0,
              warnings: Sequence[str] = (), llc_invalid_steps: Sequence[float] = (), **detect) -> StageMap:
    """The stage map of a set of signals: boundaries per signal, aligned, cut into stages.

    `warnings` (what the caller already knows: missing tables, invalid LLC checkpoints) are carried
    into the result; `llc_invalid_steps` are the checkpoints whose LLC was left out.

        >>> import numpy as np
        >>> steps = np.unique(np.geomspace(1, 10_000, 60).astype(int))
        >>> loss = 2.0 - 1.9 / (1 + np.exp(-(np.log1p(steps) - np.log(1000)) / 0.3))
        >>> sm = stage_map({"train_loss": Signal("train_loss", "loss", steps, loss, direction="down")})
        >>> len(sm.stages) >= 2
        True
    """
    warnings = list(warnings)
    smooths, boundaries = {}, []
    all_steps = []
    for name, s in signals.items():
        all_steps += list(s.step)
        try:
            sm = smooth_signal(s.step, s.value, s.stderr)
        except ValueError as e:
            warnings.append(f"{name}: {e}; no boundaries for it")
            continue
        smooths[name] = sm
        kind = "onset" if s.kind == "emergence" else s.kind   # until emergence gets its own reader
        bs = find_boundaries(s.step, s.value, s.stderr, kind=kind, signal=name,
                             direction=s.direction, resamples=resamples, seed=seed, smooth=sm, **detect)
        if name.startswith("ablation:") and bs:
            # an effect counts only if it clears the random-direction control (2 sd) somewhere
            rs = np.nan_to_num(s.extra.get("random_std", np.zeros(1)), nan=0.0)
            if not np.any(s.value > 2 * rs):
                warnings.append(f"{name}: the ablation drop never clears the random-direction control; no onset")
                bs = []
        boundaries += bs
    if not all_steps:
        raise ValueError("no signal with enough checkpoints to map stages")
    aligned = align_boundaries(boundaries, tolerance)
    stages = stage_table(aligned, smooths, float(min(all_steps)), float(max(all_steps)),
                         llc_invalid_steps=llc_invalid_steps)
    return StageMap(boundaries=boundaries, aligned=aligned, stages=stages, warnings=warnings,
                    llc_invalid_steps=list(llc_invalid_steps), smooths=smooths,
                    settings={"tolerance": tolerance, "resamples": resamples, "seed": seed, **detect})
