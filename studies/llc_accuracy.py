"""Estimated against true learning coefficients: calibrate_llc then estimate_llc(**choice), for
regular models, normal crossing (against its finite-n quadrature target), reduced-rank regression
and deep linear networks (10² to 10⁴⁺ weights), with devinterp 2's `llc()` at its defaults beside.

    nice -n 10 python studies/llc_accuracy.py --quick            # small cases, ~minutes on 1 core
    nice -n 10 python studies/llc_accuracy.py --jobs 8            # every case, one process each
    python studies/llc_accuracy.py --cases dln_100 --device cuda  # one case on a GPU

Each case's calibration is saved as it ends (figures/llc_accuracy.calibrations/CASE.json) and reused by
a rerun of the same code (--recalibrate to redo it): a stop during a large case's final estimate loses
only the estimate.

Writes figures/llc_accuracy.png (estimate against truth, both estimators, a ±15 % band) and
figures/llc_accuracy.csv, and prints a markdown table. devinterp's `llc()` needs lr and n_beta:
we pass n_beta = devinterp.utils.default_nbeta(32) = 32/log 32 (its documented default) and
lr = 1e-4; everything else is its default (4 chains × 200 draws, batch 32, no burn-in, no
localisation). Its nβ is a different temperature from ours (n/log n), so its number is not an
estimate of the same quantity at finite n: it is drawn because that is what a user gets.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (family, maker args, n, quick)
CASES = {
    "regular_d3": ("regular", dict(d=3), 2000, True),
    "regular_d20": ("regular", dict(d=20), 20000, True),
    "normal_crossing_1_2": ("nc", dict(ks=[1, 2]), 2000, True),
    "rrr_4_3_5_r0": ("rrr", dict(M=4, H=3, N=5, r=0), 2000, True),
    "rrr_5_2_4_r1": ("rrr", dict(M=5, H=2, N=4, r=1), 2000, True),
    "dln_5_4_3_5_r1": ("dln", dict(widths=[5, 4, 3, 5], r=1), 20000, True),
    "dln_10_8_6_10_r2": ("dln", dict(widths=[10, 8, 6, 10], r=2), 20000, True),
    "dln_16x5_r4": ("dln", dict(widths=[16] * 5, r=4), 100000, False),               # 1,024 weights
    "dln_20x6_r3": ("dln", dict(widths=[20] * 6, r=3), 100000, False),               # 2,000, depth 5
    "dln_40_30_20_40_r5": ("dln", dict(widths=[40, 30, 20, 40], r=5), 100000, False),  # 2,600
    "dln_32x5_r4": ("dln", dict(widths=[32] * 5, r=4), 100000, False),               # 4,096
    "dln_100_80_60_100_r10": ("dln", dict(widths=[100, 80, 60, 100], r=10), 400000, False),  # 18,800
    "dln_120x8_r10": ("dln", dict(widths=[120] * 8, r=10), 400000, False),           # 100,800, depth 7
    # at a generic point (every layer full rank; the true map of rank min(widths)), where the true
    # parameters form a smooth manifold: λ(w*) = λ exactly, with the flat directions but no
    # quartic ones (exact.make_dln); the rank-r cases above sit at the most singular point
    "dln_20x6_full": ("dln", dict(widths=[20] * 6, r=20, point="generic"), 100000, False),   # 2,000, λ = 200
    "dln_50x5_full": ("dln", dict(widths=[50] * 5, r=50, point="generic"), 100000, False),   # 10,000, λ = 1,250
    "dln_160x5_full": ("dln", dict(widths=[160] * 5, r=160, point="generic"), 100000, False),  # 102,400, λ = 12,800
}


def make(name, n=None):
    """The case's (model, loss_fn, data, λ), at its own n or another (same shape, point and seed)."""
    from llc_watch.llc import exact
    fam, kw, n_case, _ = CASES[name]
    n = n_case if n is None else int(n)
    if fam == "regular":
        return exact.make_regular(kw["d"], n, seed=0)
    if fam == "nc":
        return exact.make_normal_crossing(kw["ks"], n, seed=0)
    if fam == "rrr":
        return exact.make_rrr(kw["M"], kw["H"], kw["N"], kw["r"], n, seed=0)
    return exact.make_dln(kw["widths"], kw["r"], n, seed=0, point=kw.get("point", "minimal"))


def devinterp_default(model, data, device):
    """devinterp 2's llc() at its defaults on an (x, y) regression (½‖f(x) − y‖² per example)."""
    import datasets
    import torch
    from devinterp.slt.llc import llc
    from devinterp.utils import default_nbeta
    x, y = data
    din = x.shape[1]
    ds = datasets.Dataset.from_dict({"input_ids": torch.cat([x, y], 1).tolist()}).with_format("torch")

    def per_token(m, ids):                      # one loss per example, spread over the "tokens"
        ids = ids.float()
        loss = 0.5 * (m(ids[:, :din]) - ids[:, din:]).pow(2).sum(-1)
        return loss[:, None].expand(-1, ids.shape[1] - 1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = llc(model, ds, {}, lr=1e-4, n_beta=default_nbeta(32), loss_fn=per_token, device=device)
    return float(out.llc_mean)


def code_key() -> str:
    """A hash of the estimator's source (llc_watch/llc): a saved calibration is reused only by the
    code that made it, so a changed rule never finishes with a stale choice."""
    h = hashlib.sha256()
    for f in sorted((ROOT / "llc_watch" / "llc").glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def saved_calibration(path: Path, key: dict) -> dict | None:
    """The calibration saved at `path` when it was made for `key` (case and its spec, code, γ, device, seed),
    else None with one line saying why it is not used."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        if saved["key"] == key:
            return saved
        made = saved["key"]
        why = "it was made for " + ", ".join(f"{k}={made.get(k)!r}" for k in key if made.get(k) != key[k])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        why = f"it is unreadable ({type(e).__name__})"
    print(f"{key['case']}: calibrating again: the saved calibration {path} is not used: {why}", flush=True)
    return None


def run_case(name, device="cpu", devinterp=True, threads=1, progress=False, gamma=None, cal_dir=None,
             recalibrate=False):
    """One case's table row. With `cal_dir` the calibration is saved there (cal_dir/NAME.json, atomically)
    as soon as it ends, and a saved one made by the same code for the same case (name and spec), γ and device is
    reused: the large cases calibrate for one to two hours, and a stop during the final estimate
    then loses only the estimate."""
    import torch
    torch.set_num_threads(threads)
    from llc_watch.io import atomic_write_json
    from llc_watch.llc import estimate_llc, exact
    from llc_watch.llc.calibration import calibrate_llc
    from llc_watch.llc.estimator import _json_safe
    model, loss_fn, data, lam = make(name)
    fam = CASES[name][0]
    n_params = sum(p.numel() for p in model.parameters())
    key = dict(case=name, spec=repr(CASES[name][:3]), code=code_key(), gamma=gamma, device=device, seed=0)
    path = Path(cal_dir) / f"{name}.json" if cal_dir else None
    saved = None if path is None or recalibrate else saved_calibration(path, key)
    if saved is not None:
        choice, status, cal_warnings, cost, t_cal = (saved["choice"], saved["status"], saved["warnings"],
                                                     saved["cost_ratio"], saved["calib_s"])
        print(f"{name}: calibration reused from {path} (made in {t_cal:.0f} s): {saved['summary']}", flush=True)
    else:
        t0 = time.perf_counter()
        cal = calibrate_llc(model, loss_fn, data, gamma=gamma, device=device, seed=0, progress=progress)
        t_cal = time.perf_counter() - t0
        choice, status, cal_warnings, cost = cal.choice, cal.status, cal.warnings, cal.evidence["cost"]["ratio"]
        if path is not None:
            atomic_write_json(path, _json_safe(dict(key=key, choice=choice, status=status, warnings=cal_warnings,
                                                    cost_ratio=cost, calib_s=t_cal, summary=cal.summary(),
                                                    llc=cal.llc, llc_stderr=cal.llc_stderr)))
        if progress:   # the final estimate of a large case can take as long again: say where the calibration ended
            print(f"{name}: calibrated in {t_cal:.0f} s: {cal.summary()}", flush=True)
    t0 = time.perf_counter()
    r = estimate_llc(model, loss_fn, data, **{**choice, "device": device, "seed": 1})
    t_est = time.perf_counter() - t0
    target, target_kind = lam, "λ"
    if fam == "nc":   # the finite-n expectation under the localised posterior at the chosen γ
        x, y = data
        target = exact.normal_crossing_expected_llc(CASES[name][1]["ks"], r.hyperparameters["nbeta"],
                                                    choice["gamma"], float((x * x).mean()),
                                                    float((x * y).mean()))
        target_kind = "quadrature"
    dv = float("nan")
    if devinterp:
        try:
            dv = devinterp_default(model, data, device)
        except Exception as e:  # noqa: BLE001 - reported, not fatal: the reference is optional
            print(f"{name}: devinterp failed: {type(e).__name__}: {e}", flush=True)
    row = dict(case=name, family=fam, params=n_params, n=len(data[0]), true_llc=lam, target=target,
               target_kind=target_kind, llc=r.llc_mean, llc_se=r.llc_stderr,
               rel_error=(r.llc_mean - target) / target, valid=r.valid, status=status,
               cal_warnings=len(cal_warnings), est_warnings=len(r.warnings),
               sampler=choice["sampler"], epsilon=choice["epsilon"], gamma=choice["gamma"],
               batch=choice["batch_size"],
               draws=choice["draws"], cost_ratio=cost,
               calib_s=t_cal, estimate_s=t_est, devinterp_llc=dv,
               devinterp_rel_error=(dv - lam) / lam if math.isfinite(dv) else float("nan"))
    print(f"{name}: λ={lam:g} target={target:.4g} λ̂={r.llc_mean:.4g}±{r.llc_stderr:.2g} "
          f"({100 * row['rel_error']:+.1f} %) {status} {choice['sampler']} devinterp={dv:.4g} "
          f"[{t_cal:.0f}+{t_est:.0f} s]", flush=True)
    for w in cal_warnings + r.warnings:
        print(f"   {name}: {w}", flush=True)
    return row


def merge_rows(old, new):
    """The table with `new`'s rows replacing `old`'s rows of the same cases, in CASES order.

        >>> import pandas as pd
        >>> old = pd.DataFrame({"case": ["dln_5_4_3_5_r1", "regular_d3"], "llc": [8.0, 1.6]})
        >>> merge_rows(old, pd.DataFrame({"case": ["regular_d3"], "llc": [1.5]})).values.tolist()
        [['regular_d3', 1.5], ['dln_5_4_3_5_r1', 8.0]]
    """
    import pandas as pd
    df = pd.concat([old[~old["case"].isin(new["case"])], new], ignore_index=True)
    order = {k: i for i, k in enumerate(CASES)}
    return df.sort_values("case", key=lambda c: c.map(order)).reset_index(drop=True)


def figure(df, ax=None):
    """Estimated against true λ on log axes, ours and devinterp's defaults, with a ±15 % band."""
    import numpy as np
    if ax is None:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib.figure import Figure
        ax = Figure(figsize=(5.5, 5)).add_subplot()
    lo = max(min(df["target"].min(), df["llc"].min()) / 2, 1e-2)
    hi = max(df["target"].max(), df["llc"].max()) * 2
    t = np.geomspace(lo, hi, 50)
    ax.plot(t, t, "k-", lw=0.8)
    ax.fill_between(t, 0.85 * t, 1.15 * t, color="0.85", label="±15 %")
    trusted = df["status"] == "plateau"
    for mask, face, lab in ((trusted, None, "llc_watch (calibrate_llc → estimate_llc): plateau"),
                            (~trusted, "none", "llc_watch: calibration not trusted (says so)")):
        if mask.any():
            ax.errorbar(df["target"][mask], df["llc"][mask], yerr=2 * df["llc_se"][mask].fillna(0), fmt="o",
                        ms=5, color="C0", mfc=face, label=lab)
    dv = df[np.isfinite(df["devinterp_llc"]) & (df["devinterp_llc"] > 0)]
    ax.plot(dv["true_llc"], dv["devinterp_llc"], "x", color="C3", label="devinterp 2 llc() defaults")
    ax.set(xscale="log", yscale="log", xlabel="true learning coefficient (λ or finite-n target)",
           ylabel="estimate", title="LLC accuracy on models with known answers")
    ax.legend(fontsize=8, loc="upper left")
    return ax


FINITE_N = ROOT / "figures" / "llc_finite_n_targets.csv"


def with_finite_n(df, path=None):
    """df with finite_n_target, finite_n_se and finite_n_error (our λ̂'s relative error against that
    target) where studies/finite_n_targets.py has the case at the same γ; NaN elsewhere. The finite-n
    target is what an exact sampler reads at the case's nβ and γ (llc_watch.llc.finite_n): the part of
    an error against λ that no sampler can remove is its gap to λ. path: that CSV (default FINITE_N)
    or its table.

        >>> import pandas as pd
        >>> df = pd.DataFrame({"case": ["a", "b"], "gamma": [1.0, 1.0], "llc": [8.0, 2.0]})
        >>> t = pd.DataFrame({"case": ["a", "b"], "gamma": [1.0, 10.0], "target": [7.0, 2.0], "target_se": [.1, .1]})
        >>> with_finite_n(df, t)["finite_n_error"].round(3).tolist()      # b's target is at another γ
        [0.143, nan]
    """
    import pandas as pd
    path = FINITE_N if path is None else path
    if not isinstance(path, pd.DataFrame) and not Path(path).exists():
        return df.assign(finite_n_target=float("nan"), finite_n_se=float("nan"), finite_n_error=float("nan"))
    t = path if isinstance(path, pd.DataFrame) else pd.read_csv(path)
    t = t[["case", "gamma", "target", "target_se"]].rename(columns={"target": "finite_n_target",
                                                                   "target_se": "finite_n_se"})
    out = df.drop(columns=["finite_n_target", "finite_n_se", "finite_n_error"], errors="ignore")
    out = out.merge(t, on=["case", "gamma"], how="left")
    return out.assign(finite_n_error=(out["llc"] - out["finite_n_target"]) / out["finite_n_target"])


def table(df) -> str:
    if "finite_n_target" not in df.columns:
        df = with_finite_n(df)
    lines = ["| case | params | n | target | λ̂ ± se | error | finite-n target (HMC) | error against it | status | "
             "sampler | devinterp defaults | cost × | s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    for _, r in df.iterrows():
        fin = (f"{r['finite_n_target']:.4g} ± {r['finite_n_se']:.2g} | {100 * r['finite_n_error']:+.1f} %"
               if math.isfinite(r["finite_n_target"]) else "– | –")
        lines.append(f"| {r['case']} | {r['params']} | {r['n']} | {r['target']:.4g} ({r['target_kind']}) | "
                     f"{r['llc']:.4g} ± {r['llc_se']:.2g} | {100 * r['rel_error']:+.1f} % | {fin} | {r['status']} | "
                     f"{r.get('sampler', 'sgld')} | "
                     f"{r['devinterp_llc']:.3g} | {r['cost_ratio']:.1f} | {r['calib_s'] + r['estimate_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    import pandas as pd
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="only the small cases")
    p.add_argument("--cases", default=None, help="comma list of case names")
    p.add_argument("--jobs", type=int, default=1, help="cases run in parallel processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-devinterp", action="store_true")
    p.add_argument("--gamma", type=float, default=None,
                   help="the localisation strength calibrate_llc is given (default: its own rule, γ = 1 "
                        "raised where the chains do not localise)")
    p.add_argument("--progress", action="store_true",
                   help="print each calibration pilot as it ends (the large cases run for an hour or more)")
    p.add_argument("--out", default=str(ROOT / "figures" / "llc_accuracy"))
    p.add_argument("--fresh", action="store_true",
                   help="start the table over (default: rerun cases replace their rows, the others stay)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per case (default 1)")
    p.add_argument("--table", action="store_true",
                   help="run nothing: print the table from OUT.csv (with the finite-n targets of "
                        "studies/finite_n_targets.py where it has them) and redraw OUT.png")
    p.add_argument("--recalibrate", action="store_true",
                   help="calibrate again even where OUT.calibrations/CASE.json holds this code's calibration "
                        "(default: reuse it, so a stopped run loses only its final estimate)")
    a = p.parse_args(argv)
    if a.threads < 1:
        p.error(f"--threads must be at least 1, got {a.threads}")
    names = (a.cases.split(",") if a.cases else
             [k for k, v in CASES.items() if v[3] or not a.quick])
    unknown = set(names) - set(CASES)
    if unknown:
        p.error(f"unknown case(s) {sorted(unknown)}; known: {list(CASES)}")
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    out = Path(a.out)
    if a.table:
        if not out.with_suffix(".csv").exists():
            p.error(f"--table: {out.with_suffix('.csv')} does not exist; run some cases first")
        return report(pd.read_csv(out.with_suffix(".csv")), out, names if a.cases or a.quick else None)
    cal_dir = out.parent / (out.name + ".calibrations")
    k = len(names)
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as ex:
            rows = list(ex.map(run_case, names, [a.device] * k, [not a.no_devinterp] * k, [a.threads] * k,
                               [a.progress] * k, [a.gamma] * k, [cal_dir] * k, [a.recalibrate] * k))
    else:
        rows = [run_case(nm, a.device, not a.no_devinterp, a.threads, a.progress, a.gamma, cal_dir, a.recalibrate)
                for nm in names]
    df = pd.DataFrame(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    import fcntl
    from llc_watch.io import atomic_write_csv
    with open(out.with_suffix(".lock"), "w") as lock:   # cases run in other processes merge in turn
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not a.fresh and out.with_suffix(".csv").exists():   # cases run at other times keep their rows
            df = merge_rows(pd.read_csv(out.with_suffix(".csv")), df)
        atomic_write_csv(out.with_suffix(".csv"), df)
    report(df, out)


def report(df, out: Path, cases=None) -> None:
    """Redraw OUT.png from the whole table; print the table (of `cases`, default all) and its worst cases."""
    ax = figure(df)
    ax.figure.tight_layout()
    ax.figure.savefig(out.with_suffix(".png"), dpi=130)
    if cases is not None:
        df = df[df["case"].isin(cases)].reset_index(drop=True)
    df = with_finite_n(df)
    print(table(df))
    worst = df.loc[df["rel_error"].abs().idxmax()]
    print(f"\nworst case: {worst['case']} {100 * worst['rel_error']:+.1f} % ({worst['status']})")
    ok = df[df["status"] == "plateau"]
    if len(ok):
        w = ok.loc[ok["rel_error"].abs().idxmax()]
        print(f"worst case the calibration trusted: {w['case']} {100 * w['rel_error']:+.1f} %")
    fin = df.dropna(subset=["finite_n_target"])
    if len(fin):
        w = fin.loc[fin["finite_n_error"].abs().idxmax()]
        print(f"against the finite-n targets ({len(fin)} case{'s' * (len(fin) != 1)}): worst {w['case']} {100 * w['finite_n_error']:+.1f} %")


if __name__ == "__main__":
    main()
