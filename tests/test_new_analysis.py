"""Adding an analysis is one module plus one registry line: a toy analysis defined here reaches the
CLI (subcommand and options from its Settings), the driver, the run's tables, the stage map and the
stage figure with no edit anywhere else."""
from dataclasses import dataclass

import pandas as pd
import pytest

from llc_watch.analyses import REGISTRY, Analysis, register, run_analysis, run_signals
from llc_watch.run import SCHEMAS, Column, TableSchema, register_table
from llc_watch.settings import SettingsBase
from llc_watch.signals import Signal


@dataclass(frozen=True)
class NormSettings(SettingsBase):
    power: float = 2.0                # which p-norm of the weights
    device: str = "cpu"               # where the weights are read

    def validate(self):
        self.positive("power")


def norm_job(checkpoint, settings: dict) -> list[dict]:
    model = checkpoint.load_model()
    total = sum(float(p.detach().abs().pow(settings["power"]).sum()) for p in model.parameters())
    return [{"step": checkpoint.step, "value": total ** (1 / settings["power"])}]


class WeightNorm(Analysis):
    name = "weight_norm"
    Settings = NormSettings
    schema = TableSchema("weight_norm", "weight_norm.csv", "llc-watch weight_norm RUN",
                         (Column("step", "int"), Column("value", "float")))
    job = staticmethod(norm_job)
    help = "the weights' p-norm at every checkpoint"
    description = "A toy analysis: the p-norm of all weights at every checkpoint. Writes weight_norm.csv."

    def signals(self, table):
        return {"weight_norm:total": Signal("weight_norm:total", "onset", table["step"], table["value"],
                                            direction="up")}


@pytest.fixture
def registered():
    a = WeightNorm()
    register_table(a.schema)
    register(a)                                                                # the one registry line
    yield a
    REGISTRY.pop(a.name)                                                       # leave the registry as it was
    SCHEMAS.pop(a.schema.name)


def test_a_new_analysis_reaches_cli_tables_and_stage_map(registered, tiny_run, tmp_path, capsys):
    import shutil
    from llc_watch.cli import main
    from llc_watch.plots import stage_figure
    from llc_watch.run import open_run
    assert "weight_norm" in REGISTRY
    d = tmp_path / "run"
    shutil.copytree(tiny_run.dir, d)
    with pytest.raises(SystemExit):
        main(["weight_norm", "--help"])
    assert "--power POWER which p-norm of the weights (default 2.0)" in " ".join(capsys.readouterr().out.split())
    assert main(["weight_norm", str(d), "--power", "-1"]) == 2                   # validated from its Settings
    assert main(["weight_norm", str(d), "--quiet"]) == 0
    run = open_run(d)
    table = run.table("weight_norm")
    assert len(table) == len(run.checkpoints()) and (table["value"] > 0).all()
    signals, _, missing = run_signals(run)
    assert "weight_norm:total" in signals and "weight_norm" not in missing
    from llc_watch.analyses import run_stage_map
    sm = run_stage_map(run, resamples=5)
    fig = stage_figure(run.tables(), sm)                 # signals found through the registry, not passed in
    assert "weight_norm" in [ax.get_ylabel() for ax in fig.axes]
    again = run_analysis("weight_norm", run, progress=False)
    assert "0 ran" in again.attrs["summary"]
    pd.testing.assert_frame_equal(again.reset_index(drop=True), table, check_dtype=False)
