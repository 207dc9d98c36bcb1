"""Fourier progress measures at every checkpoint of a modular-addition run (measures: llc_watch.fourier).

The stage map gets two signals from it: the share of the logits' power in the key frequencies
(`fourier:key_power`, an onset) and the restricted loss (`fourier:restricted_loss`, a loss curve),
Nanda et al.'s progress measures. Nothing outside this module knows modular addition exists.

    >>> df = compute_fourier("runs/modular-addition")                  # doctest: +SKIP
"""
from __future__ import annotations

import pandas as pd

from llc_watch.fourier import FourierSettings, final_key_frequencies, fourier_rows, train_mask
from llc_watch.run import Column, TableSchema, register_table
from llc_watch.signals import Signal

from .base import Analysis, run_analysis

FOURIER_TABLE = register_table(TableSchema("fourier", "fourier.csv", "llc-watch fourier RUN", (
    Column("step", "int"), Column("measure", "str"), Column("frequency", "int", "-1 when not per frequency"),
    Column("site", "str"), Column("value", "float"), Column("split", "str", "all, train, test"),
    Column("key_freqs", "str", "the key frequencies, space-separated"),
)))


def fourier_job(checkpoint, settings: dict) -> list[dict]:
    """The Fourier measures of one modular-addition checkpoint (settings' key_freqs set). Top level."""
    s = FourierSettings.from_mapping(settings).to_dict()
    if not s["key_freqs"]:
        raise ValueError("fourier_job needs settings['key_freqs']; the analysis fills it from the final checkpoint")
    cfg = checkpoint.config()
    task = cfg.make_task()
    if task.name != "modular_addition":
        raise ValueError(f"Fourier measures are for modular_addition runs; this run's task is {task.name!r}")
    return fourier_rows(checkpoint.load_model(), task, list(s["key_freqs"]), train_mask(task, cfg), s,
                        step=checkpoint.step)


class Fourier(Analysis):
    name = "fourier"
    Settings = FourierSettings
    schema = FOURIER_TABLE
    job = staticmethod(fourier_job)
    help = "Fourier progress measures at every checkpoint (modular addition)"
    description = ("Per checkpoint of a modular-addition run: the embedding's, MLP neurons' and logits' power per "
                   "frequency, and the loss restricted to (or excluding) the key frequencies. Writes fourier.csv.")

    def applies_to(self, task):
        return task.name == "modular_addition"

    def job_settings(self, run, settings):
        d = settings.to_dict()
        if not d["key_freqs"]:
            d["key_freqs"] = final_key_frequencies(run.checkpoints()[-1], d["key_frac"], d["max_key"])
        d["key_freqs"] = sorted(int(k) for k in d["key_freqs"])
        return d

    def signals(self, table):
        out = {}
        kp = table[(table["measure"] == "mlp_key_power")].groupby("step")["value"].mean()
        if not len(kp):
            kp = table[(table["measure"] == "embed_key_power")].groupby("step")["value"].mean()
        if len(kp):
            out["fourier:key_power"] = Signal("fourier:key_power", "onset", kp.index.to_numpy(float),
                                              kp.to_numpy(float), direction="up")
        rl = table[(table["measure"] == "restricted_loss") & (table["split"] == "test")].groupby("step")["value"].mean()
        if len(rl):
            out["fourier:restricted_loss"] = Signal("fourier:restricted_loss", "loss", rl.index.to_numpy(float),
                                                    rl.to_numpy(float), direction="down")
        return out


FOURIER = Fourier()


def compute_fourier(run_dir, settings=None, checkpoints=None, executor=None, progress: bool = True) -> pd.DataFrame:
    """Fourier measures at every checkpoint of a modular-addition run; writes fourier.csv."""
    return run_analysis(FOURIER, run_dir, settings, checkpoints, executor, progress)
