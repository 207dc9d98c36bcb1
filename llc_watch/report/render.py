"""Fill the report template: figures (base64 PNG), stage table, hyperparameters, diagnostics, warnings.
No scripts, fonts or links to anything outside the file. Jinja2 autoescapes every value; tables and
figures are built here as markup and passed in as such.

    >>> from tests.synthetic_tables import write_synthetic_run
    >>> path = write_report(write_synthetic_run("/tmp/llcw-doc-run"))     # doctest: +SKIP
    >>> path.name                                                          # doctest: +SKIP
    'report.html'
"""
from __future__ import annotations

import base64
import datetime as _dt
import json
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup, escape

from llc_watch.analyses.base import run_signals
from llc_watch.analyses.llc import CALIBRATION_FILE, SETTING_COLUMNS, llc_rows, saved_calibration_status
from llc_watch.analyses.stage_map import run_stage_map
from llc_watch.io import atomic_write_text
from llc_watch.plots import (calibration_figure, figure_png, new_figure, parse_json_list, plot_llc_chains,
                             plot_llc_traces, probe_heatmap_figure, stage_figure)
from llc_watch.run import Run, open_run
from llc_watch.stages import StageMap

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
     color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.meta{color:#666;font-size:.9em} figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0} th,td{border:1px solid #ddd;padding:.25em .55em;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f5f5f5} tr.quiet td{background:#fff6cc}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.4em .8em;margin:.3em 0}
.ok{background:#eef8ee;border-left:4px solid #3a3;padding:.4em .8em;margin:.3em 0}
.trust{background:#f1f5fb;border-left:4px solid #4a78c0;padding:.4em .8em}
.timeline li{margin:.2em 0} code{background:#f3f3f3;padding:0 .25em}
"""


class ReportError(ValueError):
    """The report cannot be written where asked (a folder, not a file); one line says what to give."""


def _png(fig, dpi: int = 100) -> str:
    return base64.b64encode(figure_png(fig, dpi=dpi)).decode("ascii")


def _figure(png: str, alt: str, caption: str = "") -> Markup:
    cap = Markup("<figcaption>{}</figcaption>").format(caption) if caption else ""
    return Markup('<figure><img alt="{}" src="data:image/png;base64,{}">{}</figure>').format(alt, png, cap)


def _table(df: pd.DataFrame | None, row_class=None, floatfmt="{:.4g}") -> Markup:
    if df is None or len(df) == 0:
        return Markup("<p><em>none</em></p>")
    head = "".join(f"<th>{escape(str(c))}</th>" for c in df.columns)
    rows = []
    for i, r in enumerate(df.itertuples(index=False)):
        cells = []
        for v in r:
            if isinstance(v, (float, np.floating)):
                s = "" if not np.isfinite(v) else floatfmt.format(v)
            else:
                s = "" if v is None or v is pd.NA else str(v)
            cells.append(f"<td>{escape(s)}</td>")
        cls = f' class="{escape(row_class(df.iloc[i]))}"' if row_class else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return Markup(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


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


def llc_settings_table(llc: pd.DataFrame) -> pd.DataFrame:
    """The estimator's settings as (setting, value): only the columns llc.csv declares as settings,
    never per-checkpoint data (per-chain values, loss traces, diagnostics)."""
    rows = []
    for c in SETTING_COLUMNS:
        if c in llc.columns:
            vals = llc[c].dropna().unique()
            rows.append({"setting": c, "value": ", ".join(str(v) for v in vals[:5]) + (" ..." if len(vals) > 5 else "")})
    return pd.DataFrame(rows)


def llc_chain_figures(llc: pd.DataFrame) -> list[dict]:
    """Per-chain LLC spread over steps (llc_per_chain), and the mean sampled-loss trace of the last
    checkpoint and up to two invalid ones (mean_loss_trace)."""
    out = []
    v = llc_rows(llc)
    if any(parse_json_list(c) for c in v.get("llc_per_chain", [])):
        fig = new_figure(8, 3)
        plot_llc_chains(fig.subplots(), llc)
        out.append({"png": _png(fig), "alt": "per-chain LLC",
                    "caption": "Per-chain LLC at each checkpoint (red: invalid checkpoints; the black line is the "
                               "mean over valid ones)."})
    traces = [(r.step, parse_json_list(r.mean_loss_trace), bool(r.valid)) for r in v.itertuples()
              if parse_json_list(getattr(r, "mean_loss_trace", None))]
    if traces:
        pick = [traces[-1]] + [t for t in traces if not t[2]][:2]
        fig = new_figure(4 * len(pick), 3)
        axes = np.atleast_1d(fig.subplots(1, len(pick)))
        burn = int(v["burn_in"].iloc[0]) if "burn_in" in v and pd.notna(v["burn_in"].iloc[0]) else None
        for ax, (step, trace, ok) in zip(axes, pick):
            plot_llc_traces(ax, [[np.nan if x is None else x for x in trace]], burn_in=burn,
                            title=f"step {step:g}" + ("" if ok else " (invalid)"))
        out.append({"png": _png(fig), "alt": "LLC loss traces",
                    "caption": "Sampled loss per SGLD step, mean over chains, burn-in shaded."})
    return out


_TRUST = {
    "plateau": "λ̂ sat on a plateau in ε at the calibrated checkpoints (within its noise for a 3× change of ε)",
    "extrapolated": "no plateau of λ̂ in ε: λ̂ was extrapolated to ε → 0 and the smallest ε taken, so the "
                    "levels carry an ε-bias; compare them within this run",
    "no_plateau": "no plateau of λ̂ in ε: the levels carry an ε-bias; compare them within this run",
    "untrusted": "the calibration found no setting it could trust: read the LLC's shape within this run "
                 "(its rises, falls and plateaus at one setting), not its levels against other runs or papers",
}


def llc_trust_line(llc: pd.DataFrame | None, saved: dict | None) -> str | None:
    """One sentence for the summary: how far the LLC's levels can be trusted, from the run's
    calibration (calibration.json) and whether llc.csv was estimated at its choice.

        >>> llc = pd.DataFrame({"step": [1], "epsilon": [3e-6]})
        >>> llc_trust_line(llc, {"choice": {"epsilon": 3e-6, "untrusted": True}, "warnings": []})[:45]
        'LLC settings from the calibration, UNTRUSTED:'
        >>> llc_trust_line(llc, None)[:34]
        'LLC settings were not calibrated: '
    """
    if llc is None or not len(llc):
        return None
    if not saved or not isinstance(saved.get("choice"), dict):
        return ("LLC settings were not calibrated: its levels move with ε, γ, nβ and the batch; "
                "`llc-watch calibrate RUN` chooses settings or says why none can be trusted.")
    status = saved_calibration_status(saved)
    line = f"LLC settings from the calibration, {status.replace('_', ' ').upper()}: {_TRUST.get(status, status)}."
    eps = pd.to_numeric(llc["epsilon"], errors="coerce").dropna().unique() if "epsilon" in llc else []
    chosen = saved["choice"].get("epsilon")
    if chosen is not None and len(eps) and not np.allclose(eps, float(chosen), rtol=1e-6):
        line += (f" But llc.csv was estimated at ε = {', '.join(f'{e:g}' for e in eps[:3])}, not the "
                 f"calibration's {float(chosen):g}: the calibration's verdict does not cover it.")
    return line


def render_report(run: Run | str, sm: StageMap | None = None, title: str | None = None) -> str:
    """The report of a run folder as one HTML string (the stage map is computed when not given; nothing is written)."""
    run = run if isinstance(run, Run) else open_run(run)
    tables = run.tables()
    signals, warnings, missing = run_signals(run)
    sm = sm if sm is not None else run_stage_map(run)
    config = run.read_json("config.json") or {}
    title = title or f"llc_watch report: {run.dir.name}"

    known = set(missing.values())
    shown_warnings = [w for w in sm.warnings if w not in known]
    shown_warnings += [f"Boundary {b.signal}:{b.kind} at step {b.step:.0f} exists in only {b.support:.0%} of "
                       "posterior draws: treat it as tentative." for b in sm.boundaries if b.support < 0.8]
    oks = []
    llc = tables.get("llc")
    # "valid" is only enough healthy chains and a finite mean: beside warnings that the chains have
    # not mixed (the addition demo: all 23 valid, 22 unmixed) a green "all valid" line misleads
    llc_warned = any(w.startswith("LLC ") for w in shown_warnings)
    if llc is not None and llc_rows(llc)["valid"].all() and not llc_warned:
        oks.append(f"All {len(llc)} LLC estimates are valid, with no LLC warning.")
    if not shown_warnings and not missing and not oks:
        oks.append("No warnings.")

    saved_calibration = run.read_json(CALIBRATION_FILE)
    llc_trust = llc_trust_line(llc, saved_calibration)
    calibration = None
    if "calibration" in tables:
        cal = tables["calibration"]
        calibration = {"png": None, "error": None}
        try:
            calibration["png"] = _png(calibration_figure(cal))
        except ValueError as e:
            calibration["error"] = str(e)
        show = [c for c in ["step", "role", "epsilon", "nbeta", "gamma", "batch_size", "draws", "llc", "llc_se",
                            "llc_mean", "llc_std", "valid", "drift", "rhat", "ess_bulk", "mixed", "mala",
                            "failed_chains", "usable", "status"] if c in cal.columns]
        calibration["table"] = _table(cal[show])
        saved = saved_calibration or {}
        calibration["rule"] = saved.get("rule", "")
        calibration["choice"] = _table(pd.DataFrame({"setting": list(saved.get("choice", {})),
                                                     "value": [str(v) for v in saved.get("choice", {}).values()]}))
        calibration["warnings"] = list(saved.get("warnings") or [])
        calibration["verdicts"] = [f"step {k}: {v.get('status')}, λ̂ ≈ {v.get('llc') or float('nan'):.4g} "
                                   f"± {v.get('llc_stderr') or float('nan'):.2g}"
                                   for k, v in (saved.get("per_checkpoint") or {}).items()]

    probe_figs = []
    if "probes" in tables:
        for f in sorted(tables["probes"]["feature"].unique())[:6]:
            try:
                probe_figs.append({"png": _png(probe_heatmap_figure(tables["probes"], f)), "alt": f"probe heatmap {f}",
                                   "caption": f"Probe accuracy for {f}: layer × position after '=', at several steps."})
            except ValueError as e:
                probe_figs.append({"png": None, "error": str(e)})

    sections = []   # each registered analysis's own figures (essential dynamics, crosscoder, ...)
    from llc_watch.analyses import REGISTRY
    for a in REGISTRY.values():
        t = tables.get(a.schema.name)
        if t is None or not len(t):
            continue
        try:
            figs = [{"png": _png(f["fig"]), "alt": f["alt"], "caption": f.get("caption", ""), "error": None}
                    for f in a.figures(run, t, sm)]
        except (ValueError, KeyError) as e:    # a table the figure cannot read: say so, draw the rest
            figs = [{"png": None, "alt": a.name, "caption": "", "error": f"{a.schema.file} could not be drawn: {e}"}]
        if figs:
            sections.append({"title": a.help[:1].upper() + a.help[1:], "figs": figs})

    flat = _flatten(config)
    cols = [c for c in ["group", "signal", "kind", "step", "lo", "hi", "support", "strong", "evidence", "n_signals"]
            if c in sm.aligned.columns]
    env = jinja2.Environment(loader=jinja2.PackageLoader("llc_watch", "report"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(
        title=title, css=Markup(_CSS), run_dir=str(run.dir), task=flat.get("task.name", ""),
        written=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"), figure=_figure,
        n_stages=len(sm.stages), n_quiet=int(sm.stages["quiet"].sum()) if len(sm.stages) else 0,
        n_boundaries=len(sm.boundaries), n_strong=len(sm.strong), n_signals=len({b.signal for b in sm.boundaries}),
        timeline=sm.timeline(), transitions_table=_table(_int_steps(sm.transitions())),
        stage_png=_png(stage_figure(tables, sm, signals=signals)),
        stages_table=_table(_int_steps(sm.stages), row_class=lambda r: "quiet" if r["quiet"] else ""),
        boundaries_table=_table(_int_steps(sm.aligned[cols]) if len(sm.aligned) else sm.aligned),
        missing=sorted(missing.items()), warnings=shown_warnings, oks=oks, llc_trust=llc_trust,
        llc_section=llc_chain_figures(llc) if llc is not None else None,
        calibration=calibration, probe_figs=probe_figs, sections=sections,
        config_table=_table(pd.DataFrame({"setting": list(flat), "value": [v if isinstance(v, str) else json.dumps(v)
                                                                           for v in flat.values()]})) if flat else None,
        llc_settings_table=_table(llc_settings_table(llc)) if llc is not None else None,
        stage_settings_table=_table(pd.DataFrame({"setting": list(sm.settings),
                                                  "value": [str(v) for v in sm.settings.values()]})),
    )


def write_report(run_dir, out_path=None, stage_map: StageMap | None = None) -> Path:
    """Write `report.html` into the run folder (with the stage map saved beside it), or to `out_path`,
    in which case nothing at all is written into the run. Returns the report's path."""
    run = run_dir if isinstance(run_dir, Run) else open_run(run_dir)
    if out_path is not None:
        out = Path(out_path)
        if out.is_dir():
            raise ReportError(f"--out {out} is a folder; give a file name, e.g. {out / 'report.html'}")
        sm = stage_map if stage_map is not None else run_stage_map(run)
    else:
        out = run.dir / "report.html"
        sm = stage_map if stage_map is not None else run_stage_map(run, save=True)
    return atomic_write_text(out, render_report(run, sm))
