"""Synthetic run tables with known change points, generated FROM the declared table schemas.

Every table is built by `from_schema`: the story's columns, every other declared column filled with
a typed placeholder, and an undeclared column an error, so a fixture cannot drift from what the
analyses write (the way the old `chains`-as-a-list layout once did). Used by the stage, plot and
report tests, and by anyone who wants a run folder without training:

    >>> from tests.synthetic_tables import synthetic_run_tables, write_synthetic_run
    >>> t = synthetic_run_tables(seed=0)
    >>> sorted(t["metrics"]["measure"].unique())
    ['test_acc', 'test_loss', 'train_acc', 'train_loss']
    >>> from llc_watch.run import SCHEMAS
    >>> list(t["llc"].columns) == SCHEMAS["llc"].names[:-1]      # every declared column (backend is optional)
    True
    >>> run = write_synthetic_run("/tmp/llcw-synth")                    # doctest: +SKIP

The story (addition-like, all on x = log(step + 1)):
  loss   plateau at 2.0, drops to 0.05 around step TRUTH["loss_drop"] (a sigmoid in log step);
  acc    rises 0 -> 1 at the same time;
  llc    piecewise linear in log step: flat until TRUTH["llc_rise"], rises to a peak at
         TRUTH["llc_peak"], falls until TRUTH["llc_kink"], then flat;
  probes "carry" forms at TRUTH["carry_onset"] (before the loss drop: a quiet feature);
         "operand" forms at TRUTH["operand_onset"] (after it);
  ablations removing "carry" costs accuracy from TRUTH["carry_ablation_onset"]; "operand" never
         beats the random-direction control.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

import llc_watch  # noqa: F401  (importing the package registers every analysis's table schema)
from llc_watch.run import SCHEMAS

_PLACEHOLDER = {"int": 0, "float": np.nan, "bool": False, "str": "", "json": "[]"}


def from_schema(name: str, story: pd.DataFrame) -> pd.DataFrame:
    """The table `name` with the story's columns and every other required column as a placeholder."""
    schema = SCHEMAS[name]
    extra = sorted(set(story.columns) - set(schema.names))
    if extra:
        raise ValueError(f"synthetic {name} table has undeclared columns {extra}")
    df = story.copy()
    for c in schema.columns:
        if c.name not in df.columns and c.required:
            df[c.name] = _PLACEHOLDER[c.type]
    schema.check(df)
    return schema.ordered(df)


def synthetic_config(seed: int = 0) -> dict:
    """A real config.json (an addition run), so the synthetic folder opens as a Run."""
    from llc_watch.config import RunConfig
    cfg = json.loads(RunConfig.from_preset("addition").to_json())
    cfg["seed"] = seed
    return cfg

TRUTH = {"loss_drop": 2000, "loss_width": 0.25, "llc_rise": 20, "llc_peak": 2000, "llc_kink": 6000,
         "carry_onset": 500, "operand_onset": 5000, "carry_ablation_onset": 1000}


def checkpoint_steps(total: int = 20000, n_log: int = 60, n_linear: int = 20) -> np.ndarray:
    """Log-spaced steps plus linear ones, like training's checkpoint schedule."""
    log = np.unique(np.round(np.geomspace(1, total, n_log)).astype(int))
    lin = np.linspace(0, total, n_linear + 1).astype(int)
    return np.unique(np.concatenate([[0], log, lin]))


def sigmoid_step(steps, at, width=0.25, lo=0.0, hi=1.0):
    """lo -> hi, half way at step `at`, `width` in log(step + 1)."""
    x = np.log1p(np.asarray(steps, float))
    return lo + (hi - lo) / (1 + np.exp(-(x - np.log1p(at)) / width))


def piecewise_llc(steps, rise=20, peak=2000, kink=6000, start=5.0, top=40.0, end=25.0):
    """Piecewise linear in log step: flat until `rise` -> top at `peak` -> end at `kink` -> flat."""
    x = np.log1p(np.asarray(steps, float))
    return np.interp(x, [0.0, np.log1p(rise), np.log1p(peak), np.log1p(kink), 99.0], [start, start, top, end, end])


def synthetic_run_tables(seed: int = 0, total: int = 20000, noise: float = 1.0,
                         invalid_steps: tuple = (3, 4000), features=("carry", "operand")) -> dict:
    """{table name: DataFrame} (metrics, llc, probes, ablations, calibration) following TRUTH."""
    rng = np.random.default_rng(seed)
    steps = checkpoint_steps(total)
    n = len(steps)

    loss = sigmoid_step(steps, TRUTH["loss_drop"], TRUTH["loss_width"], 2.0, 0.05)
    acc = sigmoid_step(steps, TRUTH["loss_drop"] * 1.1, TRUTH["loss_width"], 0.0, 1.0)
    rows = []
    for split, bump in (("train", 0.0), ("test", 0.02)):
        rows += [{"step": s, "measure": f"{split}_loss", "value": v}
                 for s, v in zip(steps, loss + bump + 0.01 * rng.standard_normal(n))]
        rows += [{"step": s, "measure": f"{split}_acc", "value": v}
                 for s, v in zip(steps, np.clip(acc - bump + 0.005 * rng.standard_normal(n), 0, 1))]
    metrics = pd.DataFrame(rows)

    llc_true = piecewise_llc(steps, TRUTH["llc_rise"], TRUTH["llc_peak"], TRUTH["llc_kink"])
    se = noise * (0.5 + 0.5 * rng.random(n))
    val = llc_true + se * rng.standard_normal(n)
    valid = np.ones(n, bool)
    warn = [""] * n
    for s in invalid_steps:
        i = int(np.argmin(np.abs(steps - s)))
        valid[i], val[i], warn[i] = False, 7.4e9, "2 of 4 chains failed (NaN loss)"
    per_chain = [json.dumps([float(v + se_i * z) for z in rng.standard_normal(4)]) for v, se_i in zip(val, se)]
    traces = [json.dumps([float(0.1 + v / 1000 * (1 - np.exp(-t / 20))) for t in range(60)]) for v in val]
    llc = from_schema("llc", pd.DataFrame({
        "step": steps, "measure": "llc", "value": np.where(valid, val, np.nan),   # invalid: no value
        "stderr": np.where(valid, se, np.nan), "valid": valid, "n_healthy": np.where(valid, 4, 2), "chains": 4,
        "llc_per_chain": per_chain, "warnings": [json.dumps([w] if w else []) for w in warn],
        "epsilon": 1e-3, "nbeta": 30.0, "gamma": 100.0, "draws": 200, "burn_in": 20, "batch_size": 32,
        "sampler": "sgld", "seed": 0, "n": 4096, "mean_loss_trace": traces, "draws_per_chain": 40}))

    onsets = {"carry": TRUTH["carry_onset"], "operand": TRUTH["operand_onset"]}
    prows = []
    for feat in features:
        at = onsets.get(feat, TRUTH["operand_onset"])
        for layer in (0, 1):
            for site in ("resid", "mlp"):
                for pos in (0, 1, 2):
                    # the best probe (layer 1, resid, pos 1) follows the true curve, others lag or are worse
                    good = (layer == 1) * 0.3 + (site == "resid") * 0.3 + (pos == 1) * 0.4
                    curve = sigmoid_step(steps, at * (1 + 2 * (1 - good)), 0.3, 0.5, 0.5 + 0.48 * good)
                    accs = np.clip(curve + 0.01 * rng.standard_normal(n), 0, 1)
                    for s, a in zip(steps, accs):
                        # the train log-loss ranks probes as the true curve does (what selects them)
                        base = dict(step=s, feature=feat, layer=layer, site=site, position=pos,
                                    train_log_loss=1.0 - good)
                        prows += [dict(base, measure="accuracy", value=a, control="probe"),
                                  dict(base, measure="log_loss", value=-np.log(max(a, 1e-3)), control="probe"),
                                  dict(base, measure="accuracy", value=0.5 + 0.01 * rng.standard_normal(),
                                       control="shuffled", train_log_loss=np.log(2))]
    probes = from_schema("probes", pd.DataFrame(prows).assign(kind="binary", n_train=1024, n_test=256))

    arows = []
    for feat in features:
        effect = (sigmoid_step(steps, TRUTH["carry_ablation_onset"], 0.3, 0.0, 0.7) if feat == "carry"
                  else np.zeros(n))
        for pos in (0, 1):
            scale = 1.0 if pos == 1 else 0.4
            for s, e in zip(steps, effect * scale):
                rm = 0.02
                arows.append(dict(step=s, feature=feat, site="resid", position=pos, method="projection",
                                  measure="acc_drop", value=e + rm + 0.01 * rng.standard_normal(),
                                  random_mean=rm, random_std=0.01))
                arows.append(dict(step=s, feature=feat, site="resid", position=pos, method="random",
                                  measure="acc_drop", value=rm, random_mean=rm, random_std=0.01))
    ablations = from_schema("ablations", pd.DataFrame(arows))

    crows = []
    for step, eps in ((st, e) for st in (steps[len(steps) // 2], steps[-1]) for e in (1e-4, 3e-4, 1e-3, 3e-3)):
        for nbeta in (10.0, 30.0, 100.0):
            for gamma in (100.0, 1000.0):
                bad = eps >= 3e-3 and nbeta < 100
                crows.append(dict(step=step, measure="llc", epsilon=eps, nbeta=nbeta, gamma=gamma,
                                  llc_mean=np.nan if bad else 25 + 5 * np.log10(eps / 1e-4) + nbeta / 50,
                                  llc_std=np.nan if bad else 1.0 + eps * 100, valid=not bad,
                                  drift=0.5 if bad else 0.01 * eps / 1e-4, rhat=1.5 if bad else 1.01,
                                  failed_chains=2 if bad else 0))
    calibration = pd.DataFrame(crows)
    calibration["value"] = calibration["llc_mean"]
    calibration = from_schema("calibration", calibration)
    return {"metrics": from_schema("metrics", metrics), "llc": llc, "probes": probes, "ablations": ablations,
            "calibration": calibration}


def write_synthetic_run(run_dir, seed: int = 0, tables=("metrics", "llc", "probes", "ablations", "calibration"),
                        **kw) -> Path:
    """Write a synthetic run folder (tables through Run.write_table, so validated; config.json);
    `tables` picks which tables exist."""
    from llc_watch.run import Run
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(synthetic_config(seed), indent=2))
    t = synthetic_run_tables(seed=seed, **kw)
    run = Run(run_dir)
    for name in tables:
        run.write_table(name, t[name])
    return run_dir
