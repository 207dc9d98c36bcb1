"""Crosscoders across checkpoints: features a model forms, found without labels, and when each forms.

    from llc_watch.crosscoder import CrosscoderSettings, crosscode_run, train_crosscoder
    tables = crosscode_run("runs/addition", CrosscoderSettings())   # tables also written into the run

Modules: model (the Crosscoder), train (train_crosscoder), collect (activations at K snapshots on
disk), features (emergence, trajectories, label matches, the stage-map signal), ablate (causal
check), plots (Axes in, Axes out), run (crosscode_run), settings, synthetic (planted features).
"""
from .features import emergence_peaks, emergence_signal
from .model import Crosscoder
from .run import crosscode_run
from .settings import CrosscoderSettings, CrosscoderSettingsError
from .train import CrosscoderFit, train_crosscoder

__all__ = ["Crosscoder", "CrosscoderFit", "CrosscoderSettings", "CrosscoderSettingsError", "crosscode_run",
           "emergence_signal", "emergence_peaks", "train_crosscoder"]
