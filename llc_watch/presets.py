"""Named presets: configurations found by experiment to show a phenomenon on a laptop CPU.

Each entry says what it shows and what was measured (see the README's preset table).
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    "addition": {
        "shows": "8-bit addition: a long loss plateau, then an abrupt drop to >= 99% exact match",
        "config": {
            "task": {"name": "addition", "settings": {"n_bits": 8}},
            "model": {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_mlp": 256, "norm": "layernorm"},
            "train": {"steps": 2500, "batch_size": 128, "lr": 3e-4, "weight_decay": 0.1,
                      "warmup_frac": 0.1, "schedule": "cosine"},
            "checkpoints": {"n_log": 30, "n_linear": 20},
        },
    },
    "addition-tiny": {
        "shows": "4-bit addition in seconds: for tests and the CI pipeline run",
        "config": {
            "task": {"name": "addition", "settings": {"n_bits": 4}},
            "model": {"n_layers": 1, "d_model": 32, "n_heads": 4, "d_mlp": 64},
            "train": {"steps": 800, "batch_size": 64, "lr": 2e-3, "eval_size": 256},
            "checkpoints": {"n_log": 8, "n_linear": 6},
        },
    },
    "modular-addition": {
        "shows": "grokking on a + b mod 59: train accuracy 100% by step ~130, test accuracy 99% only by step ~3000",
        "config": {
            "task": {"name": "modular_addition", "settings": {"p": 59}},
            # init_std 0.1 (not 0.02): a large initial weight norm makes the model memorise first and
            # generalise only as weight decay shrinks it (Liu et al. 2022, "Omnigrok")
            "model": {"n_layers": 1, "d_model": 128, "n_heads": 4, "d_mlp": 512, "act": "relu", "norm": "none",
                      "init_std": 0.1},
            "train": {"steps": 4000, "batch_size": 100000, "lr": 1e-3, "weight_decay": 1.0, "beta1": 0.9,
                      "beta2": 0.98, "warmup_frac": 0.01, "schedule": "constant", "grad_clip": 0.0,
                      "train_fraction": 0.5, "eval_size": 100000},
            "checkpoints": {"n_log": 30, "n_linear": 30},
        },
    },
}


def all_presets() -> dict[str, dict]:
    """The core presets plus the task suite's (one per task)."""
    from .tasks.presets_suite import SUITE_PRESETS
    return {**SUITE_PRESETS, **PRESETS}
