"""Boundary detection, alignment and stage maps on synthetic signals with known change points."""
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from llc_watch.analyses import load_stage_map, run_stage_map, tables_stage_map
from llc_watch.run import MissingAnalysisError, open_run
from llc_watch.stages import Boundary, StageMap, align_boundaries, find_boundaries, smooth_signal, stage_map
from tests.synthetic_tables import (TRUTH, checkpoint_steps, piecewise_llc, sigmoid_step, synthetic_run_tables,
                                    write_synthetic_run)

STEPS = checkpoint_steps(20000)
X = np.log1p


def _noisy(y, sd, seed=0):
    return y + sd * np.random.default_rng(seed).standard_normal(len(y))


def _llc(seed=0, sd=1.0):
    se = np.full(len(STEPS), sd)
    return _noisy(piecewise_llc(STEPS), sd, seed), se


def _only(bs, kind):
    return [b for b in bs if b.kind == kind]


# --------------------------------------------------------------------------------------------------
# find_boundaries: known change points


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_drop_recovered(seed):
    at, w = 2000, 0.25
    loss = _noisy(sigmoid_step(STEPS, at, w, 2.0, 0.05), 0.01, seed)
    bs = find_boundaries(STEPS, loss, kind="loss", signal="train_loss", resamples=40)
    assert [b.kind for b in bs] == ["plateau-end", "drop", "drop-end"]
    pe, drop, de = bs
    assert abs(drop.x - X(at)) < 0.15
    # the drop rate is half its peak at x0 -/+ 2 acosh(sqrt 2) w = 1.763 w for a logistic in log step
    assert abs(pe.x - (X(at) - 1.763 * w)) < 0.1 and abs(de.x - (X(at) + 1.763 * w)) < 0.1
    for b in bs:
        assert b.lo <= b.step <= b.hi and b.signal == "train_loss" and b.support > 0.5


def test_accuracy_rise_is_a_drop_upwards():
    acc = _noisy(sigmoid_step(STEPS, 3000, 0.3), 0.01)
    bs = find_boundaries(STEPS, acc, kind="loss", direction="up", resamples=20)
    assert abs(_only(bs, "drop")[0].x - X(3000)) < 0.15
    assert find_boundaries(STEPS, acc, kind="loss", direction="down", resamples=20) == []


@pytest.mark.parametrize("seed", [0, 1])
def test_llc_peak_and_plateau_edges_recovered(seed):
    """flat -> rise -> peak -> fall -> flat: a plateau-end, a critical point, a plateau-start."""
    y, se = _llc(seed)
    bs = find_boundaries(STEPS, y, se, kind="llc", resamples=40)
    assert [b.kind for b in bs] == ["plateau-end", "slope-zero", "plateau-start"], bs
    pe, peak, ps = bs
    assert abs(peak.x - X(TRUTH["llc_peak"])) < 0.25
    assert abs(pe.x - X(TRUTH["llc_rise"])) < 0.25 and abs(ps.x - X(TRUTH["llc_kink"])) < 0.25
    for b in bs:
        assert b.lo <= b.step <= b.hi and b.support > 0.8 and b.strong


def test_kink_is_a_sharp_change_not_a_plateau():
    """A rise whose slope drops to a third without stopping: one sharp-change, no plateau edges."""
    x = X(STEPS)
    y = np.interp(x, [0, 3, 6, 10], [0, 0, 9, 13]) + 0.1 * np.random.default_rng(0).standard_normal(len(x))
    bs = find_boundaries(STEPS, y, np.full(len(x), 0.1), kind="llc", resamples=40)
    kinks = _only(bs, "sharp-change")
    assert len(kinks) == 1 and abs(kinks[0].x - 6) < 0.25, bs
    assert not _only(bs, "plateau-start")


def test_onset_is_the_half_way_crossing():
    acc = _noisy(sigmoid_step(STEPS, 700, 0.2, 0.5, 0.98), 0.01)
    (b,) = find_boundaries(STEPS, acc, kind="onset", signal="probe:carry", resamples=30)
    assert b.kind == "onset" and abs(b.x - X(700)) < 0.1 and b.lo <= b.step <= b.hi


@pytest.mark.parametrize("kind", ["llc", "loss", "onset"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pure_noise_has_no_boundaries(kind, seed):
    y = _noisy(np.full(len(STEPS), 3.0), 0.5, seed)
    assert find_boundaries(STEPS, y, np.full(len(STEPS), 0.5), kind=kind, resamples=10) == []


def test_too_few_points_give_nothing_not_an_error():
    assert find_boundaries([1, 10, 100], [1.0, 2.0, 1.0], kind="llc") == []


def test_interval_widens_with_the_standard_errors():
    """The interval is propagated from stderr: noisier estimates, wider intervals."""
    widths = []
    for sd in (0.5, 3.0):
        y, se = _llc(seed=3, sd=sd)
        # the boundary standing for the planted peak (at sd 3 the sparse early checkpoints can add one)
        b = min(_only(find_boundaries(STEPS, y, se, kind="llc", resamples=60), "slope-zero"),
                key=lambda b: abs(b.x - X(TRUTH["llc_peak"])))
        widths.append(b.hi - b.lo)
    assert widths[1] > widths[0] > 0


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="unknown kind 'foo'"):
        find_boundaries(STEPS, np.sin(np.log1p(STEPS)), kind="foo")


# --------------------------------------------------------------------------------------------------
# affine invariance


def _same(b1, b2):
    assert [(b.kind, b.signal) for b in b1] == [(b.kind, b.signal) for b in b2]
    for p, q in zip(b1, b2):
        np.testing.assert_allclose([p.step, p.lo, p.hi, p.support], [q.step, q.lo, q.hi, q.support], rtol=1e-6)


SIGNALS = {
    "llc": lambda: _llc(5),
    "loss": lambda: (_noisy(sigmoid_step(STEPS, 2000, 0.25, 2.0, 0.05), 0.02, 5), None),
    "onset": lambda: (_noisy(sigmoid_step(STEPS, 500, 0.3, 0.5, 0.95), 0.02, 5), None),
}


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(sorted(SIGNALS)), a=st.floats(1e-3, 1e3), b=st.floats(-1e3, 1e3))
def test_affine_invariance(kind, a, b):
    y, se = SIGNALS[kind]()
    ref = find_boundaries(STEPS, y, se, kind=kind, resamples=20)
    assert ref, "the reference signal must have boundaries for the test to mean anything"
    _same(ref, find_boundaries(STEPS, a * y + b, None if se is None else a * se, kind=kind, resamples=20))


def test_affine_invariance_extreme_scales():
    y, se = SIGNALS["llc"]()
    ref = find_boundaries(STEPS, y, se, kind="llc", resamples=20)
    for a, b in [(1e-6, 0.0), (1e6, -3e6), (0.37, 12.5)]:
        _same(ref, find_boundaries(STEPS, a * y + b, a * se, kind="llc", resamples=20))


def test_smooth_signal_fits_a_line():
    s = smooth_signal(STEPS, 2 * np.log1p(STEPS) + 1)
    np.testing.assert_allclose(s.slope[5:-5], 2.0, atol=0.05)


# --------------------------------------------------------------------------------------------------
# alignment


def _b(step, signal, kind="onset", lo=None, hi=None):
    return Boundary(step, lo or step * 0.9, hi or step * 1.1, signal, kind)


def test_align_matches_within_tolerance_only():
    bs = {"llc": [_b(1000, "llc", "slope-zero"), _b(10000, "llc", "sharp-change")],
          "train_loss": [_b(1200, "train_loss", "drop")],                     # 0.18 from 1000: matched
          "probe:carry": [_b(400, "probe:carry")],                            # 0.92 away: alone
          "ablation:carry": [_b(13000, "ablation:carry")]}                    # 0.26 from 10000: matched
    df = align_boundaries(bs, tolerance=0.35)
    groups = df.groupby("group")["signal"].apply(lambda s: sorted(s)).tolist()
    assert groups == [["probe:carry"], ["llc", "train_loss"], ["ablation:carry", "llc"]]
    assert set(df["family"]) == {"llc", "loss", "probe", "ablation"}
    assert (df.loc[df["group"] == 1, "n_signals"] == 2).all()
    # a tighter tolerance splits them
    assert align_boundaries(bs, tolerance=0.1)["group"].nunique() == 5


def test_align_never_puts_one_signal_twice_in_a_group():
    df = align_boundaries([_b(1000, "train_loss", "plateau-end"), _b(1100, "train_loss", "drop")], tolerance=1.0)
    assert df["group"].tolist() == [0, 1]


def test_align_on_detected_synthetic_signals():
    """Loss, accuracy and a probe that all change at step 2000 line up; an earlier probe does not."""
    loss = _noisy(sigmoid_step(STEPS, 2000, 0.25, 2.0, 0.05), 0.01, 1)
    acc = _noisy(sigmoid_step(STEPS, 2200, 0.25), 0.01, 2)
    early = _noisy(sigmoid_step(STEPS, 200, 0.25, 0.5, 1.0), 0.01, 3)
    late = _noisy(sigmoid_step(STEPS, 1900, 0.25, 0.5, 1.0), 0.01, 4)
    found = {"train_loss": _only(find_boundaries(STEPS, loss, kind="loss", signal="train_loss", resamples=10), "drop"),
             "test_acc": _only(find_boundaries(STEPS, acc, kind="loss", signal="test_acc", resamples=10), "drop"),
             "probe:a": find_boundaries(STEPS, early, kind="onset", signal="probe:a", resamples=10),
             "probe:b": find_boundaries(STEPS, late, kind="onset", signal="probe:b", resamples=10)}
    df = align_boundaries(found)
    g = df.set_index("signal")["group"]
    assert g["train_loss"] == g["test_acc"] == g["probe:b"] != g["probe:a"]


def test_align_empty():
    assert align_boundaries({}).empty


# --------------------------------------------------------------------------------------------------
# stage maps on a whole synthetic run


@pytest.fixture(scope="module")
def synth_map():
    t = synthetic_run_tables(seed=0)
    return t, tables_stage_map(t, resamples=30)


def test_stage_map_tells_the_synthetic_story(synth_map):
    t, sm = synth_map
    st = sm.stages
    assert list(st.columns[:8]) == ["stage", "start_step", "end_step", "llc_trend", "loss_trend",
                                    "features_formed", "ablation_effects", "quiet"]
    assert st["start_step"].iloc[0] == 0 and st["end_step"].iloc[-1] == 20000
    assert (st["start_step"].iloc[1:].to_numpy() == st["end_step"].iloc[:-1].to_numpy()).all()
    # carry forms while the loss is still flat: a quiet stage; operand forms after the drop
    carry = st[st["features_formed"].str.contains("carry")].iloc[0]
    assert carry["quiet"] and carry["llc_trend"] == "rising" and "probe:carry:onset" in carry["quiet_events"]
    assert "carry" in carry["ablation_effects"]
    assert any("feature carry forms" in s and "before the train_loss plateau ends" in s for s in sm.timeline())
    assert any("feature operand forms" in s and "after the train_loss drop" in s for s in sm.timeline())
    # the LLC peak and the loss drop share an aligned group
    a = sm.aligned
    peak_group = a[(a["signal"] == "llc") & (a["kind"] == "slope-zero")]["group"].iloc[0]
    assert "train_loss" in set(a[a["group"] == peak_group]["signal"])
    # the operand ablation never beats the random control: no onset for it
    assert not any(b.signal == "ablation:operand" for b in sm.boundaries)


def test_summary_for_the_terminal(synth_map):
    _, sm = synth_map
    text = sm.summary()
    assert "stages," in text and "llc_trend" in text and "feature carry forms" in text and "warning:" in text


def test_invalid_llc_points_are_marked_not_fatal(synth_map):
    t, sm = synth_map
    bad = sorted(t["llc"].loc[~t["llc"]["valid"], "step"])
    assert sm.llc_invalid_steps == bad
    assert sm.stages["invalid_llc"].sum() >= len(bad)
    assert any("invalid" in w for w in sm.warnings)
    assert sm.smooths["llc"].mean.max() < 100  # the 7.4e9 rows never reach the fit


def test_all_llc_invalid_still_maps():
    t = synthetic_run_tables(seed=1)
    t["llc"]["valid"] = False
    sm = tables_stage_map(t, resamples=5)
    assert "llc" not in sm.smooths and len(sm.stages) >= 1
    assert set(sm.stages["llc_trend"]) == {"n/a"}
    assert any(f"{len(t['llc'])} of {len(t['llc'])} LLC checkpoints are invalid" in w for w in sm.warnings)


def test_stage_map_json_round_trip_and_save(synth_map, tmp_path):
    _, sm = synth_map
    d = json.loads(json.dumps(sm.to_dict()))  # JSON-able
    back = StageMap.from_dict(d)
    assert back.boundaries == sm.boundaries or all(
        p.signal == q.signal and p.kind == q.kind and np.isclose(p.step, q.step)
        for p, q in zip(back.boundaries, sm.boundaries))
    pd.testing.assert_frame_equal(back.stages.reset_index(drop=True), sm.stages.reset_index(drop=True),
                                  check_dtype=False)
    run = write_synthetic_run(tmp_path / "run", tables=())
    paths = sm.save(run)
    assert {p.name for p in paths.values()} == {"stages.csv", "boundaries.csv", "stage_map.json"}
    assert len(pd.read_csv(run / "stages.csv")) == len(sm.stages)
    assert len(load_stage_map(run).boundaries) == len(sm.boundaries)


def test_stage_map_from_folder_with_missing_tables(tmp_path):
    run = write_synthetic_run(tmp_path / "run", tables=("metrics",))
    from llc_watch.analyses import run_signals
    _, _, missing = run_signals(run)
    assert f"llc-watch llc {run}" in missing["llc"]
    assert f"llc-watch probe {run}" in missing["probes"]
    assert f"llc-watch ablate {run}" in missing["ablations"]
    assert "fourier" not in missing          # Fourier measures do not apply to addition
    with pytest.raises(MissingAnalysisError, match=f"llc-watch llc {run}"):
        open_run(run).table("llc")
    sm = run_stage_map(run, resamples=5, save=True)
    assert (run / "stages.csv").is_file() and set(sm.stages["llc_trend"]) == {"n/a"}
    assert any("llc-watch llc" in w for w in sm.warnings)


def test_empty_folder_names_the_commands(tmp_path):
    run = write_synthetic_run(tmp_path / "run", tables=())
    with pytest.raises(MissingAnalysisError, match="llc-watch llc .*llc-watch probe .*llc-watch ablate"):
        run_stage_map(run)
    with pytest.raises(MissingAnalysisError, match="llc-watch stages"):
        load_stage_map(run)


def test_an_empty_table_names_its_command(tmp_path):
    run = write_synthetic_run(tmp_path / "run", tables=("metrics",))
    (run / "llc.csv").write_text("")
    with pytest.raises(MissingAnalysisError, match=f"llc.csv empty: run `llc-watch llc {run}`"):
        open_run(run).table("llc")
    assert open_run(run).table("llc", required=False) is None


def test_best_probe_picks_the_max_and_falls_back_to_r2():
    from llc_watch.analyses.probes import best_probe
    rows = [dict(step=s, feature="carry", layer=l, site="resid", position=0, measure="accuracy",
                 value=0.5 + 0.1 * l + 0.001 * s, control="probe") for s in (0, 10) for l in (0, 1, 2)]
    rows += [dict(step=s, feature="carry", layer=0, site="resid", position=0, measure="accuracy", value=0.99,
                  control="shuffled") for s in (0, 10)]                       # controls never win
    rows += [dict(step=s, feature="sum", layer=1, site="mlp", position=1, measure="r2", value=0.3 + 0.01 * s,
                  control="probe") for s in (0, 10)]
    b = best_probe(pd.DataFrame(rows)).set_index(["feature", "step"])
    assert b.loc[("carry", 10), "layer"] == 2 and np.isclose(b.loc[("carry", 10), "value"], 0.71)
    assert b.loc[("sum", 10), "measure"] == "r2"


# --------------------------------------------------------------------------------------------------
# strong boundaries, the loss drop, quiet stretches, other signal kinds


def test_loss_drop_is_the_one_accuracy_follows(synth_map):
    from llc_watch.stages import loss_drop
    _, sm = synth_map
    d = loss_drop(sm)
    assert d.signal == "train_loss" and abs(d.drop.x - X(TRUTH["loss_drop"])) < 0.15
    assert d.plateau_end.step < d.drop.step < d.drop_end.step


def test_loss_drop_prefers_the_drop_near_the_accuracy_rise():
    """A loss that first falls to the output-frequency level (no accuracy), then for real."""
    from llc_watch.signals import Signal
    from llc_watch.stages import loss_drop
    loss = sigmoid_step(STEPS, 30, 0.3, 2.0, 1.2) - sigmoid_step(STEPS, 3000, 0.25, 0.0, 1.1)
    acc = sigmoid_step(STEPS, 3300, 0.25)
    sig = {"train_loss": Signal("train_loss", "loss", STEPS, _noisy(loss, 0.01), direction="down"),
           "test_acc": Signal("test_acc", "loss", STEPS, _noisy(acc, 0.01), direction="up")}
    sm = stage_map(sig, resamples=30)
    assert len(_only(sm.boundaries, "drop")) == 3  # two loss drops, one accuracy rise
    assert abs(loss_drop(sm).drop.x - X(3000)) < 0.15


def test_quiet_needs_a_credibly_flat_loss(synth_map):
    from llc_watch.stages import quiet_stages
    _, sm = synth_map
    q = quiet_stages(sm)
    first = q.iloc[0]
    assert first["quiet"] and "probe:carry:onset" in first["quiet_events"]
    assert first["end_step"] < TRUTH["loss_drop"]
    # the operand probe forms after the drop, on the lower plateau: no LLC or probe event makes the
    # drop itself quiet
    assert not any("operand" in e for e in q.iloc[0]["events"].split(", "))


def test_rising_llc_alone_does_not_make_a_plateau_quiet():
    """The old rule called every plateau quiet while the LLC rose; now an event must fall inside."""
    from llc_watch.signals import Signal
    loss = sigmoid_step(STEPS, 3000, 0.25, 2.0, 0.1)
    llc = 5 + 2 * X(STEPS)  # a straight line in log step: no critical point anywhere
    sm = stage_map({"train_loss": Signal("train_loss", "loss", STEPS, _noisy(loss, 0.01), direction="down"),
                    "llc": Signal("llc", "llc", STEPS, _noisy(llc, 0.2), np.full(len(STEPS), 0.2))}, resamples=30)
    assert not sm.stages["quiet"].any()


def test_transitions_group_strong_boundaries(synth_map):
    _, sm = synth_map
    tr = sm.transitions()
    assert 0 < len(tr) <= len(sm.strong) and (np.diff(tr["step"]) > 0).all()
    assert "transitions" in sm.summary()
    ranked = sm.ranked()
    assert all(b.strong for b in ranked[: len(sm.strong)])


def test_merge_joins_one_kind_and_short_plateaus():
    from llc_watch.stages import merge_boundaries
    ps = Boundary(100, 80, 140, "llc", "plateau-start", support=0.9)
    pe = Boundary(120, 90, 150, "llc", "plateau-end", support=0.8)
    (m,) = merge_boundaries([ps, pe])
    assert m.kind == "slope-zero" and m.lo == 80 and m.hi == 150 and 100 < m.step < 120
    other = Boundary(110, 100, 120, "train_loss", "drop")
    assert len(merge_boundaries([ps, pe, other])) == 2  # other signals never merge


def test_emergence_peaks():
    x = X(STEPS)
    density = np.exp(-0.5 * ((x - 6.0) / 0.3) ** 2) + 0.4 * np.exp(-0.5 * ((x - 8.5) / 0.3) ** 2)
    bs = find_boundaries(STEPS, _noisy(density, 0.02), kind="emergence", signal="crosscoder:emergence", resamples=30)
    assert [b.kind for b in bs] == ["peak", "peak"]
    assert abs(bs[0].x - 6.0) < 0.1 and abs(bs[1].x - 8.5) < 0.1 and bs[0].strength > bs[1].strength


def test_boundary_round_trips_new_fields():
    b = Boundary(10.0, 8.0, 12.0, "llc", "plateau-end", support=0.9, strength=0.5, evidence=12.0, strong=True)
    assert Boundary.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    old = {"step": 10.0, "lo": 8.0, "hi": 12.0, "signal": "llc", "kind": "onset", "support": 1.0, "strength": None}
    assert Boundary.from_dict(old).strong is False


@pytest.mark.parametrize("module", ["llc_watch.signals", "llc_watch.stages.smoothing", "llc_watch.stages.boundaries",
                                    "llc_watch.stages.stage_map", "llc_watch.stages.adaptive",
                                    "llc_watch.stages.synthetic", "llc_watch.essential_dynamics"])
def test_docstring_examples_run(module):
    import doctest
    import importlib
    r = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert r.failed == 0 and r.attempted > 0
