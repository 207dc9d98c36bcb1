"""Study: grokking's three phases (Nanda et al. 2023, arXiv 2301.05217) against the LLC's critical points.

    python studies/grokking.py            # full: Nanda's setting, p = 113, 30 % train, 20k full-batch steps
    python studies/grokking.py --quick    # p = 31, a smaller model: groks in minutes on a CPU

Steps, each resumable (a rerun skips finished work): train (llc_watch.train) -> Fourier progress
measures at every checkpoint (llc_watch.fourier.compute_fourier: restricted / excluded loss, key
frequencies) -> weight norm (sum of squared weights) -> LLC at every checkpoint
(llc_watch.compute_llc, the settings below, validity flags kept) -> phase boundaries of every
signal (llc_watch.stages.find_boundaries) -> one figure, a boundary table and a claim table:

    figures/grokking[_quick].png            the phases and the LLC's critical points on one figure
    figures/grokking[_quick]_boundaries.md  boundaries by signal, with 90 % intervals, and the
                                            log-step distance of the LLC's to the progress measures'
    figures/grokking[_quick]_claims.md      Nanda et al.'s claims: paper vs ours, with a verdict

`--compute-only` stops after the per-checkpoint tables (for a GPU machine); `--tables-only` draws
from the tables alone (a run folder whose checkpoints were left behind).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (Claim, add_study_arguments, boundaries_of, llc_overrides, claims_markdown, llc_at_every_checkpoint, drop_event, fmt_interval, fmt_step, frame_markdown,  # noqa: E402
                     log_distance, nearest, pick, write_markdown)

ROOT = Path(__file__).resolve().parent.parent

# Nanda et al.: p = 113, 30 % of pairs, 1 layer, d_model 128, 4 heads of 32, d_mlp 512, ReLU, no
# LayerNorm, full-batch AdamW lr 1e-3, wd 1, betas (0.9, 0.98), 10 steps of warm-up. init_std
# 1/sqrt(d_model) as TransformerLens-style initialisation; 20k of their 40k epochs (their phases end
# by 13k).
FULL = {
    "task": {"name": "modular_addition", "settings": {"p": 113}},
    "model": {"n_layers": 1, "d_model": 128, "n_heads": 4, "d_mlp": 512, "act": "relu", "norm": "none",
              "init_std": 0.0884},
    "train": {"steps": 20000, "batch_size": 100000, "lr": 1e-3, "weight_decay": 1.0, "beta1": 0.9,
              "beta2": 0.98, "warmup_frac": 0.0005, "schedule": "constant", "grad_clip": 0.0,
              "train_fraction": 0.3, "eval_size": 100000},
    "checkpoints": {"n_log": 30, "n_linear": 40},
    "seed": 0,
}
# Quick: p = 31 and a smaller model so that it groks in a few CPU minutes; a larger train share and
# learning rate (memorisation then generalisation still happen in that order).
QUICK = {
    "task": {"name": "modular_addition", "settings": {"p": 31}},
    "model": {"n_layers": 1, "d_model": 64, "n_heads": 4, "d_mlp": 256, "act": "relu", "norm": "none",
              "init_std": 0.125},
    "train": {"steps": 1200, "batch_size": 100000, "lr": 1e-2, "weight_decay": 1.0, "beta1": 0.9,
              "beta2": 0.98, "warmup_frac": 0.01, "schedule": "constant", "grad_clip": 0.0,
              "train_fraction": 0.5, "eval_size": 100000, "threads": 1},
    "checkpoints": {"n_log": 15, "n_linear": 15},
    "seed": 0,
}
# LLC settings (modest: the package's default ε and γ, nβ = n / log n with n the training pairs).
LLC_FULL = {"epsilon": 1e-4, "gamma": 100.0, "chains": 4, "draws": 200, "burn_in": 100, "batch_size": 512,
            "seed": 0}
LLC_QUICK = {"epsilon": 1e-4, "gamma": 100.0, "chains": 2, "draws": 60, "burn_in": 40, "batch_size": 128,
             "seed": 0, "threads": 1}

# Nanda et al.'s phase ends, in epochs (= full-batch steps).
PAPER_PHASES = {"memorisation end": 1400, "circuit formation end": 9400, "clean-up end": 13000}


# --------------------------------------------------------------------------------------------------
# compute: per-checkpoint tables in the run folder


def run_config(quick: bool, overrides=()):
    from llc_watch import RunConfig
    return RunConfig.from_dict(QUICK if quick else FULL).with_overrides(list(overrides))


def weight_norms(run_dir: Path) -> pd.DataFrame:
    """Sum of squared weights at every checkpoint -> RUN/weight_norm.csv (recomputed only for new
    checkpoints)."""
    from llc_watch import open_run
    from llc_watch.io import atomic_write_csv
    path = run_dir / "weight_norm.csv"
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["step", "value"])
    done = set(old["step"].astype(int))
    rows = [{"step": c.step, "value": float(sum(v.double().pow(2).sum() for v in c.load_state().values()))}
            for c in open_run(run_dir).checkpoints() if c.step not in done]
    df = pd.concat([old, pd.DataFrame(rows)], ignore_index=True).sort_values("step")
    atomic_write_csv(path, df)
    return df


def compute(run_dir: Path, quick: bool, llc_settings: dict, overrides=(), progress=True,
            workers: int = 1) -> None:
    """Train, then Fourier measures, weight norms and the LLC at every checkpoint (all resumable)."""
    import llc_watch as lw
    from llc_watch.analyses.fourier import compute_fourier
    t0 = time.perf_counter()
    cfg = run_config(quick, overrides)
    lw.train(cfg, run_dir, progress=progress)
    t1 = time.perf_counter()
    compute_fourier(run_dir, progress=progress)
    weight_norms(run_dir)
    t2 = time.perf_counter()
    df = llc_at_every_checkpoint(run_dir, llc_settings, workers, progress)
    t3 = time.perf_counter()
    print(f"compute: train {t1 - t0:.0f} s, fourier+norms {t2 - t1:.0f} s, llc {t3 - t2:.0f} s "
          f"({len(df)} checkpoints, {int(df['valid'].sum())} valid)")


# --------------------------------------------------------------------------------------------------
# tables -> signals -> boundaries


def load_tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    need = ["metrics.csv", "fourier.csv", "weight_norm.csv", "llc.csv", "config.json"]
    missing = [n for n in need if not (run_dir / n).is_file()]
    if missing:
        raise SystemExit(f"{run_dir}: missing {', '.join(missing)}; run without --tables-only first")
    return {"metrics": pd.read_csv(run_dir / "metrics.csv"), "fourier": pd.read_csv(run_dir / "fourier.csv"),
            "weight_norm": pd.read_csv(run_dir / "weight_norm.csv"), "llc": pd.read_csv(run_dir / "llc.csv")}


def curves(t: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every curve as a frame (step, value[, stderr]) sorted by step."""
    m, f = t["metrics"], t["fourier"]
    out = {}
    for name in ("train_loss", "test_loss", "train_acc", "test_acc"):
        out[name] = m[m.measure == name][["step", "value"]]
    for measure in ("restricted_loss", "excluded_loss"):
        for split in ("train", "test", "all"):
            out[f"{measure}_{split}"] = f[(f.measure == measure) & (f.split == split)][["step", "value"]]
    for measure in ("embed_key_power", "mlp_key_power"):
        out[measure] = f[f.measure == measure][["step", "value"]]
    out["weight_norm"] = t["weight_norm"][["step", "value"]]
    llc = t["llc"]
    valid = llc["valid"].astype(str).str.lower() == "true"
    out["llc"] = llc[valid][["step", "value", "stderr"]]
    out["llc_invalid"] = llc[~valid][["step", "value"]]
    return {k: v.sort_values("step").reset_index(drop=True) for k, v in out.items()}


# signal -> (curve, find_boundaries kind, direction): how each progress measure's boundaries are read
SIGNALS = {
    "train_loss": ("train_loss", "loss", "down"),
    "test_loss": ("test_loss", "loss", "down"),
    "restricted_loss": ("restricted_loss_all", "loss", "down"),
    "excluded_loss": ("excluded_loss_train", "loss", "up"),
    "weight_norm": ("weight_norm", "loss", "down"),
    "llc": ("llc", "llc", "auto"),
}


def boundaries_by_signal(c: dict[str, pd.DataFrame]) -> dict[str, list]:
    out = {}
    for name, (curve, kind, direction) in SIGNALS.items():
        d = c[curve]
        y = d["value"].to_numpy(float)
        # losses span decades: their boundaries are read on log(loss), as they are plotted
        if kind == "loss" and name != "weight_norm" and (y > 0).all():
            y = np.log(y)
        se = d["stderr"].to_numpy(float) if "stderr" in d else None
        out[name] = boundaries_of(d["step"], y, se, kind=kind, signal=name, direction=direction)
    return out


def phase_table(bs: dict[str, list]) -> pd.DataFrame:
    """One row per phase boundary and signal that marks it, with the nearest LLC boundary.

    Memorisation ends where the train loss's first drop ends (and the excluded loss starts to
    rise); circuit formation ends where the strongest later drop of the test loss, the weight norm
    and the restricted loss begins; clean-up ends where that drop ends.
    """
    first_mem = pick(bs.get("train_loss", []), "drop-end", "first")
    after = first_mem.step if first_mem else -1.0
    found = [
        ("memorisation end", "train_loss", "drop-end", first_mem),
        ("memorisation end", "excluded_loss", "plateau-end", pick(bs.get("excluded_loss", []), "plateau-end", "first")),
    ]
    for phase, kind in (("circuit formation end", "plateau-end"), ("clean-up end", "drop-end")):
        for signal in ("test_loss", "weight_norm", "restricted_loss"):
            found.append((phase, signal, kind, drop_event(bs.get(signal, []), kind, after)))
    llc = bs.get("llc", [])
    rows = []
    for phase, signal, kind, b in found:
        n = nearest(llc, b.step) if b is not None else None
        rows.append({"phase boundary": phase, "paper (epochs)": PAPER_PHASES[phase], "signal": signal,
                     "kind": kind, "step": b.step if b else float("nan"), "90 % interval": fmt_interval(b),
                     "nearest LLC boundary": fmt_interval(n) + (f" ({n.kind})" if n else ""),
                     "log-step distance": log_distance(n.step, b.step) if (b and n) else float("nan")})
    return pd.DataFrame(rows)


def consensus(pt: pd.DataFrame) -> dict[str, float]:
    """Each phase boundary's step: the median over the signals that mark it (geometric, on log step)."""
    out = {}
    for phase, g in pt.groupby("phase boundary", sort=False):
        s = g["step"].dropna()
        out[phase] = float(np.expm1(np.median(np.log1p(s)))) if len(s) else float("nan")
    return out


# --------------------------------------------------------------------------------------------------
# figure


def draw(c: dict[str, pd.DataFrame], bs: dict[str, list], phases: dict[str, float], title: str) -> Figure:
    fig = Figure(figsize=(10, 10), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(5, 1, sharex=True)
    ends = [phases.get(k, float("nan")) for k in PAPER_PHASES]
    colors = ["#fde0dd", "#e0ecf4", "#e5f5e0", "#f0f0f0"]
    names = ["memorisation", "circuit formation", "clean-up", "after"]
    last = float(c["train_loss"]["step"].max())
    edges = [1.0] + [e for e in ends] + [last]

    def shade(ax):
        for i in range(4):
            a, b = edges[i], edges[i + 1]
            if math.isfinite(a) and math.isfinite(b) and b > a:
                ax.axvspan(max(a, 1), b, color=colors[i], zorder=0,
                           label=names[i] if ax is axes[0] else None)
        for i, b in enumerate(bs.get("llc", [])):
            ax.axvline(max(b.step, 1), color="#6a3d9a", ls="--", lw=1.0, zorder=1,
                       label=("LLC boundaries" if ax is axes[-1] and i == 0 else None))

    ax = axes[0]
    for name, col in (("train_loss", "C0"), ("test_loss", "C3")):
        d = c[name]
        ax.plot(d.step.clip(lower=1), d.value, color=col, label=name.replace("_", " "))
    ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax = axes[1]
    for name, col, lab in (("restricted_loss_all", "C2", "restricted loss (all pairs)"),
                           ("excluded_loss_train", "C1", "excluded loss (train)"),
                           ("test_loss", "C3", "test loss")):
        d = c[name]
        ax.plot(d.step.clip(lower=1), d.value, color=col, label=lab, ls=":" if name == "test_loss" else "-")
    ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax = axes[2]
    for name, col in (("embed_key_power", "C4"), ("mlp_key_power", "C5")):
        d = c[name]
        ax.plot(d.step.clip(lower=1), d.value, color=col, label=name.replace("_", " "))
    ax.set_ylabel("share in key freqs")
    ax.set_ylim(0, 1.05)
    ax = axes[3]
    d = c["weight_norm"]
    ax.plot(d.step.clip(lower=1), d.value, color="k", label="sum of squared weights")
    ax.set_ylabel("weight norm")
    ax = axes[4]
    d = c["llc"]
    ax.errorbar(d.step.clip(lower=1), d.value, yerr=d.stderr, color="#6a3d9a", fmt="o-", ms=3, lw=1,
                label="LLC (valid)")
    bad = c["llc_invalid"]
    if len(bad):
        ax.plot(bad.step.clip(lower=1), bad.value, "x", color="red", label="LLC (invalid)")
    ax.set_ylabel("LLC")
    ax.set_xlabel("step (full-batch epochs), log scale")
    for ax in axes:
        shade(ax)
        ax.set_xscale("log")
        ax.legend(fontsize=7, loc="best")
    axes[0].set_title(title)
    return fig


# --------------------------------------------------------------------------------------------------
# claims


def _at(d: pd.DataFrame, step: float) -> float:
    return float(np.interp(step, d["step"], d["value"]))


def _first_step(d: pd.DataFrame, pred) -> float:
    hit = d[pred(d["value"])]
    return float(hit["step"].iloc[0]) if len(hit) else float("nan")


def claims(c, bs, pt, phases, key_freqs: str, p: int, quick: bool) -> list[Claim]:
    out = []
    tr99 = _first_step(c["train_acc"], lambda v: v >= 0.99)
    te99 = _first_step(c["test_acc"], lambda v: v >= 0.99)
    te_at_tr = _at(c["test_acc"], tr99) if math.isfinite(tr99) else float("nan")
    mem = math.isfinite(tr99) and te_at_tr < 0.5
    out.append(Claim("N1", "memorisation first: train accuracy saturates while test accuracy stays low",
                     "train loss ~0 by ~1.4k epochs, test loss high", f"train acc ≥ 99 % at step {fmt_step(tr99)}, "
                     f"test acc there {te_at_tr:.1%}", "reproduced" if mem else "not reproduced",
                     "measured on the run's own train/test split"))
    grok = math.isfinite(te99) and math.isfinite(tr99) and te99 > 2 * tr99
    out.append(Claim("N2", "grokking: test accuracy reaches ~100 % much later",
                     "test loss falls in clean-up (~9.4k–13k epochs)",
                     f"test acc ≥ 99 % at step {fmt_step(te99)} ({te99 / tr99:.1f}× the memorisation step)"
                     if math.isfinite(te99) and math.isfinite(tr99) else f"test acc never ≥ 99 % (max "
                     f"{c['test_acc']['value'].max():.1%})",
                     "reproduced" if grok else "not reproduced", "delay ≥ 2× counts as grokking"))
    order = [phases[k] for k in PAPER_PHASES]
    ordered = all(math.isfinite(x) for x in order) and order[0] < order[1] < order[2]
    ratios = [o / PAPER_PHASES[k] for o, k in zip(order, PAPER_PHASES)]
    close = ordered and all(1 / 1.5 <= r <= 1.5 for r in ratios)
    out.append(Claim("N3", "three phases: memorisation, circuit formation, clean-up",
                     "ends ~1.4k, ~9.4k, ~13k epochs", "ends " + ", ".join(fmt_step(x) for x in order)
                     + " (median over the signals marking each, table above)",
                     "reproduced" if close else ("partly" if ordered else "not reproduced"),
                     ("all three within 1.5× of the paper's epochs" if close else
                      "the phases come in order but at other steps" + (" (quick run: other p, model and lr)" if quick else "")
                      if ordered else "not every phase boundary was found in order")))
    nk = len(key_freqs.split())
    out.append(Claim("N4", "a few key Fourier frequencies carry the algorithm",
                     "5 key frequencies (for their seed; {14, 35, 41, 42, 52})",
                     f"{nk} key frequencies {{{key_freqs}}} carry ≥ 90 % of the final logits' Fourier power; "
                     f"embedding share in them {c['embed_key_power']['value'].iloc[-1]:.0%} at the end "
                     f"(step 0: {c['embed_key_power']['value'].iloc[0]:.0%})",
                     "reproduced" if 2 <= nk <= 8 else "partly",
                     "which frequencies is seed-dependent; the count is the claim"))
    mem_end = phases["memorisation end"] if math.isfinite(phases["memorisation end"]) else -1.0
    rdrop = drop_event(bs["restricted_loss"], "drop", -1.0)
    tdrop = drop_event(bs["test_loss"], "drop", mem_end)
    if rdrop and tdrop:
        v = "reproduced" if rdrop.step < tdrop.step else "not reproduced"
        ours = f"restricted-loss steepest fall at step {rdrop.step:,.0f}, test loss's at {tdrop.step:,.0f}"
    else:
        v, ours = "not reproduced", "no drop found in " + ("restricted" if not rdrop else "test") + " loss"
    out.append(Claim("N5", "restricted loss falls before test loss", "restricted loss falls during circuit "
                     "formation, before the test loss", ours, v, "steepest-fall steps of the GP-smoothed log losses"))
    ex = c["excluded_loss_train"]
    b1, b2 = phases["memorisation end"], phases["circuit formation end"]
    rise_start = pick(bs["excluded_loss"], "plateau-end", "first")
    rise = drop_event(bs["excluded_loss"], "drop", -1.0)
    if math.isfinite(b1) and math.isfinite(b2) and rise_start and rise:
        e1, e2 = _at(ex, b1), _at(ex, b2)
        tl2 = _at(c["train_loss"], b2)
        starts_inside = b1 * 0.7 <= rise_start.step <= b2
        v = ("reproduced" if starts_inside and rise.step <= b2 and tl2 < 0.1 else
             "partly" if starts_inside or e2 > 2 * e1 else "not reproduced")
        ours = (f"excluded train loss starts rising at step {rise_start.step:,.0f}, rises fastest at "
                f"{rise.step:,.0f} (ours: circuit formation {b1:,.0f}–{b2:,.0f}); {e1:.2g} → {e2:.2g} across it, "
                f"{ex['value'].iloc[-1]:.2g} at the end; train loss {tl2:.2g}")
    else:
        v, ours = "not reproduced", "no rise of the excluded loss or phase boundaries missing"
    out.append(Claim("N6", "excluded loss rises during circuit formation while the train loss stays low",
                     "excluded loss (train) rises 1.4k–9.4k", ours, v,
                     "reproduced if the rise starts and peaks in circuit formation; partly if it only starts there"))
    wdrop = drop_event(bs["weight_norm"], "drop", mem_end)
    wn = c["weight_norm"]
    if wdrop and tdrop:
        d = log_distance(wdrop.step, tdrop.step)
        v = "reproduced" if d <= 0.35 else "partly"
        ours = (f"weight norm {wn['value'].iloc[0]:.4g} → {wn['value'].max():.4g} (max) → {wn['value'].iloc[-1]:.4g}; "
                f"steepest fall at step {wdrop.step:,.0f}, test loss's at {tdrop.step:,.0f} (log distance {d:.2f})")
    else:
        v, ours = "not reproduced", "no weight-norm drop found"
    out.append(Claim("N7", "the weight norm falls, sharply in clean-up, when the test loss falls",
                     "weight norm drops in 9.4k–13k with the test loss", ours, v,
                     "same step within 0.35 in log step (the stage map's alignment tolerance)"))
    llc = bs["llc"]
    dists = pt.dropna(subset=["log-step distance"]).groupby("phase boundary", sort=False)["log-step distance"].min()
    near = [f"{k}: {d:.2f}" for k, d in dists.items()]
    n_ok = int((dists <= 0.35).sum())
    v = "reproduced" if n_ok == 3 else ("partly" if n_ok else "not reproduced")
    out.append(Claim("L1", "the LLC's critical points mark the phase boundaries (the question of this study)",
                     "(not in Nanda et al.; LLC papers: boundaries where the LLC's slope is ~0 or bends)",
                     f"{len(llc)} LLC boundaries ({', '.join(f'{b.kind} {b.step:,.0f}' for b in llc)}); "
                     f"nearest to each phase end, log distance: {'; '.join(near) or 'none'}", v,
                     "aligned when within 0.35 in log(step+1)"))
    return out


# --------------------------------------------------------------------------------------------------


def report(run_dir: Path, figures: Path, quick: bool) -> str:
    """Tables -> boundaries, figure, markdown tables; returns the markdown it wrote."""
    import json
    t = load_tables(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    c = curves(t)
    bs = boundaries_by_signal(c)
    pt = phase_table(bs)
    phases = consensus(pt)
    tag = "grokking_quick" if quick else "grokking"
    p = cfg["task"]["settings"]["p"]
    key = str(t["fourier"]["key_freqs"].dropna().iloc[0])
    fig = draw(c, bs, phases, f"modular addition p = {p}, {cfg['train']['train_fraction']:.0%} train: "
               "phases from the progress measures (shading), LLC critical points (dashed)")
    figures.mkdir(parents=True, exist_ok=True)
    fig.savefig(figures / f"{tag}.png", dpi=110)
    llc = t["llc"]
    s0 = llc.iloc[0]
    settings = (f"LLC: ε = {s0['epsilon']:g}, γ = {s0['gamma']:g}, nβ = {s0['nbeta']:.4g} (n/log n, n = {int(s0['n'])}), "
                f"{int(s0['chains'])} chains × {int(s0['draws'])} draws after {int(s0['burn_in'])} burn-in, "
                f"batch {int(s0['batch_size'])}; {int(llc['valid'].astype(str).str.lower().eq('true').sum())}/{len(llc)} "
                f"estimates valid; warnings at {int((llc['warnings'].astype(str) != '[]').sum())} checkpoints")
    all_b = pd.DataFrame([{"signal": b.signal, "kind": b.kind, "step": b.step, "lo": b.lo, "hi": b.hi,
                           "support": b.support} for v in bs.values() for b in v])
    cl = claims(c, bs, pt, phases, key, p, quick)
    md = (f"### Phase boundaries by signal ({'quick' if quick else 'full'} run, `{run_dir}`)\n\n"
          + frame_markdown(pt) + "\nEvery boundary found (90 % intervals from resampling the curves):\n\n"
          + frame_markdown(all_b) + f"\n{settings}.\n")
    write_markdown(figures / f"{tag}_boundaries.md", md)
    cmd = "python studies/grokking.py" + (" --quick" if quick else "")
    cmd_md = (f"### Nanda et al. 2023 claims vs this package (`{cmd}`)\n\n" + claims_markdown(cl)
              + f"\nRun: p = {p}, train fraction {cfg['train']['train_fraction']}, {cfg['train']['steps']:,} "
              f"full-batch steps, lr {cfg['train']['lr']:g}, weight decay {cfg['train']['weight_decay']:g}, "
              f"d_model {cfg['model']['d_model']}, d_mlp {cfg['model']['d_mlp']}. {settings}.\n")
    write_markdown(figures / f"{tag}_claims.md", cmd_md)
    return md + "\n" + cmd_md


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="p = 31 in a few CPU minutes (the test uses it)")
    add_study_arguments(ap, ROOT, "runs/grokking[-quick]")
    a = ap.parse_args(argv)
    run_dir = a.run or ROOT / "runs" / ("grokking-quick" if a.quick else "grokking")
    llc_settings = llc_overrides(ap, LLC_QUICK if a.quick else LLC_FULL, a.llc)
    if not a.tables_only:
        compute(run_dir, a.quick, llc_settings, a.set, progress=not a.quiet, workers=a.workers)
    if not a.compute_only:
        print(report(run_dir, a.figures, a.quick))


if __name__ == "__main__":
    main()
