"""What the paper-reproduction studies share: boundaries of one curve, claim tables, markdown.

Kept beside the studies (not in the package) because it is glue: each function is a thin wrapper
over llc_watch.stages.find_boundaries or plain formatting.

    >>> c = Claim("C1", "memorisation first", "train acc 100 % by ~1.4k", "step 900", "reproduced", "why")
    >>> print(claims_markdown([c]).splitlines()[2])
    | C1 | memorisation first | train acc 100 % by ~1.4k | step 900 | reproduced | why |
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llc_watch.io import atomic_write_text
from llc_watch.stages import find_boundaries

VERDICTS = ("reproduced", "partly", "not reproduced", "not tested")


@dataclass(frozen=True)
class Claim:
    """One claim of a paper and what our run measured."""
    id: str
    claim: str
    paper: str
    ours: str
    verdict: str
    why: str

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"claim {self.id}: verdict {self.verdict!r} is not one of {VERDICTS}")


def add_study_arguments(ap, root: Path, run_default: str) -> None:
    """The options every paper study takes beside its own (--quick and any study-specific ones)."""
    ap.add_argument("--run", type=Path, default=None, help=f"run folder (default {run_default})")
    ap.add_argument("--figures", type=Path, default=root / "figures")
    ap.add_argument("--set", action="append", default=[], help="config override section.key=value")
    ap.add_argument("--llc", action="append", default=[], help="LLC setting key=value (e.g. chains=8)")
    ap.add_argument("--compute-only", action="store_true")
    ap.add_argument("--tables-only", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--workers", type=int, default=1, help="LLC jobs in this many processes")


def llc_overrides(ap, base: dict, items) -> dict:
    """`base` with --llc key=value items applied (a known key keeps its type); a malformed item
    stops the study with one line (argparse's error: usage and exit status 2).

        >>> import argparse
        >>> llc_overrides(argparse.ArgumentParser(), {"chains": 4, "epsilon": 1e-4}, ["chains=8", "gamma=10"])
        {'chains': 8, 'epsilon': 0.0001, 'gamma': 10.0}
    """
    out = dict(base)
    for item in items:
        k, sep, v = item.partition("=")
        try:
            if not (k and sep):
                raise ValueError
            out[k] = type(out[k])(float(v)) if k in out and out[k] is not None else float(v)
        except ValueError:
            ap.error(f"--llc {item!r}: give key=number, e.g. --llc chains=8 or --llc epsilon=1e-4")
    return out


def llc_at_every_checkpoint(run_dir, llc_settings: dict, workers: int, progress: bool):
    """The LLC over a study's run (a process pool when workers > 1); prints its first warnings.
    Returns the llc table."""
    import llc_watch as lw
    executor = lw.make_executor("process", workers) if workers > 1 else None
    try:
        df = lw.compute_llc(run_dir, settings=llc_settings, executor=executor, progress=progress)
    finally:
        if executor is not None:
            executor.shutdown()
    for w in df.attrs.get("warnings", [])[:10]:
        print("  llc:", w)
    return df


def claims_markdown(claims) -> str:
    """A markdown table, one row per claim."""
    head = "| # | claim | paper | ours | verdict | why |\n|---|---|---|---|---|---|\n"
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    return head + "".join(f"| {esc(c.id)} | {esc(c.claim)} | {esc(c.paper)} | {esc(c.ours)} | "
                          f"{esc(c.verdict)} | {esc(c.why)} |\n" for c in claims)


STEP_COLUMNS = ("step", "lo", "hi", "start", "end")


def frame_markdown(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A DataFrame as a markdown table (no tabulate dependency); step-like columns as whole steps.

    >>> print(frame_markdown(pd.DataFrame({"step": [12129.4], "value": [0.123456]})), end="")
    | step | value |
    |---|---|
    | 12,129 | 0.1235 |
    """
    def cell(v, col):
        if isinstance(v, float):
            if not math.isfinite(v):
                return ""
            return f"{v:,.0f}" if col in STEP_COLUMNS else floatfmt.format(v)
        return str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v, c) for v, c in zip(row, df.columns)) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


def boundaries_of(steps, values, stderr=None, kind="loss", signal="", direction="auto", **kw) -> list:
    """find_boundaries on one curve, NaNs dropped, with the study's fixed resampling seed."""
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    ok = np.isfinite(steps) & np.isfinite(values)
    if stderr is not None:
        stderr = np.asarray(stderr, float)
        ok &= np.isfinite(stderr)
        stderr = stderr[ok]
    if ok.sum() < 5:
        return []
    return find_boundaries(steps[ok], values[ok], stderr, kind=kind, signal=signal, direction=direction,
                           seed=0, **kw)


def pick(boundaries, kind: str, which: str = "first"):
    """The first / strongest / last boundary of a kind, or None."""
    bs = [b for b in boundaries if b.kind == kind]
    if not bs:
        return None
    if which == "strongest":
        return max(bs, key=lambda b: (b.strength if math.isfinite(b.strength) else -1))
    return bs[0] if which == "first" else bs[-1]


def drop_event(boundaries, kind: str, after: float = -1.0):
    """The `kind` boundary (plateau-end, drop or drop-end) of the strongest drop whose steepest
    point lies after `after`; find_boundaries gives a drop's three boundaries the same strength."""
    drops = [b for b in boundaries if b.kind == "drop" and b.step > after]
    if not drops:
        return None
    top = max(drops, key=lambda b: b.strength if math.isfinite(b.strength) else -1)
    same = [b for b in boundaries if b.kind == kind and math.isclose(b.strength, top.strength, rel_tol=1e-9)]
    return min(same, key=lambda b: abs(b.x - top.x)) if same else None


def log_distance(a: float, b: float) -> float:
    """|ln(a + 1) - ln(b + 1)|: the distance of two steps on the stage map's axis.

    >>> round(log_distance(999, 1999), 3)
    0.693
    """
    return abs(math.log1p(a) - math.log1p(b))


def nearest(boundaries, step: float):
    """The boundary nearest to `step` on log(step + 1), or None."""
    if not boundaries:
        return None
    return min(boundaries, key=lambda b: log_distance(b.step, step))


def fmt_step(s) -> str:
    if s is None or (isinstance(s, float) and not math.isfinite(s)):
        return "–"
    return f"{s:,.0f}"


def fmt_interval(b) -> str:
    return "–" if b is None else f"{b.step:,.0f} [{b.lo:,.0f}–{b.hi:,.0f}]"
