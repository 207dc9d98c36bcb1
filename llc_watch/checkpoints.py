"""The run folder and its checkpoint history.

    runs/NAME/
      config.json                      the full RunConfig (task, model, training, seed)
      checkpoints/step_000120.safetensors   weights; metadata holds the config JSON and the step
      metrics.csv                      tidy: step, measure, value (train/test loss and accuracy)
      state/resume.pt                  optimiser state for resuming (tensors only, weights_only load)
      llc.csv, probes.csv, ...         per-checkpoint analyses, each with its results/ folder

Checkpoints load without executing code: safetensors for weights, JSON for the config.

    >>> run = open_run("runs/addition")                     # doctest: +SKIP
    >>> ckpt = run.checkpoints()[-1]                         # doctest: +SKIP
    >>> model = ckpt.load_model()                            # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .config import ConfigError, RunConfig
from .io import atomic_write_bytes
from .model import Transformer

FORMAT = "llc_watch/1"


class CheckpointError(RuntimeError):
    """A checkpoint or run folder that cannot be read; the message names the file and what to do."""


def checkpoint_steps(steps: int, n_log: int, n_linear: int) -> list[int]:
    """Union of log-spaced and linearly spaced steps in [0, steps], with 0 and `steps` always in.

    >>> checkpoint_steps(1000, n_log=5, n_linear=3)
    [0, 1, 6, 32, 178, 500, 1000]
    """
    log = np.geomspace(1, steps, n_log) if n_log and steps >= 1 else []
    lin = np.linspace(0, steps, n_linear) if n_linear else []
    return sorted({0, steps, *(int(round(s)) for s in log), *(int(round(s)) for s in lin)})


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}.safetensors"


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, config: RunConfig) -> Path:
    path = Path(run_dir) / "checkpoints" / checkpoint_name(step)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "step": str(step), "config": config.to_json()}
    atomic_write_bytes(path, save(state, metadata=meta))
    return path


@dataclass(frozen=True)
class Checkpoint:
    """A picklable handle on one checkpoint file: what a per-checkpoint job receives."""

    path: str
    step: int

    def _fail(self, why: str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {self.path} {why}. Delete it and rerun `llc-watch train` on its run folder "
            "to rewrite it, or leave it out with --checkpoints.")

    def metadata(self) -> dict:
        try:
            with open(self.path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                if not 0 < header_len < 100_000_000:
                    raise ValueError("bad header length")
                header = json.loads(f.read(header_len))
        except FileNotFoundError:
            raise self._fail("does not exist") from None
        except (ValueError, UnicodeDecodeError):
            raise self._fail("is not a safetensors file (corrupt, truncated, or a pickle)") from None
        meta = header.get("__metadata__") or {}
        if meta.get("format") != FORMAT:
            raise self._fail(f"was not written by llc_watch (format {meta.get('format')!r})")
        return meta

    def config(self) -> RunConfig:
        try:
            return RunConfig.from_dict(json.loads(self.metadata()["config"]))
        except (KeyError, json.JSONDecodeError, ConfigError) as e:
            raise self._fail(f"has an unreadable config ({e})") from None

    def load_state(self) -> dict[str, torch.Tensor]:
        self.metadata()  # checks the format before reading tensors
        try:
            return load_file(self.path)
        except (SafetensorError, OSError, ValueError) as e:
            raise self._fail(f"cannot be read ({e})") from None

    def load_model(self, device: str | torch.device = "cpu") -> Transformer:
        cfg = self.config()
        model = Transformer(cfg.model_config())
        try:
            model.load_state_dict(self.load_state())
        except RuntimeError as e:
            raise self._fail(f"does not match its own model config ({str(e).splitlines()[0]})") from None
        return model.to(device).eval()

    def fingerprint(self) -> str:
        """sha256 of the file's bytes: a job keyed on it never mixes up two different weights."""
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()


class Run:
    """A run folder: its config, task, checkpoints and training metrics."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        cfg_path = self.dir / "config.json"
        if not cfg_path.is_file():
            raise CheckpointError(
                f"{self.dir} is not an llc_watch run folder (no config.json). "
                "Create one with `llc-watch train --preset NAME --out DIR`.")
        try:
            self.config = RunConfig.from_dict(json.loads(cfg_path.read_text()))
        except (json.JSONDecodeError, ConfigError) as e:
            raise CheckpointError(f"{cfg_path} cannot be read: {e}") from None

    @cached_property
    def task(self):
        return self.config.make_task()

    def checkpoints(self, steps: list[int] | None = None) -> list[Checkpoint]:
        found = {}
        for p in sorted((self.dir / "checkpoints").glob("step_*.safetensors")):
            try:
                found[int(p.stem.split("_")[1])] = Checkpoint(str(p), int(p.stem.split("_")[1]))
            except ValueError:
                continue
        if steps is None:
            return [found[s] for s in sorted(found)]
        missing = [s for s in steps if s not in found]
        if missing:
            raise CheckpointError(
                f"{self.dir} has no checkpoint at step(s) {missing}; available: {sorted(found)}")
        return [found[s] for s in steps]

    def metrics(self) -> pd.DataFrame:
        path = self.dir / "metrics.csv"
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: run `llc-watch train` on this run folder first")
        return pd.read_csv(path)


def open_run(run_dir: str | Path) -> Run:
    return Run(run_dir)
