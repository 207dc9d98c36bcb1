"""Probes: planted features are recovered, shuffled labels are not, controls and the driver work."""
import numpy as np
import pandas as pd
import pytest
import torch

from llc_watch.analyses.probes import compute_probes, probe_job, quiet_or_loud
from llc_watch.probes import (add_step0_control, binary_metrics, categorical_metrics, feature_curves,
                              fit_logistic, fit_multinomial, fit_ridge, numeric_metrics,
                              resolve_settings)


def planted(n=1200, d=16, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    X = scale * torch.randn(1, n, d, generator=g)
    w = torch.randn(d, generator=g)
    return X, w, torch.arange(n) < int(0.75 * n)


def test_binary_probe_recovers_planted_feature_and_not_shuffled():
    X, w, train = planted()
    y = (X[0] @ w > 0).float()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    y_shuf = torch.where(train, y[perm], y)  # shuffled train labels, true test labels
    Y = torch.stack([y, y_shuf])[None]       # [G=1, F=2, N]
    fit = fit_logistic(X, Y, train)
    m = binary_metrics(fit.logits(X), Y, ~train)
    assert m["accuracy"][0, 0] > 0.95 and m["balanced_accuracy"][0, 0] > 0.95
    assert abs(float(m["accuracy"][0, 1]) - 0.5) < 0.1      # chance on the shuffled control
    cos = torch.nn.functional.cosine_similarity(fit.w[0, 0], w, dim=0)
    assert cos > 0.9                                         # the planted direction itself


def test_logistic_matches_sklearn_on_raw_activations():
    from sklearn.linear_model import LogisticRegression
    X, w, train = planted(n=600, d=8, scale=0.1)            # small activations: the penalty matters
    y = (X[0] @ w + 0.05 * torch.randn(600, generator=torch.Generator().manual_seed(2)) > 0).float()
    fit = fit_logistic(X, y[None, None], train, C=1.0)
    sk = LogisticRegression(C=1.0, tol=1e-8, max_iter=5000).fit(X[0, train].double().numpy(), y[train].numpy())
    np.testing.assert_allclose(fit.w[0, 0].numpy(), sk.coef_[0], rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(float(fit.b[0, 0]), sk.intercept_[0], rtol=2e-3, atol=2e-3)


def test_multinomial_and_ridge_recover_planted_features():
    X, w, train = planted(n=1500, d=12)
    W = torch.randn(12, 4, generator=torch.Generator().manual_seed(3))
    cls = (X[0] @ W).argmax(-1).float()
    fit = fit_multinomial(X, cls[None, None], train, n_classes=4, max_iter=200)
    assert categorical_metrics(fit.logits(X), cls[None, None], ~train)["accuracy"][0, 0] > 0.9
    target = X[0] @ w + 0.1 * torch.randn(1500, generator=torch.Generator().manual_seed(4))
    r = fit_ridge(X, target[None, None], train)
    assert numeric_metrics(r.logits(X), target[None, None], ~train)["r2"][0, 0] > 0.98


def test_nan_labels_are_left_out():
    X, w, train = planted()
    y = (X[0] @ w > 0).float()
    y_nan = y.clone()
    y_nan[::3] = float("nan")
    fit = fit_logistic(X, y_nan[None, None], train)
    assert torch.isfinite(fit.w).all()
    assert binary_metrics(fit.logits(X), y_nan[None, None], ~train)["accuracy"][0, 0] > 0.93


def test_settings_errors_name_the_setting():
    with pytest.raises(ValueError, match="n_trian"):
        resolve_settings({"n_trian": 3})


SMALL = {"n_train": 512, "n_test": 256, "features": ["carry_in", "a_bit"]}


def test_carry_probed_above_step0_on_trained_checkpoint(tiny_run):
    ckpts = tiny_run.checkpoints()
    rows = {c.step: pd.DataFrame(probe_job(c, SMALL)) for c in (ckpts[0], ckpts[-1])}

    def best(df):  # best probe over sites, averaged over the carry's positions
        d = df[(df.feature == "carry_in") & (df.control == "probe") & (df.measure == "balanced_accuracy")]
        return d.groupby("position").value.max().mean()
    first, last = best(rows[ckpts[0].step]), best(rows[ckpts[-1].step])
    assert last > 0.95 and last - first > 0.15, (first, last)
    last_df = rows[ckpts[-1].step]
    sel = last_df[(last_df.feature == "carry_in") & (last_df.measure == "selectivity")]
    assert sel.value.max() > 0.3                             # the shuffled control stays low
    assert set(last_df.control) == {"probe", "shuffled", "majority"}
    assert {"step", "feature", "layer", "site", "position", "measure", "value", "control"} <= set(last_df.columns)


def test_compute_probes_table_controls_and_rerun_skips(tiny_run, monkeypatch):
    import llc_watch.analyses.probes as P
    steps = [c.step for c in tiny_run.checkpoints()][-1:]
    df = compute_probes(tiny_run.dir, SMALL, checkpoints=steps, progress=False)
    assert (tiny_run.dir / "probes.csv").is_file() and (tiny_run.dir / "probes_quiet.csv").is_file()
    assert set(df.step) == {0, steps[0]}                     # step 0 always comes along
    assert {"probe", "shuffled", "majority", "step0"} <= set(df.control)
    assert df.layer.dtype.kind == "i" and df.site.str.startswith("blocks.").all()
    calls = []
    monkeypatch.setattr(P, "fit_checkpoint_probes", lambda *a, **k: calls.append(1))
    again = compute_probes(tiny_run.dir, SMALL, checkpoints=steps, progress=False)
    assert calls == [] and len(again) == len(df)             # nothing refitted


def test_unknown_feature_and_bad_ranges_are_refused_before_work(tiny_run):
    from llc_watch.settings import SettingsError
    for given, words in [({"features": ["nosuch"]}, "features=nosuch: not features of task 'addition'"),
                         ({"C": -1.0}, "C=-1.0: must be > 0"), ({"threshold": 2.0}, "threshold=2.0"),
                         ({"n_train": 0}, "n_train=0")]:
        with pytest.raises(SettingsError, match=words):
            compute_probes(tiny_run.dir, given, progress=False)


def test_step0_control_on_a_synthetic_table():
    rows = [dict(step=step, feature="f", layer=0, site="resid", position=3, measure="balanced_accuracy", value=v,
                 control="probe") for step, v in [(0, .5), (10, .95), (1000, .99)]]
    df = add_step0_control(pd.DataFrame(rows))
    s0 = df[(df.control == "step0") & (df.step == 1000) & (df.measure == "balanced_accuracy")]
    assert float(s0.value.iloc[0]) == 0.5


STEPS = np.unique(np.geomspace(1, 20000, 45).astype(int)).astype(float)


def _sig(at, lo=0.0, hi=1.0, width=0.2):
    return lo + (hi - lo) / (1 + np.exp(-(np.log1p(STEPS) - np.log(at)) / width))


def _planted_probe_rows():
    """Two sites per feature: `resid` has the lower train log-loss; `mlp` looks better on the
    test set (a selection on the test set would pick it). Accuracy rows carry a 0.9 majority
    baseline (imbalanced labels) where balanced accuracy starts at 0.5."""
    rows = []
    truth = {"quiet_feat": _sig(150, 0.5), "loud_feat": _sig(4000, 0.5), "stalls": _sig(150, 0.5, 0.8),
             "init_feat": np.full(len(STEPS), 0.97)}
    for feat, curve in truth.items():
        for site, tl in (("resid", 0.2), ("mlp", 0.6)):
            # the test-set winner rises 10x earlier than the train-selected probe
            v = curve if site == "resid" else np.maximum(curve, _sig(15, 0.5))
            for s, val in zip(STEPS, v):
                base = dict(step=s, feature=feat, layer=0, site=site, position=1, control="probe", kind="binary",
                            train_log_loss=tl)
                rows.append(dict(base, measure="balanced_accuracy", value=val))
                rows.append(dict(base, measure="accuracy", value=0.9 + 0.1 * (val - 0.5) / 0.5))
    return pd.DataFrame(rows)


def _planted_metrics():
    loss = 0.7 - 0.69 * _sig(1000, width=0.15)
    acc = _sig(1000, width=0.15)
    return pd.DataFrame([dict(step=s, measure=m, value=v) for m, c in
                         (("train_loss", loss), ("test_loss", loss), ("train_acc", acc), ("test_acc", acc))
                         for s, v in zip(STEPS, c)])


def test_feature_curves_select_by_train_metric_and_report_balanced_accuracy():
    c = feature_curves(_planted_probe_rows()).set_index(["feature", "step"])
    assert set(c["site"]) == {"resid"} and set(c["measure"]) == {"balanced_accuracy"}
    assert c.loc[("quiet_feat", STEPS[0]), "value"] < 0.55   # chance is 0.5, not the 0.9 majority rate
    with pytest.raises(ValueError, match="no train metric"):
        feature_curves(_planted_probe_rows().drop(columns="train_log_loss"))
    with pytest.warns(UserWarning, match="selected on the test value"):
        t = feature_curves(_planted_probe_rows().drop(columns="train_log_loss"), on_missing_train="test")
    mid = t[(t.feature == "quiet_feat") & t.step.between(20, 60)]
    assert len(mid) and set(mid["site"]) == {"mlp"}   # test selection picks the earlier-looking probe


def test_quiet_or_loud_uses_the_stage_maps_onsets_and_drop():
    """probes_quiet.csv and the stage map: the same formed onset and the same drop, by construction."""
    from llc_watch.analyses.probes import probe_signals
    from llc_watch.analyses.training import metrics_signals
    from llc_watch.stages import loss_drop, stage_map
    probes, metrics = _planted_probe_rows(), _planted_metrics()
    q = quiet_or_loud(probes, metrics).set_index("feature")
    assert q.loc["quiet_feat", "status"] == "quiet" and q.loc["quiet_feat", "before_drop"]
    assert 60 < q.loc["quiet_feat", "feature_step"] < 300    # the train-selected probe's rise, not the mlp one's
    assert q.loc["loud_feat", "status"] == "loud" and not q.loc["loud_feat", "before_drop"]
    assert q.loc["stalls", "status"] == "never" and q.loc["init_feat", "status"] == "at_init"
    assert 600 < q.loc["quiet_feat", "drop_step"] < 1600
    sm = stage_map({**metrics_signals(metrics), **probe_signals(probes)}, resamples=100)
    onsets = {b.signal: b.step for b in sm.boundaries if b.kind == "onset"}
    assert set(onsets) == {"probe:quiet_feat", "probe:loud_feat"}  # the stalled rise keeps no onset
    assert onsets["probe:quiet_feat"] == q.loc["quiet_feat", "feature_step"]
    assert loss_drop(sm).step == q.loc["quiet_feat", "drop_step"]
    assert any("probe:quiet_feat" in e for e in sm.stages.loc[sm.stages["quiet"], "quiet_events"])
