"""What an exact sampler reads for the accuracy study's linear cases, at their n and γ.

For every reduced-rank regression and deep linear network in `llc_accuracy.CASES`, the expectation
E[nβ·(L_n(w) − L_n(w*))] under the localised posterior at the case's nβ (n / log n) and the γ its
calibration chose (figures/llc_accuracy.csv; γ = 1 where the case has no row), by exact HMC on the
full-data loss (`llc_watch.llc.finite_n`). Beside λ it separates the two parts of an error in the
accuracy table: the posterior's own gap to λ at this n and γ (no sampler can remove it) and the
sampler's gap to the posterior.

    OMP_NUM_THREADS=1 python studies/finite_n_targets.py --cases dln_5_4_3_5_r1,dln_10_8_6_10_r2
    OMP_NUM_THREADS=1 python studies/finite_n_targets.py --jobs 2        # every linear case

Each case's row is written to figures/llc_finite_n_targets.csv (atomically) as it ends; a rerun
skips the cases already there with the same settings (--redo to run them again).

--scan-n asks the question the accuracy table cannot: as n grows, does the target approach λ and
stop depending on γ? It runs one case's network (same widths, rank and seed) at each n and γ given
and writes figures/llc_finite_n_scan.csv:

    OMP_NUM_THREADS=1 python studies/finite_n_targets.py --cases dln_5_4_3_5_r1 \
        --scan-n 2e4,2e5,2e6 --scan-gamma 1,10,100
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "studies"))
from dln_long_chains import _positives  # noqa: E402  (the same comma-list argument)

OUT = ROOT / "figures" / "llc_finite_n_targets.csv"
SCAN_OUT = ROOT / "figures" / "llc_finite_n_scan.csv"
ACCURACY = ROOT / "figures" / "llc_accuracy.csv"


def linear_cases() -> list[str]:
    """The accuracy cases this applies to: linear layers without biases, noise orthogonal to x.

        >>> linear_cases()[:2]
        ['rrr_4_3_5_r0', 'rrr_5_2_4_r1']
    """
    from llc_accuracy import CASES
    return [k for k, v in CASES.items() if v[0] in ("rrr", "dln")]


def chosen_gamma(case: str, table=None) -> float:
    """The γ the case's calibration chose (its accuracy-table row), else GAMMA_START."""
    import pandas as pd
    from llc_watch.llc.calibration import GAMMA_START
    if table is None:
        table = pd.read_csv(ACCURACY) if ACCURACY.exists() else pd.DataFrame({"case": []})
    row = table[table["case"] == case]
    return float(row["gamma"].iloc[0]) if len(row) else float(GAMMA_START)


def run_case(case: str, gamma: float, iters: int, chains: int, seed: int, progress: bool,
             n: int | None = None) -> dict:
    import torch
    torch.set_num_threads(1)
    from llc_accuracy import make
    from llc_watch.llc import default_nbeta
    from llc_watch.llc.finite_n import linear_expected_llc
    model, _, (x, _), lam = make(case, n)
    nb = default_nbeta(len(x))
    t = linear_expected_llc(model, x, nb, gamma, chains=chains, iters=iters, seed=seed, progress=progress)
    row = dict(case=case, params=sum(p.numel() for p in model.parameters()), n=len(x), nbeta=nb, gamma=gamma,
               true_llc=lam, target=t.value, target_se=t.stderr, gap_rel=(t.value - lam) / lam, rhat=t.rhat,
               ess_bulk=t.ess_bulk, trusted=t.trusted, acceptance=t.acceptance, step=t.step,
               leapfrog=t.leapfrog, chains=chains, iters=iters, seed=seed, seconds=t.seconds,
               warnings=" | ".join(t.warnings))
    print(f"{case}: λ={lam:g}  finite-n target {t.value:.4g} ± {t.stderr:.2g} ({100 * row['gap_rel']:+.1f} % from λ) "
          f"at nβ={nb:.4g}, γ={gamma:g}; R̂={t.rhat:.3f} ESS={t.ess_bulk:.0f} accept={t.acceptance:.2f} "
          f"L={t.leapfrog} [{t.seconds:.0f} s]{'' if t.trusted else '  NOT TRUSTED'}", flush=True)
    for w in t.warnings:
        print(f"   {case}: {w}", flush=True)
    return row


def save(row: dict, path: Path, keys=("case",)) -> None:
    """Add or replace the row with `row`'s `keys` in the CSV at `path`, atomically."""
    import pandas as pd
    from llc_watch.io import atomic_write_csv
    from llc_accuracy import CASES
    new = pd.DataFrame([row])
    if path.exists():
        old = pd.read_csv(path)
        same = np.logical_and.reduce([old[k] == row[k] for k in keys])
        new = pd.concat([old[~same], new], ignore_index=True)
    order = {k: i for i, k in enumerate(CASES)}
    new = new.sort_values(list(keys), key=lambda c: c.map(order) if c.name == "case" else c).reset_index(drop=True)
    atomic_write_csv(path, new)


def table(df) -> str:
    lines = ["| case | params | n | γ | λ | finite-n target ± se | from λ | R̂ | ESS | s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for _, r in df.iterrows():
        lines.append(f"| {r['case']} | {r['params']} | {r['n']} | {r['gamma']:g} | {r['true_llc']:g} | "
                     f"{r['target']:.4g} ± {r['target_se']:.2g} | {100 * r['gap_rel']:+.1f} % | {r['rhat']:.3f} | "
                     f"{r['ess_bulk']:.0f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def done_alike(prev, **settings) -> bool:
    """Whether `prev` (the CSV's rows for one case, or one case, n and γ) holds a run with these settings.

        >>> import pandas as pd
        >>> prev = pd.DataFrame({"iters": [400], "chains": [4]})
        >>> done_alike(prev, iters=400, chains=4), done_alike(prev, iters=1000, chains=4)
        (True, False)
    """
    return bool(len(prev)) and all(prev[k].iloc[0] == v for k, v in settings.items())


def scan(case: str, ns: list[int], gammas: list[float], a, out: Path) -> None:
    """The case's target at every (n, γ); rows keyed by (case, n, γ), skipped when done alike."""
    import pandas as pd
    done = pd.read_csv(out) if out.exists() else pd.DataFrame({"case": [], "n": [], "gamma": []})
    t0 = time.perf_counter()
    for n in ns:
        for g in gammas:
            prev = done[(done["case"] == case) & (done["n"] == n) & (done["gamma"] == g)]
            if not a.redo and done_alike(prev, iters=a.iters, chains=a.chains, seed=a.seed):
                print(f"{case} n={n} γ={g:g}: in {out} already (--redo to run it again)", flush=True)
                continue
            save(run_case(case, g, a.iters, a.chains, a.seed, a.progress, n=n), out, keys=("case", "n", "gamma"))
    df = pd.read_csv(out)
    df = df[(df["case"] == case) & df["n"].isin(ns) & df["gamma"].isin(gammas)]
    print(table(df.sort_values(["n", "gamma"])))
    piv = df.pivot(index="n", columns="gamma", values="target")
    print("\nfinite-n target by n (rows) and γ (columns); λ =", f"{df['true_llc'].iloc[0]:g}")
    print(piv.to_string(float_format=lambda v: f"{v:.4g}"))
    print(f"[{time.perf_counter() - t0:.0f} s]")


def main(argv=None):
    import pandas as pd
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=None, help="comma-separated case names (default: every linear case)")
    p.add_argument("--iters", type=int, default=1000, help="HMC trajectories per chain after warm-up")
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--redo", action="store_true", help="run cases again even when the CSV has them")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", type=Path, default=None,
                   help=f"CSV (default {OUT.relative_to(ROOT)}, or {SCAN_OUT.relative_to(ROOT)} with --scan-n)")
    p.add_argument("--scan-n", type=_positives, default=None, help="one case at these n (e.g. 2e4,2e5,2e6)")
    p.add_argument("--scan-gamma", type=_positives, default=[1.0], help="... and these γ (e.g. 1,10,100)")
    a = p.parse_args(argv)
    known = linear_cases()
    cases = known if a.cases is None else [c.strip() for c in a.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in known]
    if bad:
        p.error(f"--cases: {', '.join(bad)} not a linear case of studies/llc_accuracy.py; choose from {', '.join(known)}")
    if a.iters < 50 or a.chains < 2:
        p.error("--iters must be at least 50 and --chains at least 2 (split-R̂ needs them)")
    if a.scan_n is not None:
        if len(cases) != 1:
            p.error("--scan-n runs one case: give it with --cases")
        if min(a.scan_n) < 100:
            p.error("--scan-n: every n must be at least 100")
        return scan(cases[0], [int(v) for v in a.scan_n], a.scan_gamma, a, a.out or SCAN_OUT)
    a.out = a.out or OUT
    acc = pd.read_csv(ACCURACY) if ACCURACY.exists() else pd.DataFrame({"case": []})
    done = pd.read_csv(a.out) if a.out.exists() else pd.DataFrame({"case": []})
    todo = []
    for c in cases:
        g = chosen_gamma(c, acc)
        if not a.redo and done_alike(done[done["case"] == c], gamma=g, iters=a.iters, chains=a.chains, seed=a.seed):
            print(f"{c}: in {a.out} already with these settings (--redo to run it again)", flush=True)
            continue
        todo.append((c, g))
    t0 = time.perf_counter()
    if a.jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(a.jobs) as ex:
            futs = [ex.submit(run_case, c, g, a.iters, a.chains, a.seed, a.progress) for c, g in todo]
            for f in futs:
                save(f.result(), a.out)
    else:
        for c, g in todo:
            save(run_case(c, g, a.iters, a.chains, a.seed, a.progress), a.out)
    if a.out.exists():
        df = pd.read_csv(a.out)
        print(table(df[df["case"].isin(cases)]))
    print(f"[{time.perf_counter() - t0:.0f} s]")


if __name__ == "__main__":
    main()
