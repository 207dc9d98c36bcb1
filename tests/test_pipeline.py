"""The whole path on a tiny configuration: train -> LLC -> probes -> ablations -> stages -> report."""
import pandas as pd
import pytest

from llc_watch.config import RunConfig
from llc_watch.pipeline import PipelineSettings, run_pipeline, spread_steps


@pytest.fixture(scope="module")
def piped(tmp_path_factory):
    cfg = RunConfig.from_preset("addition-tiny").with_overrides(["train.steps=400"])
    out = tmp_path_factory.mktemp("pipe") / "run"
    logs = []
    path = run_pipeline(cfg, out, PipelineSettings.quick(), progress=False, log=logs.append)
    return out, path, logs


def test_pipeline_writes_every_table_and_the_report(piped):
    out, path, logs = piped
    assert path == out / "report.html" and path.stat().st_size > 50_000
    for name in ("metrics.csv", "llc.csv", "probes.csv", "ablations.csv", "stages.csv", "boundaries.csv"):
        assert (out / name).is_file(), name
    llc = pd.read_csv(out / "llc.csv")
    assert len(llc) == 6 and llc["valid"].all()
    probes = pd.read_csv(out / "probes.csv")
    assert {"carry_in", "a_bit"} <= set(probes.feature)
    html = path.read_text()
    assert "Stage map" in html and "carry_in" in html and "data:image/png;base64," in html


def test_second_run_reuses_everything(piped):
    out, path, _ = piped
    results = {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*.json")}
    ckpts = {p: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}
    cfg = RunConfig.from_preset("addition-tiny").with_overrides(["train.steps=400"])
    logs = []
    run_pipeline(cfg, out, PipelineSettings.quick(), progress=False, log=logs.append)
    assert {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*.json")} == results
    assert {p: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()} == ckpts


def test_stage_map_names_the_command_for_a_missing_analysis(piped, tmp_path):
    import shutil
    from llc_watch.analyses import run_stage_map as stage_map
    out, _, _ = piped
    bare = tmp_path / "bare"
    shutil.copytree(out, bare, ignore=shutil.ignore_patterns("llc.csv", "results"))
    sm = stage_map(bare)
    assert any(f"llc-watch llc {bare}" in w for w in sm.warnings)
    assert len(sm.stages) >= 1


def test_spread_steps_keeps_ends_and_spreads_in_log():
    steps = [0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987]
    picked = spread_steps(steps, 5)
    assert picked[0] == 0 and picked[-1] == 987 and len(picked) == 5
    assert spread_steps(steps, 0) == steps
