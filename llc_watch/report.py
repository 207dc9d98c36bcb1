"""One self-contained HTML report per run: figures (base64 PNG), stage table, hyperparameters,
diagnostics and warnings. No scripts, fonts or links to anything outside the file.

    >>> from tests.synthetic_tables import write_synthetic_run
    >>> path = write_report(write_synthetic_run("/tmp/llcw-doc-run"))     # doctest: +SKIP
    >>> path.name                                                          # doctest: +SKIP
    'report.html'
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .plots import (calibration_figure, figure_png, new_figure, parse_chains, plot_llc_chains,
                    plot_llc_traces, probe_heatmap_figure, stage_figure)
from .stages import RunTables, StageMap, load_run_tables, stage_map as _stage_map

__all__ = ["write_report", "render_report"]

# llc.csv columns that are not hyperparameters
_LLC_DATA_COLS = {"step", "measure", "value", "stderr", "valid", "warnings", "chains", "checkpoint", "key",
                  "hash", "path", "llc_mean", "llc_std", "rhat", "ess", "drift", "failed_chains", "init_loss",
                  "elapsed_s", "time", "negative", "job", "status", "error", "traces"}

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
     color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.meta{color:#666;font-size:.9em} figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0} th,td{border:1px solid #ddd;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f5f5f5} tr.quiet td{background:#fff6cc}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.4em .8em;margin:.3em 0}
.ok{background:#eef8ee;border-left:4px solid #3a3;padding:.4em .8em;margin:.3em 0}
.timeline li{margin:.2em 0} code{background:#f3f3f3;padding:0 .25em}
"""


def _img(fig, alt: str, caption: str = "", dpi: int = 100) -> str:
    data = base64.b64encode(figure_png(fig, dpi=dpi)).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def _table(df: pd.DataFrame, row_class=None, floatfmt="{:.4g}") -> str:
    if df is None or len(df) == 0:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for i, r in enumerate(df.itertuples(index=False)):
        cells = []
        for v in r:
            if isinstance(v, (float, np.floating)):
                s = "" if not np.isfinite(v) else floatfmt.format(v)
            else:
                s = str(v)
            cells.append(f"<td>{html.escape(s)}</td>")
        cls = f' class="{row_class(df.iloc[i])}"' if row_class else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _int_steps(df: pd.DataFrame) -> pd.DataFrame:
    """Steps read better as whole numbers (boundaries fall between checkpoints anyway)."""
    df = df.copy()
    for c in ("start_step", "end_step", "step", "lo", "hi", "group_step"):
        if c in df.columns:
            df[c] = df[c].round().astype("Int64")
    return df


def _flatten(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _llc_settings(llc: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in llc.columns if c not in _LLC_DATA_COLS]
    rows = []
    for c in cols:
        vals = llc[c].dropna().unique()
        rows.append({"setting": c, "value": ", ".join(str(v) for v in vals[:5]) + (" ..." if len(vals) > 5 else "")})
    return pd.DataFrame(rows)


def _diagnostics_html(tables: RunTables, sm: StageMap) -> str:
    items = []
    for name, msg in tables.missing.items():
        items.append(f'<div class="warn">Missing {html.escape(name)}: {html.escape(msg)}</div>')
    for w in sm.warnings:
        if any(w == m for m in tables.missing.values()):
            continue
        items.append(f'<div class="warn">{html.escape(w)}</div>')
    shaky = [b for b in sm.boundaries if b.support < 0.8]
    for b in shaky:
        items.append(f'<div class="warn">Boundary {html.escape(b.signal)}:{html.escape(b.kind)} at step '
                     f'{b.step:.0f} reappears in only {b.support:.0%} of resamples: treat it as tentative.</div>')
    if tables.llc is not None and "valid" in tables.llc.columns:
        v = tables.llc["valid"].astype(str).str.lower().isin(["true", "1"])
        if v.all():
            items.append(f'<div class="ok">All {len(v)} LLC estimates are valid.</div>')
    return "\n".join(items) or '<div class="ok">No warnings.</div>'


def _llc_diagnostics(llc: pd.DataFrame) -> str:
    """Per-chain LLC spread over steps, and per-chain loss traces where the table holds them."""
    if "chains" not in llc.columns:
        return "<p><em>llc.csv has no per-chain column.</em></p>"
    parts = []
    parsed = [parse_chains(c) for c in llc["chains"]]
    has_values = any(p and all(isinstance(c, (int, float)) for c in p) for p in parsed)
    if has_values:
        fig = new_figure(8, 3)
        plot_llc_chains(fig.subplots(), llc)
        parts.append(_img(fig, "per-chain LLC", "Per-chain LLC at each checkpoint (red: invalid checkpoints)."))
    valid = llc["valid"].astype(str).str.lower().isin(["true", "1"]) if "valid" in llc.columns \
        else pd.Series(True, index=llc.index)
    traces = [(s, p, ok) for s, p, ok in zip(llc["step"], parsed, valid) if p and all(isinstance(c, list) for c in p)]
    if traces:
        # the last checkpoint, plus up to two invalid ones: where the traces are worth looking at
        pick = [traces[-1][:2]] + [t[:2] for t in traces if not t[2]][:2]
        fig = new_figure(4 * len(pick), 3)
        axes = np.atleast_1d(fig.subplots(1, len(pick)))
        for ax, (step, p) in zip(axes, pick):
            plot_llc_traces(ax, p, title=f"step {step:g}")
        parts.append(_img(fig, "LLC loss traces", "Per-chain sampled-loss traces."))
    return "\n".join(parts) or "<p><em>No per-chain data to draw.</em></p>"


def render_report(tables: RunTables, sm: StageMap | None = None, title: str | None = None) -> str:
    """The report as one HTML string."""
    sm = sm if sm is not None else _stage_map(tables)
    run = str(tables.run_dir) if tables.run_dir else "(tables)"
    title = title or f"llc_watch report: {Path(run).name}"
    task = _flatten(tables.config).get("task.name", "")
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="meta">run folder <code>{html.escape(run)}</code>'
            + (f" · task <b>{html.escape(str(task))}</b>" if task else "")
            + f" · written {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>"]

    body.append("<h2>Summary</h2>")
    n_quiet = int(sm.stages["quiet"].sum()) if len(sm.stages) else 0
    body.append(f"<p>{len(sm.stages)} stages, {n_quiet} quiet (loss flat while the LLC or a probe moves); "
                f"{len(sm.boundaries)} boundaries across {len({b.signal for b in sm.boundaries})} signals.</p>")
    tl = sm.timeline()
    if tl:
        body.append('<ul class="timeline">' + "".join(f"<li>{html.escape(s)}</li>" for s in tl) + "</ul>")

    body.append("<h2>Stage map</h2>")
    body.append(_img(stage_figure(tables, sm), "stage-boundary figure",
                     "Stacked panels on one log-step axis. Shaded: stages (yellow = quiet). Dashed lines: "
                     "boundaries, coloured by kind, with their 90 % intervals as bars at the top of each panel."))
    body.append(_table(_int_steps(sm.stages), row_class=lambda r: "quiet" if r["quiet"] else ""))
    body.append("<h3>Boundaries, aligned across signals</h3>")
    body.append("<p>Intervals (lo–hi) are 90 % ranges over resamples of each signal within its standard "
                "errors; support is the fraction of resamples in which the boundary was found again. They "
                "cover noise, not the smoothing's own bias.</p>")
    cols = [c for c in ["group", "signal", "kind", "step", "lo", "hi", "support", "n_signals"] if c in sm.aligned.columns]
    body.append(_table(_int_steps(sm.aligned[cols]) if len(sm.aligned) else sm.aligned))

    body.append("<h2>Diagnostics and warnings</h2>")
    body.append(_diagnostics_html(tables, sm))
    if tables.llc is not None and len(tables.llc):
        body.append("<h3>LLC chains</h3>")
        body.append(_llc_diagnostics(tables.llc))
    if tables.calibration is not None and len(tables.calibration):
        body.append("<h3>Calibration sweep</h3>")
        try:
            body.append(_img(calibration_figure(tables.calibration), "calibration sweep",
                             "LLC over step size ε × nβ per γ; hatched cells were invalid."))
        except ValueError as e:
            body.append(f'<div class="warn">calibration_sweep.csv could not be drawn: {html.escape(str(e))}</div>')
        show = [c for c in ["epsilon", "nbeta", "gamma", "llc_mean", "llc_std", "valid", "drift", "rhat",
                            "failed_chains"] if c in tables.calibration.columns]
        body.append(_table(tables.calibration[show]))

    if tables.probes is not None and len(tables.probes):
        body.append("<h2>Probes</h2>")
        for f in sorted(tables.probes["feature"].unique())[:6]:
            try:
                body.append(_img(probe_heatmap_figure(tables.probes, f), f"probe heatmap {f}",
                                 f"Probe accuracy for {f}: layer × position after '=', at several steps."))
            except ValueError as e:
                body.append(f'<div class="warn">{html.escape(str(e))}</div>')

    body.append("<h2>Hyperparameters</h2>")
    if tables.config:
        flat = _flatten(tables.config)
        body.append("<h3>Run (config.json)</h3>")
        body.append(_table(pd.DataFrame({"setting": list(flat), "value": [json.dumps(v) if not isinstance(v, str)
                                                                           else v for v in flat.values()]})))
    else:
        body.append('<div class="warn">config.json not found in the run folder.</div>')
    if tables.llc is not None and len(tables.llc):
        body.append("<h3>LLC estimator (llc.csv)</h3>")
        body.append(_table(_llc_settings(tables.llc)))
    body.append("<h3>Stage detection</h3>")
    body.append(_table(pd.DataFrame({"setting": list(sm.settings), "value": [str(v) for v in sm.settings.values()]})))

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(run_dir, out_path=None, stage_map: StageMap | None = None) -> Path:
    """Write `report.html` (or `out_path`) for a run folder and return its path.

    Uses whatever tables exist; missing ones are listed in the report with the command that makes
    them. Raises MissingAnalysisError when the folder holds no table at all.
    """
    from .io import atomic_write_text
    tables = load_run_tables(run_dir)
    out = Path(out_path) if out_path is not None else Path(run_dir) / "report.html"
    return atomic_write_text(out, render_report(tables, stage_map))
