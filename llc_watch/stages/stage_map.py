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

from .boundaries import (CRITICAL_KINDS, CUT_KINDS as _CUT_KINDS, Boundary, align_boundaries, find_boundaries,
                         is_strong)
from .quiet import FORMED_THRESHOLD, PROBE_PREFIX, Formation, event_is_quiet, formed_onset, plateau_start
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


def credibly_flat(sm: Smooth | None, a: float, b: float, flat: float = 0.1, draws: int = 200,
                  level: float = 0.9, seed: int = 0) -> bool:
    """Whether the smoothed signal stays within `flat` of its range over steps [a, b] in a `level`
    share of posterior function draws (its posterior, not just its mean, is flat).

        >>> import numpy as np
        >>> st = np.unique(np.geomspace(1, 1e4, 60).astype(int))
        >>> sm = smooth_signal(st, 2.0 - 1.9 / (1 + np.exp(-(np.log1p(st) - np.log(1000)) / 0.3)))
        >>> credibly_flat(sm, 1, 50), credibly_flat(sm, 500, 2000)
        (True, False)
    """
    if sm is None:
        return False
    lo, hi = log_step(max(a, sm.steps[0])), log_step(min(b, sm.steps[-1]))
    inside = (sm.x >= lo) & (sm.x <= hi)
    if hi <= lo or inside.sum() < 2:
        return False
    f = sm.sample(draws, seed)[inside] if sm.root is not None else sm.mean[inside, None]
    rng = float(np.ptp(sm.mean)) or 1.0
    return bool(np.quantile(np.ptp(f, axis=0), level) < flat * rng)


def _events(aligned: pd.DataFrame, strong_only: bool = True) -> pd.DataFrame:
    """Rows of `aligned` that can make a flat-loss stretch quiet: probe onsets, crosscoder emergence
    peaks, LLC critical points (slope zero, plateau edges), essential-dynamics turning points."""
    if not len(aligned):
        return aligned
    a = aligned
    is_event = ((a["kind"] == "onset") & (a["family"] == "probe")) | (a["kind"] == "peak") | \
        ((a["family"] == "llc") & a["kind"].isin(CRITICAL_KINDS)) | a["kind"].isin(["turning-point", "cusp"])
    if strong_only and "strong" in a.columns:
        is_event &= a["strong"].astype(bool)
    return a[is_event]


def quiet_events(aligned: pd.DataFrame, smooths: Mapping[str, Smooth], first_step: float,
                 loss: str | None = "train_loss", flat: float = 0.1, strong_only: bool = True) -> pd.DataFrame:
    """Each event (probe onset, emergence peak, LLC critical point, trajectory turning point) with the
    loss plateau it falls in and whether it is quiet: the loss is credibly flat from the start of
    that plateau (the end of the previous strong drop, or the first checkpoint) to the end of the
    event's interval, i.e. the loss had not moved yet when the event was over.
    Columns: signal, kind, step, lo, hi, plateau_start, quiet.
    """
    cols = ["signal", "kind", "step", "lo", "hi", "plateau_start", "quiet"]
    ev = _events(aligned, strong_only)
    if not len(ev):
        return pd.DataFrame(columns=cols)
    sm = smooths.get(loss) if loss else None
    ends = []
    if loss and len(aligned):
        le = aligned[(aligned["signal"] == loss) & (aligned["kind"] == "drop-end")]
        if strong_only and "strong" in le.columns:
            le = le[le["strong"].astype(bool)]
        ends = sorted(le["step"].astype(float))
    rows = []
    for r in ev.itertuples():  # the rule is llc_watch.stages.quiet's, shared with probes_quiet.csv
        q = event_is_quiet(float(r.step), float(r.hi), sm, ends, first_step, flat)
        rows.append({"signal": r.signal, "kind": r.kind, "step": r.step, "lo": r.lo, "hi": r.hi,
                     "plateau_start": plateau_start(float(r.step), ends, first_step), "quiet": bool(q)})
    return pd.DataFrame(rows, columns=cols)


def stage_table(aligned: pd.DataFrame, smooths: Mapping[str, Smooth], first_step: float, last_step: float,
                cut_families: Sequence[str] = ("llc", "loss"), flat: float = 0.1,
                llc_invalid_steps: Sequence[float] = (), strong_only: bool = True) -> pd.DataFrame:
    """Cut [first_step, last_step] at aligned groups holding a (strong) LLC or loss boundary, and describe each stage.

    Columns: stage, start_step, end_step, llc_trend, loss_trend (rising/falling/flat/n/a; "flat" when
    the smoothed signal moves less than `flat` of its range), features_formed (probe onsets in the
    stage), ablation_effects (ablation onsets), quiet (the loss is credibly flat while a probe onset,
    an emergence peak or an LLC critical point falls in the stage), boundaries (signal:kind at the
    stage start), invalid_llc (invalid LLC checkpoints inside).
    """
    cuts = []
    if len(aligned):
        a = aligned[aligned["family"].isin(cut_families) & aligned["kind"].isin(_CUT_KINDS)]
        if strong_only and "strong" in a.columns:
            a = a[a["strong"].astype(bool)]
        for gid, g in a.groupby("group"):
            c = float(step_of(np.median(np.log1p(g["step"]))))
            if first_step < c < last_step:
                cuts.append((c, gid))
    cuts.sort()
    edges = [first_step] + [c for c, _ in cuts] + [last_step]
    starts_group = [None] + [gid for _, gid in cuts]
    loss_name = next((k for k in ("train_loss", "test_loss") if k in smooths), None)
    loss_sm = smooths.get(loss_name) if loss_name else None
    llc_sm = smooths.get("llc")
    onsets = aligned[aligned["kind"] == "onset"] if len(aligned) else aligned
    qev = quiet_events(aligned, smooths, first_step, loss=loss_name, flat=flat, strong_only=strong_only)
    rows = []
    for i in range(len(edges) - 1):
        s0, s1 = edges[i], edges[i + 1]
        last = i == len(edges) - 2

        def within(df):
            if not len(df):
                return df
            return df[(df["step"] >= s0) & ((df["step"] <= s1) if last else (df["step"] < s1))]
        sel = within(onsets)
        feats = sorted(s.split(":", 1)[1] for s in sel["signal"] if s.startswith("probe:")) if len(sel) else []
        abls = sorted(s.split(":", 1)[1] for s in sel["signal"] if s.startswith("ablation:")) if len(sel) else []
        llc_t, loss_t = _trend(llc_sm, s0, s1, flat), _trend(loss_sm, s0, s1, flat)
        inside = within(qev[qev["quiet"]]) if len(qev) else qev
        quiet = bool(len(inside))
        at = ""
        if starts_group[i] is not None:
            g = aligned[aligned["group"] == starts_group[i]]
            at = ", ".join(f"{s}:{k}" for s, k in zip(g["signal"], g["kind"]))
        n_bad = int(sum(s0 <= s <= s1 for s in llc_invalid_steps))
        rows.append({"stage": i + 1, "start_step": s0, "end_step": s1, "llc_trend": llc_t, "loss_trend": loss_t,
                     "features_formed": ", ".join(feats), "ablation_effects": ", ".join(abls),
                     "quiet": bool(quiet), "boundaries": at, "invalid_llc": n_bad,
                     "quiet_events": ", ".join(f"{r.signal}:{r.kind}" for r in inside.itertuples()) if quiet else ""})
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
    formations: dict = field(default_factory=dict)   # probe signal -> Formation (llc_watch.stages.quiet)

    def to_dict(self) -> dict:
        def records(df):
            return json.loads(df.to_json(orient="records"))
        return {"boundaries": [b.to_dict() for b in self.boundaries], "aligned": records(self.aligned),
                "stages": records(self.stages), "warnings": list(self.warnings),
                "llc_invalid_steps": [float(s) for s in self.llc_invalid_steps], "settings": dict(self.settings),
                "formations": [f.to_dict() for f in self.formations.values()]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "StageMap":
        return cls(boundaries=[Boundary.from_dict(b) for b in d["boundaries"]],
                   aligned=pd.DataFrame(d["aligned"]), stages=pd.DataFrame(d["stages"]),
                   warnings=list(d.get("warnings", [])), llc_invalid_steps=list(d.get("llc_invalid_steps", [])),
                   settings=dict(d.get("settings", {})),
                   formations={f["signal"]: Formation.from_dict(f) for f in d.get("formations", [])})

    def save(self, run_dir: str | Path) -> dict[str, Path]:
        """Write stages.csv, boundaries.csv (the aligned table) and stage_map.json, atomically."""
        from llc_watch.io import atomic_write_csv, atomic_write_json
        run_dir = Path(run_dir)
        return {"stages": atomic_write_csv(run_dir / "stages.csv", self.stages),
                "boundaries": atomic_write_csv(run_dir / "boundaries.csv", self.aligned),
                "json": atomic_write_json(run_dir / "stage_map.json", self.to_dict())}

    @property
    def strong(self) -> list[Boundary]:
        """The boundaries the summary and the figure show (Boundary.strong), in order of step."""
        return sorted((b for b in self.boundaries if b.strong), key=lambda b: b.step)

    def ranked(self) -> list[Boundary]:
        """Every boundary, strongest evidence first: strong ones, then by support, then by strength."""
        return sorted(self.boundaries, key=lambda b: (not b.strong, -b.support, -np.nan_to_num(b.strength)))

    def transitions(self) -> pd.DataFrame:
        """One row per aligned group holding a strong boundary: what the summary calls a transition.

        Columns: group, step (median over its strong members), lo, hi (the union of their
        intervals), n_strong, what ("signal kind, ..." of its strong members).
        """
        cols = ["group", "step", "lo", "hi", "n_strong", "what"]
        a = self.aligned
        if not len(a) or "strong" not in a.columns:
            return pd.DataFrame(columns=cols)
        a = a[a["strong"].astype(bool)]
        rows = []
        for gid, g in a.groupby("group"):
            rows.append({"group": gid, "step": float(step_of(np.median(np.log1p(g["step"])))),
                         "lo": float(g["lo"].min()), "hi": float(g["hi"].max()), "n_strong": len(g),
                         "what": ", ".join(f"{r.signal} {r.kind}" for r in g.itertuples())})
        return pd.DataFrame(rows, columns=cols).sort_values("step").reset_index(drop=True)

    def first(self, signal: str, kind: str | None = None) -> Boundary | None:
        """The earliest boundary of `signal` (optionally of `kind`), or None."""
        bs = [b for b in self.boundaries if b.signal == signal and (kind is None or b.kind == kind)]
        return min(bs, key=lambda b: b.step) if bs else None

    def summary(self) -> str:
        """A few lines for a terminal: the stage table, the strong boundaries, the timeline, the warnings."""
        st = self.stages.copy()
        for c in ("start_step", "end_step"):
            st[c] = st[c].round().astype("Int64")
        cols = [c for c in ["stage", "start_step", "end_step", "llc_trend", "loss_trend", "features_formed",
                            "ablation_effects", "quiet", "invalid_llc"] if c in st.columns]
        strong, tr = self.strong, self.transitions()
        lines = [f"{len(self.stages)} stages, {len(tr)} transitions ({len(strong)} strong boundaries, "
                 f"{len(self.boundaries)} in all, in {len({b.signal for b in self.boundaries})} signals)",
                 st[cols].to_string(index=False)]
        if len(tr):
            lines.append("transitions (aligned strong boundaries):")
            lines += [f"  step {r.step:.0f} ({r.lo:.0f}-{r.hi:.0f}): {r.what}" for r in tr.itertuples()]
        lines += self.timeline()
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def decisive_drop(self, loss: str) -> tuple[Boundary, Boundary]:
        """(drop, plateau end before it) of the loss drop that matters (see `loss_drop`)."""
        d = loss_drop(self, losses=(loss,))
        if d is None:
            raise ValueError(f"no drop of {loss} in this stage map")
        return d.drop, d.plateau_end or d.drop

    def timeline(self) -> list[str]:
        """Plain sentences: does each feature (probe onset) form before the loss drops?"""
        d = loss_drop(self)
        out = []
        if d is None:
            return ["No loss drop was detected, so nothing can be said about features forming before it."] \
                if any(b.kind == "onset" for b in self.boundaries) else []
        loss, drop, start = d.signal, d.drop, d.plateau_end or d.drop
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


# --------------------------------------------------------------------------------------------------
# The loss drop and quiet stretches: one definition each, for the stage map, the report and probes


@dataclass(frozen=True)
class LossDrop:
    """The loss drop that matters: its signal, and the plateau end, steepest point and end of the drop
    (plateau_end / drop_end are None when the drop starts at the first or ends at the last checkpoint)."""

    signal: str
    drop: Boundary
    plateau_end: Boundary | None
    drop_end: Boundary | None

    @property
    def step(self) -> float:
        return self.drop.step


def _boundaries_of(source) -> list[Boundary]:
    if isinstance(source, StageMap):
        return list(source.boundaries)
    if isinstance(source, Mapping):  # signals
        return list(stage_map(source, resamples=50).boundaries)
    return list(source)


def loss_drop(source, losses: Sequence[str] = ("train_loss", "test_loss"),
              accuracies: Sequence[str] = ("test_acc", "train_acc")) -> LossDrop | None:
    """The loss drop: of the first loss in `losses` that has a drop, the drop nearest in log step to
    the strongest rise of exact-match accuracy (a loss often first falls to the output-frequency
    level with no accuracy; that is not "the" drop); with no accuracy signal, the largest drop.
    source: a StageMap, {name: Signal}, or a list of Boundary. None when no loss drops.

        >>> import numpy as np
        >>> from llc_watch.signals import Signal
        >>> st = np.unique(np.geomspace(1, 1e4, 60).astype(int))
        >>> loss = 2.0 - 1.9 / (1 + np.exp(-(np.log1p(st) - np.log(1000)) / 0.3))
        >>> d = loss_drop({"train_loss": Signal("train_loss", "loss", st, loss, direction="down")})
        >>> 700 < d.step < 1400 and d.plateau_end.step < d.step < d.drop_end.step
        True
    """
    bs = _boundaries_of(source)
    for loss in losses:
        drops = [b for b in bs if b.signal == loss and b.kind == "drop"]
        if not drops:
            continue
        rises = [b for a in accuracies for b in bs if b.signal == a and b.kind == "drop"]
        if rises:
            rise = max(rises, key=lambda b: (b.strong, np.nan_to_num(b.strength)))
            drop = min(drops, key=lambda b: abs(b.x - rise.x))
        else:
            drop = max(drops, key=lambda b: (b.strong, np.nan_to_num(b.strength), b.support))
        ends = [b for b in bs if b.signal == loss and b.kind == "plateau-end" and b.step <= drop.step]
        after = [b for b in bs if b.signal == loss and b.kind == "drop-end" and b.step >= drop.step]
        nxt = [b.step for b in drops if b.step > drop.step]
        after = [b for b in after if not nxt or b.step <= min(nxt)]
        prev = [b.step for b in drops if b.step < drop.step]
        ends = [b for b in ends if not prev or b.step >= max(prev)]
        return LossDrop(loss, drop, max(ends, key=lambda b: b.step) if ends else None,
                        min(after, key=lambda b: b.step) if after else None)
    return None


def quiet_stages(sm: "StageMap", loss: str | None = None, flat: float = 0.1, strong_only: bool = True) -> pd.DataFrame:
    """The loss's plateaus, each with the events inside and whether it is quiet.

    Plateaus run from the start (or a strong drop-end) to the next strong plateau-end (or the end).
    An event is quiet when the loss is credibly flat from the plateau's start to the end of the
    event's interval (`quiet_events`); a plateau is quiet when it holds a quiet event.
    Columns: loss, start_step, end_step, quiet, events ("signal:kind@step"), quiet_events.
    """
    cols = ["loss", "start_step", "end_step", "quiet", "events", "quiet_events"]
    loss = loss or next((k for k in ("train_loss", "test_loss") if k in sm.smooths
                         or any(b.signal == k for b in sm.boundaries)), None)
    if loss is None or not len(sm.stages):
        return pd.DataFrame(columns=cols)
    first, last = float(sm.stages["start_step"].min()), float(sm.stages["end_step"].max())
    lb = sorted((b for b in sm.boundaries if b.signal == loss and (b.strong or not strong_only)
                 and b.kind in ("plateau-end", "drop-end")), key=lambda b: b.step)
    edges, start = [], first
    for b in lb:
        if b.kind == "plateau-end" and start is not None:
            edges.append((start, b.step))
            start = None
        elif b.kind == "drop-end":
            start = b.step
    if start is not None:
        edges.append((start, last))
    qev = quiet_events(sm.aligned, sm.smooths, first, loss=loss, flat=flat, strong_only=strong_only)
    rows = []
    for a, b in edges:
        inside = qev[(qev["step"] >= a) & (qev["step"] <= b)] if len(qev) else qev
        name = lambda d: ", ".join(f"{r.signal}:{r.kind}@{r.step:.0f}" for r in d.itertuples())
        rows.append({"loss": loss, "start_step": a, "end_step": b, "quiet": bool(len(inside) and inside["quiet"].any()),
                     "events": name(inside), "quiet_events": name(inside[inside["quiet"]]) if len(inside) else ""})
    return pd.DataFrame(rows, columns=cols)


def stage_map(signals: Mapping[str, Signal], tolerance: float = 0.35, resamples: int = 100, seed: int = 0,
              warnings: Sequence[str] = (), llc_invalid_steps: Sequence[float] = (),
              formed_threshold: float = FORMED_THRESHOLD, **detect) -> StageMap:
    """The stage map of a set of signals: boundaries per signal, aligned, cut into stages.

    `warnings` (what the caller already knows: missing tables, invalid LLC checkpoints) are carried
    into the result; `llc_invalid_steps` are the checkpoints whose LLC was left out. A probe signal
    ("probe:...") keeps one onset, its feature's formation at `formed_threshold`
    (llc_watch.stages.quiet.formed_onset), and none when it never forms. `detect` goes to
    find_boundaries (e.g. min_rel_change, widen, strong={"min_support": 0.9}).

        >>> import numpy as np
        >>> steps = np.unique(np.geomspace(1, 10_000, 60).astype(int))
        >>> loss = 2.0 - 1.9 / (1 + np.exp(-(np.log1p(steps) - np.log(1000)) / 0.3))
        >>> sm = stage_map({"train_loss": Signal("train_loss", "loss", steps, loss, direction="down")})
        >>> len(sm.stages) >= 2
        True
    """
    warnings = list(warnings)
    smooths, boundaries, formations = {}, [], {}
    all_steps = []
    for name, s in signals.items():
        all_steps += list(s.step)
        try:
            sm = smooth_signal(s.step, s.value, s.stderr)
        except ValueError as e:
            warnings.append(f"{name}: {e}; no boundaries for it")
            continue
        smooths[name] = sm
        bs = find_boundaries(s.step, s.value, s.stderr, kind=s.kind, signal=name, direction=s.direction,
                             resamples=resamples, seed=seed, smooth=None if s.kind == "trajectory" else sm,
                             components=s.extra.get("components"), **detect)
        if name.startswith("ablation:") and bs:
            # an effect counts only if it clears the random-direction control (2 sd) somewhere
            rs = np.nan_to_num(s.extra.get("random_std", np.zeros(1)), nan=0.0)
            if not np.any(s.value > 2 * rs):
                warnings.append(f"{name}: the ablation drop never clears the random-direction control; no onset")
                bs = []
        if name.startswith(PROBE_PREFIX):  # one onset per probe: when its feature formed (or none)
            formations[name] = f = formed_onset(s, bs, formed_threshold)
            bs = [b for b in bs if b.kind != "onset"] + ([f.boundary()] if f.status == "formed" else [])
        boundaries += bs
    if not all_steps:
        raise ValueError("no signal with enough checkpoints to map stages")
    aligned = align_boundaries(boundaries, tolerance)
    stages = stage_table(aligned, smooths, float(min(all_steps)), float(max(all_steps)),
                         llc_invalid_steps=llc_invalid_steps)
    return StageMap(boundaries=boundaries, aligned=aligned, stages=stages, warnings=warnings,
                    llc_invalid_steps=list(llc_invalid_steps), smooths=smooths, formations=formations,
                    settings={"tolerance": tolerance, "resamples": resamples, "seed": seed,
                              "formed_threshold": formed_threshold, **detect})
