"""Essential dynamics: PCA over checkpoints, turning points of the path, outputs from a run, plots."""
import numpy as np
import pytest
from matplotlib.figure import Figure

from llc_watch.essential_dynamics import (model_outputs, pca_trajectory, plot_pcs_over_steps, plot_trajectory,
                                          trajectory_boundaries, trajectory_signal)
from llc_watch.stages import stage_map
from llc_watch.stages.synthetic import checkpoints

STEPS = checkpoints(20000)
X = np.log1p(STEPS.astype(float))


def _path(noise=0.02, seed=0):
    """A path in 3-D, piecewise linear in log step, turning at log steps 3.5 and 6.5, seen through
    a random linear map into 60 output features, plus noise."""
    rng = np.random.default_rng(seed)
    knots, verts = [0, 3.5, 6.5, X[-1]], np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0.3, 1.2, 0.8]], float)
    path = np.stack([np.interp(X, knots, verts[:, k]) for k in range(3)], 1)
    out = path @ rng.standard_normal((3, 60)) + noise * rng.standard_normal((len(X), 60))
    return out


def test_pca_recovers_a_three_dimensional_path():
    ed = pca_trajectory(STEPS, _path(), n_components=4)
    assert ed.scores.shape == (len(STEPS), 4)
    assert ed.explained[:3].sum() > 0.99 and ed.explained[3] < 0.01
    assert np.all(np.diff(ed.explained) <= 1e-12)  # ordered


@pytest.mark.parametrize("seed", [0, 1])
def test_turning_points_are_found_where_planted(seed):
    ed = pca_trajectory(STEPS, _path(seed=seed), n_components=3)
    bs = trajectory_boundaries(ed, resamples=60)
    strong = [b for b in bs if b.strong]
    assert len(strong) == 2, bs
    for b, at in zip(strong, (3.5, 6.5)):
        assert abs(b.x - at) < 0.25 and b.kind in ("turning-point", "cusp")
        assert np.log1p(b.lo) - 0.05 <= at <= np.log1p(b.hi) + 0.05


def test_a_straight_path_has_no_turning_point():
    rng = np.random.default_rng(3)
    out = np.outer(X, rng.standard_normal(30)) + 0.02 * rng.standard_normal((len(X), 30))
    assert [b for b in trajectory_boundaries(pca_trajectory(STEPS, out)) if b.strong] == []


def test_trajectory_signal_goes_through_the_stage_map():
    ed = pca_trajectory(STEPS, _path(), n_components=3)
    sig = trajectory_signal(ed)
    assert sig.kind == "trajectory" and sig.extra["components"].shape == (len(STEPS), 3)
    sm = stage_map({"ed:trajectory": sig}, resamples=30)
    assert {b.kind for b in sm.boundaries} <= {"turning-point", "cusp"} and len(sm.strong) == 2


def test_bad_outputs_are_named():
    with pytest.raises(ValueError, match="one row per step"):
        pca_trajectory(STEPS, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="non-finite"):
        pca_trajectory(STEPS[:5], np.full((5, 3), np.nan))


def test_plots_take_and_return_axes():
    ed = pca_trajectory(STEPS, _path(), n_components=3)
    bs = trajectory_boundaries(ed, resamples=20)
    sm = stage_map({"ed:trajectory": trajectory_signal(ed)}, resamples=20)
    fig = Figure()
    a1, a2, a3 = fig.subplots(1, 3)
    assert plot_trajectory(a1, ed, (0, 1), stage_map=sm, boundaries=bs) is a1
    assert plot_trajectory(a2, ed, (1, 2), boundaries=bs) is a2
    assert plot_pcs_over_steps(a3, ed, bs) is a3
    assert a1.get_ylabel().startswith("PC2")
    with pytest.raises(ValueError, match="components"):
        plot_trajectory(a1, ed, (0, 5))


def test_model_outputs_of_a_trained_run(tiny_run):
    steps, out = model_outputs(tiny_run.dir, n_inputs=16)
    cks = tiny_run.checkpoints()
    assert list(steps) == [c.step for c in cks] and out.shape[0] == len(cks)
    assert np.all(np.isfinite(out)) and np.all(out <= 0)  # log-probabilities
    # a fixed batch: the same call gives the same outputs
    np.testing.assert_array_equal(model_outputs(tiny_run.dir, n_inputs=16)[1], out)
    ed = pca_trajectory(steps, out)
    assert ed.explained[0] > 0
